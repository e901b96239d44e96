"""
The ``dns-account-01`` challenge (:data:`DRAFT`): ``dns-01`` with a label
derived from the ACME account, so that several accounts (several independent
servers) can validate one name at the same time without overwriting each
other's ``_acme-challenge`` record.

The TXT record is ``_<label>._acme-challenge.<name>``, where ``<label>`` is
``base32(SHA-256(account URL)[0:10])`` in lower case (16 characters,
:func:`account_label`); its value is the ``dns-01`` one,
``base64url(SHA-256(key authorization))``.

* :class:`DNSAccount01` / :class:`DNSAccount01Response`: the message types,
  registered with :mod:`acme.challenges` on first import (never replacing a
  class registered elsewhere for the type).
* :class:`DNSAccount01Responder`: the ``dns-01`` responder
  (:class:`~txacme.challenges.dns01.DNS01Responder`, with every DNS provider)
  writing at the account's name.

May import the core modules and :mod:`txacme.challenges.dns01`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from acme import challenges as acme_challenges
from josepy.json_util import field
from josepy.jwk import JWK

from txacme.challenges.dns01 import CHALLENGE_LABEL, DNS01Responder, txt_value
from txacme.errors import ConfigurationError

DRAFT = "draft-ietf-acme-dns-account-label-03"
"""The revision of the Internet-Draft implemented here."""
CHALLENGE_TYPE = "dns-account-01"
"""The challenge type."""


def account_label(account_uri: str) -> str:
    """
    The account's label: ``_`` and ``base32(SHA-256(account_uri)[0:10])`` in
    lower case, without padding (10 bytes make exactly 16 base32 characters).
    """
    digest = hashlib.sha256(account_uri.encode("utf-8")).digest()[:10]
    return "_" + base64.b32encode(digest).decode("ascii").lower()


def validation_name(server_name: str, account_uri: str) -> str:
    """
    The name whose TXT record the CA checks for ``server_name`` and this
    account: ``_<label>._acme-challenge.<name>`` (``*.`` removed).
    """
    name = server_name.rstrip(".").lower()
    if name.startswith("*."):
        name = name[2:]
    return f"{account_label(account_uri)}.{CHALLENGE_LABEL}.{name}"


class DNSAccount01Response(acme_challenges.KeyAuthorizationChallengeResponse):
    """
    The response to a ``dns-account-01`` challenge: an empty JSON object on the
    wire. It carries the account URL the record name is derived from
    (:attr:`account_uri`, never sent).
    """

    typ = CHALLENGE_TYPE
    account_uri: str | None = field("accountUri", omitempty=True)

    def to_partial_json(self) -> dict[str, Any]:
        """``{}``: RFC 8555 responses carry nothing for key-authorization types."""
        return {}


class DNSAccount01(acme_challenges.KeyAuthorizationChallenge):
    """The ``dns-account-01`` challenge: a token, like ``dns-01``."""

    response_cls = DNSAccount01Response
    typ = CHALLENGE_TYPE

    def validation(self, account_key: JWK, **unused_kwargs: Any) -> str:
        """The TXT value: ``base64url(SHA-256(key authorization))``."""
        return txt_value(self.key_authorization(account_key))

    def answer(self, account_key: JWK, account_uri: str) -> DNSAccount01Response:
        """The response, carrying ``account_uri`` for the responder."""
        return DNSAccount01Response(
            key_authorization=self.key_authorization(account_key), account_uri=account_uri
        )


def _register() -> None:
    for registry, cls in (
        (acme_challenges.Challenge.TYPES, DNSAccount01),
        (acme_challenges.ChallengeResponse.TYPES, DNSAccount01Response),
    ):
        existing = registry.get(CHALLENGE_TYPE)
        if existing is None or existing.__module__ == __name__:
            registry[CHALLENGE_TYPE] = cls


_register()


class DNSAccount01Responder(DNS01Responder):
    """
    Answers ``dns-account-01`` challenges through a DNS provider: the
    :class:`~txacme.challenges.dns01.DNS01Responder` behaviour (CNAME
    following, zone discovery, propagation check, removal of exactly the value
    added) at ``_<account label>._acme-challenge.<name>``.

    The response must carry the account URL (:class:`DNSAccount01Response`, as
    :func:`txacme.issuing.order.challenge_response` makes it).
    """

    challenge_type = CHALLENGE_TYPE

    def __repr__(self) -> str:
        return "DNSAccount01Responder" + super().__repr__().removeprefix("DNS01Responder")

    def _record_name(self, server_name: str, response: Any) -> str:
        account_uri = getattr(response, "account_uri", None)
        if not isinstance(account_uri, str) or not account_uri:
            raise ConfigurationError(
                "dns-account-01 needs the account URL in the response "
                "(answer with txacme.issuing.order.challenge_response)"
            )
        return validation_name(server_name, account_uri)


__all__ = [
    "CHALLENGE_TYPE",
    "DRAFT",
    "DNSAccount01",
    "DNSAccount01Response",
    "DNSAccount01Responder",
    "account_label",
    "validation_name",
]
