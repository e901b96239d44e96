"""
Run a throw-away PostgreSQL server for the tests.

The server comes from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``):
``initdb`` makes a cluster in a temporary directory, ``postgres`` serves it on a free
127.0.0.1 port (its Unix socket stays in the same directory), with durability switched off
(``fsync=off``: the data is thrown away anyway) and trust authentication for the loopback
user ``txacme``. PostgreSQL refuses to run as root, so when the tests run as root (as CI
does) both programs run as the ``postgres`` system user the package creates, and the
temporary directory is handed to that user.

:func:`shared_postgres` starts one server per test process (stopped at exit);
:meth:`Postgres.new_database` gives each test its own empty database, and
:meth:`Postgres.drop_database` removes it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.harness.processes import (
    SharedInstance,
    free_port,
    read_log,
    start_logged,
    stop_process,
)

USER = "txacme"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL (or psycopg) is not installed, or the server did not start."""


def find_bindir() -> Path:
    """The ``bin`` directory of the newest PostgreSQL installed from Debian's packages."""
    override = os.environ.get("TXACME_PG_BINDIR")
    candidates = [override] if override else []

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if candidate and os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL is not installed: run 'apt-get install -y postgresql' "
        "(the README's test command does this)"
    )


def _demote() -> dict[str, Any]:
    """Popen arguments that run a child as the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root but there is no 'postgres' user to run as")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class Postgres:
    """A running PostgreSQL server on 127.0.0.1, in a temporary directory."""

    def __init__(self) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise PostgresUnavailable("psycopg is not installed: pip install 'txacme[postgres]'")
        bindir = find_bindir()
        self.workdir = Path(tempfile.mkdtemp(prefix="txacme-pg-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        demote = _demote()
        try:
            if demote:
                os.chown(self.workdir, demote["user"], demote["group"])
            init = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.workdir),
                check=False,
                **demote,
            )
            if init.returncode != 0:
                raise PostgresUnavailable(
                    f"initdb failed ({init.returncode}): {init.stdout.decode(errors='replace')}"
                )
            self.port = free_port()
            self._proc = start_logged(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.workdir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=32MB",
                ],
                self.log_path,
                cwd=str(self.workdir),
                **demote,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with status {self._proc.returncode}:\n{self.log_text()}"
                )
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as e:
                last = e
                time.sleep(0.05)
        raise PostgresUnavailable(f"postgres did not accept connections: {last}\n{self.log_text()}")

    def url(self, database: str = "postgres") -> str:
        """The connection URL of ``database`` (trust authentication, no password)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a generated, safe identifier
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database`, closing its connections first."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        if self._proc is None or self._proc.poll() is not None:
            return
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on the database at ``url`` (synchronously) and return its rows."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description is not None else []

    def log_text(self) -> str:
        """What the server has logged so far."""
        return read_log(self.log_path)

    def stop(self) -> None:
        """Stop the server this instance started (fast shutdown) and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # SIGINT: "fast" shutdown (disconnect clients, stop).
            stop_process(proc, signal.SIGINT, timeout=15)
        shutil.rmtree(self.workdir, ignore_errors=True)


_shared = SharedInstance(Postgres)


def shared_postgres() -> Postgres:
    """The server shared by every test of this process, started on first use."""
    return _shared.get()
