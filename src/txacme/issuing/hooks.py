"""
Deploy hooks: a command run after each certificate is stored.

:class:`DeployHook` runs one command (an argument list, no shell) through the
reactor's ``spawnProcess``, so serving never waits for it. Its environment is
the parent's plus:

``TXACME_NAME``
    the primary name of the certificate (its store entry);
``TXACME_NAMES``
    every name on the certificate, separated by single spaces (names never
    contain spaces), primary name first;
``TXACME_EVENT``
    ``obtained`` (there was no certificate before) or ``renewed``;
``TXACME_PEM``
    for a directory store, the path of the ``.pem`` file (key, certificate,
    chain); absent for other stores.

The command runs in its own session (process group). After ``timeout``
seconds the whole group is killed (``SIGKILL``). Its output (standard output
and error together) is kept up to :data:`OUTPUT_LIMIT` bytes and logged in one
line, truncated; so is its failure (non-zero exit, signal, timeout, or a
command that cannot be started).

:meth:`DeployHook.subscriber` gives the callback for
:meth:`AcmeIssuingService.subscribe
<txacme.issuing.service.AcmeIssuingService.subscribe>`: it runs the hook on each
``obtained`` event, with ``TXACME_EVENT`` from the reason of the matching
``obtaining`` event.

May import the core modules and :mod:`txacme.issuing.events`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.process import reapAllProcesses
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from txacme.errors import ConfigurationError
from txacme.issuing.events import Obtained, Obtaining, ServiceEvent
from txacme.logs import Logger

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "OUTPUT_LIMIT",
    "DeployHook",
    "HookResult",
    "parse_hook_command",
]

log = Logger()

DEFAULT_HOOK_TIMEOUT = 60.0
"""Seconds a deploy hook may run before its process group is killed."""
OUTPUT_LIMIT = 4096
"""Bytes of a hook's output kept; the rest is read and dropped."""
_REAP_DELAY = 0.2
"""Seconds between two looks for a killed hook's exit."""
_LOGGED_OUTPUT = 300
"""Characters of output shown in the log line."""

# Starts the command in a new session so that a timeout can kill everything it started.
_LAUNCHER = (
    "import os, sys\n"
    "os.setsid()\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write(f'cannot run {sys.argv[1]}: {e.strerror}\\n')\n"
    "    sys.exit(127)\n"
)


def parse_hook_command(text: str, what: str = "deploy_hook") -> tuple[str, ...]:
    """
    Split a hook command line like a POSIX shell would (quotes, backslashes),
    without running a shell.

    :raises ConfigurationError: for an empty or badly quoted command, or a
        program that is not found (on ``PATH`` or as a path) or not executable.
    """
    try:
        argv = tuple(shlex.split(text))
    except ValueError as e:
        raise ConfigurationError(f"{what}={text!r}: {e}") from None
    if not argv:
        raise ConfigurationError(f"{what}= names no command")
    if shutil.which(argv[0]) is None:
        raise ConfigurationError(
            f"{what}={text!r}: {argv[0]!r} is not an executable program"
            + (" on PATH" if os.sep not in argv[0] else "")
            + " (for shell syntax use: sh -c '...')"
        )
    return argv


def _one_line(output: bytes) -> str:
    text = output.decode("utf-8", "replace").strip()
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > _LOGGED_OUTPUT:
        text = text[:_LOGGED_OUTPUT] + "..."
    return text


@attrs.frozen
class HookResult:
    """How one run ended: ``exit_code`` or ``signal`` (one is ``None``), ``timed_out``."""

    name: str
    exit_code: int | None
    signal: int | None
    timed_out: bool
    seconds: float
    output: bytes

    @property
    def succeeded(self) -> bool:
        """Exit status 0 within the time limit."""
        return self.exit_code == 0 and not self.timed_out


class _HookProcess(ProcessProtocol):
    def __init__(self, done: Deferred[tuple[int | None, int | None]]) -> None:
        self._done = done
        self.output = bytearray()
        self.pid: int | None = None

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def _take(self, data: bytes) -> None:
        room = OUTPUT_LIMIT - len(self.output)
        if room > 0:
            self.output += data[:room]

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._take(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._take(data)

    def processExited(self, reason: Failure) -> None:  # noqa: N802
        # Not processEnded: a child left running in the background may hold the
        # pipes open; the hook is over when its own process is.
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if self.transport is not None:
            self.transport.loseConnection()
        if not self._done.called:
            self._done.callback((code, sig))


class DeployHook:
    """
    Runs ``argv`` after a certificate is stored (see the module docs).

    :param reactor: provides ``IReactorProcess`` and ``IReactorTime``.
    :param argv: the program and its arguments (see :func:`parse_hook_command`).
    :param timeout: seconds before the process group is killed.
    :param pem_path: the ``.pem`` file of a name (``TXACME_PEM``), or ``None``
        when the store has no files.
    """

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_HOOK_TIMEOUT,
        pem_path: Callable[[str], str | None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ConfigurationError("a deploy hook needs a command")
        if not timeout > 0:
            raise ConfigurationError(f"deploy_hook_timeout={timeout!r} must be positive")
        self._reactor = reactor
        self.argv = tuple(argv)
        self.timeout = float(timeout)
        self._pem_path = pem_path
        self._environ = dict(os.environ if environ is None else environ)
        self._reasons: dict[str, str] = {}
        self.running: set[Deferred[HookResult]] = set()

    def environment(self, name: str, names: Sequence[str], event: str) -> dict[str, str]:
        """The environment of a run for ``name``."""
        env = dict(self._environ)
        for key in ("TXACME_NAME", "TXACME_NAMES", "TXACME_EVENT", "TXACME_PEM"):
            env.pop(key, None)
        ordered = [name, *(n for n in names if n != name)]
        env["TXACME_NAME"] = name
        env["TXACME_NAMES"] = " ".join(ordered)
        env["TXACME_EVENT"] = event
        path = self._pem_path(name) if self._pem_path is not None else None
        if path is not None:
            env["TXACME_PEM"] = path
        return env

    def run(self, name: str, names: Sequence[str], event: str) -> Deferred[HookResult]:
        """
        Start the hook for ``name``; the ``Deferred`` fires with its
        :class:`HookResult` (never fails) once it has ended or been killed.
        """
        done: Deferred[tuple[int | None, int | None]] = Deferred()
        protocol = _HookProcess(done)
        clock: IReactorTime = self._reactor
        started = time.monotonic()
        timed_out = False
        try:
            process: IReactorProcess = self._reactor
            env = self.environment(name, names, event)
            if sys.executable:
                process.spawnProcess(
                    protocol, sys.executable, [sys.executable, "-c", _LAUNCHER, *self.argv], env=env
                )
            else:  # an embedded interpreter: no new session, only the command itself is killed
                path = shutil.which(self.argv[0]) or self.argv[0]
                process.spawnProcess(protocol, path, list(self.argv), env=env)
        except Exception as e:
            result = HookResult(name, None, None, False, 0.0, str(e).encode())
            self._log(result)
            return Deferred.fromCoroutine(_value(result))

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            if protocol.pid is not None:
                try:
                    os.killpg(protocol.pid, signal.SIGKILL)
                except OSError:
                    try:
                        os.kill(protocol.pid, signal.SIGKILL)
                    except OSError:
                        pass
                # Collect the killed process even where no SIGCHLD handler runs
                # (a reactor started without signal handlers).
                reaping[:] = [clock.callLater(_REAP_DELAY, reap, int(5 / _REAP_DELAY))]

        reaping: list[IDelayedCall] = []

        def reap(tries: int) -> None:
            reaping.clear()
            if done.called or tries <= 0:
                return
            reapAllProcesses()
            if not done.called:
                reaping.append(clock.callLater(_REAP_DELAY, reap, tries - 1))

        timer: IDelayedCall = clock.callLater(self.timeout, expire)

        def ended(status: tuple[int | None, int | None]) -> HookResult:
            if timer.active():
                timer.cancel()
            for call in reaping:
                if call.active():
                    call.cancel()
            code, sig = status
            result = HookResult(
                name, code, sig, timed_out, time.monotonic() - started, bytes(protocol.output)
            )
            self._log(result)
            return result

        d = done.addCallback(ended)
        self.running.add(d)

        def forget(result: HookResult) -> HookResult:
            self.running.discard(d)
            return result

        return d.addCallback(forget)

    def _log(self, result: HookResult) -> None:
        output = _one_line(result.output)
        fields = {
            "name": result.name,
            "command": shlex.join(self.argv),
            "exit_code": result.exit_code,
            "signal": result.signal,
            "seconds": result.seconds,
            "output": output,
            "event": "deploy_hook",
        }
        shown = f": {output}" if output else ""
        if result.succeeded:
            log.info(
                "deploy hook for {name} finished in {seconds:.1f} s{shown}", shown=shown, **fields
            )
        elif result.timed_out:
            log.error(
                "deploy hook for {name} killed after {timeout:g} s (deploy_hook_timeout){shown}",
                timeout=self.timeout,
                shown=shown,
                **fields,
            )
        elif result.exit_code is None and result.signal is None:
            log.error("deploy hook for {name} could not start{shown}", shown=shown, **fields)
        else:
            how = (
                f"exit status {result.exit_code}"
                if result.exit_code is not None
                else f"signal {result.signal}"
            )
            log.error(
                "deploy hook for {name} failed ({how}){shown}", how=how, shown=shown, **fields
            )

    def subscriber(self, event: ServiceEvent) -> None:
        """The callback for ``AcmeIssuingService.subscribe``: never waited for."""
        if isinstance(event, Obtaining):
            self._reasons[event.name] = event.reason
        elif isinstance(event, Obtained):
            reason = self._reasons.pop(event.name, None)
            kind = "obtained" if reason in (None, "missing") else "renewed"
            self.run(event.name, event.names, kind)


async def _value(result: HookResult) -> HookResult:
    return result
