"""
The lease contract of :class:`~txacme.stores.coordination.ICoordinatingStore`,
written once and run against every coordinating store: a test case mixes
:class:`LeaseContract` in and, in ``setUp``, sets ``clock`` (a ``Clock`` at
:data:`T0`) and two stores ``a`` and ``b`` (owners ``"a"`` and ``"b"``, lease
ttl 30 s) that share their locks.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.internet.task import Clock

from txacme.errors import ConfigurationError
from txacme.stores.coordination import LockLost, LockTimeout
from txacme.testing import make_pem_objects

T0 = 1_800_000_000.0


def entry(clock: Clock, name: str, days: float = 90, age: float = 0) -> list[Any]:
    """A store entry for ``name``, valid from ``age`` days before the clock's now."""
    start = datetime.fromtimestamp(clock.seconds(), tz=timezone.utc) - timedelta(days=age)
    return make_pem_objects([name], start, start + timedelta(days=days))


class LeaseContract:
    """
    What every coordinating store does with leases: mix it in before
    ``SynchronousTestCase`` (it is no test case itself, so that importing it
    does not collect it).
    """

    clock: Clock
    a: Any
    b: Any
    # The SynchronousTestCase methods the contract uses.
    successResultOf: Any
    failureResultOf: Any
    assertNoResult: Any
    assertEqual: Any
    assertNotEqual: Any
    assertIsNone: Any
    assertTrue: Any
    assertFalse: Any

    def assert_not_stored(self, name: str) -> None:
        """``name`` has no certificate in the stores (a refused write left nothing)."""
        self.failureResultOf(self.a.get(name), KeyError)

    def test_try_acquire_busy_then_free(self) -> None:
        """A held lock is refused to the other until released; fences grow."""
        lease = self.successResultOf(self.a.try_acquire("Example.COM"))
        self.assertEqual((lease.name, lease.owner, lease.fence), ("example.com", "a", 1))
        self.assertEqual(lease.expires_at, T0 + 30)
        self.assertIsNone(self.successResultOf(self.b.try_acquire("example.com")))
        self.assertTrue(self.successResultOf(self.a.release(lease)))
        second = self.successResultOf(self.b.try_acquire("example.com"))
        self.assertEqual((second.owner, second.fence), ("b", 2))
        self.assertNotEqual(second.lease_id, lease.lease_id)
        self.assertFalse(self.successResultOf(self.a.release(lease)))

    def test_lease_lapses(self) -> None:
        """An unrenewed lease lapses: another holder gets the lock, the old one is fenced."""
        old = self.successResultOf(self.a.try_acquire("x.example", ttl=10))
        self.clock.advance(9.9)
        self.assertIsNone(self.successResultOf(self.b.try_acquire("x.example")))
        self.clock.advance(0.1)
        new = self.successResultOf(self.b.try_acquire("x.example"))
        self.assertEqual(new.fence, 2)
        self.failureResultOf(self.a.renew(old), LockLost)
        self.failureResultOf(self.a.store_fenced(old, entry(self.clock, "x.example")), LockLost)
        self.assert_not_stored("x.example")
        self.assertFalse(self.successResultOf(self.a.release(old)))
        self.assertEqual(self.a.holder("x.example"), new)

    def test_renew_extends(self) -> None:
        """Renewing moves the expiry to ttl from now and keeps id and fence."""
        lease = self.successResultOf(self.a.try_acquire("x.example", ttl=10))
        self.clock.advance(8)
        renewed = self.successResultOf(self.a.renew(lease, ttl=10))
        self.assertEqual((renewed.lease_id, renewed.fence), (lease.lease_id, lease.fence))
        self.assertEqual(renewed.expires_at, T0 + 18)
        self.clock.advance(5)
        self.assertIsNone(self.successResultOf(self.b.try_acquire("x.example")))

    def test_fenced_store(self) -> None:
        """A write under a live lease is what the other store reads."""
        lease = self.successResultOf(self.a.try_acquire("x.example"))
        objects = entry(self.clock, "x.example")
        self.successResultOf(self.a.store_fenced(lease, objects))
        self.assertEqual(self.successResultOf(self.b.get("x.example")), objects)

    def test_acquire_waits_for_release(self) -> None:
        """acquire() waits while the lock is held and gets it once released."""
        lease = self.successResultOf(self.a.try_acquire("x.example"))
        waiting = self.b.acquire("x.example")
        self.assertNoResult(waiting)
        self.clock.advance(1)
        self.assertNoResult(waiting)
        self.successResultOf(self.a.release(lease))
        self.clock.advance(2)
        got = self.successResultOf(waiting)
        self.assertEqual((got.owner, got.fence), ("b", 2))

    def test_acquire_timeout(self) -> None:
        """acquire() gives up after its timeout with LockTimeout."""
        self.successResultOf(self.a.try_acquire("x.example", ttl=100))
        waiting = self.b.acquire("x.example", timeout=3)
        self.clock.pump([0.5] * 5)
        self.assertNoResult(waiting)
        self.clock.pump([0.5] * 2)
        self.failureResultOf(waiting, LockTimeout)

    def test_bad_ttl(self) -> None:
        """A ttl that is not a positive number is a ConfigurationError."""
        self.failureResultOf(self.a.try_acquire("x.example", ttl=0), ConfigurationError)
        self.failureResultOf(self.a.acquire("x.example", ttl=-1), ConfigurationError)
