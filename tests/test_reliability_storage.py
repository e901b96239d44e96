"""
Storage faults: a writer killed mid-write, a full disk, a read-only directory,
and damaged ``.pem`` files. Whatever happens, the previous certificate stays
readable and served, and the error names the file.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pem
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.harness.logcapture import captured_logs
from tests.harness.tlsclient import BARE_GET, tls_exchange
from txacme import _files as files_module
from txacme.issuing.events import Failed, Obtained, ServiceEvent
from txacme.issuing.service import AcmeIssuingService
from txacme.serving.endpoint import AutoTLSEndpoint
from txacme.serving.tls import CertificateIndex
from txacme.stores import directory as store_module
from txacme.stores.directory import DirectoryStore, load_entry
from txacme.testing import FakeClient, FakeIssuer, make_pem_objects

PAGE = b"served\n"
NAME = "victim.example"

# Forks writers on demand: itself single-threaded, so fork() is safe, and the
# imports are paid once rather than once per killed process.
WRITER = r"""
import os, sys
import pem
from txacme.stores.directory import DirectoryStore

directory, name, *sources = sys.argv[1:]
entries = []
for source in sources:
    with open(source, "rb") as f:
        entries.append(pem.parse(f.read()))
store = DirectoryStore(directory)
print("ready", flush=True)
for line in sys.stdin:
    command, *args = line.split()
    if command == "fork":
        pid = os.fork()
        if pid == 0:
            i = int(args[0])
            while True:
                store.store(name, entries[i % len(entries)])
                i += 1
        print(pid, flush=True)
    elif command == "reap":
        _, status = os.waitpid(int(args[0]), 0)
        print(status, flush=True)
"""


def now() -> datetime:
    return datetime.now(timezone.utc)


def fresh_entry(name: str) -> list[pem.AbstractPEMObject]:
    """A valid entry that is not due for renewal for two months."""
    return make_pem_objects([name], now() - timedelta(days=1), now() + timedelta(days=89))


def certificate_of(objects: list[Any]) -> bytes:
    return bytes(objects[1].as_bytes())


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/plain"))
    return Site(root)


def served_certificate(port: int, name: str) -> bytes:
    """Blocking: handshake + GET with SNI ``name``; the PEM of the certificate served."""
    answer = tls_exchange(port, name, request=BARE_GET)
    assert answer.der is not None and answer.data.endswith(PAGE)
    return answer.certificate.public_bytes(serialization.Encoding.PEM)


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


def temp_files(directory: str) -> list[str]:
    return [f for f in os.listdir(directory) if f.endswith(".tmp")]


class KilledWriterTests(TestCase):
    timeout = 60

    def test_sigkill_during_store_keeps_a_whole_entry(self) -> None:
        """
        Fifty writers, each rewriting one entry in a loop through
        ``DirectoryStore.store``, are killed with SIGKILL at a random moment.
        After every kill the entry is one of the certificates written, whole,
        with its key, and a certificate index built from the store serves it.
        Some kills land mid-write (temporary files are left behind, ignored).
        """
        directory = self.mktemp()
        os.makedirs(directory)
        candidates = [fresh_entry(NAME) for _ in range(3)]
        sources = []
        for i, objects in enumerate(candidates):
            source = os.path.join(self.mktemp() + f"-{i}.pem")
            with open(source, "wb") as f:
                f.write(b"".join(o.as_bytes() for o in objects))
            sources.append(source)
        store = DirectoryStore(directory)
        self.successResultOf(store.store(NAME, candidates[0]))
        written = {certificate_of(c): c for c in candidates}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        helper = subprocess.Popen(
            [sys.executable, "-c", WRITER, directory, NAME, *sources],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert helper.stdin is not None and helper.stdout is not None
        self.addCleanup(helper.wait, 10)
        self.addCleanup(helper.stdin.close)
        self.assertEqual(helper.stdout.readline().strip(), "ready")
        rng = random.Random(1234)
        path = os.path.join(directory, NAME + ".pem")
        writers: list[int] = []
        self.addCleanup(_kill_all, writers)
        for i in range(50):
            helper.stdin.write(f"fork {i}\n")
            helper.stdin.flush()
            pid = int(helper.stdout.readline())
            writers.append(pid)
            time.sleep(rng.uniform(0.002, 0.03))  # a random moment, not a timing assertion
            os.kill(pid, signal.SIGKILL)
            helper.stdin.write(f"reap {pid}\n")
            helper.stdin.flush()
            status = int(helper.stdout.readline())
            writers.remove(pid)  # reaped: its pid may be reused, never signal it again
            self.assertTrue(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
            entry = load_entry(path)  # raises if damaged
            self.assertIn(certificate_of(entry), written, f"iteration {i}")
            self.assertEqual(
                entry[0].as_bytes(), written[certificate_of(entry)][0].as_bytes(), "key"
            )
            index = CertificateIndex()
            self.successResultOf(index.load_from(store))
            served = index.lookup(NAME)
            assert served is not None
            self.assertEqual(
                served.certificate.public_bytes(serialization.Encoding.PEM),
                certificate_of(entry),
            )
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        leftovers = temp_files(directory)
        self.assertTrue(leftovers, "no kill landed mid-write: the test proves nothing")
        for leftover in leftovers:
            self.assertEqual(os.stat(os.path.join(directory, leftover)).st_mode & 0o777, 0o600)
        self.assertEqual(list(self.successResultOf(store.as_dict())), [NAME])


def _kill_all(pids: list[int]) -> None:
    """Make sure no writer outlives the test: kill those forked and not yet reaped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Mount:
    """A small tmpfs mounted for one test (root only), unmounted in cleanup."""

    def __init__(self, testcase: TestCase, size: str = "64k") -> None:
        self.path = tempfile.mkdtemp(prefix="txacme-tmpfs-")
        testcase.addCleanup(os.rmdir, self.path)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", self.path],
            capture_output=True,
        )
        self.mounted = result.returncode == 0
        if self.mounted:
            testcase.addCleanup(self.unmount)

    def unmount(self) -> None:
        subprocess.run(["umount", self.path], check=True)

    def remount_read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", self.path], check=True)


class WriteFailureTests(TestCase):
    """
    A write that fails leaves the old entry whole and in place, removes its
    temporary file, and fails with an ``OSError`` naming the file; the service
    reports it as a failed attempt and keeps serving the old certificate.
    """

    def setUp(self) -> None:
        self.mount = _Mount(self)
        self.directory = self.mount.path if self.mount.mounted else self.mktemp()
        os.makedirs(self.directory, exist_ok=True)
        self.store = DirectoryStore(self.directory)
        self.old = fresh_entry(NAME)
        self.successResultOf(self.store.store(NAME, self.old))
        self.path = os.path.join(self.directory, NAME + ".pem")
        with open(self.path, "rb") as f:
            self.old_bytes = f.read()

    def fail_os_call(self, name: str, code: int) -> None:
        """
        Make ``os.<name>`` in txacme.stores.directory (and txacme._files, which writes
        and syncs its files) fail with ``code`` for the store's files.
        """
        original: Callable[..., Any] = getattr(os, name)

        def failing(*args: Any, **kwargs: Any) -> Any:
            target = args[0]
            if name == "open" and not str(target).startswith(self.directory):
                return original(*args, **kwargs)
            raise OSError(code, os.strerror(code))

        fake_os = _OsProxy(os, {name: failing})
        self.patch(store_module, "os", fake_os)
        self.patch(files_module, "os", fake_os)

    def check_failed_write(self, code: int) -> None:
        failure = self.failureResultOf(self.store.store(NAME, fresh_entry(NAME)), OSError)
        self.assertEqual(failure.value.errno, code)
        self.assertIn(self.path, str(failure.value))
        self.assertIn(os.strerror(code), str(failure.value))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), self.old_bytes)
        self.assertEqual(temp_files(self.directory), [])
        self.assertEqual(
            certificate_of(self.successResultOf(self.store.get(NAME))), certificate_of(self.old)
        )

    def test_disk_full(self) -> None:
        """
        ENOSPC: a real 64 KiB tmpfs filled up when mounting is allowed (as
        root in CI), else a simulated ``os.write`` failure.
        """
        if self.mount.mounted:
            filler = os.path.join(self.directory, "filler")
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 1024)
                except OSError as e:
                    self.assertEqual(e.errno, errno.ENOSPC)
        else:
            self.fail_os_call("write", errno.ENOSPC)
        self.check_failed_write(errno.ENOSPC)

    def test_read_only(self) -> None:
        """
        EROFS: the tmpfs remounted read-only when mounting is allowed, else a
        simulated ``os.open`` failure (chmod does not stop root).
        """
        if self.mount.mounted:
            self.mount.remount_read_only()
        else:
            self.fail_os_call("open", errno.EROFS)
        self.check_failed_write(errno.EROFS)

    def test_service_reports_and_keeps_serving(self) -> None:
        """
        Through the service: the renewal's write fails with ENOSPC, a
        ``failed`` event names the file and the error, the TLS index keeps
        the old certificate, and the next attempt (disk freed) stores.
        """
        clock = Clock()
        clock.advance(time.time())
        due = make_pem_objects([NAME], now() - timedelta(days=80), now() + timedelta(days=10))
        self.successResultOf(self.store.store(NAME, due))
        index = CertificateIndex()
        self.successResultOf(index.load_from(self.store))
        issuer = FakeIssuer(clock.seconds, auto="succeed")
        service = AcmeIssuingService(
            self.store, FakeClient, clock, [], issue=issuer, on_stored=index.update
        )
        events: list[ServiceEvent] = []
        service.subscribe(events.append)
        self.fail_os_call("write", errno.ENOSPC)
        with captured_logs() as logs:
            service.startService()
        self.addCleanup(service.stopService)
        failed = [e for e in events if isinstance(e, Failed)]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0].problem, "OSError")
        self.assertIn(self.path, failed[0].detail)
        self.assertIn("No space left on device", failed[0].detail)
        self.assertTrue(any(self.path in t and "No space" in t for t in texts(logs)))
        served = index.lookup(NAME)
        assert served is not None
        self.assertEqual(
            served.certificate.public_bytes(serialization.Encoding.PEM), certificate_of(due)
        )
        self.assertEqual(
            certificate_of(self.successResultOf(self.store.get(NAME))), certificate_of(due)
        )
        self.flushLoggedErrors(OSError)
        # Space again: the next attempt, after the backoff, stores and serves.
        self.patch(store_module, "os", os)
        self.patch(files_module, "os", os)
        clock.advance(66)
        self.assertEqual(len([e for e in events if isinstance(e, Obtained)]), 1)
        new = self.successResultOf(self.store.get(NAME))
        self.assertNotEqual(certificate_of(new), certificate_of(due))
        served = index.lookup(NAME)
        assert served is not None
        self.assertEqual(
            served.certificate.public_bytes(serialization.Encoding.PEM), certificate_of(new)
        )


class _OsProxy:
    """The ``os`` module with some functions replaced."""

    def __init__(self, module: Any, replaced: dict[str, Callable[..., Any]]) -> None:
        self._module = module
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        if name in self._replaced:
            return self._replaced[name]
        return getattr(self._module, name)


class DamagedFileTests(TestCase):
    """
    Malformed, truncated and mismatched ``.pem`` files are reported by file
    name and skipped; every other name is served by AutoTLSEndpoint.
    """

    timeout = 60

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.store = DirectoryStore(self.directory)
        self.good = {name: fresh_entry(name) for name in ("good1.example", "good2.example")}
        for name, objects in self.good.items():
            self.successResultOf(self.store.store(name, objects))
        whole = b"".join(o.as_bytes() for o in fresh_entry("truncated.example"))
        other = fresh_entry("mismatched.example")
        self.damaged = {
            "garbage.example": b"this is not PEM at all\n\0\xff",
            "truncated.example": whole[: len(whole) * 2 // 3],
            "mismatched.example": self.good["good1.example"][0].as_bytes() + other[1].as_bytes(),
            "nokey.example": other[1].as_bytes(),
        }
        for name, data in self.damaged.items():
            with open(os.path.join(self.directory, name + ".pem"), "wb") as f:
                f.write(data)

    async def listen(self, **kwargs: Any) -> tuple[AutoTLSEndpoint, int]:
        endpoint = AutoTLSEndpoint(
            reactor,
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            self.store,
            FakeClient,
            **kwargs,
        )
        port = await endpoint.listen(site())
        self.addCleanup(port.stopListening)
        return endpoint, port.getHost().port

    def test_damaged_files_reported_and_skipped(self) -> Deferred[None]:
        async def check() -> None:
            with captured_logs() as logs:
                _, port = await self.listen(watch_interval=None)
            messages = texts(logs)
            for name in self.damaged:
                path = os.path.join(self.directory, name + ".pem")
                self.assertTrue(
                    any(path in m for m in messages), f"{path} not reported in {messages}"
                )
            for name, objects in self.good.items():
                served = await deferToThread(served_certificate, port, name)
                self.assertEqual(served, certificate_of(objects))
            for name in self.damaged:
                with self.assertRaises(ssl.SSLError):
                    await deferToThread(served_certificate, port, name)
            # Nothing was overwritten or issued.
            for name, data in self.damaged.items():
                with open(os.path.join(self.directory, name + ".pem"), "rb") as f:
                    self.assertEqual(f.read(), data)

        return Deferred.fromCoroutine(check())

    def test_file_damaged_while_serving(self) -> Deferred[None]:
        """
        A served entry whose file is later damaged (say, a botched manual
        edit) keeps its last good certificate: the watcher logs the file and
        does not drop the name.
        """

        async def check() -> None:
            endpoint, port = await self.listen(watch_interval=0.02)
            path = os.path.join(self.directory, "good2.example.pem")
            with open(path, "rb") as f:
                whole = f.read()
            with captured_logs() as logs, open(path, "wb") as f:
                f.write(whole[:300])
                f.flush()
                for _ in range(20):  # several watcher rounds
                    await deferLater(reactor, 0.02, lambda: None)
            self.assertTrue(any(path in m for m in texts(logs)))
            served = await deferToThread(served_certificate, port, "good2.example")
            self.assertEqual(served, certificate_of(self.good["good2.example"]))

        return Deferred.fromCoroutine(check())
