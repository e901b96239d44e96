"""
Several processes, one set of certificates: locks, shared challenges, change
notification.

When several Twisted processes (on one host or many, behind a load balancer)
serve the same names, they share one store, and three things must hold:

* only one process orders a given certificate at a time, or the CA's
  duplicate-certificate limit is spent in an afternoon;
* whichever process the CA's validator reaches answers the challenge;
* every process serves a certificate soon after any of them stored it.

:class:`ICoordinatingStore` is what a store offers for this, in addition to
:class:`~txacme.interfaces.ICertificateStore` (which stays small, so simple
stores stay simple): per-name locks with leases, challenge records and change
notification. :class:`MemoryCoordinatingStore` implements it in memory (for
tests; several "nodes" may share one), and
:class:`txacme.stores.postgres.PostgresStore` on PostgreSQL.

The rest of this module joins a process to such a store:

* :func:`coordinated_issue` (used by the issuing service): take the name's
  lock, read the store again (another process may have just finished), order
  only if the certificate is still due, write it *fenced* by the lease, release.
* :class:`SharedResponder` wraps an ``http-01`` or ``tls-alpn-01`` responder so
  that its challenges are also written to the store.
* :class:`ClusterNode` serves certificates stored by other processes (it
  follows change notifications into the in-memory TLS index), and answers
  challenges that other processes started: a validator's ``tls-alpn-01``
  ClientHello or ``http-01`` request for a challenge this process does not
  know triggers one look-up in the store.

Decisions
---------

Leases, not sessions.
    A lock is a lease: it lapses ``ttl`` seconds after it was taken or last
    renewed. A holder that dies (``SIGKILL``, power loss, a network partition)
    stops renewing and the lock frees itself; nothing depends on a connection
    staying up. Every lease carries a ``lease_id`` (random) and a ``fence``
    (a counter that grows with every acquisition of the name); writes made
    under a lock go through :meth:`ICoordinatingStore.store_fenced`, which
    refuses them with :class:`LockLost` once the lease has lapsed or been taken
    over, so a holder that was paused past its lease cannot overwrite the work
    of the next one.

Renewal while working.
    :func:`run_locked` renews the lease every third of its lifetime; a renewal
    answered with :class:`LockLost` cancels the work.

Pull, not push, for challenges.
    A challenge record is looked up when a validator asks a process that does
    not know it, and the answer is kept in memory until the record is deleted
    or expires. There is no broadcast to wait for, so the ordering process
    never has to know which processes exist or which one the validator reaches.

Notifications are hints.
    A :class:`StoreChange` only names what changed; the subscriber reads the
    store. A ``"resync"`` change (sent after the notification channel was lost
    and re-established) means "changes may have been missed: reload".
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

import attrs
import pem
from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import Attribute, Interface, implementer

from txacme.errors import ConfigurationError, InvalidServerName, TxACMEError
from txacme.interfaces import ICertificateStore, IResponder
from txacme.names import normalize_server_name
from txacme.stores.directory import validate_pem_objects
from txacme.testing import MemoryStore

log = Logger()

_T = TypeVar("_T")

DEFAULT_LEASE_TTL = 60.0
"""Seconds a lock lease lasts unless renewed."""

DEFAULT_LOCK_TIMEOUT = 900.0
"""Seconds :meth:`ICoordinatingStore.acquire` waits for a busy lock by default."""

DEFAULT_CHALLENGE_TTL = 600.0
"""Seconds a challenge record lives unless deleted earlier."""

#: Longest sleep between two attempts at a busy lock: a missed release
#: notification costs at most this.
MAX_LOCK_POLL = 2.0

SHARED_CHALLENGE_TYPES = ("http-01", "tls-alpn-01")
"""Challenge types whose answer depends on which process the validator reaches."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]+\Z")


class LockLost(TxACMEError):
    """A lease lapsed or was taken over: the write or renewal made under it was refused."""


class LockTimeout(TxACMEError):
    """:meth:`ICoordinatingStore.acquire` gave up waiting for a busy lock."""


@attrs.frozen
class Lease:
    """
    One holding of a per-name lock.

    :ivar name: the lock's name (a canonical server name).
    :ivar lease_id: a random identifier of this holding; renewals, releases and
        fenced writes must present it.
    :ivar fence: grows with every acquisition of ``name``; a larger fence is a
        later holder (hand it to external systems as a fencing token).
    :ivar owner: the ``node_id`` of the holder (for people reading logs).
    :ivar expires_at: POSIX time, on the store's clock, when the lease lapses
        unless renewed.
    """

    name: str
    lease_id: str
    fence: int
    owner: str
    expires_at: float


@attrs.frozen
class ChallengeRecord:
    """
    A challenge being answered, as any process of the cluster needs it.

    :ivar challenge_type: ``"http-01"`` or ``"tls-alpn-01"``.
    :ivar identifier: the canonical DNS name or IP address being validated.
    :ivar token: the challenge's base64url token (the ``http-01`` path).
    :ivar key_authorization: what the validator must find (``http-01`` body;
        its SHA-256 is in the ``tls-alpn-01`` certificate). Not a secret: the
        validator fetches it in the clear.
    :ivar owner: the ``node_id`` of the process that wrote it.
    """

    challenge_type: str
    identifier: str
    token: str
    key_authorization: str
    owner: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the record: ``(challenge_type, identifier, token)``."""
        return (self.challenge_type, self.identifier, self.token)


@attrs.frozen
class StoreChange:
    """
    A hint that something changed in a coordinating store.

    :ivar kind: ``"certificate"`` (the entry of ``name`` was written, marked
        wanted or removed), ``"challenge"`` (a record was written or deleted),
        ``"lock"`` (the lock of ``name`` was released) or ``"resync"``
        (notifications may have been missed: reload everything).
    :ivar name: the server name, identifier or lock name; ``None`` for
        ``"resync"``.
    :ivar deleted: for ``"challenge"``: whether the record was deleted.
    :ivar challenge_type: for ``"challenge"``.
    :ivar token: for ``"challenge"``.
    :ivar origin: the ``node_id`` of the process that made the change, if known.
    """

    kind: str
    name: str | None = None
    deleted: bool = False
    challenge_type: str | None = None
    token: str | None = None
    origin: str | None = None


class ICoordinatingStore(Interface):
    """
    What a certificate store shared by several processes offers so that they can
    work together. Stores providing it also provide
    :class:`~txacme.interfaces.ICertificateStore`.

    Every method returns a ``Deferred``. Names are canonical server names
    (:func:`~txacme.names.normalize_server_name`).
    """

    node_id = Attribute("This process's name in the cluster (``str``), used as lock owner.")
    lease_ttl = Attribute("Default lease lifetime in seconds (``float``).")
    lock_timeout = Attribute("Default seconds :meth:`acquire` waits (``float``).")

    def try_acquire(name: str, ttl: float | None = None) -> object:
        """
        Take the lock of ``name`` if it is free (never held, released, or its
        lease lapsed).

        :return: ``Deferred`` firing with a :class:`Lease`, or ``None`` when the
            lock is held by a live lease.
        """

    def acquire(name: str, ttl: float | None = None, timeout: float | None = None) -> object:
        """
        Take the lock of ``name``, waiting while it is held.

        :param timeout: seconds to wait (default :attr:`lock_timeout`).
        :return: ``Deferred`` firing with a :class:`Lease`, or failing with
            :class:`LockTimeout`. Cancelling it stops waiting.
        """

    def renew(lease: Lease, ttl: float | None = None) -> object:
        """
        Extend a lease by ``ttl`` seconds from now.

        :return: ``Deferred`` firing with the renewed :class:`Lease` (same
            ``lease_id`` and ``fence``), or failing with :class:`LockLost` if
            the lease lapsed or the lock was taken over.
        """

    def release(lease: Lease) -> object:
        """
        Give the lock back (waiting processes are woken).

        :return: ``Deferred`` firing with ``True``, or ``False`` when the lease
            was already lost (nothing is changed then).
        """

    def store_fenced(lease: Lease, pem_objects: object) -> object:
        """
        Like ``ICertificateStore.store(lease.name, pem_objects)``, but only
        while ``lease`` holds the lock, checked atomically with the write.

        :return: ``Deferred`` firing with ``None``, or failing with
            :class:`LockLost` (nothing written).
        """

    def put_challenge(record: ChallengeRecord, ttl: float = DEFAULT_CHALLENGE_TTL) -> object:
        """
        Write (or replace) a challenge record that expires after ``ttl`` seconds.

        :return: ``Deferred`` firing with ``None`` once any process can read it.
        """

    def get_challenges(
        challenge_type: str, identifier: str | None = None, token: str | None = None
    ) -> object:
        """
        The unexpired records of ``challenge_type``, filtered by ``identifier``
        and/or ``token`` when given.

        :return: ``Deferred`` firing with ``list[ChallengeRecord]``.
        """

    def delete_challenge(record: ChallengeRecord) -> object:
        """
        Delete a record (no-op if it is gone).

        :return: ``Deferred`` firing with ``None``.
        """

    def subscribe(callback: Callable[[StoreChange], object]) -> object:
        """
        Call ``callback(change)`` in the reactor thread for every change made by
        any process (this one included) from now on.

        :return: a function of no arguments that unsubscribes.
        """


# ---------------------------------------------------------------------------
# Waiting for locks
# ---------------------------------------------------------------------------


class LockWaits:
    """
    Processes waiting for busy locks, woken by release notifications or after
    a delay. Shared by the store implementations.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waiters: dict[str, list[Deferred[None]]] = {}

    def wait(self, name: str, delay: float) -> Deferred[None]:
        """A ``Deferred`` firing when ``name`` is released or after ``delay`` seconds."""
        call: IDelayedCall | None = None

        def cancel(d: Deferred[None]) -> None:
            finish()

        d: Deferred[None] = Deferred(cancel)

        def finish() -> None:
            if call is not None and call.active():
                call.cancel()
            waiters = self._waiters.get(name)
            if waiters is not None and d in waiters:
                waiters.remove(d)
                if not waiters:
                    del self._waiters[name]

        def wake() -> None:
            finish()
            if not d.called:
                d.callback(None)

        self._waiters.setdefault(name, []).append(d)
        call = self._clock.callLater(max(delay, 0.0), wake)
        d.addBoth(_passthrough(finish))
        return d

    def wake(self, name: str) -> None:
        """Wake everybody waiting for ``name``."""
        for d in list(self._waiters.get(name, ())):
            if not d.called:
                d.callback(None)

    def cancel_all(self) -> None:
        """Cancel every wait (the store is closing)."""
        for waiters in list(self._waiters.values()):
            for d in list(waiters):
                d.cancel()


def _passthrough(action: Callable[[], object]) -> Callable[[_T], _T]:
    def run(result: _T) -> _T:
        action()
        return result

    return run


async def acquire_loop(
    try_acquire: Callable[[], Deferred[tuple[Lease | None, float]]],
    waits: LockWaits,
    clock: IReactorTime,
    name: str,
    timeout: float,
) -> Lease:
    """
    Call ``try_acquire()`` until it gives a lease, sleeping between attempts
    until a release of ``name`` or the holder's lease end (at most
    :data:`MAX_LOCK_POLL` seconds). ``try_acquire`` fires with ``(lease,
    seconds_left_on_the_holders_lease)``.

    :raises LockTimeout: after ``timeout`` seconds.
    """
    deadline = clock.seconds() + timeout
    while True:
        lease, remaining = await try_acquire()
        if lease is not None:
            return lease
        now = clock.seconds()
        if now >= deadline:
            raise LockTimeout(f"the lock of {name} stayed busy for {timeout:g} s")
        delay = min(max(remaining, 0.01), MAX_LOCK_POLL, deadline - now)
        await waits.wait(name, delay)


def _check_ttl(ttl: float, what: str = "ttl") -> float:
    if not isinstance(ttl, (int, float)) or not ttl > 0 or ttl != ttl or ttl == float("inf"):
        raise ConfigurationError(f"{what}={ttl!r} must be a positive number of seconds")
    return float(ttl)


class _LockDefaults(Protocol):
    lease_ttl: float
    lock_timeout: float


def _lease_ttl(store: _LockDefaults, ttl: float | None) -> float:
    """``ttl``, or ``store.lease_ttl`` when ``None``, checked by :func:`_check_ttl`."""
    return _check_ttl(store.lease_ttl if ttl is None else ttl)


def _lock_request(store: _LockDefaults, name: str, ttl: float | None) -> tuple[str, float]:
    """The canonical ``name`` and lease lifetime of a lock request."""
    return normalize_server_name(name), _lease_ttl(store, ttl)


def _acquire_request(
    store: _LockDefaults, name: str, ttl: float | None, timeout: float | None
) -> tuple[str, float, float]:
    """The canonical ``name``, lease lifetime and wait limit of :meth:`acquire` arguments."""
    name, real_ttl = _lock_request(store, name, ttl)
    wait = _check_ttl(store.lock_timeout if timeout is None else timeout, "timeout")
    return name, real_ttl, wait


# ---------------------------------------------------------------------------
# In memory
# ---------------------------------------------------------------------------


class _SharedMemoryState:
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
    A :class:`~txacme.testing.MemoryStore` with locks, challenge records and
    change notification, on ``clock``'s time.

    Several "processes" of one test share a store by passing ``shared_with``:
    they see the same entries, locks and records and each other's changes, and
    keep their own ``node_id``. Notifications are delivered synchronously.

    :param certs: initial entries (as for ``MemoryStore``).
    :param clock: gives the time for leases and records (default: the reactor).
    :param node_id: this view's owner name.
    :param lease_ttl: default lease lifetime, seconds.
    :param lock_timeout: default wait of :meth:`acquire`, seconds.
    :param shared_with: another ``MemoryCoordinatingStore`` to share state with
        (its clock is used).
    """

    def __init__(
        self,
        certs: Mapping[str, Iterable[Any]] | None = None,
        *,
        clock: IReactorTime | None = None,
        node_id: str = "memory",
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        shared_with: MemoryCoordinatingStore | None = None,
    ) -> None:
        super().__init__(certs)
        self._state: _SharedMemoryState
        if shared_with is not None:
            self._state = shared_with._state
        else:
            if clock is None:
                from twisted.internet import reactor

                clock = cast(IReactorTime, reactor)
            self._state = _SharedMemoryState(clock)
        self._state.certs.update(self.certs)
        self.certs = self._state.certs
        self.node_id = node_id
        self.lease_ttl = _check_ttl(lease_ttl, "lease_ttl")
        self.lock_timeout = _check_ttl(lock_timeout, "lock_timeout")

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


def _checked_record(record: ChallengeRecord, owner: str) -> ChallengeRecord:
    """Check a record's fields and fill in its owner."""
    if not isinstance(record, ChallengeRecord):
        raise ConfigurationError(f"expected a ChallengeRecord, not {type(record).__name__}")
    if record.challenge_type not in SHARED_CHALLENGE_TYPES:
        raise ConfigurationError(
            f"challenge type {record.challenge_type!r} is not one of "
            f"{', '.join(SHARED_CHALLENGE_TYPES)}"
        )
    identifier = normalize_server_name(record.identifier)
    if not isinstance(record.token, str) or _TOKEN.match(record.token) is None:
        raise ConfigurationError(f"challenge token {record.token!r} is not base64url")
    ka = record.key_authorization
    if not isinstance(ka, str) or not ka.isascii() or not ka.startswith(record.token + "."):
        raise ConfigurationError(f"the key authorization of {identifier} does not match its token")
    return attrs.evolve(record, identifier=identifier, owner=record.owner or owner)


# ---------------------------------------------------------------------------
# Issuing under a lock
# ---------------------------------------------------------------------------


async def run_locked(
    store: Any,
    name: str,
    work: Callable[[Lease], Awaitable[_T]],
    *,
    clock: IReactorTime,
    ttl: float | None = None,
    timeout: float | None = None,
) -> _T:
    """
    Take the lock of ``name`` on ``store`` (an :class:`ICoordinatingStore`),
    run ``work(lease)`` while renewing the lease every third of its lifetime,
    then release it.

    If a renewal fails with :class:`LockLost`, ``work`` is cancelled and
    :class:`LockLost` is raised. Other renewal errors (the store unreachable)
    are logged and retried at the next period: a write made under a lapsed
    lease is refused by :meth:`ICoordinatingStore.store_fenced` anyway.
    """
    if ttl is None:
        ttl = float(getattr(store, "lease_ttl", DEFAULT_LEASE_TTL))
    lease: Lease = await store.acquire(name, ttl, timeout)
    log.debug("took the lock of {name} (fence {fence})", name=name, fence=lease.fence)
    current = [lease]
    lost: list[BaseException] = []
    working: Deferred[_T] = Deferred.fromCoroutine(_as_coroutine(work, lease))

    def renew() -> Deferred[None]:
        def renewed(new: Lease) -> None:
            current[0] = new

        def failed(failure: Failure) -> None:
            if failure.check(LockLost):  # type: ignore[no-untyped-call]
                if not lost:
                    lost.append(failure.value)  # type: ignore[arg-type]
                    log.warn("lost the lock of {name} while working; stopping", name=name)
                    working.cancel()
            else:
                log.failure("renewing the lock of {name}", failure, name=name)

        return maybeDeferred(store.renew, current[0], ttl).addCallbacks(renewed, failed)

    keepalive = LoopingCall(renew)
    keepalive.clock = clock
    keepalive.start(ttl / 3, now=False).addErrback(
        lambda f: log.failure("lease keep-alive of {name}", f, name=name)
    )
    released = False
    try:
        try:
            result = await working
        except CancelledError:
            if lost:
                raise LockLost(f"the lock of {name} was lost while working") from lost[0]
            raise
        keepalive.stop()
        released = True
        await _release(store, current[0])
        return result
    finally:
        if keepalive.running:
            keepalive.stop()
        if not released:
            # Not awaited: a cancelled caller does not wait for the store.
            _release(store, current[0])


async def _as_coroutine(work: Callable[[Lease], Awaitable[_T]], lease: Lease) -> _T:
    return await work(lease)


def _release(store: Any, lease: Lease) -> Deferred[None]:
    def failed(failure: Failure) -> None:
        log.failure("releasing the lock of {name}", failure, name=lease.name)

    return maybeDeferred(store.release, lease).addCallbacks(lambda _: None, failed)


@attrs.frozen
class StoredCertificate:
    """
    A certificate found in the store (written by another process) instead of
    being ordered; shaped like ``txacme.issuing.order.IssuedCertificate``.
    """

    pem_objects: list[pem.AbstractPEMObject]
    certificate: x509.Certificate
    names: list[str]
    from_store: bool = True

    @property
    def not_before(self) -> datetime:
        """When the certificate becomes valid."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        """When the certificate expires."""
        return self.certificate.not_valid_after_utc

    @classmethod
    def from_pem(cls, pem_objects: Sequence[pem.AbstractPEMObject]) -> StoredCertificate:
        """Build from a store entry (key, certificate, chain)."""
        objects = list(pem_objects)
        first = next(o for o in objects if isinstance(o, pem.Certificate))
        certificate = x509.load_pem_x509_certificate(first.as_bytes())
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
            names += [str(n) for n in san.value.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        return cls(objects, certificate, names)


async def coordinated_issue(
    store: Any,
    name: str,
    obtain: Callable[[], Awaitable[Any]],
    still_due: Callable[[list[pem.AbstractPEMObject]], bool],
    *,
    clock: IReactorTime,
    ttl: float | None = None,
    timeout: float | None = None,
) -> Any:
    """
    Issue ``name`` at most once across the cluster.

    Takes the lock of ``name``, reads the entry again and, when it holds a
    certificate for which ``still_due(pem_objects)`` is false (another process
    just renewed it), returns it as a :class:`StoredCertificate` without
    ordering. Otherwise runs ``obtain()`` (the order) and writes its
    ``pem_objects`` with :meth:`ICoordinatingStore.store_fenced`.

    :return: the issued certificate, or a :class:`StoredCertificate`.
    :raises LockTimeout: when the lock stayed busy.
    :raises LockLost: when the lease was lost (the certificate is not stored).
    """

    async def work(lease: Lease) -> Any:
        try:
            current = list(await store.get(name))
        except KeyError:
            current = []
        if current and not still_due(current):
            log.info(
                "another process stored a certificate for {name} meanwhile; not ordering",
                name=name,
                event="cluster_skipped",
            )
            return StoredCertificate.from_pem(current)
        issued = await obtain()
        await store.store_fenced(lease, list(issued.pem_objects))
        return issued

    return await run_locked(store, name, work, clock=clock, ttl=ttl, timeout=timeout)


# ---------------------------------------------------------------------------
# Sharing challenges
# ---------------------------------------------------------------------------


def _token_of(challenge: Any) -> str:
    token = challenge.encode("token")
    if not isinstance(token, str) or _TOKEN.match(token) is None:
        raise ConfigurationError(f"challenge token {token!r} is not base64url")
    return token


@implementer(IResponder)
class SharedResponder:
    """
    An ``http-01`` or ``tls-alpn-01`` responder whose challenges are also
    written to a coordinating store, so that the process the validator reaches
    can answer, whichever it is.

    :param store: an :class:`ICoordinatingStore`.
    :param local: the responder answering in this process
        (:class:`~txacme.challenges.http01.HTTP01Responder` or
        :class:`~txacme.challenges.tlsalpn01.TLSALPN01Responder`).
    :param ttl: lifetime of the records (they are deleted when the challenge
        ends; the lifetime bounds what a crash leaves behind).
    """

    def __init__(self, store: Any, local: Any, *, ttl: float = DEFAULT_CHALLENGE_TTL) -> None:
        challenge_type = getattr(local, "challenge_type", None)
        if challenge_type not in SHARED_CHALLENGE_TYPES:
            raise ConfigurationError(
                f"{local!r} answers {challenge_type!r}; only "
                f"{', '.join(SHARED_CHALLENGE_TYPES)} are shared"
            )
        self.challenge_type: str = challenge_type
        self.store = store
        self.local = local
        self.ttl = _check_ttl(ttl)

    def _record(self, server_name: str, challenge: Any, response: Any) -> ChallengeRecord:
        return ChallengeRecord(
            self.challenge_type,
            normalize_server_name(server_name),
            _token_of(challenge),
            response.key_authorization,
            getattr(self.store, "node_id", ""),
        )

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """Answer locally, then write the record; fires once it is readable by all."""
        try:
            record = self._record(server_name, challenge, response)
        except Exception:
            return fail()
        d: Deferred[Any] = maybeDeferred(
            self.local.start_responding, server_name, challenge, response
        )
        d.addCallback(lambda _: self.store.put_challenge(record, self.ttl))
        return d.addCallback(lambda _: None)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """Stop answering locally and delete the record."""
        try:
            record = self._record(server_name, challenge, response)
        except Exception:
            return fail()
        d: Deferred[Any] = maybeDeferred(
            self.local.stop_responding, server_name, challenge, response
        )
        d.addBoth(lambda result: self.store.delete_challenge(record).addCallback(lambda _: result))
        return d.addCallback(lambda _: None)


@attrs.frozen
class _TokenChallenge:
    """Just enough of an ``http-01`` challenge for ``HTTP01Responder``."""

    token: str

    def encode(self, field: str) -> str:
        assert field == "token"
        return self.token


@attrs.frozen
class _KeyAuthorizationResponse:
    key_authorization: str


def identifier_for_sni(sni: str) -> str | None:
    """
    The identifier a validator asks about with SNI ``sni`` (lower case): the
    name itself, or the address of a reverse-DNS name (RFC 8738); ``None`` if
    it is no valid name.
    """
    import ipaddress

    try:
        if sni.endswith(".in-addr.arpa"):
            labels = sni[: -len(".in-addr.arpa")].split(".")
            if len(labels) == 4:
                return ipaddress.IPv4Address(".".join(reversed(labels))).compressed
            return None
        if sni.endswith(".ip6.arpa"):
            nibbles = sni[: -len(".ip6.arpa")].split(".")
            if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
                return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)).compressed
            return None
        return normalize_server_name(sni)
    except (ValueError, InvalidServerName):
        return None


class ClusterNode:
    """
    Joins this process to the other processes sharing ``store``.

    * Certificates: every ``"certificate"`` change is read from the store into
      ``index`` (a :class:`~txacme.serving.tls.CertificateIndex`), one read per change
      and name; a ``"resync"`` reloads the whole index. An entry that appears
      empty (a name marked wanted) is handed to ``on_wanted(name)``.
    * ``tls-alpn-01``: :meth:`hello_hook` (give it to
      :class:`txacme.issuing.ondemand.HelloHookFactory`) sees a validator's ClientHello
      (only ``acme-tls/1`` offered) for a name with no challenge in
      ``tls_alpn`` (a :class:`~txacme.challenges.tlsalpn01.TLSALPN01Registry`)
      and holds it while the store is asked; a record found is added to the
      registry before OpenSSL sees the ClientHello.
    * ``http-01``: :attr:`http01` stands in for the
      :class:`~txacme.challenges.http01.HTTP01Responder` given (pass it to
      ``http01_root``): unknown tokens are looked up in the store.
    * Responders: :meth:`responders` wraps this process's ``http-01`` and
      ``tls-alpn-01`` responders in :class:`SharedResponder`.

    Challenges copied from the store are forgotten when their record is deleted
    or after ``challenge_ttl`` seconds. At most ``max_lookups`` store look-ups
    for unknown challenges run at once; more are answered "unknown" at once, so
    a flood of bogus validation requests cannot queue up work.

    :param store: an :class:`ICoordinatingStore`.
    :param index: the TLS index to keep current, or ``None``.
    :param tls_alpn: the registry the TLS layer answers ``tls-alpn-01`` from.
    :param http01: the ``HTTP01Responder`` of this process's port-80 listener.
    :param on_wanted: called with a name whose entry appeared empty.
    :param clock: the reactor (default: the global one).
    :param challenge_ttl: seconds a challenge copied from the store is kept,
        and the lifetime of the records :meth:`responders` write.
    :param max_lookups: store look-ups of unknown challenges running at once.
    """

    def __init__(
        self,
        store: Any,
        index: Any = None,
        *,
        tls_alpn: Any = None,
        http01: Any = None,
        on_wanted: Callable[[str], object] | None = None,
        clock: IReactorTime | None = None,
        challenge_ttl: float = DEFAULT_CHALLENGE_TTL,
        max_lookups: int = 16,
    ) -> None:
        if not ICoordinatingStore.providedBy(store):
            raise ConfigurationError(f"{store!r} does not provide ICoordinatingStore")
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.store: Any = store
        self.index = index
        self.tls_alpn = tls_alpn
        self._http01 = http01
        self.on_wanted = on_wanted
        self._clock = clock
        self._challenge_ttl = _check_ttl(challenge_ttl, "challenge_ttl")
        self._max_lookups = max_lookups
        self._lookups = 0
        self._unsubscribe: Callable[[], object] | None = None
        self._refreshing: set[str] = set()
        self._dirty: set[str] = set()
        self._mirrored: dict[tuple[str, str, str], tuple[str, IDelayedCall]] = {}
        self._running: set[Deferred[Any]] = set()
        #: Give this to ``http01_root`` instead of the ``HTTP01Responder``
        #: (``None`` without one): unknown tokens are looked up in the store.
        self.http01: Any = _ClusterHTTP01(self, http01) if http01 is not None else None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start following the store's changes."""
        if self._unsubscribe is None:
            self._unsubscribe = self.store.subscribe(self._on_change)

    def stop(self) -> None:
        """Stop following; forget the challenges copied from the store."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for key in list(self._mirrored):
            self._unmirror(key)
        for d in list(self._running):
            d.cancel()

    def _track(self, d: Deferred[_T]) -> Deferred[_T]:
        self._running.add(d)

        def done(result: object) -> object:
            self._running.discard(d)
            return result

        d.addBoth(done)
        return d

    # -- responders --------------------------------------------------------

    def responders(self, responders: Iterable[Any]) -> list[Any]:
        """``responders`` with those of ``http-01`` / ``tls-alpn-01`` made shared."""
        result: list[Any] = []
        for responder in responders:
            if isinstance(responder, SharedResponder):
                result.append(responder)
            elif getattr(responder, "challenge_type", None) in SHARED_CHALLENGE_TYPES:
                result.append(SharedResponder(self.store, responder, ttl=self._challenge_ttl))
            else:
                result.append(responder)
        return result

    # -- changes -------------------------------------------------------------

    def _on_change(self, change: StoreChange) -> None:
        if change.kind == "certificate" and change.name is not None:
            self._refresh(change.name)
        elif change.kind == "resync":
            if self.index is not None:
                self._track(self.index.load_from(self.store)).addErrback(
                    self._log_failure, "reloading the certificate index"
                )
        elif change.kind == "challenge" and change.deleted:
            key = (change.challenge_type or "", change.name or "", change.token or "")
            self._unmirror(key)

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        if not failure.check(CancelledError):  # type: ignore[no-untyped-call]
            log.failure(what, failure)

    def _refresh(self, name: str) -> None:
        """Read ``name`` and update the index; one read per name at a time."""
        if name in self._refreshing:
            self._dirty.add(name)
            return
        self._refreshing.add(name)
        d: Deferred[Any] = maybeDeferred(self.store.get, name)

        def got(objects: list[Any]) -> None:
            if self.index is not None:
                if objects:
                    self.index.update(name, objects)
                else:
                    self.index.remove(name)
            if not objects and self.on_wanted is not None:
                log.info("{name} is wanted: issuing", name=name)
                self.on_wanted(name)

        def missing(failure: Failure) -> None:
            failure.trap(KeyError)  # type: ignore[no-untyped-call]
            if self.index is not None:
                self.index.remove(name)

        def done(result: object) -> None:
            self._refreshing.discard(name)
            if isinstance(result, Failure):
                self._log_failure(result, f"reading the new certificate of {name}")
            if name in self._dirty and self._unsubscribe is not None:
                self._dirty.discard(name)
                self._refresh(name)

        d.addCallbacks(got, missing)
        self._track(d).addBoth(done)

    # -- challenges ------------------------------------------------------------

    def _mirror(self, record: ChallengeRecord) -> None:
        key = record.key
        old = self._mirrored.pop(key, None)
        if old is not None and old[1].active():
            old[1].cancel()
        if record.challenge_type == "tls-alpn-01" and self.tls_alpn is not None:
            if old is None:
                self.tls_alpn.add(record.identifier, record.key_authorization)
        elif record.challenge_type == "http-01" and self._http01 is not None:
            self._http01.start_responding(
                record.identifier,
                _TokenChallenge(record.token),
                _KeyAuthorizationResponse(record.key_authorization),
            )
        else:
            return
        call = self._clock.callLater(self._challenge_ttl, self._unmirror, key)
        self._mirrored[key] = (record.key_authorization, call)

    def _unmirror(self, key: tuple[str, str, str]) -> None:
        found = self._mirrored.pop(key, None)
        if found is None:
            return
        key_authorization, call = found
        if call.active():
            call.cancel()
        challenge_type, identifier, token = key
        if challenge_type == "tls-alpn-01" and self.tls_alpn is not None:
            self.tls_alpn.remove(identifier, key_authorization)
        elif challenge_type == "http-01" and self._http01 is not None:
            self._http01.stop_responding(
                identifier, _TokenChallenge(token), _KeyAuthorizationResponse(key_authorization)
            )

    def lookup(
        self, challenge_type: str, *, identifier: str | None = None, token: str | None = None
    ) -> Deferred[bool]:
        """
        Look a challenge up in the store and answer it locally when found.

        :return: ``Deferred`` firing with whether one was found; ``False`` at
            once when ``max_lookups`` look-ups are already running.
        """
        if self._lookups >= self._max_lookups:
            log.debug("too many challenge look-ups at once; not looking up {what}",
                      what=identifier or token)
            return succeed(False)
        self._lookups += 1
        d: Deferred[Any] = maybeDeferred(
            self.store.get_challenges, challenge_type, identifier, token
        )

        def found(records: list[ChallengeRecord]) -> bool:
            for record in records:
                self._mirror(record)
            if records:
                log.debug(
                    "answering {type} for {identifier}, started by {owner}",
                    type=challenge_type,
                    identifier=records[0].identifier,
                    owner=records[0].owner,
                )
            return bool(records)

        def failed(failure: Failure) -> bool:
            self._log_failure(failure, "looking up a challenge in the store")
            return False

        def done(result: _T) -> _T:
            self._lookups -= 1
            return result

        d.addCallbacks(found, failed).addBoth(done)
        return self._track(d)

    def hello_hook(self, hello: Any) -> Deferred[Any] | None:
        """
        For a ``tls-alpn-01`` validator's ClientHello (only ``acme-tls/1``
        offered) naming a challenge this process does not know: a ``Deferred``
        firing once the store was asked. ``None`` (go on at once) otherwise.
        """
        if self.tls_alpn is None or tuple(hello.alpn_protocols) != (b"acme-tls/1",):
            return None
        sni = hello.server_name
        if not sni or self.tls_alpn.lookup(sni) is not None:
            return None
        identifier = identifier_for_sni(sni)
        if identifier is None:
            return None
        return self.lookup("tls-alpn-01", identifier=identifier)


class _ClusterHTTP01:
    """
    Stands in for an ``HTTP01Responder`` in ``http01_root``: its :attr:`resource`
    serves the local tokens and looks unknown ones up in the store.
    """

    def __init__(self, node: ClusterNode, local: Any) -> None:
        self.node = node
        self.local = local
        self.resource = _ClusterChallengeDirectory(node, local)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)


class _ClusterChallengeDirectory(Resource):
    def __init__(self, node: ClusterNode, local: Any) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._node = node
        self._local = local

    def getChild(self, path: bytes, request: Any) -> Any:
        try:
            token = path.decode("ascii")
        except UnicodeDecodeError:
            token = ""
        if (
            _TOKEN.match(token) is None
            or token in self._local.active_tokens()
            or request.method not in (b"GET", b"HEAD")
        ):
            return self._local.resource.getChild(path, request)
        return _LookedUpToken(self._node, self._local, path, token)

    def render(self, request: Any) -> Any:
        return self._local.resource.render(request)


class _LookedUpToken(Resource):
    isLeaf = True

    def __init__(self, node: ClusterNode, local: Any, path: bytes, token: str) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._node = node
        self._local = local
        self._path = path
        self._token = token

    def render(self, request: Any) -> Any:
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def answer(_: object) -> None:
            if finished:
                return
            try:
                child = self._local.resource.getChild(self._path, request)
                body = child.render(request)
            except Exception:
                log.failure("answering an http-01 request")
                request.setResponseCode(500)
                body = b""
            if isinstance(body, bytes):
                request.write(body)
                request.finish()

        self._node.lookup("http-01", token=self._token).addBoth(answer)
        return NOT_DONE_YET


def provides_coordination(store: object) -> bool:
    """Whether ``store`` provides :class:`ICoordinatingStore`."""
    return ICoordinatingStore.providedBy(store)


__all__ = [
    "DEFAULT_CHALLENGE_TTL",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LOCK_TIMEOUT",
    "SHARED_CHALLENGE_TYPES",
    "ChallengeRecord",
    "ClusterNode",
    "ICoordinatingStore",
    "Lease",
    "LockLost",
    "LockTimeout",
    "LockWaits",
    "MemoryCoordinatingStore",
    "SharedResponder",
    "StoreChange",
    "StoredCertificate",
    "acquire_loop",
    "coordinated_issue",
    "identifier_for_sni",
    "provides_coordination",
    "run_locked",
]
