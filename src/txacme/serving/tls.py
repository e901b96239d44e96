"""
The TLS layer of the automatic endpoint: pick a certificate by SNI from memory,
negotiate the application's ALPN protocol, and answer ``tls-alpn-01``.

:class:`~txacme.serving.index.CertificateIndex` keeps every certificate of a
store in memory, parsed and checked, by server name. :class:`SNIConnectionCreator`
is the ``IOpenSSLServerConnectionCreator`` to give to
``TLSMemoryBIOFactory(creator, False, factory)`` (or :func:`tls_server_factory`).

Handshake, step by step:

1. **SNI.** The name the client sent is lower-cased (and a trailing dot
   dropped) and looked up: the exact name, then the wildcard one label up
   (``a.example.com`` -> ``*.example.com``; never two labels), then, for a
   reverse-DNS name of an IP address (``tls-alpn-01`` for IP identifiers), that
   address. A client that sends no SNI gets the certificate of the local IP
   address it connected to, if there is one. Otherwise the default certificate
   (``DEFAULT.pem``), or, without one, the handshake fails with a
   ``handshake_failure`` alert. These are dictionary look-ups: no disk access,
   no name parsing, whatever the client sent (``../``, NUL, 255 bytes,
   non-ASCII bytes are simply names nobody has).
2. **ALPN.** If the client offers exactly ``[acme-tls/1]`` and a ``tls-alpn-01``
   challenge is pending for the SNI name, the connection's certificate is
   replaced by the challenge certificate and ``acme-tls/1`` is negotiated. A
   client offering only ``acme-tls/1`` with no challenge pending gets a
   ``no_application_protocol`` alert. Any other offer is answered with the
   first of the application's protocols that the client offers (server
   preference); ``acme-tls/1`` mixed with other protocols is never selected
   and never gets a challenge certificate (RFC 8737 validators offer it alone).
   Without any overlap the handshake continues without ALPN.
3. **After the handshake.** A connection that negotiated ``acme-tls/1`` carries
   no application data: the application protocol sees ``connectionMade`` and
   then ``connectionLost``; whatever the client sends is dropped, whatever the
   application writes is discarded, and the server closes the connection with
   ``close_notify`` as soon as the handshake completes. No wrapping of the
   application's factory is needed for this.

Why the certificate is swapped in the ALPN callback: OpenSSL calls the SNI
callback before it has handed the ALPN list to anyone, so the SNI callback
cannot know whether the client is a validator. The ALPN callback runs later,
but (with TLS 1.2) after the cipher suite, which depends on the key type, was
chosen; the certificate is only written out after it. So the SNI callback picks
the name's ordinary certificate, and the ALPN callback swaps in
(``SSL_use_certificate`` / ``SSL_use_PrivateKey`` on the connection) a
challenge certificate with a key of the *same kind* (:func:`key_kind`), which
the registry makes when needed. Switching the whole ``SSL_CTX`` at that point
fails under TLS 1.2 (OpenSSL has already chosen the certificate slot), and a
certificate of another key type would not be used.

A name with a pending challenge but no certificate at all (its first issuance,
and no default): the SNI callback selects a placeholder certificate
(self-signed, naming nothing) so that a TLS 1.2 handshake can reach the ALPN
callback at all. A client offering only ``acme-tls/1`` then gets the challenge
certificate as above; a client offering other protocols gets a
``no_application_protocol`` alert; a client offering no ALPN at all completes
its handshake with the placeholder (which no client trusts) and is closed at
once, like an ``acme-tls/1`` connection. Nobody but a validator ever receives
the challenge certificate.

If the ordinary certificate has a chain, the chain follows the challenge
certificate too; validators look only at the first certificate.

Memory and speed: an index entry keeps the key and the certificate as DER, and
the chain certificates (shared between entries), about 1 KB per name; building
the index of 10,000 names from PEM objects takes about a second. An OpenSSL
context costs 20-26 KB and about 0.45 ms to build, so the connection creator
builds one at the first handshake for a certificate and keeps the
``context_cache_size`` (default 2048) most recently used ones. A handshake for a
name whose context is cached costs the same as with a plain Twisted
``CertificateOptions`` server; one that has to build it costs about three
times as much on the server side (``bench/handshake.py`` measures both). Give a
cache larger than the number of names that receive regular traffic.

May import the core modules, :mod:`txacme.challenges.tlsalpn01`,
:mod:`txacme.issuing.refusals`, :mod:`txacme.serving.deadline`, :mod:`txacme.serving.hello` and
:mod:`txacme.serving.index`.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast
from weakref import WeakKeyDictionary

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from txacme.challenges.tlsalpn01 import (
    ACME_TLS_1,
    DEFAULT_KIND,
    KeyKind,
    TLSALPN01Registry,
)
from txacme.errors import ConfigurationError
from txacme.issuing.refusals import RefusalLog
from txacme.logs import Logger
from txacme.serving.deadline import DEFAULT_HANDSHAKE_TIMEOUT
from txacme.serving.hello import ServerTLSFactory
from txacme.serving.index import CertificateEntry, CertificateIndex

if TYPE_CHECKING:
    from OpenSSL.SSL import _NoOverlappingProtocols

log = Logger()

_TLSKey = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)

DEFAULT_CONTEXT_CACHE_SIZE = 2048
"""How many OpenSSL contexts :class:`SNIConnectionCreator` keeps by default."""


# ---------------------------------------------------------------------------
# The connection creator
# ---------------------------------------------------------------------------


class HandshakeRefused(SSL.Error):
    """
    Raised from the ALPN callback to end a handshake with a
    ``no_application_protocol`` alert; Twisted hands it to ``connectionLost``.

    Its ``args`` have the shape of OpenSSL's error queue, as Twisted expects.
    """

    def __init__(self, reason: str) -> None:
        super().__init__([("txacme", "", reason)])
        self.reason = reason


class _ServerConnection(SSL.Connection):
    """
    An ``SSL.Connection`` with the state our callbacks share. The defaults are
    class attributes, so that making one costs no more than a plain
    ``SSL.Connection``.
    """

    txacme_name: str | None = None
    txacme_kind: KeyKind | None = None
    txacme_protocols: tuple[bytes, ...] = ()
    txacme_placeholder = False
    txacme_no_data = False


class _NoDataConnection(_ServerConnection):
    """
    A challenge (or placeholder) connection, which carries no application
    data: a connection becomes one when marked (:func:`_mark_no_data`), so
    ordinary connections keep pyOpenSSL's own ``recv`` and ``send``.
    """

    txacme_no_data = True

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        # As if the client had closed: Twisted answers with close_notify
        # and closes, and nothing reaches the application.
        raise SSL.ZeroReturnError()

    read = recv

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int | None = None) -> int:
        raise SSL.ZeroReturnError()

    def send(self, buf: bytes | bytearray | memoryview, flags: int = 0) -> int:
        return len(memoryview(buf))

    write = send

    def sendall(self, buf: bytes | bytearray | memoryview, flags: int = 0) -> int:
        return len(memoryview(buf))


def _mark_no_data(connection: _ServerConnection) -> None:
    """From now on, ``connection`` carries no application data."""
    connection.__class__ = _NoDataConnection


TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
"""
The TLS 1.3 cipher suites of :func:`default_context`, in the server's order of
preference: OpenSSL's three defaults, AES-128-GCM first (as Mozilla's
"intermediate" configuration and Go's ``crypto/tls`` order them; its
SHA-256 key schedule costs less per handshake than AES-256-GCM's SHA-384).
"""


def default_context() -> SSL.Context:
    """
    A new server context with Twisted's ``CertificateOptions`` defaults (its
    cipher list, no compression, server cipher preference, single-use ECDH
    keys, no session resumption), TLS 1.2 as the minimum version, and
    :data:`TLS13_CIPHERSUITES` for TLS 1.3.
    """
    context = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2).getContext()
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    return context


def _check_protocols(protocols: Iterable[bytes]) -> tuple[bytes, ...]:
    if isinstance(protocols, (bytes, str)):
        raise ConfigurationError(
            f"acceptable_protocols={protocols!r} must be a list of byte strings"
        )
    result: list[bytes] = []
    for protocol in protocols:
        if not isinstance(protocol, bytes) or not 0 < len(protocol) < 256:
            raise ConfigurationError(
                f"ALPN protocol {protocol!r} must be a byte string of 1 to 255 bytes"
            )
        if protocol == ACME_TLS_1:
            raise ConfigurationError(
                "acme-tls/1 cannot be an application protocol; txacme negotiates it itself"
            )
        if protocol not in result:
            result.append(protocol)
    return tuple(result)


def _sni_name(raw: bytes | None) -> str | None:
    """The SNI value as a lower-case lookup key, or ``None`` if unusable."""
    if not raw or len(raw) > 255:
        return None
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if name.endswith("."):
        name = name[:-1]
    return name or None


def _address_of_reverse_name(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4`` (and ``ip6.arpa``), else ``None``."""
    try:
        if name.endswith(".in-addr.arpa"):
            labels = name[: -len(".in-addr.arpa")].split(".")
            if len(labels) == 4:
                return ipaddress.IPv4Address(".".join(reversed(labels))).compressed
        elif name.endswith(".ip6.arpa"):
            nibbles = name[: -len(".ip6.arpa")].split(".")
            if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
                return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)).compressed
    except ValueError:
        return None
    return None


def _canonical_address(name: str) -> str | None:
    """An IP address given as SNI (clients should not send one), canonical."""
    if ":" not in name and not name[-1:].isdigit():
        return None
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return None


def _local_address(connection: SSL.Connection) -> str | None:
    """The local IP address a connection arrived on, when Twisted knows it."""
    try:
        transport = connection.get_app_data().transport
        host = transport.getHost().host
        return ipaddress.ip_address(host.split("%", 1)[0]).compressed
    except Exception:
        return None


@implementer(IOpenSSLServerConnectionCreator)
class SNIConnectionCreator:
    """
    Server TLS connections that pick their certificate from a
    :class:`~txacme.serving.index.CertificateIndex` by SNI, negotiate the application's ALPN
    protocol, and answer ``tls-alpn-01`` challenges (see the module
    documentation for the exact rules).

    :param index: where certificates are looked up at each handshake.
    :param challenges: the registry of a
        :class:`~txacme.challenges.tlsalpn01.TLSALPN01Responder`, or ``None``
        to never negotiate ``acme-tls/1``.
    :param acceptable_protocols: ALPN protocols the application speaks, most
        preferred first. Those of a wrapped factory providing
        ``IProtocolNegotiationFactory`` (such as ``twisted.web``'s ``Site``)
        come first. With none, ALPN is not negotiated (except ``acme-tls/1``).
    :param context_cache_size: how many OpenSSL contexts (one per certificate
        in use, 20-26 KB each) to keep, most recently used first.
    :param context_factory: makes a new server ``SSL.Context`` without a
        certificate, carrying the TLS settings (default:
        :func:`default_context`). Its ALPN and SNI callbacks are replaced.
    :raises txacme.errors.ConfigurationError: for a bad protocol list (including
        ``acme-tls/1``) or cache size.
    """

    #: Where refused handshakes are counted and logged in aggregate
    #: (:class:`txacme.issuing.refusals.RefusalLog`); ``None``: a debug line each.
    refusals: RefusalLog | None = None

    def __init__(
        self,
        index: CertificateIndex,
        *,
        challenges: TLSALPN01Registry | None = None,
        acceptable_protocols: Sequence[bytes] = (),
        context_cache_size: int = DEFAULT_CONTEXT_CACHE_SIZE,
        context_factory: Callable[[], SSL.Context] | None = None,
    ) -> None:
        if not isinstance(context_cache_size, int) or context_cache_size < 1:
            raise ConfigurationError(
                f"context_cache_size={context_cache_size!r} must be a positive integer"
            )
        self.index = index
        self.challenges = challenges
        self.acceptable_protocols = _check_protocols(acceptable_protocols)
        self._context_factory = context_factory if context_factory is not None else default_context
        self._cache_size = context_cache_size
        self._contexts: OrderedDict[CertificateEntry, SSL.Context] = OrderedDict()
        self._placeholder: SSL.Context | None = None
        self._protocol_cache: WeakKeyDictionary[object, tuple[bytes, ...]] = WeakKeyDictionary()
        self._base = self._new_context()
        self._base.set_tlsext_servername_callback(self._on_server_name)
        index.subscribe(self._forget)

    # -- contexts -----------------------------------------------------------

    def _new_context(self) -> SSL.Context:
        context = self._context_factory()
        context.set_alpn_select_callback(self._on_alpn)
        return context

    def context_for(self, entry: CertificateEntry) -> SSL.Context:
        """The OpenSSL context serving ``entry`` (built on first use, then cached)."""
        contexts = self._contexts
        context = contexts.get(entry)
        if context is not None:
            contexts.move_to_end(entry)
            return context
        context = self._new_context()
        context.use_certificate(entry.certificate)
        # Checked to match an X.509 certificate: a key type TLS serves.
        context.use_privatekey(cast(_TLSKey, entry.key))
        for certificate in entry.chain:
            context.add_extra_chain_cert(certificate)
        contexts[entry] = context
        if len(contexts) > self._cache_size:
            contexts.popitem(last=False)
        return context

    def _forget(self, entry: CertificateEntry) -> None:
        self._contexts.pop(entry, None)

    def _placeholder_context(self) -> SSL.Context:
        if self._placeholder is None:
            key = ec.generate_private_key(ec.SECP256R1())
            context = self._new_context()
            context.use_certificate(_placeholder_certificate(key))
            context.use_privatekey(key)
            self._placeholder = context
        return self._placeholder

    # -- IOpenSSLServerConnectionCreator --------------------------------------

    def _protocols_for(self, tls_protocol: TLSMemoryBIOProtocol) -> tuple[bytes, ...]:
        """
        The ALPN protocols to offer on ``tls_protocol``'s connections: asked
        once per TLS factory (its wrapped factory's are fixed when it is made).
        """
        tls_factory = getattr(tls_protocol, "factory", None)
        try:
            return self._protocol_cache[tls_factory]
        except (KeyError, TypeError):
            pass
        protocols = self._ask_protocols(getattr(tls_factory, "wrappedFactory", None))
        try:
            self._protocol_cache[tls_factory] = protocols
        except TypeError:
            pass  # not weakly referenceable or not hashable: ask every time
        return protocols

    def _ask_protocols(self, factory: object) -> tuple[bytes, ...]:
        negotiation = IProtocolNegotiationFactory(factory, None)
        if negotiation is None:
            return self.acceptable_protocols
        try:
            offered = list(negotiation.acceptableProtocols())
        except Exception:
            log.failure("asking {factory!r} for its ALPN protocols", factory=factory)
            return self.acceptable_protocols
        protocols = [
            p for p in offered if isinstance(p, bytes) and 0 < len(p) < 256 and p != ACME_TLS_1
        ]
        protocols += [p for p in self.acceptable_protocols if p not in protocols]
        return tuple(protocols)

    def serverConnectionForTLS(  # noqa: N802
        self,
        tlsProtocol: TLSMemoryBIOProtocol,  # noqa: N803
    ) -> SSL.Connection:
        """Make the ``SSL.Connection`` for one accepted connection."""
        connection = _ServerConnection(self._base, None)
        connection.txacme_protocols = self._protocols_for(tlsProtocol)
        return connection

    # -- callbacks ------------------------------------------------------------

    def _on_server_name(self, connection: SSL.Connection) -> None:
        try:
            self._choose_certificate(cast(_ServerConnection, connection))
        except Exception:
            # Leaving the certificate-less base context fails the handshake.
            log.failure("choosing a certificate for {sni!r}", sni=_safe_sni(connection))

    def _choose_certificate(self, connection: _ServerConnection) -> None:
        raw = connection.get_servername()
        name = _sni_name(raw)
        entry = None
        if name is not None:
            entry = self.index.find(name)
            if entry is None:
                address = _address_of_reverse_name(name) or _canonical_address(name)
                if address is not None:
                    entry = self.index.find(address)
        elif raw is None:
            name = _local_address(connection)
            if name is not None:
                entry = self.index.find(name)
        connection.txacme_name = name
        if entry is None:
            entry = self.index.default
        if entry is not None:
            connection.set_context(self.context_for(entry))
            connection.txacme_kind = entry.kind
            return
        if name is not None and self.challenges is not None and self.challenges.lookup(name):
            connection.set_context(self._placeholder_context())
            connection.txacme_kind = DEFAULT_KIND
            connection.txacme_placeholder = True
            _mark_no_data(connection)
            return
        if self.refusals is not None:
            self.refusals.refused("unknown_name", raw)
        else:
            log.debug("no certificate for {sni!r}; refusing the handshake", sni=raw)

    def _on_alpn(
        self, connection: SSL.Connection, offered: list[bytes]
    ) -> bytes | _NoOverlappingProtocols:
        try:
            if offered == [ACME_TLS_1]:
                return self._answer_challenge(cast(_ServerConnection, connection))
            if getattr(connection, "txacme_placeholder", False):
                raise HandshakeRefused("no certificate for this server name")
            protocols: tuple[bytes, ...] = getattr(connection, "txacme_protocols", ())
            for protocol in protocols:
                if protocol in offered:
                    return protocol
            return SSL.NO_OVERLAPPING_PROTOCOLS
        except SSL.Error:
            raise
        except Exception:
            log.failure("selecting an ALPN protocol")
            raise HandshakeRefused("internal error while selecting a protocol")

    def _answer_challenge(self, connection: _ServerConnection) -> bytes:
        name = getattr(connection, "txacme_name", None)
        kind = getattr(connection, "txacme_kind", None)
        pending = None
        if name is not None and self.challenges is not None:
            pending = self.challenges.lookup(name)
        if pending is None or kind is None:
            log.debug("refusing acme-tls/1 for {sni!r}: no tls-alpn-01 challenge pending", sni=name)
            raise HandshakeRefused("no tls-alpn-01 challenge pending for this name")
        certificate, key = pending.certificate_for(kind)
        connection.use_certificate(certificate)
        connection.use_privatekey(key)
        _mark_no_data(connection)
        log.debug(
            "serving the tls-alpn-01 challenge certificate for {identifier}",
            identifier=pending.identifier,
        )
        return ACME_TLS_1


def _placeholder_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A self-signed certificate naming nothing, valid for a day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no certificate yet")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _safe_sni(connection: SSL.Connection) -> bytes | None:
    try:
        raw = connection.get_servername()
    except Exception:
        return None
    return raw[:64] if isinstance(raw, bytes) else None


def tls_server_factory(
    creator: SNIConnectionCreator,
    factory: IProtocolFactory,
    *,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    clock: IReactorTime | None = None,
) -> TLSMemoryBIOFactory:
    """
    Wrap the application's ``factory`` in TLS served by ``creator``; listen on
    any stream endpoint with the result. The application's factory is used as
    it is: ``acme-tls/1`` connections never deliver data to it.

    :param handshake_timeout: seconds a connection has to complete its TLS
        handshake before it is aborted (:mod:`txacme.serving.deadline`), or
        ``None`` for no deadline.
    :param clock: the reactor's time (default: the global reactor).
    """
    return ServerTLSFactory(creator, factory, clock=clock, handshake_timeout=handshake_timeout)


__all__ = [
    "DEFAULT_CONTEXT_CACHE_SIZE",
    "HandshakeRefused",
    "SNIConnectionCreator",
    "TLS13_CIPHERSUITES",
    "default_context",
    "tls_server_factory",
]
