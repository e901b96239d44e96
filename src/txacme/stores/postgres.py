"""
:class:`PostgresStore`: certificates, locks and challenges in PostgreSQL, for
several processes or hosts serving the same names.

It implements :class:`~txacme.interfaces.ICertificateStore` and
:class:`~txacme.stores.coordination.ICoordinatingStore`. Install the extra:
``pip install 'txacme[postgres]'`` (psycopg 3.2 or later).

Decisions
---------

Threads, not an asyncio reactor.
    psycopg's synchronous API runs in a thread pool of ``pool_size`` threads,
    each borrowing a connection from a small pool (like ``twisted.enterprise.adbapi``),
    so any reactor works and the reactor thread never waits on the database.
    A connection found broken is dropped, and the operation is retried once on
    a fresh one; every operation is idempotent, so a retry after an ambiguous
    commit is harmless.

Lease rows, not advisory locks.
    A session advisory lock belongs to a connection: when the connection drops,
    the lock is gone and its holder may not know; with a thread pool (or
    PgBouncer in transaction mode) the lock is not even tied to one piece of
    work. Locks are rows of ``txacme_locks`` with a lease id, a fence counter
    and an expiry computed by the database clock (``clock_timestamp()``), so
    hosts with skewed clocks agree on who holds a lock. Taking a lock is one
    ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``: atomic under
    concurrency. Fenced writes check the lease in the same transaction as the
    write (``SELECT ... FOR UPDATE`` on the lock row).

LISTEN/NOTIFY for changes.
    Every write sends a notification in its own transaction (so it is
    delivered only if the write commits). A dedicated thread holds one
    connection that listens, and hands notifications to the reactor thread.
    If that connection is lost it reconnects (with backoff) and emits a
    ``"resync"`` change, since notifications sent meanwhile are lost.

The hot path is memory.
    The store is read at start-up and when a change is notified; TLS
    handshakes are served from :class:`txacme.serving.index.CertificateIndex`, which
    :class:`txacme.serving.cluster.ClusterNode` keeps current.

Keys at rest.
    Plain PEM by default. With ``key_encryption`` (a
    :class:`~txacme.stores.keysealing.KeyEncryption`) private keys are sealed
    with AES-256-GCM; the server name is authenticated
    data, so a sealed key cannot be moved to another name. Several keys may be
    given: the first seals, all unseal (rotation: put the new key first; each
    entry is sealed with it at its next write).

Schema.
    Tables ``txacme_schema`` (the schema version), ``txacme_certificates``,
    ``txacme_locks`` and ``txacme_challenges``, in ``schema`` when given
    (created if missing). :meth:`PostgresStore.start` creates or migrates them
    under a transaction-level advisory lock, so processes starting together
    migrate once; a database whose version is newer than this txacme knows is
    refused rather than misread.

The threads live in :mod:`txacme.stores._pgconnection` and the SQL in
:mod:`txacme.stores._pgsql`; this module is the store the reactor thread sees.
psycopg is imported only when a store is made (it is an optional extra).

May import the core modules and the rest of :mod:`txacme.stores`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import pem
from cryptography import x509
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from txacme.certificates import validate_pem_objects
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import ICertificateStore
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.stores._pgconnection import ConnectionPool, Listener, redact_conninfo
from txacme.stores._pgsql import DEFAULT_ROW, KEY_PLAIN, KEY_SEALED, Prepared, StoreSQL
from txacme.stores.coordination import (
    DEFAULT_CHALLENGE_TTL,
    DEFAULT_LEASE_TTL,
    DEFAULT_LOCK_TIMEOUT,
    ChallengeRecord,
    ICoordinatingStore,
    Lease,
    LockWaits,
    StoreChange,
    _acquire_request,
    _check_ttl,
    _checked_record,
    _lease_ttl,
    _lock_request,
    acquire_loop,
)
from txacme.stores.directory import _serialize
from txacme.stores.keysealing import KeyEncryption

if TYPE_CHECKING:
    from txacme.stores._pgconnection import Connection

log = Logger()

_T = TypeVar("_T")
_P = ParamSpec("_P")

SCHEMA_VERSION = 1
"""The schema version this txacme creates and understands."""


def _migrations() -> list[list[str]]:
    """SQL of each schema version, with ``{p}`` standing for the table-name prefix."""
    return [
        [
            """CREATE TABLE {p}txacme_certificates (
                name text PRIMARY KEY,
                key_data bytea,
                key_format smallint NOT NULL DEFAULT 0,
                certificates text NOT NULL DEFAULT '',
                not_after timestamptz,
                version bigint NOT NULL DEFAULT 1,
                updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                updated_by text NOT NULL DEFAULT ''
            )""",
            """CREATE TABLE {p}txacme_locks (
                name text PRIMARY KEY,
                lease_id text,
                owner text,
                fence bigint NOT NULL,
                expires_at timestamptz NOT NULL
            )""",
            """CREATE TABLE {p}txacme_challenges (
                challenge_type text NOT NULL,
                identifier text NOT NULL,
                token text NOT NULL,
                key_authorization text NOT NULL,
                owner text NOT NULL DEFAULT '',
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (challenge_type, identifier, token)
            )""",
            "CREATE INDEX ON {p}txacme_challenges (challenge_type, token)",
        ],
    ]


MIGRATIONS: list[list[str]] = _migrations()
"""``MIGRATIONS[n]`` brings the schema from version ``n`` to ``n + 1``."""


def _parse_change(payload: str | None) -> StoreChange | None:
    """The change a notification payload names (``None``: a lost connection, so resync)."""
    if payload is None:
        return StoreChange("resync")
    try:
        data = json.loads(payload)
        kind = {"c": "certificate", "h": "challenge", "l": "lock"}[data["k"]]
        return StoreChange(
            kind,
            data.get("n"),
            deleted=bool(data.get("d", False)),
            challenge_type=data.get("t"),
            token=data.get("tok"),
            origin=data.get("o"),
        )
    except (ValueError, KeyError, TypeError):
        log.warn("ignoring a malformed change notification")
        return None


@implementer(ICertificateStore, ICoordinatingStore)
class PostgresStore:
    """
    Certificates, locks and challenge records in a PostgreSQL database.

    Construction does not touch the database; the first operation (or
    :meth:`start`) creates or migrates the schema and starts listening for
    changes. Call :meth:`close` when done (it is also called at reactor
    shutdown).

    :param conninfo: a libpq URL (``postgresql://user@host:5432/db``) or
        ``key=value`` string. It is never logged with its password.
    :param reactor: the reactor: its clock, its threads (results come back
        with ``callFromThread``) and its shutdown trigger; it must also provide
        ``IReactorCore`` and ``IReactorFromThreads``, as every reactor does.
    :param schema: the PostgreSQL schema for the tables (created if missing);
        default: the connection's ``search_path``. Give different schemas to
        keep unrelated clusters apart in one database.
    :param key_encryption: seals private keys at rest; ``None`` stores PEM.
    :param pool_size: threads (and connections) for operations.
    :param lease_ttl: default lock lease in seconds.
    :param lock_timeout: default wait of :meth:`acquire` in seconds.
    :param node_id: this process's name as lock owner (default
        ``<hostname>:<pid>:<random>``).
    :param listen: follow changes with LISTEN/NOTIFY (one more connection).
    :param connect_timeout: seconds to wait for a connection.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        reactor: IReactorTime,
        schema: str | None = None,
        key_encryption: KeyEncryption | None = None,
        pool_size: int = 4,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        node_id: str | None = None,
        listen: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            import psycopg  # noqa: F401  (the optional extra)
        except ImportError:
            raise ConfigurationError(
                "PostgresStore needs psycopg 3: pip install 'txacme[postgres]'"
            )
        if not isinstance(conninfo, str) or not conninfo:
            raise ConfigurationError("PostgresStore needs a connection string")
        if schema is not None and (
            not isinstance(schema, str) or not schema or len(schema) > 40 or "\x00" in schema
        ):
            raise ConfigurationError(f"schema={schema!r} is not a usable schema name")
        if key_encryption is not None and not isinstance(key_encryption, KeyEncryption):
            raise ConfigurationError("key_encryption must be a KeyEncryption")
        if not isinstance(pool_size, int) or not 1 <= pool_size <= 64:
            raise ConfigurationError(f"pool_size={pool_size!r} must be an integer from 1 to 64")
        self._clock = reactor
        self._core = IReactorCore(reactor)
        self._from_threads = IReactorFromThreads(reactor)
        self._redacted = redact_conninfo(conninfo)
        self.schema = schema
        self.key_encryption = key_encryption
        self.lease_ttl = _check_ttl(lease_ttl, "lease_ttl")
        self.lock_timeout = _check_ttl(lock_timeout, "lock_timeout")
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._listen = listen
        self._listener: Listener | None = None
        self._waits = LockWaits(reactor)
        self._subscribers: list[Callable[[StoreChange], object]] = []
        self._state = "new"  # then "starting", "ready"; "closed" at the end
        self._start_waiters: list[Deferred[None]] = []
        self._shutdown_trigger: object | None = None
        self._conninfo = conninfo
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool = self._new_pool()
        self._sql = StoreSQL(schema, self.node_id)
        self.channel = self._sql.channel

    def __repr__(self) -> str:
        schema = f", schema={self.schema!r}" if self.schema else ""
        return f"PostgresStore({self._redacted!r}{schema})"

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Create or migrate the schema and start listening for changes. Safe to
        call again: later calls wait for the first; after a failure the next
        call tries again.
        """
        if self._state == "closed":
            return fail(ConfigurationError("the PostgreSQL store is closed"))
        if self._state == "ready":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._start_waiters.append(d)
        if self._state == "new":
            self._state = "starting"
            Deferred.fromCoroutine(self._start()).addBoth(self._finish_start)
        return d

    async def _start(self) -> None:
        self._pool.start()
        self._shutdown_trigger = self._core.addSystemEventTrigger("before", "shutdown", self.close)
        version = await self._pool.run(self._sql.migrate, MIGRATIONS)
        log.info(
            "PostgreSQL store ready: {conninfo}, schema version {version}",
            conninfo=self._redacted,
            version=version,
        )
        if self._listen:
            await self._start_listening()

    def _start_listening(self) -> Deferred[None]:
        """Start the LISTEN thread; fires once it listens (fails if it cannot connect)."""
        ready: Deferred[None] = Deferred()

        def on_ready(error: BaseException | None) -> None:
            def fire() -> None:
                if ready.called:
                    return
                if error is None:
                    ready.callback(None)
                else:
                    ready.errback(error)

            self._from_threads.callFromThread(fire)

        self._listener = Listener(self._pool, self.channel, self._deliver, on_ready)
        self._listener.start()
        return ready

    def _finish_start(self, result: None | Failure) -> None:
        failed = isinstance(result, Failure)
        if self._state == "starting":
            self._state = "new" if failed else "ready"
        if failed:
            self._stop_threads()
            if self._state != "closed":
                self._pool = self._new_pool()
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            elif self._state == "closed":
                d.errback(ConfigurationError("the PostgreSQL store is closed"))
            else:
                d.callback(None)

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(
            self._conninfo, self._pool_size, self._connect_timeout, self._from_threads
        )

    def _stop_threads(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        if self._shutdown_trigger is not None:
            try:
                self._core.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass
            self._shutdown_trigger = None
        self._pool.close()

    def close(self) -> Deferred[None]:
        """Stop listening, wait for running operations and close every connection."""
        if self._state == "closed":
            return succeed(None)
        self._state = "closed"
        self._waits.cancel_all()
        self._stop_threads()
        return succeed(None)

    def _run(
        self,
        fn: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        """Run ``fn(conn, *args, **kwargs)`` in a pool thread once the store has started."""
        if self._state == "ready":
            return self._pool.run(fn, *args, **kwargs)
        return self.start().addCallback(lambda _: self._pool.run(fn, *args, **kwargs))

    def schema_version(self) -> Deferred[int]:
        """The schema version recorded in the database."""
        return self._run(self._sql.schema_version)

    # -- notification ------------------------------------------------------------

    def _deliver(self, payload: str | None) -> None:
        """Called in the listener thread."""
        self._from_threads.callFromThread(self._dispatch, payload)

    def _dispatch(self, payload: str | None) -> None:
        if self._state == "closed":
            return
        change = _parse_change(payload)
        if change is None:
            return
        if change.kind == "lock" and change.name is not None:
            self._waits.wake(change.name)
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.failure("store change subscriber {callback!r} failed", callback=callback)

    def subscribe(self, callback: Callable[[StoreChange], object]) -> Callable[[], None]:
        """
        Call ``callback(change)`` (in the reactor thread) for each change made
        by any process; returns the unsubscriber. Needs ``listen=True``.
        """
        self._subscribers.append(callback)
        if self._state == "new":
            self.start().addErrback(lambda f: log.failure("starting the PostgreSQL store", f))

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- certificates ------------------------------------------------------------

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """The entry of ``server_name`` (``[]`` when wanted); ``KeyError`` if missing."""
        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()

        def read(conn: Connection) -> list[pem.AbstractPEMObject]:
            found = self._sql.entry(conn, name, self.key_encryption)
            if found is None:
                raise KeyError(server_name)
            return found

        return self._run(read)

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """Every entry by name; damaged or unreadable entries are logged and left out."""
        return self._run(lambda conn: self._sql.entries(conn, self.key_encryption))

    def _prepare(self, name: str, pem_objects: object) -> Prepared:
        """Validate an entry and split it into the key (sealed or not) and the certificates."""
        objects = validate_pem_objects(pem_objects, name or "DEFAULT")
        key = next(o for o in objects if isinstance(o, pem.PrivateKey))
        certificates = [o for o in objects if o is not key]
        key_pem = key.as_bytes()
        if self.key_encryption is not None:
            key_data, key_format = self.key_encryption.seal(name, key_pem), KEY_SEALED
        else:
            key_data, key_format = key_pem, KEY_PLAIN
        leaf = x509.load_pem_x509_certificate(certificates[0].as_bytes())
        text = _serialize(certificates).decode("ascii")
        return key_data, key_format, text, leaf.not_valid_after_utc

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """Validate and replace the entry of ``server_name`` (one transaction); notify."""
        try:
            name = normalize_server_name(server_name)
            prepared = self._prepare(name, pem_objects)
        except Exception:
            return fail()
        d = self._run(self._sql.store, name, prepared)
        d.addCallback(
            lambda _: log.info(
                "stored the certificate of {server_name} in PostgreSQL", server_name=name
            )
        )
        return d

    def store_fenced(self, lease: Lease, pem_objects: object) -> Deferred[None]:
        """Store under ``lease`` if it still holds the lock, else :class:`LockLost`."""
        try:
            name = normalize_server_name(lease.name)
            prepared = self._prepare(name, pem_objects)
        except Exception:
            return fail()
        d = self._run(self._sql.store_fenced, lease, name, prepared)
        d.addCallback(
            lambda _: log.info(
                "stored the certificate of {server_name} in PostgreSQL (fence {fence})",
                server_name=name,
                fence=lease.fence,
            )
        )
        return d

    def get_default(self) -> Deferred[list[pem.AbstractPEMObject]]:
        """The default entry (served without a matching name); ``KeyError`` if none."""

        def read(conn: Connection) -> list[pem.AbstractPEMObject]:
            found = self._sql.entry(conn, DEFAULT_ROW, self.key_encryption)
            if not found:
                raise KeyError("DEFAULT")
            return found

        return self._run(read)

    def store_default(self, pem_objects: object) -> Deferred[None]:
        """Validate and replace the default entry."""
        try:
            prepared = self._prepare(DEFAULT_ROW, pem_objects)
        except Exception:
            return fail()
        return self._run(self._sql.store, DEFAULT_ROW, prepared)

    def mark_wanted(self, server_name: str) -> Deferred[bool]:
        """Create an empty entry (asking for a certificate) unless one exists."""
        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        return self._run(self._sql.mark_wanted, name)

    def remove(self, server_name: str) -> Deferred[bool]:
        """Delete the entry of ``server_name``; ``True`` if there was one."""
        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        return self._run(self._sql.remove, name)

    # -- locks -----------------------------------------------------------------

    def try_acquire(self, name: str, ttl: float | None = None) -> Deferred[Lease | None]:
        """Take the lock of ``name`` if it is free; ``None`` if a live lease holds it."""
        try:
            canonical, real_ttl = _lock_request(self, name, ttl)
        except ConfigurationError:
            return fail()
        attempt = self._run(self._sql.take_lock, canonical, real_ttl, os.urandom(16).hex())
        return attempt.addCallback(lambda taken: taken[0])

    def acquire(
        self, name: str, ttl: float | None = None, timeout: float | None = None
    ) -> Deferred[Lease]:
        """
        Take the lock of ``name``, waiting while it is held (woken by release
        notifications, and at least every two seconds).
        """
        try:
            canonical, real_ttl, wait = _acquire_request(self, name, ttl, timeout)
        except ConfigurationError:
            return fail()
        lease_id = os.urandom(16).hex()
        return Deferred.fromCoroutine(
            acquire_loop(
                lambda: self._run(self._sql.take_lock, canonical, real_ttl, lease_id),
                self._waits,
                self._clock,
                canonical,
                wait,
            )
        )

    def renew(self, lease: Lease, ttl: float | None = None) -> Deferred[Lease]:
        """Extend ``lease`` by ``ttl`` from now; :class:`LockLost` if it lapsed."""
        try:
            real_ttl = _lease_ttl(self, ttl)
        except ConfigurationError:
            return fail()
        return self._run(self._sql.renew_lock, lease, real_ttl)

    def release(self, lease: Lease) -> Deferred[bool]:
        """Give the lock back and wake waiting processes; ``False`` if it was lost."""
        return self._run(self._sql.release_lock, lease)

    def holder(self, name: str) -> Deferred[tuple[str, int, float] | None]:
        """``(owner, fence, seconds left)`` of the live lease on ``name``, or ``None``."""
        return self._run(self._sql.lock_holder, name)

    # -- challenges ------------------------------------------------------------------

    def put_challenge(
        self, record: ChallengeRecord, ttl: float = DEFAULT_CHALLENGE_TTL
    ) -> Deferred[None]:
        """Write ``record``, expiring after ``ttl`` seconds; notify."""
        try:
            record = _checked_record(record, self.node_id)
            real_ttl = _check_ttl(ttl)
        except ConfigurationError:
            return fail()
        return self._run(self._sql.put_challenge, record, real_ttl)

    def get_challenges(
        self, challenge_type: str, identifier: str | None = None, token: str | None = None
    ) -> Deferred[list[ChallengeRecord]]:
        """The unexpired records of ``challenge_type`` matching the filters."""
        return self._run(self._sql.get_challenges, challenge_type, identifier, token)

    def delete_challenge(self, record: ChallengeRecord) -> Deferred[None]:
        """Delete ``record`` (no-op when gone); notify."""
        return self._run(self._sql.delete_challenge, record)


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "KeyEncryption",
    "PostgresStore",
    "redact_conninfo",
]
