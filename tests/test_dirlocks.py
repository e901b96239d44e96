"""
txacme.stores.dirlocks: the coordinating directory store. Leases and fencing on
a Clock with two store objects on one directory (two open file descriptions
conflict under flock as two processes do), challenge records as files, two
issuing services sharing a directory (one order per name), change hints through
real inotify, and a real subprocess holding a lock killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import leases
from txacme.challenges.http01 import HTTP01Responder
from txacme.errors import ConfigurationError
from txacme.interfaces import ICertificateStore
from txacme.issuing.service import AcmeIssuingService
from txacme.stores.coordination import (
    ChallengeRecord,
    ICoordinatingStore,
    StoreChange,
    run_locked,
)
from txacme.stores.dirlocks import CoordinatingDirectoryStore
from txacme.testing import FakeClient, FakeIssuer, make_pem_objects

T0 = 1_800_000_000.0


def entry(clock: Clock, name: str) -> list[Any]:
    start = datetime.fromtimestamp(clock.seconds(), tz=timezone.utc)
    return make_pem_objects([name], start, start + timedelta(days=90))


def make_dir(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="txacme-dirlocks-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class LeaseTests(leases.LeaseContract, SynchronousTestCase):
    """The lease contract (tests/harness/leases.py) and what only the directory store does."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.dir = make_dir(self)
        self.a = CoordinatingDirectoryStore(
            self.dir, clock=self.clock, watch_mode="scan", node_id="a", lease_ttl=30
        )
        self.b = CoordinatingDirectoryStore(
            self.dir, clock=self.clock, watch_mode="scan", node_id="b", lease_ttl=30
        )
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_provides_both_interfaces(self) -> None:
        """A certificate store and a coordinating store; its state dir is private."""
        self.assertTrue(ICertificateStore.providedBy(self.a))
        self.assertTrue(ICoordinatingStore.providedBy(self.a))
        self.assertEqual(os.stat(os.path.join(self.dir, ".txacme")).st_mode & 0o777, 0o700)
        self.assertEqual(self.successResultOf(self.a.as_dict()), {})

    def test_one_store_conflicts_with_itself(self) -> None:
        """Two attempts from one store object conflict too (flock per open file)."""
        lease = self.successResultOf(self.a.try_acquire("Example.COM"))
        self.assertIsNone(self.successResultOf(self.a.try_acquire("example.com")))
        self.assertEqual(self.b.holder("example.com"), lease)
        self.assertTrue(self.successResultOf(self.a.release(lease)))
        self.assertIsNone(self.b.holder("example.com"))
        second = self.successResultOf(self.b.try_acquire("example.com"))
        self.assertEqual((second.owner, second.fence), ("b", 2))
        self.assertFalse(self.successResultOf(self.a.release(lease)))

    def test_renew_shows_in_the_lock_file(self) -> None:
        """A renewed lease is written to its lock file: owner, pid, expiry."""
        lease = self.successResultOf(self.a.try_acquire("x.example", ttl=10))
        self.clock.advance(8)
        self.successResultOf(self.a.renew(lease, ttl=10))
        with open(os.path.join(self.dir, ".txacme", "locks", "x.example.lock")) as f:
            info = json.load(f)
        self.assertEqual(
            (info["owner"], info["pid"], info["expires_at"]), ("a", os.getpid(), T0 + 18)
        )

    def test_fenced_store_file_mode(self) -> None:
        """A write under a live lease lands in <name>.pem, mode 0600."""
        lease = self.successResultOf(self.a.try_acquire("x.example"))
        self.successResultOf(self.a.store_fenced(lease, entry(self.clock, "x.example")))
        self.assertEqual(os.stat(os.path.join(self.dir, "x.example.pem")).st_mode & 0o777, 0o600)

    def test_run_locked_renews_and_releases(self) -> None:
        """run_locked keeps the lease alive through long work, then unlocks."""
        work: Deferred[str] = Deferred()
        d = Deferred.fromCoroutine(
            run_locked(self.a, "x.example", lambda lease: work, clock=self.clock)
        )
        for _ in range(10):
            self.clock.advance(10)
            self.assertIsNone(self.successResultOf(self.b.try_acquire("x.example")))
        work.callback("done")
        self.assertEqual(self.successResultOf(d), "done")
        self.assertIsNotNone(self.successResultOf(self.b.try_acquire("x.example")))

    def test_close_releases(self) -> None:
        """Closing the store unlocks what it holds."""
        self.successResultOf(self.a.try_acquire("x.example", ttl=100))
        self.a.close()
        self.assertIsNotNone(self.successResultOf(self.b.try_acquire("x.example")))

    def test_bad_arguments(self) -> None:
        """Bad ttls and a directory that is not one are ConfigurationErrors."""
        self.failureResultOf(self.a.try_acquire("x.example", ttl=0), ConfigurationError)
        self.failureResultOf(self.a.acquire("x.example", ttl=-1), ConfigurationError)
        self.assertRaises(
            ConfigurationError,
            CoordinatingDirectoryStore,
            self.dir,
            clock=self.clock,
            lease_ttl=float("nan"),
        )
        self.assertRaises(
            ConfigurationError, CoordinatingDirectoryStore, self.dir + "/missing", clock=self.clock
        )


class ChallengeRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.dir = make_dir(self)
        self.a = CoordinatingDirectoryStore(
            self.dir, clock=self.clock, watch_mode="scan", node_id="a"
        )
        self.b = CoordinatingDirectoryStore(
            self.dir, clock=self.clock, watch_mode="scan", node_id="b"
        )

    def test_put_get_delete(self) -> None:
        """A record written by one is found by the other by identifier or token, then gone."""
        record = ChallengeRecord("http-01", "A.Example", "tok", "tok.thumb")
        self.successResultOf(self.a.put_challenge(record, ttl=60))
        expected = [attrs.evolve(record, identifier="a.example", owner="a")]
        self.assertEqual(
            self.successResultOf(self.b.get_challenges("http-01", token="tok")), expected
        )
        self.assertEqual(
            self.successResultOf(self.b.get_challenges("http-01", identifier="a.example")),
            expected,
        )
        self.assertEqual(self.successResultOf(self.b.get_challenges("http-01")), expected)
        self.assertEqual(self.successResultOf(self.b.get_challenges("tls-alpn-01")), [])
        self.assertEqual(self.successResultOf(self.b.get_challenges("http-01", token="other")), [])
        self.successResultOf(self.b.delete_challenge(expected[0]))
        self.assertEqual(self.successResultOf(self.a.get_challenges("http-01")), [])
        self.assertEqual(os.listdir(os.path.join(self.dir, ".txacme", "challenges", "http-01")), [])
        self.successResultOf(self.b.delete_challenge(expected[0]))  # already gone: no-op

    def test_expiry_removes(self) -> None:
        """An expired record is not returned and its file is removed."""
        record = ChallengeRecord("tls-alpn-01", "a.example", "tok", "tok.x")
        self.successResultOf(self.a.put_challenge(record, ttl=60))
        self.clock.advance(61)
        self.assertEqual(self.successResultOf(self.b.get_challenges("tls-alpn-01")), [])
        self.assertFalse(
            os.path.exists(
                os.path.join(self.dir, ".txacme", "challenges", "tls-alpn-01", "a.example")
            )
        )

    def test_bad_records(self) -> None:
        """Unsupported types, path-like tokens and mismatched key authorizations are refused."""
        for record in [
            ChallengeRecord("dns-01", "a.example", "tok", "tok.x"),
            ChallengeRecord("http-01", "a.example", "../x", "../x.y"),
            ChallengeRecord("http-01", "a.example", "tok", "other.x"),
            ChallengeRecord("http-01", "../../etc", "tok", "tok.x"),
        ]:
            self.failureResultOf(self.a.put_challenge(record), ConfigurationError)
        self.assertEqual(self.successResultOf(self.a.get_challenges("../..")), [])


class ServiceSharingTests(SynchronousTestCase):
    """Two issuing services, each with its own store object on one directory."""

    def test_one_order_per_name(self) -> None:
        """Both services plan every wanted name; each name is ordered exactly once."""
        clock = Clock()
        clock.advance(T0)
        directory = make_dir(self)
        names = [f"n{i}.example" for i in range(5)]
        for name in names:
            open(os.path.join(directory, name + ".pem"), "wb").close()
        issuers = []
        for node in ("a", "b"):
            store = CoordinatingDirectoryStore(
                directory, clock=clock, node_id=node, watch_mode="scan"
            )
            issuer = FakeIssuer(clock.seconds)
            issuers.append(issuer)
            service = AcmeIssuingService(
                store,
                client=FakeClient(),
                clock=clock,
                responders=[HTTP01Responder()],
                issue=issuer,
            )
            service.startService()
            self.addCleanup(service.stopService)
        for _ in range(40):
            # Orders finish while the other service may be waiting for the lock.
            for issuer in issuers:
                for call in issuer.calls:
                    if not call.deferred.called:
                        call.succeed()
            clock.pump([0.5] * 2)
        ordered = sorted(n for issuer in issuers for call in issuer.calls for n in call.names)
        self.assertEqual(ordered, names)
        for name in names:
            self.assertGreater(os.path.getsize(os.path.join(directory, name + ".pem")), 0)


HOLDER = """
import sys, time
from twisted.internet.task import Clock
from txacme.stores.dirlocks import CoordinatingDirectoryStore
clock = Clock()
clock.advance(time.time())
store = CoordinatingDirectoryStore(sys.argv[1], clock=clock, node_id="victim", lease_ttl=600)
lease = store.try_acquire("held.example").result
print("held", lease.fence, flush=True)
time.sleep(600)
"""


class RealProcessTests(TestCase):
    """The real reactor, real inotify and a real second process."""

    timeout = 60

    def setUp(self) -> None:
        self.dir = make_dir(self)

    def store(self, node_id: str) -> CoordinatingDirectoryStore:
        store = CoordinatingDirectoryStore(self.dir, clock=reactor, node_id=node_id, lease_ttl=60)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def test_sigkill_releases_the_lock(self) -> Any:
        """A process killed by SIGKILL while holding a lock loses it; a waiter gets it."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [
                os.path.dirname(os.path.dirname(sys.modules["txacme"].__file__ or "")),
                env.get("PYTHONPATH", ""),
            ]
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, self.dir], stdout=subprocess.PIPE, env=env
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = proc.stdout.readline() if proc.stdout is not None else b""
        self.assertEqual(line.split(), [b"held", b"1"])
        store = self.store("survivor")
        self.assertIsNone((yield store.try_acquire("held.example")))
        holder = store.holder("held.example")
        assert holder is not None
        self.assertEqual((holder.owner, holder.fence), ("victim", 1))
        waiting = store.acquire("held.example", timeout=10)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        lease = yield waiting
        took = time.monotonic() - killed
        proc.wait()
        self.assertEqual((lease.owner, lease.fence), ("survivor", 2))
        self.assertLess(took, 10)

    @inlineCallbacks
    def test_hints_across_stores(self) -> Any:
        """A certificate, a challenge and a lock release by one are hinted to the other."""
        a, b = self.store("a"), self.store("b")
        changes: list[StoreChange] = []
        b.subscribe(changes.append)
        yield deferLater(reactor, 0.1, lambda: None)
        lease = yield a.try_acquire("x.example")
        yield a.store_fenced(lease, _real_entry())
        yield a.release(lease)
        record = ChallengeRecord("tls-alpn-01", "x.example", "tok", "tok.k", "a")
        yield a.put_challenge(record)
        yield _until(lambda: {c.kind for c in changes} >= {"certificate", "lock", "challenge"})
        self.assertIn(StoreChange("certificate", "x.example"), changes)
        self.assertIn("x.example", [c.name for c in changes if c.kind == "lock"])
        found = [c for c in changes if c.kind == "challenge"]
        self.assertEqual(
            (found[0].name, found[0].challenge_type, found[0].token),
            ("x.example", "tls-alpn-01", "tok"),
        )
        del changes[:]
        yield a.delete_challenge(record)
        yield _until(lambda: any(c.kind == "challenge" and c.deleted for c in changes))


def _real_entry() -> list[Any]:
    start = datetime.now(tz=timezone.utc)
    return make_pem_objects(["x.example"], start, start + timedelta(days=90))


@inlineCallbacks
def _until(condition: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        yield deferLater(reactor, 0.02, lambda: None)
