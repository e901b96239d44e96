"""
Tests for txacme.serving.tls: real TLS handshakes over loopback between a Twisted
server using SNIConnectionCreator and pyOpenSSL clients (plus ``openssl
s_client`` for an independent client).
"""

from __future__ import annotations

import builtins
import datetime
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import pem
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocolNegotiationFactory,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from txacme.challenges.tlsalpn01 import (
    ACME_TLS_1,
    ID_PE_ACME_IDENTIFIER,
    TLSALPN01Responder,
    key_authorization_digest,
)
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.keys import generate_private_key, private_key_pem
from txacme.serving.index import CertificateIndex
from txacme.serving.tls import (
    HandshakeRefused,
    SNIConnectionCreator,
    _sni_name,
    tls_server_factory,
)
from txacme.serving.watcher import StoreWatcher
from txacme.stores.directory import DirectoryStore
from txacme.testing import MemoryStore

TLS12 = SSL.TLS1_2_VERSION
TLS13 = SSL.TLS1_3_VERSION
OPENSSL = shutil.which("openssl")

# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------


def start_watching(
    index: CertificateIndex, store: Any, interval: float, clock: Any
) -> StoreWatcher:
    """A running StoreWatcher re-reading ``store`` into ``index`` every ``interval`` seconds."""
    watcher = StoreWatcher(index, store, interval, clock)
    watcher.startService()
    return watcher


class TestCA:
    """A throw-away CA issuing leaf certificates, with its certificate as the chain."""

    __test__ = False

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = generate_private_key("ec256")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "txacme test TLS CA")])
        self.name = name
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue_certificate(self, names: Sequence[str], key: Any) -> x509.Certificate:
        import ipaddress

        now = datetime.datetime.now(datetime.timezone.utc)
        general: list[x509.GeneralName] = []
        for n in names:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                general.append(x509.DNSName(n))
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(general), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, names: Sequence[str], key_type: str = "ec256", chain: bool = True
    ) -> list[pem.AbstractPEMObject]:
        """Key, certificate and (optionally) this CA's certificate, as PEM objects."""
        key = generate_private_key(key_type)
        certificate = self.issue_certificate(names, key)
        data = private_key_pem(key) + certificate.public_bytes(serialization.Encoding.PEM)
        if chain:
            data += self.certificate.public_bytes(serialization.Encoding.PEM)
        return pem.parse(data)


_CA: TestCA | None = None


def shared_ca() -> TestCA:
    global _CA
    if _CA is None:
        _CA = TestCA()
    return _CA


def leaf_of(pem_objects: Sequence[pem.AbstractPEMObject]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        next(o for o in pem_objects if isinstance(o, pem.Certificate)).as_bytes()
    )


def dns_names(certificate: x509.Certificate | None) -> list[str]:
    assert certificate is not None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(n) for n in san.get_values_for_type(x509.IPAddress)
    ]


class Challenge:
    """Stand-ins for acme's challenge and response objects."""

    def __init__(self, token: str = "tok3n-tok3n-tok3n-tok3n") -> None:
        self.token = token
        self.key_authorization = token + ".thumbprint-of-the-account-key"

    def encode(self, name: str) -> str:
        assert name == "token"
        return self.token


# ---------------------------------------------------------------------------
# Server and client
# ---------------------------------------------------------------------------


class AppProtocol(Protocol):
    """The application: records what it sees and echoes data back."""

    factory: AppFactory

    def connectionMade(self) -> None:
        self.factory.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.lost.append(reason)


class AppFactory(Factory):
    protocol = AppProtocol

    def __init__(self) -> None:
        self.made = 0
        self.received: list[bytes] = []
        self.lost: list[Failure] = []


@implementer(IProtocolNegotiationFactory)
class NegotiatingAppFactory(AppFactory):
    def __init__(self, protocols: list[bytes]) -> None:
        super().__init__()
        self.protocols = protocols

    def acceptableProtocols(self) -> list[bytes]:
        return self.protocols


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    def __init__(
        self, sni: bytes | None, alpn: Sequence[bytes] | None, max_version: int | None
    ) -> None:
        self.sni = sni
        self.alpn = alpn
        self.max_version = max_version

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_NONE)
        if self.max_version is not None:
            context.set_max_proto_version(self.max_version)
        connection = SSL.Connection(context, None)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni)
        if self.alpn:
            connection.set_alpn_protos(list(self.alpn))
        return connection


class Outcome:
    def __init__(self) -> None:
        self.handshake = False
        self.certificate: x509.Certificate | None = None
        self.chain: list[x509.Certificate] = []
        self.protocol: bytes | None = None
        self.version: str | None = None
        self.received = b""
        self.reason: Failure | None = None
        self.closed_by_client = False

    @property
    def names(self) -> list[str]:
        return dns_names(self.certificate)

    @property
    def closed_by_server(self) -> bool:
        return self.handshake and not self.closed_by_client


@implementer(IHandshakeListener)
class ClientProtocol(Protocol):
    def __init__(self, payload: bytes, done: defer.Deferred[Outcome]) -> None:
        self.payload = payload
        self.done = done
        self.outcome = Outcome()

    def handshakeCompleted(self) -> None:
        o = self.outcome
        o.handshake = True
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        o.certificate = handle.get_peer_certificate(as_cryptography=True)
        o.chain = handle.get_peer_cert_chain(as_cryptography=True) or []
        o.protocol = self.transport.negotiatedProtocol  # type: ignore[union-attr]
        o.version = handle.get_protocol_version_name()
        if self.payload:
            self.transport.write(self.payload)  # type: ignore[union-attr]
        else:
            o.closed_by_client = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.outcome.received += data
        if len(self.outcome.received) >= len(self.payload):
            self.outcome.closed_by_client = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.outcome.reason = reason
        if not self.done.called:
            self.done.callback(self.outcome)


class ClientProtocolFactory(ClientFactory):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.done: defer.Deferred[Outcome] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self.payload, self.done)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.done.errback(reason)


class TLSServerMixin:
    """Listens on 127.0.0.1 with a creator and connects clients to it."""

    def listen(self, creator: SNIConnectionCreator, app: AppFactory | None = None) -> AppFactory:
        app = app if app is not None else AppFactory()
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, tls_server_factory(creator, app), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        self.port = port.getHost().port
        return app

    def connect(
        self,
        sni: bytes | None,
        alpn: Sequence[bytes] | None = None,
        payload: bytes = b"",
        max_version: int | None = None,
    ) -> defer.Deferred[Outcome]:
        factory = ClientProtocolFactory(payload)
        reactor.connectTCP(  # type: ignore[attr-defined]
            "127.0.0.1",
            self.port,
            TLSMemoryBIOFactory(ClientCreator(sni, alpn, max_version), True, factory),
        )
        factory.done.addTimeout(20, reactor)
        return factory.done


def make_creator(
    entries: dict[str, list[pem.AbstractPEMObject]],
    default: list[pem.AbstractPEMObject] | None = None,
    **kwargs: Any,
) -> tuple[CertificateIndex, SNIConnectionCreator]:
    index = CertificateIndex()
    for name, objects in entries.items():
        assert index.update(name, objects)
    if default is not None:
        assert index.set_default(default)
    return index, SNIConnectionCreator(index, **kwargs)


def garbage(label: str) -> pem.AbstractPEMObject:
    """A PEM object of that label whose content is not valid DER."""
    return pem.parse(f"-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n".encode())[0]


def acme_extension(certificate: x509.Certificate | None) -> x509.Extension[Any] | None:
    assert certificate is not None
    try:
        return certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return None


# ---------------------------------------------------------------------------
# CertificateIndex, without TLS
# ---------------------------------------------------------------------------


class CertificateIndexTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = shared_ca()

    def test_exact_wildcard_default(self) -> None:
        """Exact name first, then the wildcard one label up, then the default."""
        index = CertificateIndex()
        exact = self.ca.issue(["www.example.com"])
        wild = self.ca.issue(["*.example.com"])
        default = self.ca.issue(["default.example"])
        index.update("www.example.com", exact)
        index.update("*.example.com", wild)
        self.assertIsNone(index.lookup("other.example.org"))
        index.set_default(default)
        self.assertEqual(leaf_of(exact), index.lookup("www.example.com").certificate)  # type: ignore[union-attr]
        self.assertEqual(leaf_of(exact), index.lookup("WWW.Example.COM.").certificate)  # type: ignore[union-attr]
        self.assertEqual(leaf_of(wild), index.lookup("mail.example.com").certificate)  # type: ignore[union-attr]
        # One label only: a.b.example.com is not covered by *.example.com.
        self.assertEqual(leaf_of(default), index.lookup("a.mail.example.com").certificate)  # type: ignore[union-attr]
        self.assertEqual(leaf_of(default), index.lookup("example.com").certificate)  # type: ignore[union-attr]
        self.assertEqual(leaf_of(default), index.lookup(None).certificate)  # type: ignore[union-attr]
        self.assertIsNone(index.find("a.mail.example.com"))
        self.assertEqual(len(index), 2)
        self.assertEqual(sorted(index.names()), ["*.example.com", "www.example.com"])

    def test_hostile_names(self) -> None:
        """Any string is just a name nobody has."""
        index = CertificateIndex()
        index.update("example.com", self.ca.issue(["example.com"]))
        for name in ["../../etc/passwd", "a\0b", "x" * 300, "é.example.com", "", ".", "*.", "*"]:
            self.assertIsNone(index.lookup(name))
            self.assertIsNone(index.find(name))

    def test_update_replaces_and_empty_removes(self) -> None:
        index = CertificateIndex()
        first, second = self.ca.issue(["a.example"]), self.ca.issue(["a.example"])
        self.assertTrue(index.update("A.example", first))
        old = index.get("a.example")
        self.assertTrue(index.update("a.example", second))
        self.assertIsNot(old, index.get("a.example"))
        self.assertEqual(leaf_of(second), index.lookup("a.example").certificate)  # type: ignore[union-attr]
        self.assertFalse(index.update("a.example", []))
        self.assertIsNone(index.lookup("a.example"))

    def test_same_objects_keep_the_entry(self) -> None:
        index = CertificateIndex()
        objects = self.ca.issue(["a.example"])
        index.update("a.example", objects)
        entry = index.get("a.example")
        index.update("a.example", list(objects))
        self.assertIs(entry, index.get("a.example"))

    def test_bad_name(self) -> None:
        index = CertificateIndex()
        self.assertRaises(InvalidServerName, index.update, "../x", self.ca.issue(["x.example"]))
        index.remove("../x")  # ignored

    def test_malformed_entries(self) -> None:
        """Each kind of malformed entry is refused and logged with its name."""
        index = CertificateIndex()
        good = self.ca.issue(["a.example"])
        other = self.ca.issue(["a.example"])
        key, cert, chain = good
        cases = {
            "mismatch": [other[0], cert, chain],
            "no key": [cert, chain],
            "two keys": [key, other[0], cert],
            "no certificate": [key],
            "garbage key": [garbage("PRIVATE KEY"), cert],
            "garbage certificate": [key, garbage("CERTIFICATE")],
            "csr": [key, cert, garbage("CERTIFICATE REQUEST")],
        }
        for label, objects in cases.items():
            with capturedLogs() as events:
                self.assertFalse(index.update("a.example", objects), label)
            self.assertIsNone(index.get("a.example"), label)
            errors = [e for e in events if e.get("server_name") == "a.example"]
            self.assertEqual(len(errors), 1, label)
        # A good entry stays when a malformed one follows.
        self.assertTrue(index.update("a.example", good))
        with capturedLogs():
            self.assertFalse(index.update("a.example", [other[0], cert]))
        self.assertEqual(leaf_of(good), index.get("a.example").certificate)  # type: ignore[union-attr]

    def test_certificate_not_naming_its_name_is_served_with_a_warning(self) -> None:
        index = CertificateIndex()
        with capturedLogs() as events:
            self.assertTrue(index.update("b.example", self.ca.issue(["a.example"])))
        self.assertIsNotNone(index.get("b.example"))
        self.assertTrue(any(e.get("server_name") == "b.example" for e in events))

    def test_load_from_memory_store(self) -> None:
        """load_from rebuilds; unchanged entries are reused; bad ones skipped."""
        good = {n: self.ca.issue([n]) for n in ("a.example", "b.example", "c.example")}
        store = MemoryStore(good)
        store.certs["wanted.example"] = []
        index = CertificateIndex()
        index.update("gone.example", self.ca.issue(["gone.example"]))
        self.successResultOf(index.load_from(store))
        self.assertEqual(sorted(index.names()), ["a.example", "b.example", "c.example"])
        a = index.get("a.example")
        # Damage b directly (bypassing the store's checks), replace c.
        store.certs["b.example"] = [good["c.example"][0], *good["b.example"][1:]]
        new_c = self.ca.issue(["c.example"])
        store.certs["c.example"] = new_c
        b = index.get("b.example")
        with capturedLogs():
            self.successResultOf(index.load_from(store))
        self.assertIs(a, index.get("a.example"))
        self.assertIs(b, index.get("b.example"))  # previous good entry kept
        self.assertEqual(leaf_of(new_c), index.get("c.example").certificate)  # type: ignore[union-attr]
        # The same damaged entry is logged once, not at every reload.
        with capturedLogs() as events:
            self.successResultOf(index.load_from(store))
        self.assertEqual([e for e in events if e.get("server_name") == "b.example"], [])
        store.certs["b.example"] = [good["a.example"][0], *good["b.example"][1:]]
        with capturedLogs() as events:
            self.successResultOf(index.load_from(store))
        self.assertEqual(len([e for e in events if e.get("server_name") == "b.example"]), 1)

    def test_load_from_directory_store_with_default(self) -> None:
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        store = DirectoryStore(path)
        objects = self.ca.issue(["a.example"])
        default = self.ca.issue(["fallback.example"])
        self.successResultOf(store.store("a.example", objects))
        index = CertificateIndex()
        self.successResultOf(index.load_from(store))
        self.assertIsNone(index.default)
        self.successResultOf(store.store_default(default))
        self.successResultOf(index.load_from(store))
        self.assertEqual(leaf_of(default), index.lookup("nope.example").certificate)  # type: ignore[union-attr]
        self.assertEqual(leaf_of(objects), index.lookup("a.example").certificate)  # type: ignore[union-attr]
        os.unlink(os.path.join(path, "DEFAULT.pem"))
        self.successResultOf(index.load_from(store))
        self.assertIsNone(index.default)

    def test_load_from_failing_store(self) -> None:
        class Broken:
            def as_dict(self) -> Any:
                return defer.fail(OSError("disk on fire"))

        index = CertificateIndex()
        index.update("a.example", self.ca.issue(["a.example"]))
        self.failureResultOf(index.load_from(Broken()), OSError)
        self.assertIsNotNone(index.get("a.example"))

    def test_watch(self) -> None:
        """A store written by someone else is re-read every interval."""
        clock = Clock()
        store = MemoryStore()
        index = CertificateIndex()
        self.successResultOf(index.load_from(store))
        watcher = start_watching(index, store, 30, clock)
        self.addCleanup(watcher.stopService)
        objects = self.ca.issue(["late.example"])
        store.certs["late.example"] = objects
        clock.advance(29)
        self.assertIsNone(index.get("late.example"))
        clock.advance(1)
        self.assertEqual(leaf_of(objects), index.get("late.example").certificate)  # type: ignore[union-attr]
        del store.certs["late.example"]
        clock.advance(30)
        self.assertIsNone(index.get("late.example"))
        watcher.stopService()
        store.certs["later.example"] = self.ca.issue(["later.example"])
        clock.advance(300)
        self.assertIsNone(index.get("later.example"))

    def test_watch_does_not_overlap_and_survives_errors(self) -> None:
        clock = Clock()

        class SlowStore:
            def __init__(self) -> None:
                self.calls: list[defer.Deferred[Any]] = []

            def as_dict(self) -> defer.Deferred[Any]:
                d: defer.Deferred[Any] = defer.Deferred()
                self.calls.append(d)
                return d

        store = SlowStore()
        index = CertificateIndex()
        watcher = start_watching(index, store, 10, clock)
        self.addCleanup(watcher.stopService)
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(len(store.calls), 1)
        store.calls[0].errback(OSError("disk on fire"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        clock.advance(10)
        self.assertEqual(len(store.calls), 2)
        store.calls[1].callback({})

    def test_load_from_fires_with_entries(self) -> None:
        """load_from gives back what it read, empty (wanted) entries included."""
        objects = self.ca.issue(["a.example"])
        store = MemoryStore({"a.example": objects, "wanted.example": []})
        entries = self.successResultOf(CertificateIndex().load_from(store))
        self.assertEqual(set(entries), {"a.example", "wanted.example"})
        self.assertEqual(entries["wanted.example"], [])

    def test_watch_on_loaded_and_cancel_on_stop(self) -> None:
        """
        on_loaded sees each reload's entries; stopping cancels a reload in
        progress, which then never reaches on_loaded or the index.
        """
        clock = Clock()
        seen: list[set[str]] = []

        class SlowStore:
            def __init__(self) -> None:
                self.calls: list[defer.Deferred[Any]] = []

            def as_dict(self) -> defer.Deferred[Any]:
                d: defer.Deferred[Any] = defer.Deferred()
                self.calls.append(d)
                return d

        store = SlowStore()
        index = CertificateIndex()
        watcher = StoreWatcher(index, store, 10, clock, on_loaded=lambda e: seen.append(set(e)))
        watcher.startService()
        clock.advance(10)
        store.calls[0].callback({"wanted.example": []})
        self.assertEqual(seen, [{"wanted.example"}])
        clock.advance(10)
        watcher.stopService()
        self.assertEqual(len(store.calls), 2)
        self.assertTrue(store.calls[1].called)  # cancelled
        self.assertEqual(seen, [{"wanted.example"}])
        self.assertEqual(self.flushLoggedErrors(defer.CancelledError), [])

    def test_watch_interval_must_be_positive(self) -> None:
        self.assertRaises(
            ConfigurationError, start_watching, CertificateIndex(), MemoryStore(), 0, Clock()
        )


class SNINameTests(unittest.TestCase):
    def test_sni_name(self) -> None:
        self.assertEqual(_sni_name(b"WWW.Example.COM"), "www.example.com")
        self.assertEqual(_sni_name(b"example.com."), "example.com")
        self.assertIsNone(_sni_name(None))
        self.assertIsNone(_sni_name(b""))
        self.assertIsNone(_sni_name(b"\xc3\xa9.example"))
        self.assertIsNone(_sni_name(b"a" * 256))
        self.assertEqual(_sni_name(b"../x\0y"), "../x\0y")


# ---------------------------------------------------------------------------
# The connection creator, without sockets
# ---------------------------------------------------------------------------


class FakeConnection:
    """What the SNI callback uses of an SSL.Connection."""

    def __init__(self, servername: bytes | None) -> None:
        self.servername = servername
        self.context: SSL.Context | None = None
        self.txacme_name: str | None = None
        self.txacme_kind: Any = None
        self.txacme_placeholder = False
        self.txacme_no_data = False
        self.txacme_protocols: tuple[bytes, ...] = ()

    def get_servername(self) -> bytes | None:
        return self.servername

    def set_context(self, context: SSL.Context) -> None:
        self.context = context

    def get_app_data(self) -> None:
        return None


class CreatorUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = shared_ca()

    def test_hostile_sni_in_callback(self) -> None:
        """
        SNI values a real client cannot even send (NUL, 256+ bytes) reach no
        file and raise nothing; they get the default or no certificate.
        """
        index, creator = make_creator({"example.com": self.ca.issue(["example.com"])})
        hostile = [
            b"../../../../etc/passwd",
            b"example.com\0.evil",
            b"a" * 300,
            b"\xff\xfe\x00",
            b"EXAMPLE.COM/../x",
            b"*",
            b".",
            b"..",
            b"%00",
        ]
        opened: list[Any] = []

        def no_files(*args: Any, **kwargs: Any) -> Any:
            opened.append(args)
            raise AssertionError("the handshake touched the filesystem")

        self.patch(builtins, "open", no_files)
        self.patch(os, "open", no_files)
        self.patch(os, "stat", no_files)
        self.patch(os, "listdir", no_files)
        for raw in hostile:
            connection = FakeConnection(raw)
            creator._on_server_name(connection)  # type: ignore[arg-type]
            self.assertIsNone(connection.context, raw)
        default = self.ca.issue(["default.example"])
        index.set_default(default)
        for raw in hostile:
            connection = FakeConnection(raw)
            creator._on_server_name(connection)  # type: ignore[arg-type]
            self.assertIs(connection.context, creator.context_for(index.default))  # type: ignore[arg-type]
        self.assertEqual(opened, [])

    def test_context_cache(self) -> None:
        """Contexts are built on first use, kept up to the cache size, dropped when replaced."""
        entries = {n: self.ca.issue([n]) for n in ("a.example", "b.example", "c.example")}
        index, creator = make_creator(entries, context_cache_size=2)
        a, b, c = (index.get(n) for n in ("a.example", "b.example", "c.example"))
        ctx_a = creator.context_for(a)  # type: ignore[arg-type]
        self.assertIs(ctx_a, creator.context_for(a))  # type: ignore[arg-type]
        creator.context_for(b)  # type: ignore[arg-type]
        creator.context_for(a)  # type: ignore[arg-type]  # a is now most recent
        creator.context_for(c)  # type: ignore[arg-type]  # evicts b
        self.assertEqual(set(creator._contexts), {a, c})
        index.update("a.example", self.ca.issue(["a.example"]))
        self.assertEqual(set(creator._contexts), {c})
        index.remove("c.example")
        self.assertEqual(set(creator._contexts), set())

    def test_bad_arguments(self) -> None:
        index = CertificateIndex()
        for protocols in ([ACME_TLS_1], [b""], [b"x" * 256], ["h2"], b"h2"):
            self.assertRaises(
                ConfigurationError,
                SNIConnectionCreator,
                index,
                acceptable_protocols=protocols,  # type: ignore[arg-type]
            )
        self.assertRaises(ConfigurationError, SNIConnectionCreator, index, context_cache_size=0)
        creator = SNIConnectionCreator(index, acceptable_protocols=[b"h2", b"h2", b"http/1.1"])
        self.assertEqual(creator.acceptable_protocols, (b"h2", b"http/1.1"))


# ---------------------------------------------------------------------------
# Real handshakes
# ---------------------------------------------------------------------------


class HandshakeTests(TLSServerMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.ca = shared_ca()
        self.entries = {
            "a.example.com": self.ca.issue(["a.example.com"]),
            "b.example.com": self.ca.issue(["b.example.com"], key_type="rsa2048"),
            "*.wild.example": self.ca.issue(["*.wild.example"]),
            "www.wild.example": self.ca.issue(["www.wild.example"]),
            "127.0.0.1": self.ca.issue(["127.0.0.1"]),
        }
        self.default = self.ca.issue(["default.example"])

    @defer.inlineCallbacks
    def test_sni_picks_the_certificate(self) -> Any:
        """Each name gets its own certificate and chain, under TLS 1.2 and 1.3."""
        _, creator = make_creator(self.entries, self.default)
        app = self.listen(creator)
        for version in (TLS12, TLS13):
            for name in ("a.example.com", "b.example.com", "www.wild.example"):
                outcome = yield self.connect(name.encode(), payload=b"ping", max_version=version)
                self.assertEqual(outcome.names, [name])
                self.assertEqual(outcome.received, b"ping")
                self.assertEqual(len(outcome.chain), 2)
                self.assertEqual(outcome.chain[1], self.ca.certificate)
                self.assertEqual(outcome.version, {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[version])
        self.assertEqual(app.received, [b"ping"] * 6)

    @defer.inlineCallbacks
    def test_wildcard_and_case(self) -> Any:
        _, creator = make_creator(self.entries, self.default)
        self.listen(creator)
        outcome = yield self.connect(b"mail.wild.example")
        self.assertEqual(outcome.names, ["*.wild.example"])
        outcome = yield self.connect(b"MAIL.Wild.EXAMPLE")
        self.assertEqual(outcome.names, ["*.wild.example"])
        outcome = yield self.connect(b"A.EXAMPLE.COM")
        self.assertEqual(outcome.names, ["a.example.com"])
        outcome = yield self.connect(b"a.mail.wild.example")
        self.assertEqual(outcome.names, ["default.example"])

    @defer.inlineCallbacks
    def test_unknown_name_with_default(self) -> Any:
        _, creator = make_creator(self.entries, self.default)
        self.listen(creator)
        outcome = yield self.connect(b"unknown.example.org", payload=b"hello")
        self.assertEqual(outcome.names, ["default.example"])
        self.assertEqual(outcome.received, b"hello")

    @defer.inlineCallbacks
    def test_unknown_name_without_default_fails_cleanly(self) -> Any:
        """An alert, no application data, nothing logged as an error."""
        _, creator = make_creator(self.entries)
        app = self.listen(creator)
        for version in (TLS12, TLS13):
            outcome = yield self.connect(b"unknown.example.org", payload=b"x", max_version=version)
            self.assertFalse(outcome.handshake)
            self.assertIsInstance(outcome.reason.value, SSL.Error)  # type: ignore[union-attr]
            self.assertIn("alert", str(outcome.reason.value))  # type: ignore[union-attr]
        self.assertEqual(app.received, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_no_sni(self) -> Any:
        """No SNI: the local address's certificate, else the default, else failure."""
        _, creator = make_creator(self.entries, self.default)
        self.listen(creator)
        outcome = yield self.connect(None)
        self.assertEqual(outcome.names, ["127.0.0.1"])
        entries = dict(self.entries)
        del entries["127.0.0.1"]
        _, creator = make_creator(entries, self.default)
        self.listen(creator)
        outcome = yield self.connect(None)
        self.assertEqual(outcome.names, ["default.example"])
        _, creator = make_creator(entries)
        self.listen(creator)
        outcome = yield self.connect(None)
        self.assertFalse(outcome.handshake)

    @defer.inlineCallbacks
    def test_hostile_sni_over_the_wire(self) -> Any:
        """Names a client can send: no crash, default certificate, no file access."""
        _, creator = make_creator(self.entries, self.default)
        self.listen(creator)
        opened: list[Any] = []

        def no_files(*args: Any, **kwargs: Any) -> Any:
            opened.append(args)
            raise AssertionError("the handshake touched the filesystem")

        self.patch(os, "open", no_files)
        self.patch(os, "stat", no_files)
        self.patch(os, "listdir", no_files)
        for raw in [
            b"../../../etc/passwd",
            b"..",
            b"\xc3\xa9t\xc3\xa9.example",
            b"\xff" * 40,
            b"x" * 255,
            (b"a" * 63 + b".") * 3 + b"a" * 63,
            b"*.wild.example",
            b"A.EXAMPLE.COM/../../b.example.com",
        ]:
            outcome = yield self.connect(raw, payload=b"ok")
            self.assertTrue(outcome.handshake, raw)
            expected = ["*.wild.example"] if raw == b"*.wild.example" else ["default.example"]
            self.assertEqual(outcome.names, expected, raw)
        self.assertEqual(opened, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_application_alpn(self) -> Any:
        """The application's protocols by server preference; none in common: no ALPN."""
        _, creator = make_creator(self.entries, acceptable_protocols=[b"h2", b"http/1.1"])
        self.listen(creator)
        name = b"a.example.com"
        outcome = yield self.connect(name, [b"http/1.1", b"h2"])
        self.assertEqual(outcome.protocol, b"h2")
        outcome = yield self.connect(name, [b"http/1.1"])
        self.assertEqual(outcome.protocol, b"http/1.1")
        outcome = yield self.connect(name, [b"spdy/3"], payload=b"data")
        self.assertIsNone(outcome.protocol)
        self.assertEqual(outcome.received, b"data")
        outcome = yield self.connect(name, None, payload=b"data")
        self.assertIsNone(outcome.protocol)
        self.assertEqual(outcome.received, b"data")

    @defer.inlineCallbacks
    def test_protocols_from_the_application_factory(self) -> Any:
        """IProtocolNegotiationFactory of the wrapped factory comes first."""
        _, creator = make_creator(self.entries, acceptable_protocols=[b"http/1.1"])
        self.listen(creator, NegotiatingAppFactory([b"h2", ACME_TLS_1]))
        outcome = yield self.connect(b"a.example.com", [b"http/1.1", b"h2"])
        self.assertEqual(outcome.protocol, b"h2")
        outcome = yield self.connect(b"a.example.com", [b"http/1.1"])
        self.assertEqual(outcome.protocol, b"http/1.1")

    @defer.inlineCallbacks
    def test_no_alpn_by_default(self) -> Any:
        _, creator = make_creator(self.entries)
        self.listen(creator)
        outcome = yield self.connect(b"a.example.com", [b"h2", b"http/1.1"], payload=b"x")
        self.assertIsNone(outcome.protocol)
        self.assertEqual(outcome.received, b"x")

    @defer.inlineCallbacks
    def test_index_update_seen_at_next_handshake(self) -> Any:
        index, creator = make_creator({})
        self.listen(creator)
        outcome = yield self.connect(b"new.example")
        self.assertFalse(outcome.handshake)
        objects = self.ca.issue(["new.example"])
        index.update("new.example", objects)
        outcome = yield self.connect(b"new.example")
        self.assertEqual(outcome.certificate, leaf_of(objects))
        renewed = self.ca.issue(["new.example"])
        index.update("new.example", renewed)
        outcome = yield self.connect(b"new.example")
        self.assertEqual(outcome.certificate, leaf_of(renewed))
        index.remove("new.example")
        outcome = yield self.connect(b"new.example")
        self.assertFalse(outcome.handshake)

    @defer.inlineCallbacks
    def test_store_written_by_another_process(self) -> Any:
        """A certificate written to a shared directory is served after a poll."""
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        store = DirectoryStore(path)
        index, creator = make_creator({})
        yield index.load_from(store)
        clock = Clock()
        watcher = start_watching(index, DirectoryStore(path), 60, clock)
        self.addCleanup(watcher.stopService)
        self.listen(creator)
        objects = self.ca.issue(["shared.example"])
        yield store.store("shared.example", objects)
        outcome = yield self.connect(b"shared.example")
        self.assertFalse(outcome.handshake)
        clock.advance(60)
        outcome = yield self.connect(b"shared.example")
        self.assertEqual(outcome.certificate, leaf_of(objects))


class ChallengeHandshakeTests(TLSServerMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.ca = shared_ca()
        self.responder = TLSALPN01Responder()
        self.challenge = Challenge()
        self.digest = key_authorization_digest(self.challenge.key_authorization)

    def start(self, name: str) -> None:
        self.responder.start_responding(name, self.challenge, self.challenge)

    def creator(
        self, entries: dict[str, list[pem.AbstractPEMObject]], default: Any = None
    ) -> tuple[CertificateIndex, SNIConnectionCreator, AppFactory]:
        index, creator = make_creator(
            entries,
            default,
            challenges=self.responder.registry,
            acceptable_protocols=[b"h2", b"http/1.1"],
        )
        app = self.listen(creator)
        return index, creator, app

    def assertChallengeCertificate(self, outcome: Outcome, identifier: str) -> None:
        self.assertTrue(outcome.handshake)
        self.assertEqual(outcome.protocol, ACME_TLS_1)
        extension = acme_extension(outcome.certificate)
        assert extension is not None
        self.assertTrue(extension.critical)
        self.assertEqual(extension.value.value, b"\x04\x20" + self.digest)  # type: ignore[attr-defined]
        self.assertEqual(outcome.names, [identifier])

    def assertClosedWithoutData(self, outcome: Outcome, app: AppFactory) -> None:
        self.assertTrue(outcome.closed_by_server)
        self.assertEqual(outcome.received, b"")
        self.assertEqual(app.received, [])

    @defer.inlineCallbacks
    def test_challenge_certificate_served_and_connection_closed(self) -> Any:
        """
        acme-tls/1 alone with a challenge pending: the challenge certificate,
        acme-tls/1 negotiated, the server closes, the application gets no data;
        for names with an EC, an RSA, a default or no certificate, TLS 1.2 and 1.3.
        """
        entries = {
            "ec.example": self.ca.issue(["ec.example"]),
            "ec384.example": self.ca.issue(["ec384.example"], key_type="ec384"),
            "rsa.example": self.ca.issue(["rsa.example"], key_type="rsa2048"),
        }
        for name in ("ec.example", "ec384.example", "rsa.example", "new.example"):
            self.start(name)
        _, _, app = self.creator(entries)
        for version in (TLS12, TLS13):
            for name in ("ec.example", "ec384.example", "rsa.example", "new.example"):
                outcome = yield self.connect(
                    name.encode(),
                    [ACME_TLS_1],
                    payload=b"GET / HTTP/1.1\r\n\r\n",
                    max_version=version,
                )
                self.assertChallengeCertificate(outcome, name)
                self.assertClosedWithoutData(outcome, app)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_challenge_with_only_a_default_certificate(self) -> Any:
        self.start("new.example")
        _, _, app = self.creator({}, self.ca.issue(["default.example"], key_type="rsa2048"))
        outcome = yield self.connect(b"new.example", [ACME_TLS_1], payload=b"x", max_version=TLS12)
        self.assertChallengeCertificate(outcome, "new.example")
        self.assertClosedWithoutData(outcome, app)
        # An ordinary client for that name still gets the default.
        outcome = yield self.connect(b"new.example", [b"h2"], payload=b"x")
        self.assertEqual(outcome.names, ["default.example"])
        self.assertEqual(outcome.received, b"x")

    @defer.inlineCallbacks
    def test_ordinary_clients_during_a_challenge(self) -> Any:
        """Ordinary clients of a name with a pending challenge get its certificate."""
        self.start("ec.example")
        _, _, app = self.creator({"ec.example": self.ca.issue(["ec.example"])})
        for alpn in ([b"h2", b"http/1.1"], None, [b"h2", ACME_TLS_1], [ACME_TLS_1, b"http/1.1"]):
            outcome = yield self.connect(b"ec.example", alpn, payload=b"hi")
            self.assertEqual(outcome.names, ["ec.example"], alpn)
            self.assertIsNone(acme_extension(outcome.certificate))
            self.assertNotEqual(outcome.protocol, ACME_TLS_1)
            self.assertEqual(outcome.received, b"hi")

    @defer.inlineCallbacks
    def test_acme_tls_without_pending_challenge(self) -> Any:
        """No challenge pending: a no_application_protocol alert, no challenge certificate."""
        self.start("other.example")
        _, _, app = self.creator({"ec.example": self.ca.issue(["ec.example"])})
        for version in (TLS12, TLS13):
            outcome = yield self.connect(b"ec.example", [ACME_TLS_1], b"x", max_version=version)
            self.assertFalse(outcome.handshake)
            self.assertIn("no application protocol", str(outcome.reason.value))  # type: ignore[union-attr]
            outcome = yield self.connect(b"unknown.example", [ACME_TLS_1], max_version=version)
            self.assertFalse(outcome.handshake)
            outcome = yield self.connect(None, [ACME_TLS_1], max_version=version)
            self.assertFalse(outcome.handshake)
        self.assertEqual(app.received, [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_no_certificate_yet(self) -> Any:
        """
        A name with a challenge but no certificate: ordinary clients never get
        the challenge certificate nor any application data.
        """
        self.start("new.example")
        _, _, app = self.creator({})
        outcome = yield self.connect(b"new.example", [b"h2", b"http/1.1"], payload=b"x")
        self.assertFalse(outcome.handshake)
        self.assertIn("no application protocol", str(outcome.reason.value))  # type: ignore[union-attr]
        # Without ALPN the handshake completes with a placeholder certificate
        # naming nothing, and the server closes at once.
        for version in (TLS12, TLS13):
            outcome = yield self.connect(b"new.example", None, payload=b"x", max_version=version)
            self.assertTrue(outcome.handshake)
            self.assertIsNone(acme_extension(outcome.certificate))
            self.assertEqual(outcome.names, [])
            self.assertClosedWithoutData(outcome, app)
        self.assertEqual(app.received, [])

    @defer.inlineCallbacks
    def test_challenge_stopped(self) -> Any:
        self.start("ec.example")
        _, _, app = self.creator({"ec.example": self.ca.issue(["ec.example"])})
        outcome = yield self.connect(b"ec.example", [ACME_TLS_1])
        self.assertChallengeCertificate(outcome, "ec.example")
        self.responder.stop_responding("ec.example", self.challenge, self.challenge)
        outcome = yield self.connect(b"ec.example", [ACME_TLS_1])
        self.assertFalse(outcome.handshake)

    @defer.inlineCallbacks
    def test_ip_identifier(self) -> Any:
        """RFC 8738: the validator sends the reverse-DNS name as SNI."""
        self.start("127.0.0.1")
        self.start("::1")
        _, _, app = self.creator({"127.0.0.1": self.ca.issue(["127.0.0.1"])})
        outcome = yield self.connect(b"1.0.0.127.in-addr.arpa", [ACME_TLS_1], payload=b"x")
        self.assertChallengeCertificate(outcome, "127.0.0.1")
        self.assertClosedWithoutData(outcome, app)
        reverse6 = ".".join(reversed(("0" * 31) + "1")) + ".ip6.arpa"
        outcome = yield self.connect(reverse6.encode(), [ACME_TLS_1])
        self.assertChallengeCertificate(outcome, "::1")
        # No SNI at all: the local address.
        outcome = yield self.connect(None, [ACME_TLS_1])
        self.assertChallengeCertificate(outcome, "127.0.0.1")
        # Ordinary clients of the address get its certificate.
        outcome = yield self.connect(b"1.0.0.127.in-addr.arpa", [b"h2"])
        self.assertEqual(outcome.names, ["127.0.0.1"])
        self.assertIsNone(acme_extension(outcome.certificate))

    @defer.inlineCallbacks
    def test_overlapping_challenges(self) -> Any:
        """The last challenge added is served; stopping it brings back the previous one."""
        first, second = Challenge("first-token-aaaaaaaa"), Challenge("second-token-bbbbbbb")
        self.responder.start_responding("ec.example", first, first)
        self.responder.start_responding("ec.example", second, second)
        _, _, app = self.creator({"ec.example": self.ca.issue(["ec.example"])})
        outcome = yield self.connect(b"ec.example", [ACME_TLS_1])
        extension = acme_extension(outcome.certificate)
        self.assertEqual(
            extension.value.value,  # type: ignore[union-attr]
            b"\x04\x20" + key_authorization_digest(second.key_authorization),
        )
        self.responder.stop_responding("ec.example", second, second)
        outcome = yield self.connect(b"ec.example", [ACME_TLS_1])
        self.assertEqual(
            acme_extension(outcome.certificate).value.value,  # type: ignore[union-attr]
            b"\x04\x20" + key_authorization_digest(first.key_authorization),
        )

    @defer.inlineCallbacks
    def test_creator_without_registry(self) -> Any:
        _, creator = make_creator({"ec.example": self.ca.issue(["ec.example"])})
        self.listen(creator)
        outcome = yield self.connect(b"ec.example", [ACME_TLS_1])
        self.assertFalse(outcome.handshake)

    @defer.inlineCallbacks
    def test_openssl_s_client(self) -> Any:
        """An independent client (openssl s_client) sees the challenge certificate."""
        if OPENSSL is None:
            raise unittest.SkipTest("openssl is not installed")
        self.start("ec.example")
        _, _, app = self.creator({"ec.example": self.ca.issue(["ec.example"])})
        for version in ("-tls1_2", "-tls1_3"):
            out, err, code = yield getProcessOutputAndValue(
                OPENSSL,
                [
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{self.port}",
                    "-servername",
                    "ec.example",
                    "-alpn",
                    "acme-tls/1",
                    version,
                    "-showcerts",
                ],
                env={"PATH": os.environ.get("PATH", "")},
                reactor=reactor,
                stdinBytes=b"",
            )
            text = out.decode("ascii", "replace")
            self.assertIn("ALPN protocol: acme-tls/1", text, err)
            leaf = x509.load_pem_x509_certificate(
                text[text.index("-----BEGIN CERTIFICATE-----") :].encode("ascii")
            )
            extension = acme_extension(leaf)
            assert extension is not None
            self.assertTrue(extension.critical)
            self.assertEqual(extension.value.value, b"\x04\x20" + self.digest)  # type: ignore[attr-defined]
            self.assertEqual(dns_names(leaf), ["ec.example"])
            # Without acme-tls/1 the ordinary certificate.
            out, err, code = yield getProcessOutputAndValue(
                OPENSSL,
                [
                    "s_client",
                    "-connect",
                    f"127.0.0.1:{self.port}",
                    "-servername",
                    "ec.example",
                    "-alpn",
                    "h2",
                    version,
                ],
                env={"PATH": os.environ.get("PATH", "")},
                reactor=reactor,
                stdinBytes=b"",
            )
            text = out.decode("ascii", "replace")
            self.assertIn("ALPN protocol: h2", text, err)
            self.assertIn("CN=ec.example", text.replace(" = ", "="))
        self.assertEqual(app.received, [])

    def test_refusal_is_an_ssl_error(self) -> None:
        self.assertTrue(issubclass(HandshakeRefused, SSL.Error))
