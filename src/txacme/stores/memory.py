"""
Stores in memory: :class:`MemoryStore` (an
:class:`~txacme.interfaces.ICertificateStore`) and
:class:`MemoryCoordinatingStore`, which adds the locks, challenge records and
change notification of :class:`~txacme.stores.coordination.ICoordinatingStore`.

They follow the same rules as :class:`~txacme.stores.directory.DirectoryStore`:
names are normalized (an invalid name fails the ``Deferred`` with
:class:`~txacme.errors.InvalidServerName`), an empty list means "wanted", a
missing name is a ``KeyError``, and :meth:`MemoryStore.store` accepts only one
private key with at least one certificate, the key matching the first one.
Tests use them (``txacme.testing`` re-exports :class:`MemoryStore`), and so does
the ``memory:`` store URL.

May import the core modules and :mod:`txacme.stores.coordination`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping

import attrs
import pem
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txacme.certificates import validate_pem_objects
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import ICertificateStore
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.stores.coordination import (
    DEFAULT_CHALLENGE_TTL,
    DEFAULT_LEASE_TTL,
    DEFAULT_LOCK_TIMEOUT,
    ChallengeRecord,
    ICoordinatingStore,
    Lease,
    LockLost,
    LockWaits,
    StoreChange,
    _acquire_request,
    _check_ttl,
    _checked_record,
    _lease_ttl,
    _lock_request,
    acquire_loop,
)

log = Logger()


@implementer(ICertificateStore)
class MemoryStore:
    """
    A certificate store in memory.

    :ivar certs: the entries, by canonical server name (read it in tests; use
        the methods to change it).
    """

    def __init__(self, certs: Mapping[str, Iterable[pem.AbstractPEMObject]] | None = None) -> None:
        """
        :param certs: initial entries; ``[]`` marks a name as wanted.
        :raises txacme.errors.ConfigurationError: for an invalid name or entry.
        """
        self.certs: dict[str, list[pem.AbstractPEMObject]] = {}
        for name, objects in (certs or {}).items():
            canonical = normalize_server_name(name)
            entry = list(objects)
            if entry:
                entry = validate_pem_objects(entry, canonical)
            self.certs[canonical] = entry

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """
        Fetch the entry of ``server_name`` (a copy); ``KeyError`` if missing.
        """
        try:
            name = normalize_server_name(server_name)
            return succeed(list(self.certs[name]))
        except Exception:
            return fail()

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """
        Validate and replace the entry of ``server_name``.
        """
        try:
            name = normalize_server_name(server_name)
            self.certs[name] = validate_pem_objects(pem_objects, server_name)
        except Exception:
            return fail()
        return succeed(None)

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """
        Fetch a copy of every entry.
        """
        return succeed({name: list(objects) for name, objects in self.certs.items()})


class _SharedMemoryState:
    """What the views of one :class:`MemoryCoordinatingStore` share."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.certs: dict[str, list[pem.AbstractPEMObject]] = {}
        self.locks: dict[str, Lease] = {}
        self.fences: dict[str, int] = {}
        self.challenges: dict[tuple[str, str, str], tuple[ChallengeRecord, float]] = {}
        self.subscribers: list[Callable[[StoreChange], object]] = []
        self.waits = LockWaits(clock)

    def notify(self, change: StoreChange) -> None:
        for callback in list(self.subscribers):
            try:
                callback(change)
            except Exception:
                log.failure("store change subscriber {callback!r} failed", callback=callback)


@implementer(ICertificateStore, ICoordinatingStore)
class MemoryCoordinatingStore(MemoryStore):
    """
    A :class:`MemoryStore` with locks, challenge records and change
    notification, on ``clock``'s time.

    Several "processes" of one test share a store by passing ``shared_with``:
    they see the same entries, locks and records and each other's changes, and
    keep their own ``node_id``. Notifications are delivered synchronously.

    :param certs: initial entries (as for ``MemoryStore``).
    :param clock: gives the time for leases and records; needed unless
        ``shared_with`` is given.
    :param node_id: this view's owner name.
    :param lease_ttl: default lease lifetime, seconds.
    :param lock_timeout: default wait of :meth:`acquire`, seconds.
    :param shared_with: another ``MemoryCoordinatingStore`` to share state with
        (its clock is used).
    :raises txacme.errors.ConfigurationError: for a bad entry, ``lease_ttl`` or
        ``lock_timeout``.
    :raises TypeError: when neither ``clock`` nor ``shared_with`` is given.
    """

    def __init__(
        self,
        certs: Mapping[str, Iterable[pem.AbstractPEMObject]] | None = None,
        *,
        clock: IReactorTime | None = None,
        node_id: str = "memory",
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        shared_with: MemoryCoordinatingStore | None = None,
    ) -> None:
        super().__init__(certs)
        self.node_id = node_id
        self.lease_ttl = _check_ttl(lease_ttl, "lease_ttl")
        self.lock_timeout = _check_ttl(lock_timeout, "lock_timeout")
        self._state: _SharedMemoryState
        if shared_with is not None:
            self._state = shared_with._state
        elif clock is not None:
            self._state = _SharedMemoryState(clock)
        else:
            raise TypeError("MemoryCoordinatingStore needs a clock (or shared_with)")
        self._state.certs.update(self.certs)
        self.certs = self._state.certs

    def __repr__(self) -> str:
        return f"MemoryCoordinatingStore(node_id={self.node_id!r})"

    @property
    def clock(self) -> IReactorTime:
        """The clock leases are measured on."""
        return self._state.clock

    def _now(self) -> float:
        return self._state.clock.seconds()

    # -- certificates ------------------------------------------------------

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """Validate and replace the entry of ``server_name``; notify."""
        try:
            name = normalize_server_name(server_name)
            self.certs[name] = validate_pem_objects(pem_objects, server_name)
        except Exception:
            return fail()
        self._state.notify(StoreChange("certificate", name, origin=self.node_id))
        return succeed(None)

    def mark_wanted(self, server_name: str) -> Deferred[bool]:
        """Create an empty entry unless one exists; notify when created."""
        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        if name in self.certs:
            return succeed(False)
        self.certs[name] = []
        self._state.notify(StoreChange("certificate", name, origin=self.node_id))
        return succeed(True)

    def remove(self, server_name: str) -> Deferred[bool]:
        """Delete the entry of ``server_name``; notify when there was one."""
        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        if self.certs.pop(name, None) is None:
            return succeed(False)
        self._state.notify(StoreChange("certificate", name, origin=self.node_id))
        return succeed(True)

    # -- locks -------------------------------------------------------------

    def _live(self, name: str) -> Lease | None:
        lease = self._state.locks.get(name)
        if lease is not None and lease.expires_at <= self._now():
            return None
        return lease

    def _try(self, name: str, ttl: float) -> tuple[Lease | None, float]:
        holder = self._live(name)
        if holder is not None:
            return None, holder.expires_at - self._now()
        fence = self._state.fences.get(name, 0) + 1
        self._state.fences[name] = fence
        lease = Lease(name, secrets.token_hex(16), fence, self.node_id, self._now() + ttl)
        self._state.locks[name] = lease
        return lease, 0.0

    def try_acquire(self, name: str, ttl: float | None = None) -> Deferred[Lease | None]:
        """Take the lock of ``name`` if it is free; ``None`` if it is held."""
        try:
            name, real_ttl = _lock_request(self, name, ttl)
        except ConfigurationError:
            return fail()
        return succeed(self._try(name, real_ttl)[0])

    def acquire(
        self, name: str, ttl: float | None = None, timeout: float | None = None
    ) -> Deferred[Lease]:
        """Take the lock of ``name``, waiting (at most ``timeout`` s) while it is held."""
        try:
            name, real_ttl, wait = _acquire_request(self, name, ttl, timeout)
        except ConfigurationError:
            return fail()
        return Deferred.fromCoroutine(
            acquire_loop(
                lambda: succeed(self._try(name, real_ttl)),
                self._state.waits,
                self._state.clock,
                name,
                wait,
            )
        )

    def renew(self, lease: Lease, ttl: float | None = None) -> Deferred[Lease]:
        """Extend ``lease``; :class:`LockLost` if it lapsed or was taken over."""
        try:
            real_ttl = _lease_ttl(self, ttl)
        except ConfigurationError:
            return fail()
        holder = self._live(lease.name)
        if holder is None or holder.lease_id != lease.lease_id:
            return fail(LockLost(f"the lease on {lease.name} was lost"))
        renewed = attrs.evolve(holder, expires_at=self._now() + real_ttl)
        self._state.locks[lease.name] = renewed
        return succeed(renewed)

    def release(self, lease: Lease) -> Deferred[bool]:
        """Give the lock back; ``False`` if the lease was already lost."""
        holder = self._live(lease.name)
        if holder is None or holder.lease_id != lease.lease_id:
            return succeed(False)
        del self._state.locks[lease.name]
        self._state.waits.wake(lease.name)
        self._state.notify(StoreChange("lock", lease.name, origin=self.node_id))
        return succeed(True)

    def store_fenced(self, lease: Lease, pem_objects: object) -> Deferred[None]:
        """Store under ``lease`` if it still holds the lock, else :class:`LockLost`."""
        holder = self._live(lease.name)
        if holder is None or holder.lease_id != lease.lease_id:
            return fail(LockLost(f"the lease on {lease.name} was lost; not storing"))
        return self.store(lease.name, pem_objects)

    def holder(self, name: str) -> Lease | None:
        """The live lease on ``name``, if any (for tests)."""
        return self._live(normalize_server_name(name))

    # -- challenges ----------------------------------------------------------

    def put_challenge(
        self, record: ChallengeRecord, ttl: float = DEFAULT_CHALLENGE_TTL
    ) -> Deferred[None]:
        """Write ``record`` (owned by this node), expiring after ``ttl`` seconds."""
        try:
            record = _checked_record(record, self.node_id)
            _check_ttl(ttl)
        except ConfigurationError:
            return fail()
        self._state.challenges[record.key] = (record, self._now() + ttl)
        self._state.notify(_challenge_change(record, deleted=False, origin=self.node_id))
        return succeed(None)

    def get_challenges(
        self, challenge_type: str, identifier: str | None = None, token: str | None = None
    ) -> Deferred[list[ChallengeRecord]]:
        """The unexpired records matching the filters."""
        now = self._now()
        found = [
            record
            for record, expires in self._state.challenges.values()
            if expires > now
            and record.challenge_type == challenge_type
            and (identifier is None or record.identifier == identifier)
            and (token is None or record.token == token)
        ]
        return succeed(found)

    def delete_challenge(self, record: ChallengeRecord) -> Deferred[None]:
        """Delete ``record`` (no-op when gone)."""
        if self._state.challenges.pop(record.key, None) is not None:
            self._state.notify(_challenge_change(record, deleted=True, origin=self.node_id))
        return succeed(None)

    # -- notification ----------------------------------------------------------

    def subscribe(self, callback: Callable[[StoreChange], object]) -> Callable[[], None]:
        """Call ``callback(change)`` for every change; returns the unsubscriber."""
        subscribers = self._state.subscribers
        subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in subscribers:
                subscribers.remove(callback)

        return unsubscribe


def _challenge_change(record: ChallengeRecord, *, deleted: bool, origin: str) -> StoreChange:
    return StoreChange(
        "challenge",
        record.identifier,
        deleted=deleted,
        challenge_type=record.challenge_type,
        token=record.token,
        origin=origin,
    )


__all__ = ["MemoryCoordinatingStore", "MemoryStore"]
