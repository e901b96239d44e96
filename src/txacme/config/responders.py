"""
The challenge responders a configuration asks for, built in one place for the
endpoint strings (:func:`txacme.config.endpoint.endpoint_from_config`) and the
``txacme`` command.

Configuration layer: may import anything below it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol

from txacme.challenges.dnsaccount01 import DNSAccount01Responder
from txacme.challenges.http01 import HTTP01Responder, HTTP01Site, http01_root
from txacme.challenges.tlsalpn01 import TLSALPN01Responder
from txacme.config.dns import dns01_responder_from_options, dns_persist01_responder_from_options
from txacme.errors import ConfigurationError
from txacme.interfaces import IResponder
from txacme.serving.index import CertificateIndex
from txacme.serving.tls import SNIConnectionCreator, tls_server_factory

HTTP_01 = "http-01"
"""The ``http-01`` challenge type."""
TLS_ALPN_01 = "tls-alpn-01"
"""The ``tls-alpn-01`` challenge type."""
DNS_01 = "dns-01"
"""The ``dns-01`` challenge type."""
DNS_ACCOUNT_01 = "dns-account-01"
"""The ``dns-account-01`` challenge type (draft-ietf-acme-dns-account-label)."""
DNS_PERSIST_01 = "dns-persist-01"
"""The ``dns-persist-01`` challenge type (draft-ietf-acme-dns-persist)."""
#: The challenge types answered through DNS, with no listener.
DNS_TYPES = (DNS_01, DNS_ACCOUNT_01, DNS_PERSIST_01)


@attrs.frozen
class ChallengeResponders:
    """
    One responder per challenge type asked for (``None`` for the others).

    :ivar http01: answers ``http-01``; serve its resource on port 80.
    :ivar tls_alpn01: answers ``tls-alpn-01``; its registry goes to the
        connection creator of the listener the CA reaches on port 443.
    :ivar dns01: answers ``dns-01`` through the configured DNS provider.
    :ivar dns_account01: answers ``dns-account-01`` through it.
    :ivar dns_persist01: answers ``dns-persist-01`` (checks, or publishes once).
    """

    http01: HTTP01Responder | None = None
    tls_alpn01: TLSALPN01Responder | None = None
    dns01: IResponder | None = None
    dns_account01: IResponder | None = None
    dns_persist01: IResponder | None = None

    def dns_responders(self) -> list[IResponder]:
        """The responders answering through DNS (no listener), in preference order."""
        found = [self.dns_persist01, self.dns_account01, self.dns01]
        return [r for r in found if r is not None]

    def responder(self, challenge_type: str) -> IResponder | None:
        """The responder for ``challenge_type``, if it was asked for."""
        found: IResponder | None = {
            HTTP_01: self.http01,
            TLS_ALPN_01: self.tls_alpn01,
            DNS_01: self.dns01,
            DNS_ACCOUNT_01: self.dns_account01,
            DNS_PERSIST_01: self.dns_persist01,
        }.get(challenge_type)
        return found

    def listener_factory(self, challenge_type: str) -> IProtocolFactory:
        """
        A factory that answers ``challenge_type`` on a listener of its own, and
        serves nothing else: a site with only ``/.well-known/acme-challenge/``
        for ``http-01``; TLS with no certificate but the challenge ones for
        ``tls-alpn-01``.

        :raises txacme.errors.ConfigurationError: for a type that was not asked
            for or needs no listener (``dns-01``).
        """
        if challenge_type == HTTP_01 and self.http01 is not None:
            site = HTTP01Site(http01_root(self.http01))
            site.noisy = False
            return site
        if challenge_type == TLS_ALPN_01 and self.tls_alpn01 is not None:
            creator = SNIConnectionCreator(CertificateIndex(), challenges=self.tls_alpn01.registry)
            factory = tls_server_factory(creator, Factory.forProtocol(Protocol))
            factory.noisy = False
            return factory
        raise ConfigurationError(f"no {challenge_type} listener to make")


def challenge_responders(
    challenges: Iterable[str],
    *,
    dns_options: Mapping[str, str] | None = None,
    clock: IReactorTime,
) -> ChallengeResponders:
    """
    Build the responder of each challenge type in ``challenges`` (``http-01``,
    ``tls-alpn-01``, ``dns-01``).

    :param dns_options: the ``dns=...`` options, for ``dns-01`` (see
        :func:`txacme.config.dns.dns01_responder_from_options`).
    :param clock: the reactor's time.
    :raises txacme.errors.ConfigurationError: for an unknown challenge type or
        bad DNS options.
    """
    wanted = set(challenges)
    unknown = sorted(wanted - {HTTP_01, TLS_ALPN_01, *DNS_TYPES})
    if unknown:
        raise ConfigurationError(f"unknown challenge type {', '.join(unknown)}")
    dns01 = dns_account01 = dns_persist01 = None
    if DNS_01 in wanted:
        dns01 = dns01_responder_from_options(dns_options or {}, clock=clock)
    if DNS_ACCOUNT_01 in wanted:
        dns_account01 = dns01_responder_from_options(
            dns_options or {}, clock=clock, responder_class=DNSAccount01Responder
        )
    if DNS_PERSIST_01 in wanted:
        dns_persist01 = dns_persist01_responder_from_options(dns_options or {}, clock=clock)
    return ChallengeResponders(
        http01=HTTP01Responder() if HTTP_01 in wanted else None,
        tls_alpn01=TLSALPN01Responder() if TLS_ALPN_01 in wanted else None,
        dns01=dns01,
        dns_account01=dns_account01,
        dns_persist01=dns_persist01,
    )


__all__ = [
    "DNS_01",
    "DNS_ACCOUNT_01",
    "DNS_PERSIST_01",
    "DNS_TYPES",
    "HTTP_01",
    "TLS_ALPN_01",
    "ChallengeResponders",
    "challenge_responders",
]
