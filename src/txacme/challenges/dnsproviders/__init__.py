"""
DNS providers: the part of a ``dns-01`` responder that writes TXT records.

A provider knows how to add and remove one TXT record in one zone of one DNS
service; everything else (the TXT value, CNAME delegation, finding the zone,
waiting until the record is visible, cleaning up) is done once, for every
provider, by :class:`txacme.challenges.dns01.DNS01Responder`.

Built in:

* :class:`txacme.challenges.dnsproviders.rfc2136.RFC2136Provider`: RFC 2136 dynamic
  update signed with TSIG (BIND, Knot, PowerDNS, Windows DNS...).
* :class:`txacme.challenges.dnsproviders.lexicon.LexiconProvider`: the hosted DNS services
  of `dns-lexicon` (``pip install txacme[lexicon]``).

This module also holds the small types that the providers and the responder
share: :class:`Nameserver` (an address and a port) and the :class:`DNSError`
family.

May import the core modules only (the responder imports this package, not the
other way round).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface

from txacme.errors import ConfigurationError, TxACMEError

_T = TypeVar("_T")

#: How providers and lookups run blocking calls: a function that runs its
#: argument off the reactor thread and returns a ``Deferred`` of its result
#: (by default :func:`twisted.internet.threads.deferToThread`).
RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


def default_run_in_thread(function: Callable[[], _T]) -> Deferred[_T]:
    """Run ``function`` in the reactor's thread pool."""
    from twisted.internet.threads import deferToThread

    return deferToThread(function)


class IDNSProvider(Interface):
    """
    Adds and removes TXT records in a DNS zone.

    Names are given in lower case, in ASCII, without a trailing dot: ``zone`` is
    the zone apex (``example.com``) and ``fqdn`` a name inside it
    (``_acme-challenge.www.example.com``). ``value`` is the TXT string (43
    base64url characters for ``dns-01``).

    Several values may be present at the same name at once (``*.example.com``
    and ``example.com`` are validated at the same name): adding a value must
    keep the others, and removing one must remove only that one. Methods must
    not block the reactor.
    """

    def add_txt_record(zone: str, fqdn: str, value: str) -> Deferred[None]:
        """
        Add one TXT record ``fqdn`` with ``value`` to ``zone``.

        :return: a ``Deferred`` firing once the provider accepted the change
            (the responder then waits until the zone's name servers show it),
            or failing with a :class:`DNSError`.
        """

    def remove_txt_record(zone: str, fqdn: str, value: str) -> Deferred[None]:
        """
        Remove the TXT record ``fqdn`` with ``value`` from ``zone``, leaving
        any other value at that name. Removing a record that is absent succeeds.
        """


class DNSError(TxACMEError):
    """A DNS query or update failed, or a zone could not be found."""


class DNSUpdateError(DNSError):
    """A DNS provider refused or failed to change a record."""


@attrs.frozen
class Nameserver:
    """
    A DNS server to send queries or updates to.

    :ivar address: its IPv4 or IPv6 address.
    :ivar port: its UDP and TCP port.
    :ivar name: the host name it was found under (an ``NS`` target), for messages.
    """

    address: str
    port: int = 53
    name: str | None = attrs.field(default=None, eq=False)

    @property
    def where(self) -> str:
        """``address:port`` (``[address]:port`` for IPv6)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.where})" if self.name else self.where


def parse_nameserver(text: str, option: str = "dns_server") -> Nameserver:
    """
    Parse ``address``, ``address:port``, ``[v6 address]`` or ``[v6 address]:port``.

    :param option: the option name to put in the error message.
    :raises txacme.errors.ConfigurationError: for anything else, including host
        names (txacme does not resolve the server's own name).
    """
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"{option}={text!r}: expected [IPv6 address]:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError(
            f"{option}={text!r}: give the server's IP address (optionally with :port), "
            "not a host name"
        )
    port = 53
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(f"{option}={text!r}: port must be a number from 1 to 65535")
        port = int(port_text)
    return Nameserver(address.compressed, port)


__all__ = [
    "DNSError",
    "DNSUpdateError",
    "IDNSProvider",
    "Nameserver",
    "RunInThread",
    "default_run_in_thread",
    "parse_nameserver",
]
