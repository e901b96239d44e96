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
    handshakes are served from :class:`txacme.serving.tls.CertificateIndex`, which
    :class:`txacme.stores.coordination.ClusterNode` keeps current.

Keys at rest.
    Plain PEM by default. With ``key_encryption`` (a :class:`KeyEncryption`)
    private keys are sealed with AES-256-GCM; the server name is authenticated
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
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pem
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import ICertificateStore
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
from txacme.stores.directory import validate_pem_objects

if TYPE_CHECKING:
    import psycopg

log = Logger()

_T = TypeVar("_T")

SCHEMA_VERSION = 1
"""The schema version this txacme creates and understands."""

DEFAULT_ROW = ""
"""The ``name`` of the default entry's row (no server name is empty)."""

_KEY_PLAIN = 1
_KEY_SEALED = 2
_SEAL_MAGIC = b"TXK1"
_SEAL_AAD = b"txacme private key\x00"


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


# ---------------------------------------------------------------------------
# Keys at rest
# ---------------------------------------------------------------------------


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"txacme key id\x00" + key).digest()[:8]


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigurationError(f"key_file={path!r} cannot be read: {e.strerror}")
    try:
        mode = os.stat(path).st_mode
        if mode & 0o077:
            log.warn("the key file {path} is readable by other users", path=path)
    except OSError:
        pass
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) == 32:
            return decoded
    except (ValueError, UnicodeDecodeError):
        pass
    raise ConfigurationError(
        f"key_file={path!r} must hold a 256-bit key: 32 raw bytes, 64 hex digits or base64"
    )


class KeyEncryption:
    """
    Seals private keys at rest with AES-256-GCM.

    :param keys: 32-byte keys; the first seals, every one unseals (rotation).
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if isinstance(keys, (bytes, bytearray)) or not keys:
            raise ConfigurationError("KeyEncryption needs a list of one or more 32-byte keys")
        self._keys: dict[bytes, AESGCM] = {}
        self._primary: bytes | None = None
        for key in keys:
            if not isinstance(key, bytes) or len(key) != 32:
                raise ConfigurationError("every key of KeyEncryption must be 32 bytes (AES-256)")
            kid = _key_id(key)
            self._keys[kid] = AESGCM(key)
            if self._primary is None:
                self._primary = kid

    @classmethod
    def from_files(cls, path: str, *old_paths: str) -> KeyEncryption:
        """
        Read the sealing key from ``path`` (32 raw bytes, 64 hex digits or
        base64) and older keys, still accepted for unsealing, from ``old_paths``.
        """
        return cls([_read_key_file(p) for p in (path, *old_paths)])

    @staticmethod
    def generate_key_file(path: str) -> None:
        """Write a new random key (base64) to ``path``, mode 0600; never overwrites."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")

    def __repr__(self) -> str:
        return f"<KeyEncryption with {len(self._keys)} key(s)>"

    @property
    def key_id(self) -> str:
        """The hex id of the sealing key (safe to log)."""
        assert self._primary is not None
        return self._primary.hex()

    def seal(self, name: str, data: bytes) -> bytes:
        """Encrypt ``data`` (a private key) bound to ``name``."""
        assert self._primary is not None
        nonce = os.urandom(12)
        sealed = self._keys[self._primary].encrypt(nonce, data, _SEAL_AAD + name.encode())
        return _SEAL_MAGIC + self._primary + nonce + sealed

    def unseal(self, name: str, blob: bytes) -> bytes:
        """
        Decrypt a value made by :meth:`seal` for ``name``.

        :raises txacme.errors.ConfigurationError: naming ``name`` when no key
            fits or the data was altered.
        """
        if len(blob) < 4 + 8 + 12 + 16 or not blob.startswith(_SEAL_MAGIC):
            raise ConfigurationError(f"{name}: the sealed private key is malformed")
        kid, nonce, sealed = blob[4:12], blob[12:24], blob[24:]
        aead = self._keys.get(kid)
        if aead is None:
            raise ConfigurationError(
                f"{name}: the private key is sealed with key {kid.hex()}, which was not given"
            )
        try:
            return aead.decrypt(nonce, sealed, _SEAL_AAD + name.encode())
        except InvalidTag:
            raise ConfigurationError(f"{name}: the sealed private key fails authentication")


# ---------------------------------------------------------------------------
# Connections in threads
# ---------------------------------------------------------------------------


def redact_conninfo(conninfo: str) -> str:
    """``conninfo`` (URL or ``key=value`` string) with any password replaced by ``***``."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(conninfo)
    except Exception:
        return "<unparsable connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items()})


class _ConnectionPool:
    """A thread pool whose threads borrow psycopg connections from a free list."""

    def __init__(self, conninfo: str, size: int, connect_timeout: float, reactor: Any) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._reactor = reactor
        self._threads = ThreadPool(minthreads=0, maxthreads=size, name="txacme-postgres")
        self._free: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        self._threads.start()

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(
            self._conninfo,
            autocommit=autocommit,
            connect_timeout=max(1, int(self._connect_timeout)),
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._closed:
                raise ConfigurationError("the PostgreSQL store is closed")
            if self._free:
                return self._free.pop()
        return self.connect()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken:
            return
        with self._lock:
            if not self._closed:
                self._free.append(conn)
                return
        conn.close()

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        import psycopg

        for attempt in (1, 2):
            conn = self._take()
            try:
                result = fn(conn, *args)
            except psycopg.OperationalError:
                if conn.broken or conn.closed:
                    conn.close()
                    if attempt == 1:
                        continue
                else:
                    self._give_back(conn)
                raise
            except BaseException:
                self._give_back(conn)
                raise
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")

    def run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run ``fn(connection, *args)`` in a pool thread."""
        if self._closed:
            return fail(ConfigurationError("the PostgreSQL store is closed"))
        return deferToThreadPool(self._reactor, self._threads, self._call, fn, *args)

    def close(self) -> None:
        """Wait for running operations, stop the threads, close the connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._threads.started:
            self._threads.stop()
        with self._lock:
            free, self._free = self._free, []
        for conn in free:
            conn.close()


class _Listener:
    """A thread holding one connection that LISTENs, handing payloads to ``deliver``."""

    def __init__(
        self,
        pool: _ConnectionPool,
        channel: str,
        deliver: Callable[[str | None], None],
        on_ready: Callable[[BaseException | None], None],
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._deliver = deliver
        self._on_ready = on_ready
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name="txacme-postgres-listen", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout=10)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        first = True
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                conn = self._pool.connect()
            except psycopg.Error as e:
                if first:
                    self._on_ready(e)
                    return
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                if first:
                    self._on_ready(None)
                    first = False
                else:
                    log.info("listening to the PostgreSQL store again; reloading")
                    self._deliver(None)
                backoff = 0.1
                while not self._stopping.is_set():
                    readable, _, _ = select.select([conn.fileno(), self._wake_r], [], [], 30.0)
                    if self._wake_r in readable:
                        break
                    if readable:
                        for notify in conn.notifies(timeout=0):
                            self._deliver(notify.payload)
            except psycopg.Error as e:
                if first:
                    self._on_ready(e)
                    conn.close()
                    return
                if not self._stopping.is_set():
                    log.warn("lost the PostgreSQL notification connection: {error}", error=str(e))
            finally:
                conn.close()


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


def _entry_from_row(
    name: str, key_data: bytes | None, key_format: int, certificates: str, sealer: Any
) -> list[pem.AbstractPEMObject]:
    if key_data is None:
        return []
    if key_format == _KEY_SEALED:
        if sealer is None:
            raise ConfigurationError(
                f"{name}: the private key is sealed, and no key_encryption was given"
            )
        key_pem = sealer.unseal(name, bytes(key_data))
    else:
        key_pem = bytes(key_data)
    objects = pem.parse(key_pem) + pem.parse(certificates.encode("ascii"))
    if len(objects) < 2 or not isinstance(objects[0], pem.PrivateKey):
        raise ConfigurationError(f"{name}: the stored entry is damaged")
    return objects


def _pem_text(objects: Iterable[pem.AbstractPEMObject]) -> bytes:
    parts = []
    for obj in objects:
        data = obj.as_bytes()
        parts.append(data if data.endswith(b"\n") else data + b"\n")
    return b"".join(parts)


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
    :param reactor: the reactor (default: the global one).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        key_encryption: KeyEncryption | None = None,
        pool_size: int = 4,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        node_id: str | None = None,
        listen: bool = True,
        connect_timeout: float = 10.0,
        reactor: Any = None,
    ) -> None:
        try:
            from psycopg import sql
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
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._redacted = redact_conninfo(conninfo)
        self.schema = schema
        self.key_encryption = key_encryption
        self.lease_ttl = _check_ttl(lease_ttl, "lease_ttl")
        self.lock_timeout = _check_ttl(lock_timeout, "lock_timeout")
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._listen = listen
        self._listener: _Listener | None = None
        self._waits = LockWaits(reactor)
        self._subscribers: list[Callable[[StoreChange], object]] = []
        self._state = "new"  # then "starting", "ready"; "closed" at the end
        self._start_waiters: list[Deferred[None]] = []
        self._shutdown_trigger: Any = None
        self._conninfo = conninfo
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool = self._new_pool()

        def table(name: str) -> sql.Composable:
            if schema is None:
                return sql.Identifier(name)
            return sql.Identifier(schema, name)

        self._certificates = table("txacme_certificates")
        self._locks = table("txacme_locks")
        self._challenges = table("txacme_challenges")
        self._version_table = table("txacme_schema")
        self.channel = "txacme" if schema is None else f"txacme.{schema}"

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
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self.close
        )
        version = await self._pool.run(self._migrate)
        log.info(
            "PostgreSQL store ready: {conninfo}, schema version {version}",
            conninfo=self._redacted,
            version=version,
        )
        if self._listen:
            ready: Deferred[None] = Deferred()

            def on_ready(error: BaseException | None) -> None:
                def fire() -> None:
                    if ready.called:
                        return
                    if error is None:
                        ready.callback(None)
                    else:
                        ready.errback(error)

                self._reactor.callFromThread(fire)

            self._listener = _Listener(self._pool, self.channel, self._deliver, on_ready)
            self._listener.start()
            await ready

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

    def _new_pool(self) -> _ConnectionPool:
        return _ConnectionPool(
            self._conninfo, self._pool_size, self._connect_timeout, self._reactor
        )

    def _stop_threads(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
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

    def _run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Run ``fn(conn, *args)`` in a pool thread once the store has started."""
        if self._state == "ready":
            return self._pool.run(fn, *args)
        return self.start().addCallback(lambda _: self._pool.run(fn, *args))

    # -- schema ----------------------------------------------------------------

    def _migrate(self, conn: psycopg.Connection[Any]) -> int:
        from psycopg import sql

        prefix = "" if self.schema is None else sql.Identifier(self.schema).as_string(conn) + "."
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('txacme schema migration'))")
            if self.schema is not None:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer NOT NULL)").format(
                    self._version_table
                )
            )
            row = conn.execute(
                sql.SQL("SELECT max(version) FROM {}").format(self._version_table)
            ).fetchone()
            version = int(row[0]) if row is not None and row[0] is not None else 0
            known = len(MIGRATIONS)
            if version > known:
                raise ConfigurationError(
                    f"the database schema is version {version}, newer than this txacme "
                    f"knows ({known}); upgrade txacme"
                )
            for index in range(version, known):
                for statement in MIGRATIONS[index]:
                    conn.execute(statement.replace("{p}", prefix))
                log.info("migrated the PostgreSQL store to schema version {version}",
                         version=index + 1)
            if version != known:
                conn.execute(sql.SQL("DELETE FROM {}").format(self._version_table))
                conn.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(self._version_table),
                    (known,),
                )
            return known

    def schema_version(self) -> Deferred[int]:
        """The schema version recorded in the database."""
        from psycopg import sql

        def query(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                sql.SQL("SELECT max(version) FROM {}").format(self._version_table)
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return self._run(query)

    # -- notification ------------------------------------------------------------

    def _notify(self, conn: psycopg.Connection[Any], payload: dict[str, Any]) -> None:
        payload["o"] = self.node_id
        conn.execute(
            "SELECT pg_notify(%s, %s)", (self.channel, json.dumps(payload, separators=(",", ":")))
        )

    def _deliver(self, payload: str | None) -> None:
        """Called in the listener thread."""
        self._reactor.callFromThread(self._dispatch, payload)

    def _dispatch(self, payload: str | None) -> None:
        if self._state == "closed":
            return
        change = self._parse_change(payload)
        if change is None:
            return
        if change.kind == "lock" and change.name is not None:
            self._waits.wake(change.name)
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.failure("store change subscriber {callback!r} failed", callback=callback)

    @staticmethod
    def _parse_change(payload: str | None) -> StoreChange | None:
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

    def _row_to_entry(self, name: str, row: Sequence[Any]) -> list[pem.AbstractPEMObject]:
        return _entry_from_row(name, row[0], row[1], row[2], self.key_encryption)

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """The entry of ``server_name`` (``[]`` when wanted); ``KeyError`` if missing."""
        from psycopg import sql

        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        query = sql.SQL(
            "SELECT key_data, key_format, certificates FROM {} WHERE name = %s"
        ).format(self._certificates)

        def read(conn: psycopg.Connection[Any]) -> list[pem.AbstractPEMObject]:
            row = conn.execute(query, (name,)).fetchone()
            if row is None:
                raise KeyError(server_name)
            return self._row_to_entry(name, row)

        return self._run(read)

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """Every entry by name; damaged or unreadable entries are logged and left out."""
        from psycopg import sql

        query = sql.SQL(
            "SELECT name, key_data, key_format, certificates FROM {} WHERE name <> %s"
        ).format(self._certificates)

        def read(conn: psycopg.Connection[Any]) -> dict[str, list[pem.AbstractPEMObject]]:
            result: dict[str, list[pem.AbstractPEMObject]] = {}
            with conn.cursor() as cursor:
                cursor.execute(query, (DEFAULT_ROW,))
                for name, key_data, key_format, certificates in cursor:
                    try:
                        result[name] = _entry_from_row(
                            name, key_data, key_format, certificates, self.key_encryption
                        )
                    except (ConfigurationError, ValueError, UnicodeError) as e:
                        log.error("skipping the damaged entry {name}: {reason}",
                                  name=name, reason=str(e))
            return result

        return self._run(read)

    def _prepare(self, name: str, pem_objects: object) -> tuple[bytes, int, str, Any]:
        """Validate an entry and split it into the key (sealed or not) and the certificates."""
        objects = validate_pem_objects(pem_objects, name or "DEFAULT")
        key = next(o for o in objects if isinstance(o, pem.PrivateKey))
        certificates = [o for o in objects if o is not key]
        key_pem = key.as_bytes()
        if self.key_encryption is not None:
            key_data, key_format = self.key_encryption.seal(name, key_pem), _KEY_SEALED
        else:
            key_data, key_format = key_pem, _KEY_PLAIN
        leaf = x509.load_pem_x509_certificate(certificates[0].as_bytes())
        text = _pem_text(certificates).decode("ascii")
        return key_data, key_format, text, leaf.not_valid_after_utc

    def _upsert(
        self, conn: psycopg.Connection[Any], name: str, prepared: tuple[bytes, int, str, Any]
    ) -> None:
        from psycopg import sql

        conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS c (name, key_data, key_format, certificates, not_after, "
                "updated_by) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET key_data = EXCLUDED.key_data, "
                "key_format = EXCLUDED.key_format, certificates = EXCLUDED.certificates, "
                "not_after = EXCLUDED.not_after, updated_by = EXCLUDED.updated_by, "
                "version = c.version + 1, updated_at = clock_timestamp()"
            ).format(t=self._certificates),
            (name, *prepared, self.node_id),
        )
        self._notify(conn, {"k": "c", "n": name})

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """Validate and replace the entry of ``server_name`` (one transaction); notify."""
        try:
            name = normalize_server_name(server_name)
            prepared = self._prepare(name, pem_objects)
        except Exception:
            return fail()

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._upsert(conn, name, prepared)

        d = self._run(write)
        d.addCallback(
            lambda _: log.info("stored the certificate of {server_name} in PostgreSQL",
                               server_name=name)
        )
        return d

    def store_fenced(self, lease: Lease, pem_objects: object) -> Deferred[None]:
        """Store under ``lease`` if it still holds the lock, else :class:`LockLost`."""
        from psycopg import sql

        try:
            name = normalize_server_name(lease.name)
            prepared = self._prepare(name, pem_objects)
        except Exception:
            return fail()
        check = sql.SQL(
            "SELECT 1 FROM {} WHERE name = %s AND lease_id = %s "
            "AND expires_at > clock_timestamp() FOR UPDATE"
        ).format(self._locks)

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if conn.execute(check, (name, lease.lease_id)).fetchone() is None:
                    raise LockLost(f"the lease on {name} was lost; not storing")
                self._upsert(conn, name, prepared)

        d = self._run(write)
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
        from psycopg import sql

        query = sql.SQL(
            "SELECT key_data, key_format, certificates FROM {} WHERE name = %s"
        ).format(self._certificates)

        def read(conn: psycopg.Connection[Any]) -> list[pem.AbstractPEMObject]:
            row = conn.execute(query, (DEFAULT_ROW,)).fetchone()
            if row is None or row[0] is None:
                raise KeyError("DEFAULT")
            return self._row_to_entry(DEFAULT_ROW, row)

        return self._run(read)

    def store_default(self, pem_objects: object) -> Deferred[None]:
        """Validate and replace the default entry."""
        try:
            prepared = self._prepare(DEFAULT_ROW, pem_objects)
        except Exception:
            return fail()

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._upsert(conn, DEFAULT_ROW, prepared)

        return self._run(write)

    def mark_wanted(self, server_name: str) -> Deferred[bool]:
        """Create an empty entry (asking for a certificate) unless one exists."""
        from psycopg import sql

        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        query = sql.SQL(
            "INSERT INTO {} (name, updated_by) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING "
            "RETURNING 1"
        ).format(self._certificates)

        def write(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                created = conn.execute(query, (name, self.node_id)).fetchone() is not None
                if created:
                    self._notify(conn, {"k": "c", "n": name})
                return created

        return self._run(write)

    def remove(self, server_name: str) -> Deferred[bool]:
        """Delete the entry of ``server_name``; ``True`` if there was one."""
        from psycopg import sql

        try:
            name = normalize_server_name(server_name)
        except InvalidServerName:
            return fail()
        query = sql.SQL("DELETE FROM {} WHERE name = %s RETURNING 1").format(self._certificates)

        def write(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                removed = conn.execute(query, (name,)).fetchone() is not None
                if removed:
                    self._notify(conn, {"k": "c", "n": name})
                return removed

        return self._run(write)

    # -- locks -----------------------------------------------------------------

    def _try(self, name: str, ttl: float, lease_id: str) -> Deferred[tuple[Lease | None, float]]:
        from psycopg import sql

        take = sql.SQL(
            "INSERT INTO {t} AS l (name, lease_id, owner, fence, expires_at) "
            "VALUES (%(name)s, %(lease)s, %(owner)s, 1, "
            "clock_timestamp() + make_interval(secs => %(ttl)s)) "
            "ON CONFLICT (name) DO UPDATE SET lease_id = EXCLUDED.lease_id, "
            "owner = EXCLUDED.owner, fence = l.fence + 1, expires_at = EXCLUDED.expires_at "
            "WHERE l.expires_at <= clock_timestamp() OR l.lease_id = EXCLUDED.lease_id "
            "RETURNING fence, extract(epoch FROM expires_at)"
        ).format(t=self._locks)
        holder = sql.SQL(
            "SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM {} WHERE name = %s"
        ).format(self._locks)

        def attempt(conn: psycopg.Connection[Any]) -> tuple[Lease | None, float]:
            row = conn.execute(
                take, {"name": name, "lease": lease_id, "owner": self.node_id, "ttl": ttl}
            ).fetchone()
            if row is not None:
                return Lease(name, lease_id, int(row[0]), self.node_id, float(row[1])), 0.0
            left = conn.execute(holder, (name,)).fetchone()
            return None, float(left[0]) if left is not None else 0.0

        return self._run(attempt)

    def try_acquire(self, name: str, ttl: float | None = None) -> Deferred[Lease | None]:
        """Take the lock of ``name`` if it is free; ``None`` if a live lease holds it."""
        try:
            canonical, real_ttl = _lock_request(self, name, ttl)
        except ConfigurationError:
            return fail()
        return self._try(canonical, real_ttl, os.urandom(16).hex()).addCallback(lambda r: r[0])

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
                lambda: self._try(canonical, real_ttl, lease_id),
                self._waits,
                self._reactor,
                canonical,
                wait,
            )
        )

    def renew(self, lease: Lease, ttl: float | None = None) -> Deferred[Lease]:
        """Extend ``lease`` by ``ttl`` from now; :class:`LockLost` if it lapsed."""
        from psycopg import sql

        try:
            real_ttl = _lease_ttl(self, ttl)
        except ConfigurationError:
            return fail()
        query = sql.SQL(
            "UPDATE {} SET expires_at = clock_timestamp() + make_interval(secs => %s) "
            "WHERE name = %s AND lease_id = %s AND expires_at > clock_timestamp() "
            "RETURNING extract(epoch FROM expires_at)"
        ).format(self._locks)

        def update(conn: psycopg.Connection[Any]) -> Lease:
            row = conn.execute(query, (real_ttl, lease.name, lease.lease_id)).fetchone()
            if row is None:
                raise LockLost(f"the lease on {lease.name} was lost")
            return Lease(lease.name, lease.lease_id, lease.fence, lease.owner, float(row[0]))

        return self._run(update)

    def release(self, lease: Lease) -> Deferred[bool]:
        """Give the lock back and wake waiting processes; ``False`` if it was lost."""
        from psycopg import sql

        query = sql.SQL(
            "UPDATE {} SET lease_id = NULL, owner = NULL, expires_at = '-infinity' "
            "WHERE name = %s AND lease_id = %s AND expires_at > clock_timestamp() RETURNING 1"
        ).format(self._locks)

        def update(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                released = conn.execute(query, (lease.name, lease.lease_id)).fetchone() is not None
                if released:
                    self._notify(conn, {"k": "l", "n": lease.name})
                return released

        return self._run(update)

    def holder(self, name: str) -> Deferred[tuple[str, int, float] | None]:
        """``(owner, fence, seconds left)`` of the live lease on ``name``, or ``None``."""
        from psycopg import sql

        query = sql.SQL(
            "SELECT owner, fence, extract(epoch FROM expires_at - clock_timestamp()) FROM {} "
            "WHERE name = %s AND expires_at > clock_timestamp()"
        ).format(self._locks)

        def read(conn: psycopg.Connection[Any]) -> tuple[str, int, float] | None:
            row = conn.execute(query, (normalize_server_name(name),)).fetchone()
            return None if row is None else (str(row[0]), int(row[1]), float(row[2]))

        return self._run(read)

    # -- challenges ------------------------------------------------------------------

    def put_challenge(
        self, record: ChallengeRecord, ttl: float = DEFAULT_CHALLENGE_TTL
    ) -> Deferred[None]:
        """Write ``record``, expiring after ``ttl`` seconds; notify."""
        from psycopg import sql

        try:
            record = _checked_record(record, self.node_id)
            real_ttl = _check_ttl(ttl)
        except ConfigurationError:
            return fail()
        query = sql.SQL(
            "INSERT INTO {} (challenge_type, identifier, token, key_authorization, owner, "
            "expires_at) VALUES (%s, %s, %s, %s, %s, "
            "clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (challenge_type, identifier, token) DO UPDATE SET "
            "key_authorization = EXCLUDED.key_authorization, owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at"
        ).format(self._challenges)
        purge = sql.SQL("DELETE FROM {} WHERE expires_at < clock_timestamp()").format(
            self._challenges
        )

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(purge)
                conn.execute(
                    query,
                    (
                        record.challenge_type,
                        record.identifier,
                        record.token,
                        record.key_authorization,
                        record.owner,
                        real_ttl,
                    ),
                )
                self._notify(
                    conn,
                    {"k": "h", "n": record.identifier, "t": record.challenge_type,
                     "tok": record.token},
                )

        return self._run(write)

    def get_challenges(
        self, challenge_type: str, identifier: str | None = None, token: str | None = None
    ) -> Deferred[list[ChallengeRecord]]:
        """The unexpired records of ``challenge_type`` matching the filters."""
        from psycopg import sql

        query = sql.SQL(
            "SELECT challenge_type, identifier, token, key_authorization, owner FROM {} "
            "WHERE challenge_type = %s AND (%s::text IS NULL OR identifier = %s) "
            "AND (%s::text IS NULL OR token = %s) AND expires_at > clock_timestamp()"
        ).format(self._challenges)

        def read(conn: psycopg.Connection[Any]) -> list[ChallengeRecord]:
            rows = conn.execute(
                query, (challenge_type, identifier, identifier, token, token)
            ).fetchall()
            return [ChallengeRecord(*row) for row in rows]

        return self._run(read)

    def delete_challenge(self, record: ChallengeRecord) -> Deferred[None]:
        """Delete ``record`` (no-op when gone); notify."""
        from psycopg import sql

        query = sql.SQL(
            "DELETE FROM {} WHERE challenge_type = %s AND identifier = %s AND token = %s "
            "RETURNING 1"
        ).format(self._challenges)

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                row = conn.execute(
                    query, (record.challenge_type, record.identifier, record.token)
                ).fetchone()
                if row is not None:
                    self._notify(
                        conn,
                        {"k": "h", "n": record.identifier, "t": record.challenge_type,
                         "tok": record.token, "d": True},
                    )

        return self._run(write)


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "KeyEncryption",
    "PostgresStore",
    "redact_conninfo",
]
