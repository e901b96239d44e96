"""
The TLS layer of the automatic endpoint: pick a certificate by SNI from memory,
negotiate the application's ALPN protocol, and answer ``tls-alpn-01``.

:class:`CertificateIndex` keeps every certificate of a store in memory, parsed
and checked, by server name. :class:`SNIConnectionCreator` is the
``IOpenSSLServerConnectionCreator`` to give to
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
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txacme.challenges.tlsalpn01 import (
    ACME_TLS_1,
    DEFAULT_KIND,
    KeyKind,
    TLSALPN01Registry,
    key_kind,
)
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.names import normalize_server_name

log = Logger()

DEFAULT_ENTRY_NAME = "DEFAULT"
"""The name :attr:`CertificateIndex.default` entries carry (``DEFAULT.pem``)."""

DEFAULT_CONTEXT_CACHE_SIZE = 2048
"""How many OpenSSL contexts :class:`SNIConnectionCreator` keeps by default."""

_IGNORED_KEY_TYPES = (pem.OpenSSHPrivateKey, pem.SSHCOMPrivateKey, pem.OpenPGPPrivateKey)
_PUBLIC = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER


# ---------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------


class CertificateEntry:
    """
    One usable certificate: its private key, certificate and chain.

    The key and the certificate are kept as DER (about 1 KB for an ECDSA
    certificate, against 5 KB for the parsed objects) and parsed again only
    when an OpenSSL context is built for them. Entries are compared by
    identity; a new certificate for a name is a new entry.

    :ivar name: the server name it is stored under (or ``"DEFAULT"``).
    :ivar chain: the certificates sent after the leaf (shared between entries).
    :ivar kind: :func:`~txacme.challenges.tlsalpn01.key_kind` of the key.
    :ivar serial_number: the leaf certificate's serial number.
    :ivar fingerprint: SHA-256 of the PEM objects it was made from.
    """

    __slots__ = ("name", "_key_der", "_certificate_der", "chain", "kind", "serial_number",
                 "fingerprint")

    def __init__(
        self,
        name: str,
        key: Any,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        fingerprint: bytes,
    ) -> None:
        self.name = name
        self._key_der = key.private_bytes(
            _DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._certificate_der = certificate.public_bytes(_DER)
        self.chain = chain
        self.kind: KeyKind = key_kind(key)
        self.serial_number = certificate.serial_number
        self.fingerprint = fingerprint

    @property
    def key(self) -> Any:
        """The private key (parsed anew at each access; never log it)."""
        return serialization.load_der_private_key(self._key_der, password=None)

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate (parsed anew at each access)."""
        return x509.load_der_x509_certificate(self._certificate_der)

    def __repr__(self) -> str:
        return f"<CertificateEntry {self.name!r} serial={self.serial_number:x}>"


def _fingerprint(pem_objects: Sequence[Any]) -> bytes:
    digest = hashlib.sha256()
    for obj in pem_objects:
        data = obj.as_bytes() if isinstance(obj, pem.AbstractPEMObject) else repr(obj).encode()
        digest.update(data)
        digest.update(b"\0")
    return digest.digest()


def _dns_names_cover(certificate: x509.Certificate, name: str) -> bool:
    """Whether the certificate's subject alternative names cover ``name``."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    dns_names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    if name in dns_names:
        return True
    _, dot, parent = name.partition(".")
    return bool(dot and parent) and not name.startswith("*.") and "*." + parent in dns_names


class CertificateIndex:
    """
    Every certificate of a store, in memory, by server name.

    :meth:`lookup` looks a name up: the exact name, then the wildcard one label
    up, then the :attr:`default` entry. Entries are added by :meth:`update` (the
    issuing service calls it after storing a certificate), :meth:`load_from`
    (a full rebuild from an ``ICertificateStore``) and :meth:`watch` (polling
    a store that another process writes to).

    A malformed entry (not exactly one readable private key, no readable
    certificate, or a key that does not match the first certificate) is logged
    with its name and not served; if the name had a good entry before, that one
    stays. A certificate that does not name its server name is served, with a
    warning.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CertificateEntry] = {}
        self._default: CertificateEntry | None = None
        self._chain_certificates: dict[bytes, x509.Certificate] = {}
        self._listeners: list[Callable[[CertificateEntry], object]] = []
        self._rejected: dict[str, bytes] = {}

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> Iterator[str]:
        """The server names that have a certificate (not the default)."""
        return iter(list(self._entries))

    @property
    def default(self) -> CertificateEntry | None:
        """The entry served when no name matches (``DEFAULT.pem``), if any."""
        return self._default

    def get(self, name: str) -> CertificateEntry | None:
        """The entry stored under exactly ``name`` (canonical form), if any."""
        return self._entries.get(name)

    def find(self, name: str) -> CertificateEntry | None:
        """
        The entry for ``name``: stored under the name itself, else under the
        wildcard one label up. ``name`` must already be lower case. Never
        raises, whatever the string.
        """
        entries = self._entries
        entry = entries.get(name)
        if entry is None:
            _, dot, parent = name.partition(".")
            if dot and parent:
                entry = entries.get("*." + parent)
        return entry

    def lookup(self, name: str | None) -> CertificateEntry | None:
        """
        The entry to serve for ``name`` (any case, a trailing dot allowed):
        :meth:`find`, else :attr:`default`; ``None`` when there is neither.
        """
        if name:
            name = name.lower()
            if name.endswith("."):
                name = name[:-1]
            entry = self.find(name)
            if entry is not None:
                return entry
        return self._default

    # -- listening ----------------------------------------------------------

    def subscribe(self, forget: Callable[[CertificateEntry], object]) -> None:
        """
        Call ``forget(entry)`` whenever an entry stops being served (replaced or
        removed), so that caches built from it can be dropped.
        """
        self._listeners.append(forget)

    def _forget(self, entry: CertificateEntry | None) -> None:
        if entry is None:
            return
        for forget in list(self._listeners):
            try:
                forget(entry)
            except Exception:
                log.failure("dropping caches of the certificate of {server_name}",
                            server_name=entry.name)

    # -- parsing ------------------------------------------------------------

    def _chain_certificate(self, obj: pem.AbstractPEMObject) -> x509.Certificate:
        data = obj.as_bytes()
        found = self._chain_certificates.get(data)
        if found is None:
            found = x509.load_pem_x509_certificate(data)
            self._chain_certificates[data] = found
        return found

    def parse(
        self, name: str, pem_objects: Sequence[Any], fingerprint: bytes | None = None
    ) -> CertificateEntry:
        """
        Check and parse one entry: one private key, the certificate, the chain.

        :raises txacme.errors.ConfigurationError: naming ``name`` and the problem.
        """
        if isinstance(pem_objects, (str, bytes)) or not isinstance(pem_objects, Iterable):
            raise ConfigurationError(f"{name}: expected a list of PEM objects")
        objects = list(pem_objects)
        keys: list[pem.AbstractPEMObject] = []
        certificates: list[pem.AbstractPEMObject] = []
        for obj in objects:
            if type(obj) is pem.Certificate:
                certificates.append(obj)
            elif isinstance(obj, pem.PrivateKey) and not isinstance(obj, _IGNORED_KEY_TYPES):
                keys.append(obj)
            else:
                raise ConfigurationError(
                    f"{name}: unexpected {type(obj).__name__}; only a private key and "
                    "certificates are allowed"
                )
        if len(keys) != 1:
            raise ConfigurationError(f"{name}: expected exactly one private key, found {len(keys)}")
        if not certificates:
            raise ConfigurationError(f"{name}: no certificate")
        try:
            key = serialization.load_pem_private_key(keys[0].as_bytes(), password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            raise ConfigurationError(f"{name}: the private key is unreadable or encrypted")
        try:
            leaf = x509.load_pem_x509_certificate(certificates[0].as_bytes())
            chain = tuple(self._chain_certificate(c) for c in certificates[1:])
        except ValueError:
            raise ConfigurationError(f"{name}: a certificate is unreadable")
        try:
            ours = key.public_key().public_bytes(_DER, _PUBLIC)
            matches = ours == leaf.public_key().public_bytes(_DER, _PUBLIC)
        except (ValueError, UnsupportedAlgorithm):
            matches = False
        if not matches:
            raise ConfigurationError(f"{name}: the private key does not match the certificate")
        if fingerprint is None:
            fingerprint = _fingerprint(objects)
        return CertificateEntry(name, key, leaf, chain, fingerprint)

    def _checked(
        self, name: str, pem_objects: Sequence[Any], previous: CertificateEntry | None
    ) -> tuple[CertificateEntry | None, bool]:
        """
        Parse (reusing ``previous`` when nothing changed), or log why not.

        :return: the entry to serve (the new one, or ``previous`` when the new
            objects are malformed) and whether ``pem_objects`` were usable.
        """
        fingerprint = _fingerprint(pem_objects)
        if previous is not None and previous.fingerprint == fingerprint:
            return previous, True
        if self._rejected.get(name) == fingerprint:
            # Already logged; a store polled every minute should not repeat it.
            return previous, False
        try:
            entry = self.parse(name, pem_objects, fingerprint)
        except ConfigurationError as e:
            self._rejected[name] = fingerprint
            log.error(
                "not serving the certificate of {server_name}: {reason}{kept}",
                server_name=name,
                reason=str(e),
                kept="; still serving the previous one" if previous is not None else "",
            )
            return previous, False
        self._rejected.pop(name, None)
        if name != DEFAULT_ENTRY_NAME and not _dns_names_cover(entry.certificate, name):
            log.warn(
                "the certificate stored for {server_name} does not name it; serving it anyway",
                server_name=name,
            )
        return entry, True

    # -- writing ------------------------------------------------------------

    def update(self, name: str, pem_objects: Sequence[Any]) -> bool:
        """
        Serve ``pem_objects`` (key, certificate, chain) for ``name`` from the
        next handshake on. An empty list removes the name.

        :return: ``True`` if these objects are now served, ``False`` if they
            were malformed (logged; a previous entry stays) or empty.
        :raises txacme.errors.InvalidServerName: for a bad name.
        """
        canonical = normalize_server_name(name)
        objects = list(pem_objects)
        if not objects:
            self.remove(canonical)
            return False
        previous = self._entries.get(canonical)
        entry, usable = self._checked(canonical, objects, previous)
        if entry is not None and entry is not previous:
            self._entries[canonical] = entry
            self._forget(previous)
            log.debug("serving a new certificate for {server_name}", server_name=canonical)
        return usable

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (no-op if it is not served)."""
        try:
            canonical = normalize_server_name(name)
        except InvalidServerName:
            return
        self._forget(self._entries.pop(canonical, None))

    def set_default(self, pem_objects: Sequence[Any] | None) -> bool:
        """
        Serve ``pem_objects`` when no name matches; ``None`` or ``[]`` removes
        the default.

        :return: ``True`` if these objects are now the default.
        """
        previous = self._default
        objects = list(pem_objects or ())
        if not objects:
            self._default = None
            self._forget(previous)
            return False
        entry, usable = self._checked(DEFAULT_ENTRY_NAME, objects, previous)
        if entry is not previous:
            self._default = entry
            self._forget(previous)
        return usable

    def replace_all(
        self,
        entries: Mapping[str, Sequence[Any]],
        default: Sequence[Any] | None = None,
    ) -> None:
        """
        Make the index hold exactly ``entries`` (and ``default``), reusing the
        parsed entries whose PEM objects did not change.
        """
        old = self._entries
        new: dict[str, CertificateEntry] = {}
        for name, objects in entries.items():
            try:
                canonical = normalize_server_name(name)
            except InvalidServerName as e:
                log.error(
                    "not serving a certificate stored under {name!r}: {reason}",
                    name=name,
                    reason=str(e),
                )
                continue
            objects = list(objects)
            if not objects:
                continue
            entry, _ = self._checked(canonical, objects, old.get(canonical))
            if entry is not None:
                new[canonical] = entry
        self._entries = new
        self._rejected = {
            name: fp for name, fp in self._rejected.items()
            if name in entries or name == DEFAULT_ENTRY_NAME
        }
        for name, entry in old.items():
            if new.get(name) is not entry:
                self._forget(entry)
        self.set_default(default)
        # Forget the chain certificates no entry uses any more.
        used = {id(c) for e in new.values() for c in e.chain}
        if self._default is not None:
            used.update(id(c) for c in self._default.chain)
        self._chain_certificates = {
            data: c for data, c in self._chain_certificates.items() if id(c) in used
        }

    def load_from(self, store: Any) -> Deferred[dict[str, list[Any]]]:
        """
        Rebuild the index from every entry of ``store`` (an
        ``ICertificateStore``), plus its ``DEFAULT.pem`` when the store has a
        ``get_default`` method (as :class:`txacme.stores.directory.DirectoryStore` does).

        :return: a ``Deferred`` that fires, when the index holds the store's
            certificates, with the entries read (``as_dict()``'s result, empty
            entries included); it fails (leaving the index as it was) if the
            store cannot be read.
        """
        d: Deferred[Any] = maybeDeferred(store.as_dict)

        def with_default(entries: dict[str, list[Any]]) -> Any:
            get_default = getattr(store, "get_default", None)
            if get_default is None:
                return (entries, None)
            dd: Deferred[Any] = maybeDeferred(get_default)

            def no_default(failure: Failure) -> Any:
                if isinstance(failure.value, KeyError):
                    return None
                return failure

            dd.addErrback(no_default)
            dd.addCallback(lambda default: (entries, default))
            return dd

        def rebuild(
            result: tuple[dict[str, list[Any]], Sequence[Any] | None],
        ) -> dict[str, list[Any]]:
            entries, default = result
            self.replace_all(entries, default)
            log.debug("certificate index holds {count} names", count=len(self._entries))
            return entries

        d.addCallback(with_default)
        d.addCallback(rebuild)
        return d

    def watch(
        self, store: Any, interval: float = 60.0, clock: IReactorTime | None = None
    ) -> StoreWatcher:
        """
        Re-read ``store`` every ``interval`` seconds (first after one interval:
        call :meth:`load_from` first), so certificates written by another
        process sharing the store are served.

        :return: the running :class:`StoreWatcher`; call its ``stopService()``.
        """
        watcher = StoreWatcher(self, store, interval, clock)
        watcher.startService()
        return watcher


class StoreWatcher(Service):
    """
    Reloads a :class:`CertificateIndex` from a store on a timer.

    A reload still running when the next one is due is not doubled; a failed
    reload is logged and the index keeps what it had. ``on_loaded(entries)`` is
    called after each reload with the entries read (empty ones included), for
    callers that act on what appeared; stopping cancels a reload in progress.
    """

    def __init__(
        self,
        index: CertificateIndex,
        store: Any,
        interval: float,
        clock: IReactorTime | None = None,
        on_loaded: Callable[[dict[str, list[Any]]], object] | None = None,
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"store polling interval {interval!r} must be positive")
        self.index = index
        self.store = store
        self.interval = interval
        self._clock = clock
        self._on_loaded = on_loaded
        self._loop: LoopingCall | None = None
        self._running_load: Deferred[Any] | None = None

    def startService(self) -> None:
        """Start polling."""
        Service.startService(self)  # type: ignore[no-untyped-call]
        loop = LoopingCall(self.poll)
        if self._clock is not None:
            loop.clock = self._clock
        self._loop = loop
        loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        """Stop polling."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._running_load is not None:
            self._running_load.cancel()
        return None

    def poll(self) -> None:
        """Reload the index now, unless a reload is already running."""
        if self._running_load is not None:
            return
        d: Deferred[Any] = self.index.load_from(self.store)
        if self._on_loaded is not None:
            d.addCallback(self._on_loaded)
        self._running_load = d

        def done(result: object) -> None:
            self._running_load = None
            if isinstance(result, Failure) and not result.check(  # type: ignore[no-untyped-call]
                CancelledError
            ):
                log.failure("reloading certificates from {store!r}", result, store=self.store)

        d.addBoth(done)


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
    An ``SSL.Connection`` with the state our callbacks share, and that carries
    no application data once marked as a challenge (or placeholder) connection.
    """

    def __init__(self, context: SSL.Context) -> None:
        super().__init__(context, None)
        self.txacme_name: str | None = None
        self.txacme_kind: KeyKind | None = None
        self.txacme_protocols: tuple[bytes, ...] = ()
        self.txacme_placeholder = False
        self.txacme_no_data = False

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        if self.txacme_no_data:
            # As if the client had closed: Twisted answers with close_notify
            # and closes, and nothing reaches the application.
            raise SSL.ZeroReturnError()
        return super().recv(bufsiz, flags)

    read = recv

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int | None = None) -> int:
        if self.txacme_no_data:
            raise SSL.ZeroReturnError()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, buf: Any, flags: int = 0) -> int:
        if self.txacme_no_data:
            return len(memoryview(buf))
        return super().send(buf, flags)

    write = send

    def sendall(self, buf: Any, flags: int = 0) -> int:
        if self.txacme_no_data:
            return len(memoryview(buf))
        return super().sendall(buf, flags)


def default_context() -> SSL.Context:
    """
    A new server context with Twisted's ``CertificateOptions`` defaults (its
    cipher list, no compression, server cipher preference, single-use ECDH
    keys, no session resumption) and TLS 1.2 as the minimum version.
    """
    return CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2).getContext()


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
    :class:`CertificateIndex` by SNI, negotiate the application's ALPN
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
        context.use_privatekey(entry.key)
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

    def _protocols_for(self, tls_protocol: Any) -> tuple[bytes, ...]:
        factory = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
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

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Make the ``SSL.Connection`` for one accepted connection."""
        connection = _ServerConnection(self._base)
        connection.txacme_protocols = self._protocols_for(tlsProtocol)
        return connection

    # -- callbacks ------------------------------------------------------------

    def _on_server_name(self, connection: SSL.Connection) -> None:
        try:
            self._choose_certificate(connection)
        except Exception:
            # Leaving the certificate-less base context fails the handshake.
            log.failure("choosing a certificate for {sni!r}", sni=_safe_sni(connection))

    def _choose_certificate(self, connection: Any) -> None:
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
            connection.txacme_no_data = True
            return
        log.debug("no certificate for {sni!r}; refusing the handshake", sni=raw)

    def _on_alpn(self, connection: Any, offered: list[bytes]) -> bytes | Any:
        try:
            if offered == [ACME_TLS_1]:
                return self._answer_challenge(connection)
            if getattr(connection, "txacme_placeholder", False):
                raise HandshakeRefused("no certificate for this server name")
            for protocol in getattr(connection, "txacme_protocols", ()):
                if protocol in offered:
                    return protocol
            return SSL.NO_OVERLAPPING_PROTOCOLS
        except SSL.Error:
            raise
        except Exception:
            log.failure("selecting an ALPN protocol")
            raise HandshakeRefused("internal error while selecting a protocol")

    def _answer_challenge(self, connection: Any) -> bytes:
        name = getattr(connection, "txacme_name", None)
        kind = getattr(connection, "txacme_kind", None)
        pending = None
        if name is not None and self.challenges is not None:
            pending = self.challenges.lookup(name)
        if pending is None or kind is None:
            log.debug("refusing acme-tls/1 for {sni!r}: no tls-alpn-01 challenge pending",
                      sni=name)
            raise HandshakeRefused("no tls-alpn-01 challenge pending for this name")
        certificate, key = pending.certificate_for(kind)
        connection.use_certificate(certificate)
        connection.use_privatekey(key)
        connection.txacme_no_data = True
        log.info("serving the tls-alpn-01 challenge certificate for {identifier}",
                 identifier=pending.identifier)
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


def _safe_sni(connection: Any) -> bytes | None:
    try:
        raw = connection.get_servername()
    except Exception:
        return None
    return raw[:64] if isinstance(raw, bytes) else None


def tls_server_factory(
    creator: SNIConnectionCreator, factory: IProtocolFactory
) -> TLSMemoryBIOFactory:
    """
    Wrap the application's ``factory`` in TLS served by ``creator``; listen on
    any stream endpoint with the result. The application's factory is used as
    it is: ``acme-tls/1`` connections never deliver data to it.
    """
    return TLSMemoryBIOFactory(creator, False, factory)


__all__ = [
    "DEFAULT_CONTEXT_CACHE_SIZE",
    "DEFAULT_ENTRY_NAME",
    "CertificateEntry",
    "CertificateIndex",
    "HandshakeRefused",
    "SNIConnectionCreator",
    "StoreWatcher",
    "default_context",
    "tls_server_factory",
]
