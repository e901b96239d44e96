"""
The threads of :class:`txacme.stores.postgres.PostgresStore`: a pool of
threads borrowing psycopg connections (:class:`ConnectionPool`, like
``twisted.enterprise.adbapi``) and the thread that LISTENs for change
notifications (:class:`Listener`).

psycopg is imported where it is used (it is the optional ``postgres`` extra).

May import the core modules only.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from txacme.errors import ConfigurationError
from txacme.logs import Logger

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    Connection = psycopg.Connection[TupleRow]

log = Logger()

_T = TypeVar("_T")
_P = ParamSpec("_P")


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


class ConnectionPool:
    """A thread pool whose threads borrow psycopg connections from a free list."""

    def __init__(
        self, conninfo: str, size: int, connect_timeout: float, reactor: IReactorFromThreads
    ) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._reactor = reactor
        self._threads = ThreadPool(minthreads=0, maxthreads=size, name="txacme-postgres")
        self._free: list[psycopg.Connection[TupleRow]] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        self._threads.start()

    def connect(self, autocommit: bool = True) -> psycopg.Connection[TupleRow]:
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

    def _take(self) -> psycopg.Connection[TupleRow]:
        with self._lock:
            if self._closed:
                raise ConfigurationError("the PostgreSQL store is closed")
            if self._free:
                return self._free.pop()
        return self.connect()

    def _give_back(self, conn: psycopg.Connection[TupleRow]) -> None:
        if conn.closed or conn.broken:
            return
        with self._lock:
            if not self._closed:
                self._free.append(conn)
                return
        conn.close()

    def _call(self, work: Callable[[Connection], _T]) -> _T:
        import psycopg

        for attempt in (1, 2):
            conn = self._take()
            try:
                result = work(conn)
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

    def run(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        """Run ``fn(connection, *args, **kwargs)`` in a pool thread."""
        if self._closed:
            return fail(ConfigurationError("the PostgreSQL store is closed"))

        def work(conn: Connection) -> _T:
            return fn(conn, *args, **kwargs)

        return deferToThreadPool(self._reactor, self._threads, self._call, work)

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


class Listener:
    """A thread holding one connection that LISTENs, handing payloads to ``deliver``."""

    def __init__(
        self,
        pool: ConnectionPool,
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


__all__ = ["ConnectionPool", "Listener", "redact_conninfo"]
