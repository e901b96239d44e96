"""Tests for txacme.stores.directory.DirectoryStore and txacme.testing.MemoryStore."""

from __future__ import annotations

import datetime
import os
import stat
from typing import Any

import pem
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import LogLevel
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tests.harness.logcapture import capture_log
from txacme.certificates import validate_pem_objects
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import ICertificateStore
from txacme.keys import PrivateKey, generate_private_key, private_key_pem
from txacme.stores import directory as store_module
from txacme.stores.directory import DEFAULT_NAME, DirectoryStore, load_entry
from txacme.testing import MemoryStore, make_certificate

reactor: Any = _reactor

NOW = datetime.datetime.now(datetime.timezone.utc)


def _cert(
    subject_names: list[str],
    key: PrivateKey,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    return make_certificate(
        subject_names,
        NOW - datetime.timedelta(hours=1),
        NOW + datetime.timedelta(days=30),
        key=key,
        issuer=issuer,
        ca=ca,
        authority_key_id=None,
    )


class CertAuthority:
    """A little CA issuing leaf certificates, for building store entries."""

    def __init__(self) -> None:
        self.key = generate_private_key()
        self.cert = _cert([], self.key, ca=True)

    def leaf(self, *names: str, key: PrivateKey | None = None) -> tuple[Any, x509.Certificate]:
        key = key if key is not None else generate_private_key()
        return key, _cert(list(names), key, issuer=(self.key, self.cert))

    def entry(self, *names: str, chain: bool = True) -> list[pem.AbstractPEMObject]:
        key, cert = self.leaf(*names)
        return objects(key, cert, *([self.cert] if chain else []))


def pem_bytes(*items: Any) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += private_key_pem(item)
    return out


def objects(*items: Any) -> list[pem.AbstractPEMObject]:
    return pem.parse(pem_bytes(*items))


def as_bytes(entry: list[pem.AbstractPEMObject]) -> list[bytes]:
    return [o.as_bytes() for o in entry]


CA = CertAuthority()


class StoreContractMixin:
    """Behaviour every ICertificateStore of txacme shares."""

    def make_store(self, certs: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(ICertificateStore, self.make_store()))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_round_trip(self) -> Any:
        store = self.make_store()
        entry = CA.entry("example.com")
        result = yield store.store("example.com", entry)
        self.assertIsNone(result)  # type: ignore[attr-defined]
        got = yield store.get("example.com")
        self.assertEqual(as_bytes(got), as_bytes(entry))  # type: ignore[attr-defined]
        everything = yield store.as_dict()
        self.assertEqual(list(everything), ["example.com"])  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            as_bytes(everything["example.com"]), as_bytes(entry)
        )

    @inlineCallbacks
    def test_replace(self) -> Any:
        store = self.make_store()
        yield store.store("example.com", CA.entry("example.com"))
        second = CA.entry("example.com", chain=False)
        yield store.store("example.com", second)
        got = yield store.get("example.com")
        self.assertEqual(as_bytes(got), as_bytes(second))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_names_normalized(self) -> Any:
        store = self.make_store()
        entry = CA.entry("example.com")
        yield store.store("Example.COM", entry)
        got = yield store.get("EXAMPLE.com")
        self.assertEqual(as_bytes(got), as_bytes(entry))  # type: ignore[attr-defined]
        everything = yield store.as_dict()
        self.assertEqual(list(everything), ["example.com"])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_wildcard_and_ip(self) -> Any:
        store = self.make_store()
        wild = CA.entry("*.example.com")
        ip6 = CA.entry("2001:db8::1")
        yield store.store("*.example.com", wild)
        yield store.store("2001:DB8:0::1", ip6)
        got = yield store.get("*.example.com")
        self.assertEqual(as_bytes(got), as_bytes(wild))  # type: ignore[attr-defined]
        got = yield store.get("2001:db8::1")
        self.assertEqual(as_bytes(got), as_bytes(ip6))  # type: ignore[attr-defined]
        everything = yield store.as_dict()
        self.assertEqual(  # type: ignore[attr-defined]
            sorted(everything), ["*.example.com", "2001:db8::1"]
        )

    def test_missing_is_key_error(self) -> Any:
        return self.assertFailure(  # type: ignore[attr-defined]
            self.make_store().get("example.com"), KeyError
        )

    @inlineCallbacks
    def test_invalid_name(self) -> Any:
        store = self.make_store()
        for name in ["../x", "a/b", "a\x00b", "", "bücher.de", "x" * 300, "..", "DEFAULT."]:
            yield self.assertFailure(store.get(name), InvalidServerName)  # type: ignore[attr-defined]
            yield self.assertFailure(  # type: ignore[attr-defined]
                store.store(name, CA.entry("example.com")), InvalidServerName
            )
        everything = yield store.as_dict()
        self.assertEqual(everything, {})  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_refuses_bad_entries(self) -> Any:
        store = self.make_store()
        good = CA.entry("example.com")
        yield store.store("example.com", good)
        key, cert = CA.leaf("example.com")
        other_key = generate_private_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        trusted = pem.parse(
            cert.public_bytes(serialization.Encoding.PEM).replace(
                b"CERTIFICATE", b"TRUSTED CERTIFICATE"
            )
        )
        encrypted = pem.parse(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
        bad: list[tuple[Any, str]] = [
            ([], "exactly one private key"),
            (objects(key), "no certificate"),
            (objects(cert), "exactly one private key, found 0"),
            (objects(other_key, cert), "does not match"),
            (objects(key, CA.cert, cert), "does not match"),
            (objects(key, other_key, cert), "found 2"),
            (
                objects(key, cert) + pem.parse(csr.public_bytes(serialization.Encoding.PEM)),
                "unexpected",
            ),
            (objects(key) + trusted, "unexpected"),
            (encrypted + objects(cert), "encrypted"),
            (pem_bytes(key, cert), "list of PEM objects"),
            (pem_bytes(key, cert).decode(), "list of PEM objects"),
            (42, "list of PEM objects"),
        ]
        for entry, fragment in bad:
            failure = yield self.assertFailure(  # type: ignore[attr-defined]
                store.store("example.com", entry), ConfigurationError
            )
            self.assertIn(fragment, str(failure))  # type: ignore[attr-defined]
            self.assertIn("example.com", str(failure))  # type: ignore[attr-defined]
        got = yield store.get("example.com")
        self.assertEqual(as_bytes(got), as_bytes(good))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_every_key_type_accepted(self) -> Any:
        store = self.make_store()
        for key_type in ["ec256", "ec384", "rsa2048"]:
            key, cert = CA.leaf("example.com", key=generate_private_key(key_type))
            yield store.store("example.com", objects(key, cert, CA.cert))

    @inlineCallbacks
    def test_traditional_key_accepted(self) -> Any:
        key, cert = CA.leaf("example.com", key=generate_private_key("rsa2048"))
        traditional = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        entry = pem.parse(traditional + cert.public_bytes(serialization.Encoding.PEM))
        store = self.make_store()
        yield store.store("example.com", entry)
        got = yield store.get("example.com")
        self.assertIsInstance(got[0], pem.RSAPrivateKey)  # type: ignore[attr-defined]


class MemoryStoreTests(StoreContractMixin, TestCase):
    """MemoryStore."""

    def make_store(self, certs: dict[str, Any] | None = None) -> Any:
        return MemoryStore(certs)

    @inlineCallbacks
    def test_initial_entries(self) -> Any:
        entry = CA.entry("example.com")
        store = MemoryStore({"Example.com": entry, "wanted.example": []})
        self.assertEqual(sorted(store.certs), ["example.com", "wanted.example"])
        got = yield store.get("wanted.example")
        self.assertEqual(got, [])
        everything = yield store.as_dict()
        self.assertEqual(as_bytes(everything["example.com"]), as_bytes(entry))

    def test_initial_entries_validated(self) -> None:
        self.assertRaises(InvalidServerName, MemoryStore, {"a/b": []})
        key, cert = CA.leaf("example.com")
        self.assertRaises(
            ConfigurationError, MemoryStore, {"example.com": objects(generate_private_key(), cert)}
        )

    @inlineCallbacks
    def test_copies(self) -> Any:
        store = MemoryStore({"example.com": CA.entry("example.com")})
        got = yield store.get("example.com")
        got.clear()
        everything = yield store.as_dict()
        everything["example.com"].clear()
        everything["other.example"] = []
        again = yield store.get("example.com")
        self.assertEqual(len(again), 3)
        self.assertEqual(list(store.certs), ["example.com"])


class DirectoryStoreTests(StoreContractMixin, TestCase):
    """DirectoryStore: files, atomicity, txsni compatibility."""

    def setUp(self) -> None:
        self.parent = FilePath(self.mktemp())
        self.parent.makedirs()
        self.dir = self.parent.child("certs")
        self.dir.makedirs()

    def make_store(self, certs: dict[str, Any] | None = None) -> Any:
        return DirectoryStore(self.dir)

    def listing(self) -> list[str]:
        return sorted(os.listdir(self.dir.path))

    def capture_log(self) -> list[dict[str, Any]]:
        return capture_log(self)

    def test_path(self) -> None:
        self.assertEqual(DirectoryStore(self.dir).path, self.dir)
        self.assertEqual(DirectoryStore(self.dir.path).path, self.dir)
        import pathlib

        self.assertEqual(DirectoryStore(pathlib.Path(self.dir.path)).path, self.dir)
        self.assertIn(self.dir.path, repr(DirectoryStore(self.dir)))

    def test_not_a_directory(self) -> None:
        missing = self.parent.child("missing").path
        with self.assertRaises(ConfigurationError) as caught:
            DirectoryStore(missing)
        self.assertIn(missing, str(caught.exception))
        self.dir.child("file").setContent(b"")
        self.assertRaises(ConfigurationError, DirectoryStore, self.dir.child("file").path)
        self.assertRaises(ConfigurationError, DirectoryStore, 42)

    @inlineCallbacks
    def test_file_layout(self) -> Any:
        store = DirectoryStore(self.dir)
        key, cert = CA.leaf("example.com")
        yield store.store("example.com", objects(key, cert, CA.cert))
        self.assertEqual(self.listing(), ["example.com.pem"])
        path = self.dir.child("example.com.pem")
        self.assertEqual(path.getContent(), pem_bytes(key, cert, CA.cert))
        self.assertEqual(stat.S_IMODE(os.stat(path.path).st_mode), 0o600)
        yield store.store("*.example.com", CA.entry("*.example.com"))
        yield store.store("::1", CA.entry("::1"))
        self.assertEqual(self.listing(), ["*.example.com.pem", "::1.pem", "example.com.pem"])

    @inlineCallbacks
    def test_mode_0600_with_open_umask(self) -> Any:
        old = os.umask(0)
        try:
            yield DirectoryStore(self.dir).store("example.com", CA.entry("example.com"))
        finally:
            os.umask(old)
        mode = os.stat(self.dir.child("example.com.pem").path).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    @inlineCallbacks
    def test_empty_file_is_wanted(self) -> Any:
        self.dir.child("example.com.pem").setContent(b"")
        self.dir.child("blank.example.pem").setContent(b"\n  \n")
        store = DirectoryStore(self.dir)
        got = yield store.get("example.com")
        self.assertEqual(got, [])
        everything = yield store.as_dict()
        self.assertEqual(everything, {"blank.example": [], "example.com": []})

    @inlineCallbacks
    def test_invalid_name_never_touches_filesystem(self) -> Any:
        outside = self.parent.child("x.pem")
        outside_data = pem_bytes(*CA.leaf("x"))
        outside.setContent(outside_data)
        touched: list[object] = []

        def spy(name: str) -> Any:
            def f(*args: Any, **kwargs: Any) -> Any:
                touched.append((name, args))
                raise AssertionError(f"{name} called")

            return f

        store = DirectoryStore(self.dir)
        for fn in ["load_entry", "write_entry"]:
            self.patch(store_module, fn, spy(fn))
        self.patch(store_module.os, "open", spy("os.open"))
        for name in ["../x", "../../x", "a/b", "/etc/passwd", "a\\b", "a\x00b", "..", "."]:
            yield self.assertFailure(store.get(name), InvalidServerName)
            yield self.assertFailure(store.store(name, CA.entry("x")), InvalidServerName)
            yield self.assertFailure(store.mark_wanted(name), InvalidServerName)
        self.assertEqual(touched, [])
        self.assertEqual(self.listing(), [])
        self.assertEqual(outside.getContent(), outside_data)

    @inlineCallbacks
    def test_rename_failure_keeps_old_file(self) -> Any:
        """A crash before the rename leaves the old entry whole and no temporary file."""
        store = DirectoryStore(self.dir)
        yield store.store("example.com", CA.entry("example.com"))
        before = self.dir.child("example.com.pem").getContent()

        def crash(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(store_module.os, "rename", crash)
        failure = yield self.assertFailure(
            store.store("example.com", CA.entry("example.com")), OSError
        )
        self.assertEqual(failure.errno, 28)
        self.assertEqual(self.dir.child("example.com.pem").getContent(), before)
        self.assertEqual(self.listing(), ["example.com.pem"])

    @inlineCallbacks
    def test_write_failure_keeps_old_file(self) -> Any:
        store = DirectoryStore(self.dir)
        yield store.store("example.com", CA.entry("example.com"))
        before = self.dir.child("example.com.pem").getContent()
        real_write = os.write
        calls: list[int] = []

        def short_then_crash(fd: int, data: Any) -> int:
            calls.append(fd)
            if len(calls) == 1:
                return real_write(fd, bytes(data[:10]))
            raise OSError(5, "Input/output error")

        self.patch(store_module.os, "write", short_then_crash)
        yield self.assertFailure(store.store("example.com", CA.entry("example.com")), OSError)
        self.assertEqual(self.dir.child("example.com.pem").getContent(), before)
        self.assertEqual(self.listing(), ["example.com.pem"])

    @inlineCallbacks
    def test_partial_writes_completed(self) -> Any:
        """os.write may write less than asked; the whole entry still lands."""
        real_write = os.write

        def dribble(fd: int, data: Any) -> int:
            return real_write(fd, bytes(data[:7]))

        self.patch(store_module.os, "write", dribble)
        key, cert = CA.leaf("example.com")
        yield DirectoryStore(self.dir).store("example.com", objects(key, cert))
        self.assertEqual(self.dir.child("example.com.pem").getContent(), pem_bytes(key, cert))

    @inlineCallbacks
    def test_refused_entry_leaves_file(self) -> Any:
        store = DirectoryStore(self.dir)
        yield store.store("example.com", CA.entry("example.com"))
        before = self.dir.child("example.com.pem").getContent()
        key, cert = CA.leaf("example.com")
        yield self.assertFailure(
            store.store("example.com", objects(generate_private_key(), cert)), ConfigurationError
        )
        self.assertEqual(self.dir.child("example.com.pem").getContent(), before)
        self.assertEqual(self.listing(), ["example.com.pem"])

    @inlineCallbacks
    def test_damaged_file_get(self) -> Any:
        key, cert = CA.leaf("example.com")
        cases = {
            "garbage.example": b"this is not PEM\n",
            "truncated.example": pem_bytes(key, cert)[:-100],
            "mismatch.example": pem_bytes(generate_private_key(), cert),
            "certonly.example": pem_bytes(cert),
        }
        for name, data in cases.items():
            self.dir.child(name + ".pem").setContent(data)
        store = DirectoryStore(self.dir)
        for name in cases:
            failure = yield self.assertFailure(store.get(name), ConfigurationError)
            self.assertIn(self.dir.child(name + ".pem").path, str(failure))

    @inlineCallbacks
    def test_as_dict_skips(self) -> Any:
        good = CA.entry("good.example")
        key, cert = CA.leaf("example.com")
        d = self.dir
        d.child("good.example.pem").setContent(b"".join(as_bytes(good)))
        d.child("wanted.example.pem").setContent(b"")
        d.child("client.key").setContent(private_key_pem(generate_private_key()))
        d.child("DEFAULT.pem").setContent(b"".join(as_bytes(CA.entry("default"))))
        d.child(".good.example.pem.0123abcd.tmp").setContent(b"partial")
        d.child(".hidden.pem").setContent(b"")
        d.child("not_valid.pem").setContent(b"")
        d.child("with space.pem").setContent(b"")
        d.child("Upper.Example.pem").setContent(b"")
        d.child("README.txt").setContent(b"hello")
        d.child("dir.example.pem").makedirs()
        d.child("garbage.example.pem").setContent(b"garbage\n")
        d.child("truncated.example.pem").setContent(pem_bytes(key, cert)[:-100])
        d.child("mismatch.example.pem").setContent(pem_bytes(generate_private_key(), cert))
        events = self.capture_log()
        everything = yield DirectoryStore(self.dir).as_dict()
        self.assertEqual(sorted(everything), ["good.example", "wanted.example"])
        self.assertEqual(as_bytes(everything["good.example"]), as_bytes(good))
        errors = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(
            sorted(os.path.basename(e["file"]) for e in errors),
            ["garbage.example.pem", "mismatch.example.pem", "truncated.example.pem"],
        )
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "canonical" in e]
        self.assertEqual([e["file"] for e in warnings], ["Upper.Example.pem"])

    @inlineCallbacks
    def test_default(self) -> Any:
        store = DirectoryStore(self.dir)
        yield self.assertFailure(store.get_default(), KeyError)
        entry = CA.entry("default.example")
        yield store.store_default(entry)
        self.assertEqual(self.listing(), [DEFAULT_NAME + ".pem"])
        got = yield store.get_default()
        self.assertEqual(as_bytes(got), as_bytes(entry))
        everything = yield store.as_dict()
        self.assertEqual(everything, {})
        yield self.assertFailure(store.store_default([]), ConfigurationError)
        # "DEFAULT" itself is a valid DNS label, but as a name it is lower case.
        yield self.assertFailure(store.get("default"), KeyError)

    @inlineCallbacks
    def test_mark_wanted(self) -> Any:
        store = DirectoryStore(self.dir)
        created = yield store.mark_wanted("Example.com")
        self.assertTrue(created)
        path = self.dir.child("example.com.pem")
        self.assertEqual(path.getContent(), b"")
        self.assertEqual(stat.S_IMODE(os.stat(path.path).st_mode), 0o600)
        got = yield store.get("example.com")
        self.assertEqual(got, [])
        entry = CA.entry("example.com")
        yield store.store("example.com", entry)
        created = yield store.mark_wanted("example.com")
        self.assertFalse(created)
        got = yield store.get("example.com")
        self.assertEqual(as_bytes(got), as_bytes(entry))

    @inlineCallbacks
    def test_unreadable_file(self) -> Any:
        store = DirectoryStore(self.dir)
        yield store.store("example.com", CA.entry("example.com"))
        yield store.store("other.example", CA.entry("other.example"))
        secret = self.dir.child("example.com.pem").path
        # Entries are opened with os.open (never following a link); root reads
        # any file, so the refusal is simulated.
        real_open = os.open

        def refuse(path: Any, *args: Any, **kwargs: Any) -> Any:
            if path == secret:
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", refuse)
        failure = yield self.assertFailure(store.get("example.com"), ConfigurationError)
        self.assertIn(secret, str(failure))
        events = self.capture_log()
        everything = yield store.as_dict()
        self.assertEqual(list(everything), ["other.example"])
        self.assertEqual(
            [e["file"] for e in events if e.get("log_level") == LogLevel.error], [secret]
        )

    def test_load_entry_missing(self) -> None:
        self.assertRaises(FileNotFoundError, load_entry, self.dir.child("x.pem").path)

    @inlineCallbacks
    def test_txsni_reads_what_we_wrote(self) -> Any:
        """txsni's HostDirectoryMap builds TLS options from our files."""
        from txsni.snimap import HostDirectoryMap

        store = DirectoryStore(self.dir)
        key, cert = CA.leaf("example.com", key=generate_private_key("rsa2048"))
        yield store.store("example.com", objects(key, cert, CA.cert))
        options = HostDirectoryMap(self.dir)["example.com"]
        self.assertEqual(options.certificate.to_cryptography(), cert)
        self.assertEqual([c.to_cryptography() for c in options.extraCertChain], [CA.cert])
        # txsni looks up the raw SNI value, which is bytes.
        options = HostDirectoryMap(self.dir)[b"example.com"]
        self.assertEqual(options.certificate.to_cryptography(), cert)

    @inlineCallbacks
    def test_txsni_serves_what_we_wrote(self) -> Any:
        """A TLS handshake through txsni's SNIMap presents our certificate and chain."""
        from txsni.snimap import HostDirectoryMap, SNIMap
        from txsni.tlsendpoint import TLSEndpoint

        store = DirectoryStore(self.dir)
        key, cert = CA.leaf("example.com")
        yield store.store("example.com", objects(key, cert, CA.cert))
        yield store.store_default(CA.entry("default.example"))

        server_endpoint = TLSEndpoint(
            endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            contextFactory=SNIMap(HostDirectoryMap(self.dir)),
        )

        class Echo(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)

        port = yield server_endpoint.listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)

        received: Deferred[list[x509.Certificate]] = Deferred()

        class Client(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"ping")

            def dataReceived(self, data: bytes) -> None:
                try:
                    handle = self.transport.getHandle()  # type: ignore[union-attr]
                    chain = handle.get_peer_cert_chain(as_cryptography=True)
                    received.callback(chain)
                except Exception:
                    received.errback()
                self.transport.loseConnection()  # type: ignore[union-attr]

        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol

        tls = optionsForClientTLS(
            "example.com",
            trustRoot=Certificate.loadPEM(CA.cert.public_bytes(serialization.Encoding.PEM)),
        )
        client = Client()
        done: Deferred[None] = Deferred()
        client.connectionLost = lambda reason: done.callback(None)  # type: ignore[method-assign]
        yield connectProtocol(
            SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, tls), client
        )
        chain = yield received
        yield done
        self.assertEqual(chain[0], cert)
        self.assertIn(CA.cert, chain[1:])


class ValidateTests(TestCase):
    """validate_pem_objects on its own."""

    def test_returns_list_in_order(self) -> None:
        key, cert = CA.leaf("example.com")
        given = objects(cert, key, CA.cert)
        self.assertEqual(validate_pem_objects(iter(given), "x"), given)

    def test_source_named(self) -> None:
        with self.assertRaises(ConfigurationError) as caught:
            validate_pem_objects([], "/srv/certs/example.com.pem")
        self.assertIn("/srv/certs/example.com.pem", str(caught.exception))


class StaleTemporaryFileTests(TestCase):
    """as_dict removes temporary files a killed writer left long ago, and nothing else."""

    def test_old_temporary_files_removed(self) -> None:
        import time

        directory = FilePath(self.mktemp())
        directory.makedirs()
        store = DirectoryStore(directory)
        events = capture_log(self)
        key, cert = CA.leaf("example.com")
        self.successResultOf(store.store("example.com", objects(key, cert, CA.cert)))
        now = time.time()
        old_age = store_module.STALE_TEMP_AGE + 60

        def make(name: str, age: float) -> str:
            path = directory.child(name).path
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"-----BEGIN PRIVATE KEY-----\npartial")
            os.close(fd)
            os.utime(path, (now - age, now - age))
            return path

        stale = make(".example.com.pem.0123456789abcdef.tmp", old_age)
        fresh = make(".other.example.pem.fedcba9876543210.tmp", 5)
        # Old, but not temporary files of ours: never touched.
        untouched = [
            make(".example.com.pem.notours.tmp", old_age),
            make("notes.0123456789abcdef.tmp", old_age),
            make(".client.key.0123456789abcdef", old_age),
        ]
        entry = directory.child("example.com.pem").path
        os.utime(entry, (now - old_age, now - old_age))

        entries = self.successResultOf(store.as_dict())

        self.assertEqual(list(entries), ["example.com"])
        self.assertFalse(os.path.exists(stale))
        self.assertTrue(os.path.exists(fresh))
        for path in [*untouched, entry]:
            self.assertTrue(os.path.exists(path), path)
        removals = [e for e in events if "removed" in e.get("log_format", "")]
        self.assertEqual([e["file"] for e in removals], [stale])
        self.assertEqual(removals[0]["log_level"], LogLevel.warn)
        self.assertNotIn("partial", repr(removals))
        self.assertEqual(store.remove_stale_temporary_files(), [])
        os.utime(fresh, (now - old_age, now - old_age))
        self.assertEqual(store.remove_stale_temporary_files(), [fresh])
