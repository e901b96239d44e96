"""
Unit tests of txacme.stores.coordination: leases and fencing, issuing under a lock (also
through AcmeIssuingService with two "processes" sharing a store), shared
challenges and following a store's changes. Everything runs on a
``twisted.internet.task.Clock`` against MemoryCoordinatingStore.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.harness import leases
from txacme.challenges.http01 import HTTP01Responder
from txacme.challenges.tlsalpn01 import TLSALPN01Responder
from txacme.errors import ConfigurationError
from txacme.interfaces import ICertificateStore
from txacme.issuing.events import Obtained
from txacme.issuing.locked import StoredCertificate, coordinated_issue
from txacme.issuing.service import AcmeIssuingService
from txacme.serving.cluster import ClusterNode, SharedResponder, identifier_for_sni
from txacme.serving.hello import ClientHello
from txacme.serving.index import CertificateIndex
from txacme.stores.coordination import (
    ChallengeRecord,
    ICoordinatingStore,
    LockLost,
    StoreChange,
    run_locked,
)
from txacme.stores.memory import MemoryCoordinatingStore
from txacme.testing import FakeClient, FakeIssuer, make_pem_objects

T0 = 1_800_000_000.0


def now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.seconds(), tz=timezone.utc)


def entry(clock: Clock, name: str, days: float = 90, age: float = 0) -> list[Any]:
    start = now(clock) - timedelta(days=age)
    return make_pem_objects([name], start, start + timedelta(days=days))


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@attrs.frozen
class FakeChallenge:
    token: str

    def encode(self, field: str) -> str:
        return self.token


@attrs.frozen
class FakeResponse:
    key_authorization: str


class LeaseTests(leases.LeaseContract, SynchronousTestCase):
    """The lease contract (tests/harness/leases.py) and what only the memory store does."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.a = MemoryCoordinatingStore(clock=self.clock, node_id="a", lease_ttl=30)
        self.b = MemoryCoordinatingStore(node_id="b", shared_with=self.a)

    def assert_not_stored(self, name: str) -> None:
        self.assertNotIn(name, self.a.certs)

    def test_provides_both_interfaces(self) -> None:
        """The memory store is a certificate store and a coordinating store."""
        self.assertTrue(ICertificateStore.providedBy(self.a))
        self.assertTrue(ICoordinatingStore.providedBy(self.a))

    def test_fenced_store_notifies(self) -> None:
        """A write under a live lease is stored and notified."""
        changes: list[StoreChange] = []
        self.b.subscribe(changes.append)
        lease = self.successResultOf(self.a.try_acquire("x.example"))
        objects = entry(self.clock, "x.example")
        self.successResultOf(self.a.store_fenced(lease, objects))
        self.assertEqual(self.successResultOf(self.b.get("x.example")), objects)
        self.assertEqual(changes, [StoreChange("certificate", "x.example", origin="a")])

    def test_acquire_waits_for_lapse(self) -> None:
        """A holder that never releases is taken over when its lease lapses."""
        self.successResultOf(self.a.try_acquire("x.example", ttl=5))
        waiting = self.b.acquire("x.example")
        self.clock.pump([1] * 4)
        self.assertNoResult(waiting)
        self.clock.pump([1] * 2)
        self.assertEqual(self.successResultOf(waiting).owner, "b")

    def test_acquire_cancel(self) -> None:
        """Cancelling acquire() stops waiting; no timer is left behind."""
        self.successResultOf(self.a.try_acquire("x.example", ttl=100))
        waiting = self.b.acquire("x.example")
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_lease_ttl_option(self) -> None:
        """A lease_ttl that is not a positive number is a ConfigurationError."""
        self.assertRaises(ConfigurationError, MemoryCoordinatingStore, lease_ttl=float("nan"))

    def test_mark_wanted_and_remove_notify(self) -> None:
        """Marking a name wanted and removing it are changes of that name."""
        changes: list[StoreChange] = []
        self.a.subscribe(changes.append)
        self.assertTrue(self.successResultOf(self.b.mark_wanted("w.example")))
        self.assertFalse(self.successResultOf(self.b.mark_wanted("w.example")))
        self.assertEqual(self.successResultOf(self.a.get("w.example")), [])
        self.assertTrue(self.successResultOf(self.b.remove("w.example")))
        self.assertEqual([c.name for c in changes], ["w.example", "w.example"])


class ChallengeRecordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryCoordinatingStore(clock=self.clock, node_id="n1")

    def test_put_get_delete(self) -> None:
        """Records are found by type, identifier or token, and expire."""
        record = ChallengeRecord("http-01", "A.Example", "tok", "tok.thumb")
        self.successResultOf(self.store.put_challenge(record, ttl=60))
        found = self.successResultOf(self.store.get_challenges("http-01", token="tok"))
        self.assertEqual(found, [attrs.evolve(record, identifier="a.example", owner="n1")])
        self.assertEqual(
            self.successResultOf(self.store.get_challenges("http-01", identifier="a.example")),
            found,
        )
        self.assertEqual(self.successResultOf(self.store.get_challenges("tls-alpn-01")), [])
        self.clock.advance(61)
        self.assertEqual(self.successResultOf(self.store.get_challenges("http-01")), [])
        self.successResultOf(self.store.delete_challenge(found[0]))

    def test_bad_records(self) -> None:
        """Unsupported types, bad tokens and mismatched key authorizations are refused."""
        for record in [
            ChallengeRecord("dns-01", "a.example", "tok", "tok.x"),
            ChallengeRecord("http-01", "a.example", "../x", "../x.y"),
            ChallengeRecord("http-01", "a.example", "tok", "other.x"),
            ChallengeRecord("http-01", "bad name", "tok", "tok.x"),
        ]:
            self.failureResultOf(self.store.put_challenge(record), ConfigurationError)

    def test_identifier_for_sni(self) -> None:
        """SNI names map to identifiers, reverse names to addresses."""
        self.assertEqual(identifier_for_sni("a.example"), "a.example")
        self.assertEqual(identifier_for_sni("4.3.2.1.in-addr.arpa"), "1.2.3.4")
        import ipaddress

        reverse = ipaddress.ip_address("2001:db8::1").reverse_pointer
        self.assertEqual(identifier_for_sni(reverse), "2001:db8::1")
        self.assertIsNone(identifier_for_sni("../etc"))
        self.assertIsNone(identifier_for_sni("3.2.1.in-addr.arpa"))


class RunLockedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryCoordinatingStore(clock=self.clock, node_id="a", lease_ttl=30)
        self.other = MemoryCoordinatingStore(node_id="b", shared_with=self.store)

    def test_renews_while_working(self) -> None:
        """A long piece of work keeps its lease alive, then releases it."""
        work: Deferred[str] = Deferred()
        d = Deferred.fromCoroutine(
            run_locked(self.store, "x.example", lambda lease: work, clock=self.clock)
        )
        for _ in range(10):
            self.clock.advance(10)
            self.assertIsNone(self.successResultOf(self.other.try_acquire("x.example")))
        work.callback("done")
        self.assertEqual(self.successResultOf(d), "done")
        self.assertIsNotNone(self.successResultOf(self.other.try_acquire("x.example")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_lease_cancels_work(self) -> None:
        """When a renewal finds the lease lost, the work is cancelled: LockLost."""
        cancelled: list[bool] = []
        work: Deferred[str] = Deferred(lambda d: cancelled.append(True))
        d = Deferred.fromCoroutine(
            run_locked(self.store, "x.example", lambda lease: work, clock=self.clock)
        )
        lease = self.store.holder("x.example")
        assert lease is not None
        # Someone steals the lock (as if the lease had lapsed during a pause).
        del self.store._state.locks["x.example"]
        self.successResultOf(self.other.try_acquire("x.example"))
        self.clock.advance(10)
        self.assertEqual(cancelled, [True])
        self.failureResultOf(d, LockLost)

    def test_work_failure_releases(self) -> None:
        """A failing piece of work releases the lock."""
        d = Deferred.fromCoroutine(
            run_locked(
                self.store,
                "x.example",
                lambda lease: Deferred.fromCoroutine(self._boom()),
                clock=self.clock,
            )
        )
        self.failureResultOf(d, ZeroDivisionError)
        self.assertIsNotNone(self.successResultOf(self.other.try_acquire("x.example")))

    async def _boom(self) -> None:
        raise ZeroDivisionError()

    def test_coordinated_issue_skips_when_renewed(self) -> None:
        """Another process's fresh certificate, found under the lock, is not ordered again."""
        fresh = entry(self.clock, "x.example")
        self.successResultOf(self.other.store("x.example", fresh))
        ordered: list[bool] = []

        def obtain() -> Deferred[Any]:
            ordered.append(True)
            return Deferred()

        d = Deferred.fromCoroutine(
            coordinated_issue(self.store, "x.example", obtain, lambda objs: False, clock=self.clock)
        )
        result = self.successResultOf(d)
        self.assertIsInstance(result, StoredCertificate)
        self.assertEqual(result.pem_objects, fresh)
        self.assertEqual(result.names, ["x.example"])
        self.assertEqual(ordered, [])

    def test_coordinated_issue_orders_and_fences(self) -> None:
        """A due name is ordered and stored under the lease."""
        issued = FakeIssuer(self.clock.seconds).make_issued(
            ["x.example"], now(self.clock), now(self.clock) + timedelta(days=90)
        )
        d = Deferred.fromCoroutine(
            coordinated_issue(
                self.store,
                "x.example",
                lambda: succeed(issued),
                lambda objs: True,
                clock=self.clock,
            )
        )
        self.assertIs(self.successResultOf(d), issued)
        self.assertEqual(self.store.certs["x.example"], issued.pem_objects)
        self.assertIsNone(self.store.holder("x.example"))


class ServiceClusterTests(SynchronousTestCase):
    """Two issuing services ("processes") sharing one coordinating store."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store_a = MemoryCoordinatingStore(clock=self.clock, node_id="a")
        self.store_b = MemoryCoordinatingStore(node_id="b", shared_with=self.store_a)
        self.issuer_a = FakeIssuer(self.clock.seconds)
        self.issuer_b = FakeIssuer(self.clock.seconds)

    def service(self, store: Any, issuer: FakeIssuer) -> AcmeIssuingService:
        service = AcmeIssuingService(
            store,
            client=FakeClient(),
            clock=self.clock,
            responders=[HTTP01Responder()],
            issue=issuer,
        )
        self.addCleanup(service.stopService)
        return service

    def test_one_order_for_a_wanted_name(self) -> None:
        """Both services want the name; one orders, the other finds it stored."""
        self.successResultOf(self.store_a.mark_wanted("w.example"))
        a = self.service(self.store_a, self.issuer_a)
        b = self.service(self.store_b, self.issuer_b)
        events: list[Any] = []
        b.subscribe(events.append)
        a.startService()
        b.startService()
        self.assertEqual(len(self.issuer_a.calls), 1)
        self.assertEqual(self.issuer_b.calls, [])  # b waits for the lock
        self.issuer_a.calls[0].succeed()
        self.clock.advance(0)
        self.assertEqual(self.issuer_b.calls, [])
        self.assertTrue(self.store_b.certs["w.example"])
        obtained = [e for e in events if isinstance(e, Obtained)]
        self.assertEqual([e.name for e in obtained], ["w.example"])
        self.successResultOf(b.when_certs_valid())

    def test_forced_issue_orders_again(self) -> None:
        """issue_cert() on an unchanged certificate still orders (under the lock)."""
        self.successResultOf(self.store_a.store("w.example", entry(self.clock, "w.example")))
        a = self.service(self.store_a, self.issuer_a)
        a.startService()
        d = a.issue_cert("w.example")
        self.assertEqual(len(self.issuer_a.calls), 1)
        issued = self.issuer_a.calls[0].succeed()
        self.assertIs(self.successResultOf(d), issued)
        self.assertEqual(self.store_b.certs["w.example"], issued.pem_objects)

    def test_lock_held_elsewhere_delays_order(self) -> None:
        """A name locked by another process is ordered once its lease lapses."""
        self.successResultOf(self.store_b.try_acquire("w.example", ttl=20))
        self.successResultOf(self.store_a.mark_wanted("w.example"))
        a = self.service(self.store_a, self.issuer_a)
        a.startService()
        self.assertEqual(self.issuer_a.calls, [])
        self.clock.pump([2] * 11)
        self.assertEqual(len(self.issuer_a.calls), 1)

    def test_lock_timeout_is_a_failure_of_the_name_only(self) -> None:
        """A lock that stays busy fails the attempt (LockTimeout), keeping the client."""
        from txacme.issuing.events import Failed

        store = MemoryCoordinatingStore(node_id="c", shared_with=self.store_a, lock_timeout=5)
        lease = self.successResultOf(self.store_b.try_acquire("w.example", ttl=1000))
        # A certificate due for renewal (the client is made at the start-up check).
        self.successResultOf(store.store("w.example", entry(self.clock, "w.example", age=70)))
        client = FakeClient()
        service = AcmeIssuingService(
            store,
            client=client,
            clock=self.clock,
            responders=[HTTP01Responder()],
            issue=self.issuer_a,
        )
        self.addCleanup(service.stopService)
        events: list[Any] = []
        service.subscribe(events.append)
        service.startService()
        self.clock.pump([1] * 6)
        failed = [e for e in events if isinstance(e, Failed)]
        self.assertEqual([e.problem for e in failed], ["LockTimeout"])
        self.assertEqual(self.issuer_a.calls, [])
        self.clock.pump([10] * 20)  # the retry after the backoff
        self.assertEqual(len([e for e in events if isinstance(e, Failed)]), 2)
        self.successResultOf(self.store_b.release(lease))
        self.clock.pump([60] * 20)
        self.assertEqual(len(self.issuer_a.calls), 1)
        self.assertEqual(len(client.started), 1)  # the client was kept


class SharedResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryCoordinatingStore(clock=self.clock, node_id="orderer")

    def test_start_and_stop(self) -> None:
        """The record exists exactly while the challenge is answered, locally too."""
        local = HTTP01Responder()
        shared = SharedResponder(self.store, local)
        self.assertEqual(shared.challenge_type, "http-01")
        challenge, response = FakeChallenge("tok"), FakeResponse("tok.thumb")
        self.successResultOf(shared.start_responding("A.example", challenge, response))
        self.assertEqual(local.active_tokens(), {"tok"})
        records = self.successResultOf(self.store.get_challenges("http-01"))
        self.assertEqual(
            records, [ChallengeRecord("http-01", "a.example", "tok", "tok.thumb", "orderer")]
        )
        self.successResultOf(shared.stop_responding("A.example", challenge, response))
        self.assertEqual(local.active_tokens(), frozenset())
        self.assertEqual(self.successResultOf(self.store.get_challenges("http-01")), [])

    def test_only_shareable_types(self) -> None:
        """dns-01 (or anything else) is not wrapped."""

        class DNS:
            challenge_type = "dns-01"

        self.assertRaises(ConfigurationError, SharedResponder, self.store, DNS())
        node = ClusterNode(self.store, clock=self.clock)
        dns = DNS()
        wrapped = node.responders([dns, HTTP01Responder(), TLSALPN01Responder()])
        self.assertIs(wrapped[0], dns)
        self.assertEqual([type(r) for r in wrapped[1:]], [SharedResponder, SharedResponder])


class ClusterNodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.orderer = MemoryCoordinatingStore(clock=self.clock, node_id="orderer")
        self.store = MemoryCoordinatingStore(node_id="server", shared_with=self.orderer)
        self.index = CertificateIndex()
        self.tls = TLSALPN01Responder()
        self.http = HTTP01Responder()
        self.wanted: list[str] = []
        self.node = ClusterNode(
            self.store,
            self.index,
            tls_alpn=self.tls.registry,
            http01=self.http,
            on_wanted=self.wanted.append,
            clock=self.clock,
            challenge_ttl=600,
        )
        self.node.start()
        self.addCleanup(self.node.stop)

    def test_requires_coordinating_store(self) -> None:
        """A plain store cannot join a cluster."""
        from txacme.testing import MemoryStore

        self.assertRaises(ConfigurationError, ClusterNode, MemoryStore())

    def test_follows_certificates(self) -> None:
        """Certificates stored by another process are served; removals too."""
        objects = entry(self.clock, "a.example")
        self.successResultOf(self.orderer.store("a.example", objects))
        served = self.index.find("a.example")
        assert served is not None
        self.assertEqual(
            served.certificate.serial_number,
            StoredCertificate.from_pem(objects).certificate.serial_number,
        )
        self.successResultOf(self.orderer.remove("a.example"))
        self.assertIsNone(self.index.find("a.example"))

    def test_wanted_names(self) -> None:
        """An entry that appears empty is handed to on_wanted."""
        self.successResultOf(self.orderer.mark_wanted("new.example"))
        self.assertEqual(self.wanted, ["new.example"])

    def test_resync_reloads(self) -> None:
        """A resync reloads the whole index."""
        self.store.certs["quiet.example"] = entry(self.clock, "quiet.example")
        self.store._state.notify(StoreChange("resync"))
        self.assertIsNotNone(self.index.find("quiet.example"))

    def test_tls_alpn_lookup(self) -> None:
        """A validator's hello for an unknown challenge is held while the store is asked."""
        record = ChallengeRecord("tls-alpn-01", "a.example", "tok", "tok.thumb")
        self.successResultOf(self.orderer.put_challenge(record))
        self.assertIsNone(self.node.hello_hook(ClientHello("a.example", (b"h2", b"acme-tls/1"))))
        d = self.node.hello_hook(ClientHello("a.example", (b"acme-tls/1",)))
        assert d is not None
        self.assertTrue(self.successResultOf(d))
        pending = self.tls.registry.lookup("a.example")
        assert pending is not None
        self.assertEqual(pending.identifier, "a.example")
        # Now known: no look-up.
        self.assertIsNone(self.node.hello_hook(ClientHello("a.example", (b"acme-tls/1",))))
        # Deleted by the orderer: forgotten here.
        self.successResultOf(self.orderer.delete_challenge(record))
        self.assertIsNone(self.tls.registry.lookup("a.example"))

    def test_tls_alpn_lookup_miss_and_expiry(self) -> None:
        """Unknown challenges answer False; copied ones are forgotten after their ttl."""
        d = self.node.hello_hook(ClientHello("b.example", (b"acme-tls/1",)))
        assert d is not None
        self.assertFalse(self.successResultOf(d))
        self.successResultOf(
            self.orderer.put_challenge(ChallengeRecord("tls-alpn-01", "b.example", "t", "t.x"))
        )
        self.successResultOf(self.node.lookup("tls-alpn-01", identifier="b.example"))
        self.assertIsNotNone(self.tls.registry.lookup("b.example"))
        self.clock.advance(601)
        self.assertIsNone(self.tls.registry.lookup("b.example"))

    def test_http01_lookup(self) -> None:
        """An unknown token is looked up in the store and served."""
        self.successResultOf(
            self.orderer.put_challenge(ChallengeRecord("http-01", "a.example", "tok", "tok.ka"))
        )
        assert self.node.http01 is not None
        request = DummyRequest([b"tok"])
        getChildForRequest(self.node.http01.resource, request).render(request)
        self.assertEqual(b"".join(request.written), b"tok.ka")
        self.assertEqual(request.finished, 1)
        self.assertEqual(self.http.active_tokens(), {"tok"})
        missing = DummyRequest([b"nope"])
        getChildForRequest(self.node.http01.resource, missing).render(missing)
        self.assertEqual(missing.responseCode, 404)

    def test_lookup_limit(self) -> None:
        """Beyond max_lookups concurrent look-ups, the answer is 'unknown' at once."""
        slow: list[Deferred[list[ChallengeRecord]]] = []

        class SlowStore(MemoryCoordinatingStore):
            def get_challenges(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                slow.append(d)
                return d

        store = SlowStore(clock=self.clock)
        node = ClusterNode(store, clock=self.clock, tls_alpn=self.tls.registry, max_lookups=2)
        first = node.lookup("tls-alpn-01", identifier="a.example")
        node.lookup("tls-alpn-01", identifier="b.example")
        third = node.lookup("tls-alpn-01", identifier="c.example")
        self.assertFalse(self.successResultOf(third))
        self.assertEqual(len(slow), 2)
        slow[0].callback([])
        self.assertFalse(self.successResultOf(first))
        node.stop()
