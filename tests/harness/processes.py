"""
Start and stop the server processes the test fixtures run (Pebble, BIND,
PostgreSQL): free ports, logged children, log reading and stopping exactly the
processes a fixture started.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_logged(args: Sequence[str], log_path: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """
    Start ``args`` with stdout and stderr going to ``log_path`` (truncated) and
    stdin from ``/dev/null``; ``popen`` are more :class:`subprocess.Popen`
    arguments. When they name a ``user`` and ``group`` to run as, the log file
    is handed to that user first.
    """
    log = open(log_path, "wb")  # noqa: SIM115
    if "user" in popen and "group" in popen:
        os.chown(log_path, popen["user"], popen["group"])
    proc = subprocess.Popen(
        list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen
    )
    log.close()
    return proc


def read_log(log_path: Path) -> str:
    """The text of ``log_path`` so far (``""`` if it cannot be read)."""
    try:
        return log_path.read_text(errors="replace")
    except OSError:
        return ""


def stop_processes(
    procs: Sequence[subprocess.Popen[Any]],
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 10.0,
) -> None:
    """
    Send ``sig`` to each of ``procs`` still running, then reap each in order,
    killing one that has not exited after ``timeout`` seconds.
    """
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stop_process(
    proc: subprocess.Popen[Any], sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """:func:`stop_processes` for one process."""
    stop_processes([proc], sig, timeout)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Stoppable)


class SharedInstance(Generic[_S]):
    """
    One instance of a fixture for the whole test process: :meth:`get` starts it
    on first use and registers :meth:`stop` to run at exit.
    """

    def __init__(self, start: Callable[[], _S]) -> None:
        self._start = start
        self._instance: _S | None = None

    def get(self) -> _S:
        """The running instance, started now if there is none."""
        if self._instance is None:
            self._instance = self._start()
            atexit.register(self.stop)
        return self._instance

    def stop(self) -> None:
        """Stop the instance, if one runs (a later :meth:`get` starts another)."""
        if self._instance is not None:
            self._instance.stop()
            self._instance = None
