"""
Several processes on one host, one certificate directory:
:class:`CoordinatingDirectoryStore`, a
:class:`~txacme.stores.directory.DirectoryStore` that also provides
:class:`~txacme.stores.coordination.ICoordinatingStore`, so the
``ClusterNode`` / ``SharedResponder`` / ``coordinated_issue`` machinery works
between processes sharing a directory as it does between hosts sharing
PostgreSQL.

Layout, under the hidden ``DIR/.txacme/`` (mode 0700; the entry scan, ``txsni``
and the stale-temporary-file sweep all skip hidden names):

* ``locks/<name>.lock``: one file per lock name, never removed (removing it
  would let two holders lock two different inodes). A holder keeps it open with
  ``flock(LOCK_EX)``; the kernel drops the lock when the holder closes it or
  dies, even by ``SIGKILL``. The file holds the holder's lease as JSON
  (``lease_id``, ``fence``, ``owner``, ``pid``, ``expires_at``); the next holder
  reads the fence and adds one.
* ``challenges/<type>/<identifier>/<token>.json``: one challenge record (key
  authorization, owner, expiry), written by a rename into place, so any
  process reads a whole record or none. Identifier and token are separate path
  components (together they may exceed the 255 bytes of a file name); an
  identifier directory is removed with its last record.

Decisions:

* ``flock``, not ``fcntl`` locks: ``flock`` belongs to an open file
  description, so two attempts in one process conflict as between processes,
  and closing another descriptor of the file does not drop it.
* A lease still lapses ``ttl`` seconds after it was taken or renewed: the holder
  then unlocks, and refuses its own fenced writes and renewals with
  :class:`~txacme.stores.coordination.LockLost`. Unlike PostgreSQL, a process
  that is alive but stuck keeps the ``flock`` until it resumes or dies.
* No ``fsync`` for lock or challenge files: neither outlives a reboot usefully.
* One host, a local file system: on NFS ``flock`` is emulated and change
  notification is blind.

Change notification comes from ``txacme.stores._dirwatch.DirectoryChanges``
(inotify on Linux, a stat scan elsewhere), started by the first
:meth:`~CoordinatingDirectoryStore.subscribe` or wait for a busy lock.

May import the core modules and the other store modules.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.filepath import FilePath
from zope.interface import implementer

from txacme.errors import ConfigurationError
from txacme.interfaces import ICertificateStore
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.stores.coordination import (
    DEFAULT_CHALLENGE_TTL,
    DEFAULT_LEASE_TTL,
    DEFAULT_LOCK_TIMEOUT,
    MAX_LOCK_POLL,
    SHARED_CHALLENGE_TYPES,
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
from txacme.stores.directory import DirectoryStore

log = Logger()

STATE_DIR = ".txacme"
"""The hidden subdirectory holding locks and challenge records."""
LOCK_SUFFIX = ".lock"
CHALLENGE_SUFFIX = ".json"
_NAME_MAX = 255


def default_node_id() -> str:
    """``host:pid:random``: unique per process, readable in logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@attrs.define
class _Held:
    """
    A lock this process holds: the read-only descriptor holding the ``flock``,
    a write descriptor for the lease, and the lease.
    """

    fd: int
    wfd: int
    lease: Lease
    lapse: IDelayedCall | None = None


def _lock_filename(name: str) -> str:
    if len(name) + len(LOCK_SUFFIX) <= _NAME_MAX:
        return name + LOCK_SUFFIX
    return hashlib.sha256(name.encode()).hexdigest() + LOCK_SUFFIX


def _read_json(fd_or_path: int | str) -> dict[str, Any]:
    try:
        if isinstance(fd_or_path, int):
            data = os.pread(fd_or_path, 65536, 0)
        else:
            with open(fd_or_path, "rb") as f:
                data = f.read(65536)
        value = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_lease(fd: int, lease: Lease) -> None:
    data = json.dumps(
        {
            "name": lease.name,
            "lease_id": lease.lease_id,
            "fence": lease.fence,
            "owner": lease.owner,
            "pid": os.getpid(),
            "expires_at": lease.expires_at,
        }
    ).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@implementer(ICertificateStore, ICoordinatingStore)
class CoordinatingDirectoryStore(DirectoryStore):
    """
    A :class:`~txacme.stores.directory.DirectoryStore` shared by several
    processes of one host, with per-name ``flock`` leases, challenge records
    as files and change notification.

    :param path: an existing directory.
    :param clock: the reactor (its time measures leases; it runs the watcher).
    :param node_id: this process's name as lock and record owner.
    :param lease_ttl: default lease lifetime, seconds.
    :param lock_timeout: default wait of :meth:`acquire`, seconds.
    :param watch_mode: handed to ``DirectoryChanges`` (``"auto"``, ``"inotify"``
        or ``"scan"``).
    :raises txacme.errors.ConfigurationError: for a bad directory, ``lease_ttl``
        or ``lock_timeout``, or when ``DIR/.txacme`` cannot be created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | FilePath[str],
        *,
        clock: IReactorTime,
        node_id: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        watch_mode: str = "auto",
    ) -> None:
        super().__init__(path)
        self.clock = clock
        self.node_id = node_id or default_node_id()
        self.lease_ttl = _check_ttl(lease_ttl, "lease_ttl")
        self.lock_timeout = _check_ttl(lock_timeout, "lock_timeout")
        self._watch_mode = watch_mode
        self.state_path = os.path.join(self.path.path, STATE_DIR)
        self.locks_path = os.path.join(self.state_path, "locks")
        self.challenges_path = os.path.join(self.state_path, "challenges")
        try:
            for directory in (self.state_path, self.locks_path, self.challenges_path):
                os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigurationError(f"{self.state_path}: cannot create ({e.strerror})") from e
        self._held: dict[str, _Held] = {}
        self._waits = LockWaits(clock)
        self._subscribers: list[Callable[[StoreChange], object]] = []
        self._changes: Any = None
        self._unwatch: Callable[[], object] | None = None

    def __repr__(self) -> str:
        return f"CoordinatingDirectoryStore({self.path.path!r}, node_id={self.node_id!r})"

    def _now(self) -> float:
        return self.clock.seconds()

    # -- locks ---------------------------------------------------------------

    def _lock_path(self, name: str) -> str:
        return os.path.join(self.locks_path, _lock_filename(name))

    def _live(self, lease: Lease) -> _Held | None:
        """What this process holds for ``lease``, if it still holds it."""
        held = self._held.get(lease.name)
        if held is None or held.lease.lease_id != lease.lease_id:
            return None
        if held.lease.expires_at <= self._now():
            self._drop(lease.name)
            return None
        return held

    def _try(self, name: str, ttl: float) -> tuple[Lease | None, float]:
        # Read-only, so that a failed attempt's close is no IN_CLOSE_WRITE
        # (which would wake every waiter of every process: a busy loop).
        path = self._lock_path(name)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_json(fd)
            os.close(fd)
            remaining = float(info.get("expires_at", 0) or 0) - self._now()
            # A lapsed lease still flocked: its holder is stuck; poll slowly.
            return None, remaining if remaining > 0 else MAX_LOCK_POLL
        except BaseException:
            os.close(fd)
            raise
        try:
            wfd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)  # closing drops the flock
            raise
        try:
            fence = int(_read_json(fd).get("fence", 0) or 0) + 1
            lease = Lease(name, secrets.token_hex(16), fence, self.node_id, self._now() + ttl)
            _write_lease(wfd, lease)
        except BaseException:
            os.close(fd)
            os.close(wfd)
            raise
        held = _Held(fd, wfd, lease)
        held.lapse = self.clock.callLater(ttl, self._lapsed, name, lease.lease_id)
        self._held[name] = held
        log.debug("took the lock of {name} (fence {fence})", name=name, fence=fence)
        return lease, 0.0

    def _lapsed(self, name: str, lease_id: str) -> None:
        held = self._held.get(name)
        if held is not None and held.lease.lease_id == lease_id:
            log.warn("the lease on {name} lapsed without renewal; unlocking", name=name)
            self._drop(name)

    def _drop(self, name: str) -> None:
        """Unlock ``name``: mark the lease ended, drop the flock, wake waiters."""
        held = self._held.pop(name, None)
        if held is None:
            return
        if held.lapse is not None and held.lapse.active():
            held.lapse.cancel()
        try:
            _write_lease(held.wfd, attrs.evolve(held.lease, expires_at=0.0))
        except OSError:
            pass
        finally:
            os.close(held.fd)  # drops the flock
            os.close(held.wfd)  # other processes see IN_CLOSE_WRITE: a "lock" hint
        self._waits.wake(name)

    def try_acquire(self, name: str, ttl: float | None = None) -> Deferred[Lease | None]:
        """Take the lock of ``name`` if no process holds it; ``None`` if one does."""
        try:
            name, real_ttl = _lock_request(self, name, ttl)
            return succeed(self._try(name, real_ttl)[0])
        except Exception:
            return fail()

    def acquire(
        self, name: str, ttl: float | None = None, timeout: float | None = None
    ) -> Deferred[Lease]:
        """Take the lock of ``name``, waiting (at most ``timeout`` s) while it is held."""
        try:
            name, real_ttl, wait = _acquire_request(self, name, ttl, timeout)
            self._watch()
        except Exception:
            return fail()

        def attempt() -> Deferred[tuple[Lease | None, float]]:
            try:
                return succeed(self._try(name, real_ttl))
            except Exception:
                return fail()

        return Deferred.fromCoroutine(acquire_loop(attempt, self._waits, self.clock, name, wait))

    def renew(self, lease: Lease, ttl: float | None = None) -> Deferred[Lease]:
        """Extend ``lease``; :class:`LockLost` if it lapsed."""
        try:
            real_ttl = _lease_ttl(self, ttl)
        except ConfigurationError:
            return fail()
        held = self._live(lease)
        if held is None:
            return fail(LockLost(f"the lease on {lease.name} was lost"))
        renewed = attrs.evolve(held.lease, expires_at=self._now() + real_ttl)
        try:
            _write_lease(held.wfd, renewed)
        except OSError:
            return fail()
        held.lease = renewed
        if held.lapse is not None and held.lapse.active():
            held.lapse.cancel()
        held.lapse = self.clock.callLater(real_ttl, self._lapsed, lease.name, lease.lease_id)
        return succeed(renewed)

    def release(self, lease: Lease) -> Deferred[bool]:
        """Give the lock back; ``False`` if the lease was already lost."""
        if self._live(lease) is None:
            return succeed(False)
        self._drop(lease.name)
        return succeed(True)

    def store_fenced(self, lease: Lease, pem_objects: object) -> Deferred[None]:
        """Store under ``lease`` while this process holds its ``flock``, else :class:`LockLost`."""
        if self._live(lease) is None:
            return fail(LockLost(f"the lease on {lease.name} was lost; not storing"))
        return self.store(lease.name, pem_objects)

    def holder(self, name: str) -> Lease | None:
        """
        The live lease on ``name`` (held by any process), or ``None``; for
        ``txacme status`` and tests.
        """
        name = normalize_server_name(name)
        fd = os.open(self._lock_path(name), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                own = self._held.get(name)
                return own.lease if own is not None else None
            info = _read_json(fd)
        finally:
            os.close(fd)
        try:
            return Lease(
                name,
                str(info["lease_id"]),
                int(info["fence"]),
                str(info["owner"]),
                float(info["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def close(self) -> None:
        """Release every lock this process holds and stop watching the directory."""
        for name in list(self._held):
            self._drop(name)
        self._waits.cancel_all()
        if self._changes:
            if self._unwatch is not None:
                self._unwatch()
            self._changes.stop()
            self._changes = self._unwatch = None

    # -- challenges ----------------------------------------------------------

    def _challenge_path(self, key: tuple[str, str, str]) -> str:
        challenge_type, identifier, token = key
        if len(token) + len(CHALLENGE_SUFFIX) + 18 > _NAME_MAX:
            raise ConfigurationError(f"challenge token of {identifier} is too long")
        return os.path.join(
            self.challenges_path, challenge_type, identifier, token + CHALLENGE_SUFFIX
        )

    def put_challenge(
        self, record: ChallengeRecord, ttl: float = DEFAULT_CHALLENGE_TTL
    ) -> Deferred[None]:
        """Write ``record`` (owned by this node) for every process; expires after ``ttl`` s."""
        try:
            record = _checked_record(record, self.node_id)
            _check_ttl(ttl)
            path = self._challenge_path(record.key)
            data = json.dumps(
                {
                    "key_authorization": record.key_authorization,
                    "owner": record.owner,
                    "expires_at": self._now() + ttl,
                }
            ).encode()
            _write_record(path, data)
        except Exception:
            return fail()
        return succeed(None)

    def get_challenges(
        self, challenge_type: str, identifier: str | None = None, token: str | None = None
    ) -> Deferred[list[ChallengeRecord]]:
        """The unexpired records matching the filters (expired ones are removed)."""
        try:
            return succeed(self._get_challenges(challenge_type, identifier, token))
        except Exception:
            return fail()

    def _get_challenges(
        self, challenge_type: str, identifier: str | None, token: str | None
    ) -> list[ChallengeRecord]:
        if challenge_type not in SHARED_CHALLENGE_TYPES:
            return []
        type_dir = os.path.join(self.challenges_path, challenge_type)
        if identifier is not None:
            identifiers = [normalize_server_name(identifier)]
        else:
            identifiers = _listdir(type_dir)
        now = self._now()
        found = []
        for ident in identifiers:
            ident_dir = os.path.join(type_dir, ident)
            if token is not None:
                filenames = [token + CHALLENGE_SUFFIX]
            else:
                filenames = [
                    f
                    for f in _listdir(ident_dir)
                    if f.endswith(CHALLENGE_SUFFIX) and not f.startswith(".")
                ]
            for filename in filenames:
                record = self._read_record(
                    os.path.join(ident_dir, filename),
                    challenge_type,
                    ident,
                    filename[: -len(CHALLENGE_SUFFIX)],
                    now,
                )
                if record is not None:
                    found.append(record)
        return found

    def _read_record(
        self, path: str, challenge_type: str, identifier: str, token: str, now: float
    ) -> ChallengeRecord | None:
        info = _read_json(path)
        if not info:
            return None
        try:
            record = ChallengeRecord(
                challenge_type,
                identifier,
                token,
                str(info["key_authorization"]),
                str(info.get("owner", "")),
            )
            expires_at = float(info["expires_at"])
        except (KeyError, TypeError, ValueError):
            return None
        if expires_at <= now:
            _remove_record(path)
            return None
        return record

    def delete_challenge(self, record: ChallengeRecord) -> Deferred[None]:
        """Delete ``record`` (no-op when gone)."""
        try:
            _remove_record(self._challenge_path(record.key))
        except Exception:
            return fail()
        return succeed(None)

    # -- notification ----------------------------------------------------------

    def _watch(self) -> None:
        if self._changes is not None:
            return
        try:
            from txacme.stores._dirwatch import DirectoryChanges
        except ImportError:  # pragma: no cover - only while the watcher is missing
            log.warn("no change notification for {path}; polling locks", path=self.path.path)
            self._changes = False
            return
        changes = DirectoryChanges(self.path.path, self.clock, mode=self._watch_mode)
        self._unwatch = changes.subscribe(self._changed)
        changes.start()
        self._changes = changes

    def _changed(self, change: StoreChange) -> None:
        if change.kind in ("lock", "resync"):
            name = change.name
            if name is not None and name.endswith(LOCK_SUFFIX):
                name = name[: -len(LOCK_SUFFIX)]
                change = attrs.evolve(change, name=name)
            for waiting in [name] if name is not None else list(self._waits._waiters):
                self._waits.wake(waiting)
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.failure("store change subscriber {callback!r} failed", callback=callback)

    def subscribe(self, callback: Callable[[StoreChange], object]) -> Callable[[], None]:
        """Call ``callback(change)`` for every change of any process; returns the unsubscriber."""
        self._watch()
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _write_record(path: str, data: bytes) -> None:
    """Write ``path`` by a rename into place, creating its directory (again, if raced)."""
    directory, base = os.path.split(path)
    for attempt in range(3):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
        try:
            with open(temp, "wb") as f:
                f.write(data)
            os.rename(temp, path)
            return
        except FileNotFoundError:
            # Another process removed the (empty) directory meanwhile.
            if attempt == 2:
                raise


def _remove_record(path: str) -> None:
    """Remove a record file, then its identifier directory if that is now empty."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # not empty, or gone


__all__ = ["STATE_DIR", "CoordinatingDirectoryStore", "default_node_id"]
