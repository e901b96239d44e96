"""
The ``dns-persist-01`` challenge (:data:`DRAFT`): one persistent TXT record at
``_validation-persist.<name>`` names the CA (one of the challenge's
``issuer-domain-names``) and the ACME account; every later authorization for
the name validates against it with no DNS change.

Record format (the RFC 8659 ``issue-value`` syntax)::

    _validation-persist.example.com. IN TXT "ca.example; accounturi=https://ca.example/acct/1"
    _validation-persist.example.com. IN TXT "ca.example; accounturi=...; policy=wildcard"
    _validation-persist.example.com. IN TXT "ca.example; accounturi=...; persistUntil=1767225600"

``policy=wildcard`` is needed for a wildcard name (and lets the CA validate
subdomains); ``persistUntil`` (UNIX seconds) ends the record's use for new
validations. Unknown parameters are ignored, tags are matched without regard to
case, issuer domain names in lower case without a trailing dot.

* :class:`DNSPersist01` / :class:`DNSPersist01Response`: the message types,
  registered with :mod:`acme.challenges` on first import. A challenge whose
  ``issuer-domain-names`` is empty, longer than 10 entries or not normalized is
  malformed (:attr:`DNSPersist01.problem`): the responder refuses to answer it.
* :func:`record_value`, :func:`parse_record`, :func:`record_matches`: the record.
* :class:`DNSPersist01Responder`: checks that the record is visible at every
  authoritative name server; with a DNS provider it publishes it once (never
  removing it), without one it fails with the exact record to create.

May import the core modules, :mod:`txacme.challenges.dns01` and
:mod:`txacme.challenges.dnsproviders`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from acme import challenges as acme_challenges
from josepy.json_util import field
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txacme.challenges.dns01 import (
    DEFAULT_PROPAGATION_TIMEOUT,
    IDNSLookup,
    _dns_settings,
)
from txacme.challenges.dnsproviders import DNSError, IDNSProvider
from txacme.errors import ConfigurationError
from txacme.interfaces import IResponder
from txacme.logs import Logger

log = Logger()

DRAFT = "draft-ietf-acme-dns-persist-02"
"""The revision of the Internet-Draft implemented here."""
CHALLENGE_TYPE = "dns-persist-01"
"""The challenge type."""
PERSIST_LABEL = "_validation-persist"
"""The label of the persistent validation record."""
MAX_ISSUER_DOMAIN_NAMES = 10
"""The most ``issuer-domain-names`` a well-formed challenge has."""

_ISSUER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


_TAG = re.compile(r"^[A-Za-z0-9]+(-+[A-Za-z0-9]+)*$")


class MalformedPersistChallenge(ValueError):
    """A ``dns-persist-01`` challenge the draft says a client must reject."""


class PersistRecordMissing(DNSError):
    """No matching ``dns-persist-01`` record, and no provider to publish one."""


def _check_issuer(name: object) -> str:
    if not isinstance(name, str) or len(name) > 253 or not _ISSUER.match(name):
        raise MalformedPersistChallenge(
            f"issuer-domain-names: {name!r} is not a lower-case A-label domain name "
            "without a trailing dot"
        )
    return name


def _decode_issuers(value: Any) -> tuple[Any, ...]:
    # Kept as sent: a malformed list is reported by DNSPersist01.problem, so that
    # the authorization (and its other challenges) still decodes.
    if isinstance(value, list):
        return tuple(value)
    return (value,)


def issuer_names_problem(names: Sequence[Any]) -> str | None:
    """Why ``issuer-domain-names`` is malformed (the draft's rules), or ``None``."""
    if not names:
        return "issuer-domain-names is empty"
    if len(names) > MAX_ISSUER_DOMAIN_NAMES:
        return f"issuer-domain-names has {len(names)} entries, more than {MAX_ISSUER_DOMAIN_NAMES}"
    for name in names:
        try:
            _check_issuer(name)
        except MalformedPersistChallenge as e:
            return str(e)
    return None


class DNSPersist01Response(acme_challenges.ChallengeResponse):
    """
    The response to a ``dns-persist-01`` challenge: ``{}`` on the wire (there is
    no token and no key authorization). It carries what the responder needs,
    never sent: the account URI and whether the authorization is for a wildcard.
    """

    typ = CHALLENGE_TYPE
    account_uri: str | None = field("accountUri", omitempty=True)
    wildcard: bool = field("wildcard", omitempty=True, default=False)

    def to_partial_json(self) -> dict[str, Any]:
        """``{}``."""
        return {}


class DNSPersist01(acme_challenges.Challenge):
    """The ``dns-persist-01`` challenge: the CA's ``issuer-domain-names``."""

    typ = CHALLENGE_TYPE
    issuer_domain_names: tuple[str, ...] = field(
        "issuer-domain-names", decoder=_decode_issuers, encoder=list
    )

    @property
    def problem(self) -> str | None:
        """Why the challenge is malformed (and must not be answered), or ``None``."""
        return issuer_names_problem(self.issuer_domain_names)

    def answer(self, account_uri: str, wildcard: bool = False) -> DNSPersist01Response:
        """The response, carrying ``account_uri`` and ``wildcard`` for the responder."""
        return DNSPersist01Response(account_uri=account_uri, wildcard=wildcard)


def _register() -> None:
    for registry, cls in (
        (acme_challenges.Challenge.TYPES, DNSPersist01),
        (acme_challenges.ChallengeResponse.TYPES, DNSPersist01Response),
    ):
        existing = registry.get(CHALLENGE_TYPE)
        if existing is None or existing.__module__ == __name__:
            registry[CHALLENGE_TYPE] = cls


_register()


# ---------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------


def directory_issuers(directory: Any) -> list[str]:
    """
    The issuer domain names a CA's directory lists (its ``caaIdentities``,
    canonical), from which CAs draw ``issuer-domain-names``; may be empty.
    """
    meta = getattr(directory, "meta", None)
    return [str(i).lower().rstrip(".") for i in getattr(meta, "caa_identities", None) or []]


def validation_name(server_name: str) -> str:
    """``_validation-persist.<name>`` (``*.`` removed): where the record lives."""
    name = server_name.rstrip(".").lower()
    if name.startswith("*."):
        name = name[2:]
    return f"{PERSIST_LABEL}.{name}"


def _timestamp(until: datetime.datetime | int | None) -> int | None:
    if until is None or isinstance(until, int):
        return until
    if until.tzinfo is None:
        raise ConfigurationError(f"persistUntil {until!r} must be timezone-aware")
    return int(until.timestamp())


def record_value(
    issuer_domain_name: str,
    account_uri: str,
    *,
    wildcard: bool = False,
    persist_until: datetime.datetime | int | None = None,
) -> str:
    """
    The TXT value naming ``issuer_domain_name`` and ``account_uri``:
    ``"ca.example; accounturi=<uri>[; policy=wildcard][; persistUntil=<secs>]"``.

    :raises txacme.errors.ConfigurationError: for an issuer or URI that cannot
        be written in the record.
    """
    try:
        _check_issuer(issuer_domain_name)
    except MalformedPersistChallenge as e:
        raise ConfigurationError(str(e))
    if not account_uri or any(c in account_uri for c in '; \t"') or not account_uri.isascii():
        raise ConfigurationError(f"account URI {account_uri!r} cannot be written in a record")
    parts = [issuer_domain_name, f"accounturi={account_uri}"]
    if wildcard:
        parts.append("policy=wildcard")
    until = _timestamp(persist_until)
    if until is not None:
        parts.append(f"persistUntil={until}")
    return "; ".join(parts)


@attrs.frozen
class PersistRecord:
    """
    A parsed record: the issuer and the parameters (tags lower-cased).

    :ivar issuer_domain_name: lower case, without a trailing dot.
    :ivar parameters: ``{tag (lower case): value}``.
    """

    issuer_domain_name: str
    parameters: dict[str, str]

    @property
    def account_uri(self) -> str | None:
        """The ``accounturi`` parameter."""
        return self.parameters.get("accounturi")

    @property
    def wildcard(self) -> bool:
        """Whether ``policy=wildcard`` is present (case-insensitive)."""
        return self.parameters.get("policy", "").lower() == "wildcard"

    @property
    def persist_until(self) -> int | None:
        """``persistUntil`` in UNIX seconds; ``-1`` when present but not an integer."""
        text = self.parameters.get("persistuntil")
        if text is None:
            return None
        return int(text) if text.isdigit() else -1


def parse_record(text: str) -> PersistRecord | None:
    """
    Parse a TXT value as an RFC 8659 ``issue-value``; ``None`` when it is not one
    (no issuer, a parameter without ``=``, or a tag given twice: ambiguous).
    """
    issuer, _, rest = text.partition(";")
    issuer = issuer.strip().rstrip(".").lower()
    if not issuer or not _ISSUER.match(issuer):
        return None
    parameters: dict[str, str] = {}
    for part in rest.split(";"):
        part = part.strip()
        if not part:
            continue
        tag, eq, value = part.partition("=")
        tag = tag.strip()
        if not eq or not _TAG.match(tag) or tag.lower() in parameters:
            return None
        parameters[tag.lower()] = value.strip()
    return PersistRecord(issuer, parameters)


def record_matches(
    text: str,
    issuer_domain_names: Iterable[str],
    account_uri: str,
    *,
    wildcard: bool = False,
    now: float,
) -> bool:
    """
    Whether the TXT value ``text`` authorizes ``account_uri`` with one of
    ``issuer_domain_names`` at time ``now`` (UNIX seconds): the issuer is one of
    them, ``accounturi`` is exactly the account URI, ``policy=wildcard`` is
    there if ``wildcard``, and ``persistUntil`` (if any) is not past.
    """
    record = parse_record(text)
    if record is None or record.issuer_domain_name not in set(issuer_domain_names):
        return False
    if record.account_uri != account_uri:
        return False
    if wildcard and not record.wildcard:
        return False
    until = record.persist_until
    return until is None or (until >= 0 and now <= until)


# ---------------------------------------------------------------------------
# The responder
# ---------------------------------------------------------------------------


@implementer(IResponder)
class DNSPersist01Responder:
    """
    Answers ``dns-persist-01`` challenges.

    Before answering, every authoritative name server of the record's zone is
    asked for ``_validation-persist.<name>``; a value naming one of the
    challenge's issuer domain names and the account (with ``policy=wildcard``
    for a wildcard, ``persistUntil`` not past) lets the CA validate. Otherwise,
    with a ``provider``, the record is published once (waiting until every
    name server has it) and is never removed; without one the start fails with
    :class:`PersistRecordMissing`, whose one-line message is the record to
    create.

    :param provider: the :class:`~txacme.challenges.dnsproviders.IDNSProvider`
        that publishes a missing record, or ``None`` to only check.
    :param lookup: the DNS queries (default: :class:`DNSPythonLookup`).
    :param zone: the zone of the records, instead of discovering it.
    :param issuer_domain_name: the issuer to name in a published record when
        the challenge offers it (default: the challenge's first).
    :param wildcard_policy: publish ``policy=wildcard`` for every name, not only
        for wildcards.
    :param persist_until: ``persistUntil`` of published records.
    :param propagation_timeout: seconds to wait for a published record.
    :param clock: the reactor's time.
    """

    challenge_type = CHALLENGE_TYPE

    def __init__(
        self,
        provider: IDNSProvider | None = None,
        *,
        lookup: IDNSLookup | None = None,
        zone: str | None = None,
        issuer_domain_name: str | None = None,
        wildcard_policy: bool = False,
        persist_until: datetime.datetime | int | None = None,
        propagation_timeout: float = DEFAULT_PROPAGATION_TIMEOUT,
        poll_interval: float = 0.25,
        max_poll_interval: float = 10.0,
        clock: IReactorTime,
    ) -> None:
        self.provider = provider
        self.lookup, self.zone, self._check = _dns_settings(
            lookup, zone, propagation_timeout, poll_interval, max_poll_interval, clock
        )
        self.issuer_domain_name = issuer_domain_name
        self.wildcard_policy = wildcard_policy
        self.persist_until = _timestamp(persist_until)
        self.propagation_timeout = propagation_timeout
        self._clock = clock
        self._locks: dict[str, DeferredLock] = {}
        #: How many records this responder published (for tests and status).
        self.published = 0

    def __repr__(self) -> str:
        return (
            f"DNSPersist01Responder(provider={self.provider!r}, lookup={self.lookup!r}, "
            f"zone={self.zone!r})"
        )

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """
        Make sure the record is visible at every authoritative name server.

        :return: a ``Deferred`` firing when the CA can validate, or failing with
            :class:`PersistRecordMissing` (no provider), :class:`DNSError` or
            :class:`~txacme.challenges.dns01.DNSPropagationTimeout`.
        """
        problem = (
            challenge.problem if isinstance(challenge, DNSPersist01) else "not a dns-persist-01"
        )
        if problem is not None:
            return Deferred.fromCoroutine(
                _raise(
                    DNSError(f"dns-persist-01 for {server_name}: malformed challenge: {problem}")
                )
            )
        account_uri = getattr(response, "account_uri", None)
        if not isinstance(account_uri, str) or not account_uri:
            return Deferred.fromCoroutine(
                _raise(
                    ConfigurationError(
                        "dns-persist-01 needs the account URI in the response "
                        "(answer with txacme.issuing.order.challenge_response)"
                    )
                )
            )
        wildcard = bool(getattr(response, "wildcard", False))
        fqdn = validation_name(server_name)
        lock = self._locks.setdefault(fqdn, DeferredLock())
        return lock.run(
            lambda: Deferred.fromCoroutine(
                self._ensure(
                    server_name, fqdn, challenge.issuer_domain_names, account_uri, wildcard
                )
            )
        )

    def _issuer(self, issuers: Sequence[str]) -> str:
        if self.issuer_domain_name is not None and self.issuer_domain_name in issuers:
            return self.issuer_domain_name
        return issuers[0]

    async def _zone(self, fqdn: str) -> str:
        if self.zone is not None:
            return self.zone
        return await self.lookup.find_zone(fqdn)

    async def _ensure(
        self,
        server_name: str,
        fqdn: str,
        issuers: Sequence[str],
        account_uri: str,
        wildcard: bool,
    ) -> None:
        value = record_value(
            self._issuer(issuers),
            account_uri,
            wildcard=wildcard or self.wildcard_policy,
            persist_until=self.persist_until,
        )
        try:
            zone = await self._zone(fqdn)
            servers = await self.lookup.authoritative_servers(zone)
        except DNSError:
            if self.provider is not None:
                raise
            raise PersistRecordMissing(_missing(fqdn, value))
        now = self._clock.seconds()
        lacking = []
        for server in servers:
            values = await self.lookup.query_txt(server, fqdn)
            if not any(
                record_matches(v, issuers, account_uri, wildcard=wildcard, now=now) for v in values
            ):
                lacking.append(server)
        if not lacking:
            log.info(
                "dns-persist-01 for {server_name}: {fqdn} authorizes this account",
                server_name=server_name,
                fqdn=fqdn,
            )
            return
        if self.provider is None:
            raise PersistRecordMissing(_missing(fqdn, value))
        if len(value.encode("ascii")) > 255:
            raise DNSError(
                f"dns-persist-01: the record for {fqdn} is over 255 bytes; publish it by hand "
                f'as several strings: {fqdn}. IN TXT "{value}"'
            )
        log.info(
            "dns-persist-01 for {server_name}: publishing TXT {fqdn} in zone {zone} "
            "(persistent: it is never removed)",
            server_name=server_name,
            fqdn=fqdn,
            zone=zone,
        )
        await self.provider.add_txt_record(zone, fqdn, value)
        self.published += 1
        await self._check.wait(fqdn, value, servers, self.propagation_timeout)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """Nothing: the record is persistent."""


def _missing(fqdn: str, value: str) -> str:
    return (
        f"dns-persist-01: no TXT record at {fqdn} names this CA and account; "
        f'create it: {fqdn}. IN TXT "{value}"'
    )


async def _raise(error: BaseException) -> None:
    raise error


__all__ = [
    "CHALLENGE_TYPE",
    "DRAFT",
    "MAX_ISSUER_DOMAIN_NAMES",
    "PERSIST_LABEL",
    "DNSPersist01",
    "DNSPersist01Response",
    "DNSPersist01Responder",
    "MalformedPersistChallenge",
    "PersistRecord",
    "PersistRecordMissing",
    "directory_issuers",
    "issuer_names_problem",
    "parse_record",
    "record_matches",
    "record_value",
    "validation_name",
]
