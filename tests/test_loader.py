"""
StoreLoader against a real directory (inotify and the stat scan each): names
served before the background parse ends, a name asked for early parsed on the
spot, then added, replaced, removed and several-step writes followed without
a full reload; and AutoTLSEndpoint issuing an empty entry that appears while it
runs, from Pebble, without waiting for a timer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pem
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.python.runtime import platform
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness.pebble import shared_pebble
from txacme.certificates import certificate_names
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client
from txacme.serving.endpoint import AutoTLSEndpoint
from txacme.serving.index import CertificateIndex
from txacme.serving.loader import StoreLoader
from txacme.stores.directory import DirectoryStore
from txacme.testing import make_pem_objects


def serialize(objects: list[pem.AbstractPEMObject]) -> bytes:
    return b"".join(o.as_bytes() for o in objects)


def serial_of(objects: list[pem.AbstractPEMObject]) -> int:
    from cryptography import x509

    cert = next(o for o in objects if isinstance(o, pem.Certificate))
    return x509.load_pem_x509_certificate(cert.as_bytes()).serial_number


def wait_until(predicate: Any, seconds: float = 5.0) -> Deferred[None]:
    async def poll() -> None:
        for _ in range(int(seconds / 0.02)):
            if predicate():
                return
            await deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"not true within {seconds} s")

    return Deferred.fromCoroutine(poll())


class _Loader:
    mode = "auto"
    timeout = 30

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txacme-loader-")
        self.store = DirectoryStore(self.dir)
        self.entries = {f"n{i}.example": make_pem_objects([f"n{i}.example"]) for i in range(40)}
        for name, objects in self.entries.items():
            Path(self.dir, name + ".pem").write_bytes(serialize(objects))
        Path(self.dir, "wanted.example.pem").write_bytes(b"")
        self.index = CertificateIndex()
        self.changed: list[tuple[str, object]] = []
        self.loader = StoreLoader(
            self.index,
            self.store,
            reactor,
            watch=self.mode,
            debounce=0.02,
            scan_interval=0.05,
            batch=8,
            feed_batches=True,
            on_change=lambda name, objects: self.changed.append((name, objects)),
        )

    def start(self) -> Any:
        self.loader.start()
        self.addCleanup(self.loader.stop)  # type: ignore[attr-defined]

    def served_serial(self, name: str) -> int | None:
        entry = self.index.find(name)
        return entry.serial_number if entry is not None else None

    @inlineCallbacks
    def test_lazy_start(self) -> Any:
        """Names are known at once; one asked for early is parsed on the spot."""
        self.start()
        self.assertIn("n39.example", self.index)
        self.assertGreater(len(self.index.unloaded), 0)
        self.assertEqual(self.served_serial("n39.example"), serial_of(self.entries["n39.example"]))
        yield self.loader.when_loaded()
        self.assertEqual(self.index.unloaded, frozenset())
        for name, objects in self.entries.items():
            self.assertEqual(self.served_serial(name), serial_of(objects))
        self.assertIsNone(self.index.find("wanted.example"))
        self.assertIsNone(self.index.find("unknown.example"))

    @inlineCallbacks
    def test_batches_feed_the_first_check(self) -> Any:
        """The service's first check gets every entry (empty ones too) from the initial load."""
        self.start()
        seen: dict[str, list[pem.AbstractPEMObject]] = {}

        async def collect() -> None:
            async for batch in self.loader.batches():
                seen.update(batch)

        yield Deferred.fromCoroutine(collect())
        self.assertEqual(set(seen), set(self.entries) | {"wanted.example"})
        self.assertEqual(seen["wanted.example"], [])
        self.assertEqual(serial_of(seen["n3.example"]), serial_of(self.entries["n3.example"]))
        again: dict[str, list[pem.AbstractPEMObject]] = {}

        async def collect_again() -> None:
            async for batch in self.loader.batches():
                again.update(batch)

        yield Deferred.fromCoroutine(collect_again())
        self.assertEqual(set(again), set(seen))

    @inlineCallbacks
    def test_add_replace_remove(self) -> Any:
        """Changes are followed file by file; an empty new entry is reported for issuing."""
        self.start()
        yield self.loader.when_loaded()
        added = make_pem_objects(["added.example"])
        yield self.store.store("added.example", added)
        yield wait_until(lambda: self.served_serial("added.example") == serial_of(added))
        replacement = make_pem_objects(["n1.example"])
        yield self.store.store("n1.example", replacement)  # a rename into place
        yield wait_until(lambda: self.served_serial("n1.example") == serial_of(replacement))
        os.remove(os.path.join(self.dir, "n2.example.pem"))
        yield wait_until(lambda: self.served_serial("n2.example") is None)
        Path(self.dir, "new.example.pem").write_bytes(b"")
        yield wait_until(lambda: ("new.example", []) in self.changed)
        self.assertIn(("n2.example", None), self.changed)
        # Untouched names were not re-read: the same entry objects are served.
        self.assertEqual(self.served_serial("n5.example"), serial_of(self.entries["n5.example"]))

    @inlineCallbacks
    def test_written_in_steps(self) -> Any:
        """A file written in several steps is served once complete; the old one until then."""
        self.start()
        yield self.loader.when_loaded()
        old = serial_of(self.entries["n7.example"])
        new = make_pem_objects(["n7.example"])
        data = serialize(new)
        path = os.path.join(self.dir, "n7.example.pem")
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.served_serial("n7.example"), old)
        with open(path, "ab") as f:
            f.write(data[len(data) // 2 :])
        yield wait_until(lambda: self.served_serial("n7.example") == serial_of(new))

    @inlineCallbacks
    def test_damaged_keeps_previous(self) -> Any:
        """A damaged replacement is logged after it settles; the previous entry stays."""
        self.start()
        yield self.loader.when_loaded()
        path = os.path.join(self.dir, "n8.example.pem")
        Path(path).write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        old = os.stat(path).st_mtime - 10
        os.utime(path, (old, old))  # settled long ago: no quiet retries
        self.loader.invalidate("n8.example")
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(self.served_serial("n8.example"), serial_of(self.entries["n8.example"]))
        self.flushLoggedErrors()  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_default(self) -> Any:
        """DEFAULT.pem is loaded at start and followed."""
        default = make_pem_objects(["default.example"])
        Path(self.dir, "DEFAULT.pem").write_bytes(serialize(default))
        self.start()
        assert self.index.default is not None
        self.assertEqual(self.index.default.serial_number, serial_of(default))
        other = make_pem_objects(["default.example"])
        yield self.store.store_default(other)
        yield wait_until(
            lambda: (
                self.index.default is not None
                and self.index.default.serial_number == serial_of(other)
            )
        )


class InotifyLoaderTests(_Loader, TestCase):
    mode = "inotify"

    def setUp(self) -> None:
        if not platform.supportsINotify():
            raise SkipTest("inotify needs Linux")
        super().setUp()


class ScanLoaderTests(_Loader, TestCase):
    mode = "scan"


class EndpointFollowsDirectoryTests(TestCase):
    """AutoTLSEndpoint on a directory: an empty entry added while it runs is issued at once."""

    timeout = 90
    mode = "auto"

    @inlineCallbacks
    def test_new_empty_entry_issued_and_served(self) -> Any:
        from tests.harness.tlsclient import tls_exchange

        pebble = shared_pebble()
        certs = tempfile.mkdtemp(prefix="txacme-loader-certs-")
        roots = certs + "-roots.pem"
        Path(roots).write_bytes(b"".join(pebble.roots()))
        key = jwk_for(generate_private_key("ec256"))

        def client_creator() -> Deferred[Client]:
            d = Client.from_url(reactor, pebble.directory_url, key, ca_file=pebble.ca_file)

            def keep(client: Client) -> Client:
                self.addCleanup(client.close)
                return client

            return d.addCallback(keep)

        endpoint = AutoTLSEndpoint(
            reactor,
            TCP4ServerEndpoint(reactor, pebble.tls_port, interface="127.0.0.1"),
            DirectoryStore(certs),
            client_creator,
            watch_interval=3600.0,  # no timer can be what issues the name
            watch_mode=self.mode,
        )
        from twisted.internet.protocol import Factory, Protocol

        port = yield endpoint.listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        Path(certs, "late.example.pem").write_bytes(b"")

        def served() -> bool:
            return endpoint.index is not None and endpoint.index.find("late.example") is not None

        yield wait_until(served, 60)
        answer = yield threads.deferToThread(tls_exchange, pebble.tls_port, "late.example", roots)
        self.assertIn("late.example", certificate_names(answer.certificate))
        stored = DirectoryStore(certs)
        objects = yield stored.get("late.example")
        self.assertTrue(objects)


class ScanEndpointFollowsDirectoryTests(EndpointFollowsDirectoryTests):
    mode = "scan"
