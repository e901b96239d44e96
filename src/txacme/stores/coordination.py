"""
Several processes, one set of certificates: the coordination interface and the
lease algorithm.

When several Twisted processes (on one host or many, behind a load balancer)
serve the same names, they share one store, and three things must hold:

* only one process orders a given certificate at a time, or the CA's
  duplicate-certificate limit is spent in an afternoon;
* whichever process the CA's validator reaches answers the challenge;
* every process serves a certificate soon after any of them stored it.

:class:`ICoordinatingStore` is what a store offers for this, in addition to
:class:`~txacme.interfaces.ICertificateStore` (which stays small, so simple
stores stay simple): per-name locks with leases, challenge records and change
notification; :class:`CoordinatingStore` is the same for type checkers, and
:func:`provides_coordination` tells such a store at run time.
:class:`txacme.stores.memory.MemoryCoordinatingStore` implements it in memory
(for tests; several "nodes" may share one), and
:class:`txacme.stores.postgres.PostgresStore` on PostgreSQL. Both take and wait
for locks with :func:`acquire_loop` and :class:`LockWaits`; :func:`run_locked`
runs work under a lock, renewing its lease.

Joining a process to such a store is done above the stores:

* :func:`txacme.issuing.locked.coordinated_issue` (used by the issuing
  service): take the name's lock, read the store again (another process may
  have just finished), order only if the certificate is still due, write it
  *fenced* by the lease, release.
* :class:`txacme.serving.cluster.SharedResponder` wraps an ``http-01`` or
  ``tls-alpn-01`` responder so that its challenges are also written to the store.
* :class:`txacme.serving.cluster.ClusterNode` serves certificates stored by
  other processes and answers challenges that other processes started.

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

May import the core modules only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from txacme.errors import ConfigurationError, TxACMEError
from txacme.formats import is_token
from txacme.logs import Logger
from txacme.names import normalize_server_name

if TYPE_CHECKING:
    import pem
    from typing_extensions import TypeIs

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


class CoordinatingStore(Protocol):
    """
    A certificate store providing :class:`ICoordinatingStore`, for type
    checkers: the methods of :class:`~txacme.interfaces.ICertificateStore` and
    of :class:`ICoordinatingStore` with their result types.
    :func:`provides_coordination` tells such a store at run time.
    """

    @property
    def node_id(self) -> str:
        """This process's name in the cluster, used as lock owner."""

    @property
    def lease_ttl(self) -> float:
        """Default lease lifetime in seconds."""

    @property
    def lock_timeout(self) -> float:
        """Default seconds :meth:`acquire` waits."""

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """See :meth:`~txacme.interfaces.ICertificateStore.get`."""

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """See :meth:`~txacme.interfaces.ICertificateStore.store`."""

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """See :meth:`~txacme.interfaces.ICertificateStore.as_dict`."""

    def try_acquire(self, name: str, ttl: float | None = None) -> Deferred[Lease | None]:
        """See :meth:`ICoordinatingStore.try_acquire`."""

    def acquire(
        self, name: str, ttl: float | None = None, timeout: float | None = None
    ) -> Deferred[Lease]:
        """See :meth:`ICoordinatingStore.acquire`."""

    def renew(self, lease: Lease, ttl: float | None = None) -> Deferred[Lease]:
        """See :meth:`ICoordinatingStore.renew`."""

    def release(self, lease: Lease) -> Deferred[bool]:
        """See :meth:`ICoordinatingStore.release`."""

    def store_fenced(self, lease: Lease, pem_objects: object) -> Deferred[None]:
        """See :meth:`ICoordinatingStore.store_fenced`."""

    def put_challenge(
        self, record: ChallengeRecord, ttl: float = DEFAULT_CHALLENGE_TTL
    ) -> Deferred[None]:
        """See :meth:`ICoordinatingStore.put_challenge`."""

    def get_challenges(
        self, challenge_type: str, identifier: str | None = None, token: str | None = None
    ) -> Deferred[list[ChallengeRecord]]:
        """See :meth:`ICoordinatingStore.get_challenges`."""

    def delete_challenge(self, record: ChallengeRecord) -> Deferred[None]:
        """See :meth:`ICoordinatingStore.delete_challenge`."""

    def subscribe(self, callback: Callable[[StoreChange], object]) -> Callable[[], object]:
        """See :meth:`ICoordinatingStore.subscribe`."""


def provides_coordination(store: object) -> TypeIs[CoordinatingStore]:
    """
    Whether ``store`` provides :class:`ICoordinatingStore`; type checkers then
    know it as a :class:`CoordinatingStore` too (an ``ICertificateStore`` stays
    one).
    """
    return ICoordinatingStore.providedBy(store)


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
    ``MAX_LOCK_POLL`` seconds). ``try_acquire`` fires with ``(lease,
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
    if not is_token(record.token):
        raise ConfigurationError(f"challenge token {record.token!r} is not base64url")
    ka = record.key_authorization
    if not isinstance(ka, str) or not ka.isascii() or not ka.startswith(record.token + "."):
        raise ConfigurationError(f"the key authorization of {identifier} does not match its token")
    return attrs.evolve(record, identifier=identifier, owner=record.owner or owner)


# ---------------------------------------------------------------------------
# Working under a lock
# ---------------------------------------------------------------------------


async def run_locked(
    store: CoordinatingStore,
    name: str,
    work: Callable[[Lease], Awaitable[_T]],
    *,
    clock: IReactorTime,
    ttl: float | None = None,
    timeout: float | None = None,
) -> _T:
    """
    Take the lock of ``name`` on ``store``, run ``work(lease)`` while renewing
    the lease every third of its lifetime (``ttl``, default the store's
    ``lease_ttl``), then release it.

    If a renewal fails with :class:`LockLost`, ``work`` is cancelled and
    :class:`LockLost` is raised. Other renewal errors (the store unreachable)
    are logged and retried at the next period: a write made under a lapsed
    lease is refused by :meth:`ICoordinatingStore.store_fenced` anyway.
    """
    if ttl is None:
        ttl = float(store.lease_ttl)
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


def _release(store: CoordinatingStore, lease: Lease) -> Deferred[None]:
    def failed(failure: Failure) -> None:
        log.failure("releasing the lock of {name}", failure, name=lease.name)

    return maybeDeferred(store.release, lease).addCallbacks(lambda _: None, failed)


__all__ = [
    "DEFAULT_CHALLENGE_TTL",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LOCK_TIMEOUT",
    "SHARED_CHALLENGE_TYPES",
    "ChallengeRecord",
    "CoordinatingStore",
    "ICoordinatingStore",
    "Lease",
    "LockLost",
    "LockTimeout",
    "LockWaits",
    "StoreChange",
    "acquire_loop",
    "provides_coordination",
    "run_locked",
]
