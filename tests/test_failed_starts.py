"""
A start that fails, fails: ``twistd -n web --port acme:...`` subprocesses whose
endpoint cannot start exit within seconds with status 1 and one CRITICAL line
naming the cause, never "Unhandled Error" and a process listening on nothing;
a CA that cannot be reached is not fatal (the stored certificates are served),
a CA that refuses the account is. The in-process parts (the one-line
descriptions, the account watch, :class:`ProcessExit`) are tested here too.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from tests.harness.pebble import start_pebble
from tests.harness.processes import free_port
from tests.harness.tlsclient import tls_exchange
from tests.harness.twistd import quote, start_web, subprocess_env, web_command
from tests.test_cli import run_cli
from txacme import errors
from txacme.config.startup import (
    EXIT_START_FAILED,
    ProcessExit,
    StartGuardedEndpoint,
    _AccountWatch,
    describe_start_failure,
)
from txacme.issuing.events import Failed
from txacme.stores.directory import write_entry
from txacme.testing import make_pem_objects

#: A start must have failed (and the process exited) within this many seconds.
DEADLINE = 15.0


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="txacme-starts-") as d:
        path = Path(d)
        (path / "certs").mkdir()
        (path / "site").mkdir()
        yield path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other socket listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def acme(work: Path, directory: str, *rest: str, port: str = "tcp:0") -> str:
    return ":".join(
        [
            f"acme:{quote(str(work / 'certs'))}",
            port,
            "interface=127.0.0.1",
            f"directory={quote(directory)}",
            *rest,
        ]
    )


def run_twistd(work: Path, description: str, timeout: float = DEADLINE) -> tuple[int, str, float]:
    """Run twistd to its end; its exit status, output and how long it ran."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            web_command(description, work / "site"),
            capture_output=True,
            cwd=str(work),
            env=subprocess_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        pytest.fail(f"twistd still running after {timeout} s:\n{out.decode(errors='replace')}")
    output = (done.stdout + done.stderr).decode(errors="replace")
    return done.returncode, output, time.monotonic() - started


def assert_failed_start(code: int, output: str, elapsed: float, *expected: str) -> str:
    """Status 1, within the deadline, one critical line naming ``expected``; that line."""
    assert code == EXIT_START_FAILED, output
    assert elapsed < DEADLINE, output
    assert "Unhandled Error" not in output, output
    assert "Traceback" not in output, output
    critical = [line for line in output.splitlines() if "[txacme.config.startup#critical]" in line]
    assert len(critical) == 1, output
    for text in expected:
        assert text in critical[0], output
    assert critical[0].endswith(f"exiting with status {EXIT_START_FAILED}")
    return critical[0]


UNREACHABLE_CA = "https://127.0.0.1:1/dir"


# -- failed starts under twistd --------------------------------------------------------


def test_sub_endpoint_port_in_use(work: Path, busy_port: int) -> None:
    code, output, elapsed = run_twistd(work, acme(work, UNREACHABLE_CA, port=f"tcp:{busy_port}"))
    assert_failed_start(
        code, output, elapsed, f"cannot listen on 127.0.0.1:{busy_port}", "Address already in use"
    )


def test_metrics_port_in_use(work: Path, busy_port: int) -> None:
    metrics = quote(f"tcp:{busy_port}:interface=127.0.0.1")
    code, output, elapsed = run_twistd(work, acme(work, UNREACHABLE_CA, f"metrics={metrics}"))
    assert_failed_start(
        code, output, elapsed, f"metrics=tcp:{busy_port}:interface=127.0.0.1: cannot listen on"
    )


def test_http01_port_in_use(work: Path, busy_port: int) -> None:
    http01 = quote(f"tcp:{busy_port}:interface=127.0.0.1")
    code, output, elapsed = run_twistd(
        work, acme(work, UNREACHABLE_CA, "challenge=http-01", f"http01={http01}")
    )
    assert_failed_start(code, output, elapsed, f"http01=: cannot listen on 127.0.0.1:{busy_port}")


def test_unreachable_postgresql_store(work: Path) -> None:
    """The store's error is the line; the password in its URL is not shown."""
    store = quote(f"postgresql://txacme:hunter2pw@127.0.0.1:{free_port()}/txacme")
    code, output, elapsed = run_twistd(work, acme(work, UNREACHABLE_CA, f"store={store}"))
    line = assert_failed_start(code, output, elapsed, "Connection refused")
    assert "hunter2pw" not in output
    assert "\n" not in line


def test_bogus_metrics_is_a_parse_error(work: Path) -> None:
    """Refused when the string is parsed, before anything listens."""
    code, output, elapsed = run_twistd(work, acme(work, UNREACHABLE_CA, "metrics=bogus"))
    assert code != 0, output
    assert elapsed < DEADLINE
    assert "metrics= 'bogus' is not a usable endpoint" in output, output
    assert "starting up" not in output  # twistd never ran the reactor


def test_account_rejected_by_the_ca(work: Path) -> None:
    """A CA that requires external account binding, none given: fatal at the first use."""
    pebble = start_pebble(eab=True)
    try:
        (work / "certs" / "www.example.test.pem").write_bytes(b"")
        code, output, elapsed = run_twistd(
            work,
            acme(work, pebble.directory_url, f"ca_file={quote(pebble.ca_file)}"),
        )
    finally:
        pebble.stop()
    assert_failed_start(code, output, elapsed, "requires external account binding")


def test_wrong_eab_key_is_fatal(work: Path) -> None:
    pebble = start_pebble(eab=True)
    kid = next(iter(pebble.eab_keys))
    try:
        (work / "certs" / "www.example.test.pem").write_bytes(b"")
        code, output, elapsed = run_twistd(
            work,
            acme(
                work,
                pebble.directory_url,
                f"ca_file={quote(pebble.ca_file)}",
                f"eab_kid={kid}",
                "eab_hmac=" + "A" * 43,
            ),
        )
    finally:
        pebble.stop()
    line = assert_failed_start(code, output, elapsed, "the CA refused:")
    assert "A" * 43 not in output
    assert "unauthorized" in line or "malformed" in line, line


def _serving(port: int, name: str, proc: subprocess.Popen[bytes], log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"twistd exited with {proc.returncode}:\n{log()}"
        try:
            return tls_exchange(port, name)
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing served on {port}:\n{log()}")


def test_unreachable_ca_is_not_fatal(work: Path) -> None:
    """
    With the CA down at start, a stored certificate is served and the process
    keeps running; a name without one is retried later (logged, not fatal).
    """
    objects = make_pem_objects(["stored.example.test"])
    write_entry(
        str(work / "certs" / "stored.example.test.pem"), b"".join(o.as_bytes() for o in objects)
    )
    (work / "certs" / "new.example.test.pem").write_bytes(b"")
    port = free_port()
    log_path = work / "twistd.log"
    proc = start_web(
        acme(work, f"https://127.0.0.1:{free_port()}/dir", port=f"tcp:{port}"),
        work / "site",
        work,
        log_path,
    )
    try:
        served = _serving(port, "stored.example.test", proc, lambda: log_path.read_text())
        assert served.certificate.public_bytes(_der()) == _cert_der(objects)
        time.sleep(3)  # the first attempt for new.example.test has failed by now
        assert proc.poll() is None, log_path.read_text()
        text = log_path.read_text()
        assert "new.example.test failed" in text, text
        assert "exiting with status" not in text, text
        assert _serving(port, "stored.example.test", proc, log_path.read_text)
    finally:
        proc.terminate()
        proc.wait(10)


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _cert_der(objects: list[Any]) -> bytes:
    from cryptography import x509

    return x509.load_pem_x509_certificate(objects[1].as_bytes()).public_bytes(_der())


# -- in process ---------------------------------------------------------------------


def test_describe_cannot_listen() -> None:
    error = CannotListenError("127.0.0.1", 443, OSError(98, "Address already in use"))
    assert describe_start_failure(Failure(error)) == (
        "cannot listen on 127.0.0.1:443: Address already in use"
    )


def test_describe_multi_line_error_is_one_line() -> None:
    text = describe_start_failure(Failure(RuntimeError("connection failed\n\tIs it running?")))
    assert text == "RuntimeError: connection failed Is it running?"


def test_describe_problem() -> None:
    problem = errors.ACMEProblem.from_json(
        {"type": "urn:ietf:params:acme:error:externalAccountRequired", "detail": "EAB needed"}
    )
    assert describe_start_failure(Failure(problem)) == (
        "the CA refused: externalAccountRequired: EAB needed"
    )


class _FakeReactor(Clock):
    running = True

    def __init__(self) -> None:
        super().__init__()
        self.stopped = 0
        self.when_running: list[Callable[[], object]] = []

    def stop(self) -> None:
        self.stopped += 1

    def callWhenRunning(self, f: Callable[[], object]) -> None:  # noqa: N802
        self.when_running.append(f)


def test_process_exit_once() -> None:
    reactor = _FakeReactor()
    registered: list[tuple[Any, int]] = []
    exit_ = ProcessExit(reactor, lambda f, status: registered.append((f, status)))  # type: ignore[arg-type]
    exit_.fail("first")
    exit_.fail("second")
    assert reactor.stopped == 1
    assert [status for _, status in registered] == [EXIT_START_FAILED]
    assert exit_.status == EXIT_START_FAILED


def test_process_exit_before_the_reactor_runs() -> None:
    reactor = _FakeReactor()
    reactor.running = False
    exit_ = ProcessExit(reactor, lambda f, status: None)  # type: ignore[arg-type]
    exit_.fail("early")
    assert reactor.stopped == 0
    for f in reactor.when_running:
        f()
    assert reactor.stopped == 1


class _Client:
    def __init__(self, result: Deferred[object]) -> None:
        self.result = result

    def start(self, email: str | None = None) -> Deferred[object]:
        return self.result


def _failed(error: BaseException) -> Failed:
    from datetime import datetime, timezone

    return Failed("a.example", "x", "y", 1, datetime.now(timezone.utc), Failure(error))


def test_account_watch_rejection_from_start_only() -> None:
    reasons: list[str] = []
    watch = _AccountWatch(reasons.append)
    rejected = errors.ACMEProblem.from_json(
        {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "bad MAC"}
    )
    # The same kind of problem from an order (not from the account set-up): not fatal.
    watch.on_event(_failed(rejected))
    assert reasons == []
    created: list[Any] = []
    watch.wrap(lambda: succeed(_Client(fail(rejected))))().addCallback(created.append)
    created[0].start(email=None).addErrback(lambda f: None)
    watch.on_event(_failed(rejected))
    assert reasons == ["the CA refused: unauthorized: bad MAC"]


def test_account_watch_unreachable_is_not_fatal() -> None:
    reasons: list[str] = []
    watch = _AccountWatch(reasons.append)
    error = ConnectionRefusedError("refused")
    created: list[Any] = []
    watch.wrap(lambda: succeed(_Client(fail(error))))().addCallback(created.append)
    created[0].start().addErrback(lambda f: None)
    watch.on_event(_failed(error))
    assert reasons == []


def test_listen_called_directly_still_fails() -> None:
    """A program calling listen() itself gets the failure; nothing stops its reactor."""
    assert StartGuardedEndpoint.listen is not None
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from txacme.stores.memory import MemoryStore

    reactor = _FakeReactor()

    class _Refusing(TCP4ServerEndpoint):
        def listen(self, factory: Any) -> Deferred[Any]:
            return fail(CannotListenError("127.0.0.1", 1, OSError(98, "in use")))

    endpoint = StartGuardedEndpoint(
        reactor,
        _Refusing(reactor, 1),
        MemoryStore(),
        lambda: fail(RuntimeError("no CA")),
        watch_interval=None,
    )
    failures: list[Failure] = []
    endpoint.listen(object()).addErrback(failures.append)  # type: ignore[arg-type]
    assert failures and failures[0].check(CannotListenError)
    assert reactor.stopped == 0


# -- the txacme command: the same failures, one line and a non-zero status ------------------


def _one_error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    assert "Traceback" not in result.stderr, result.stderr
    first = lines[0]
    assert first.startswith("txacme: "), result.stderr
    # At most a second line saying the failure looks temporary.
    assert lines[1:] in ([], ["txacme: this looks temporary: try again later"]), result.stderr
    return first


def test_cli_listener_port_in_use(work: Path, busy_port: int) -> None:
    result = run_cli(
        "issue",
        "-C",
        str(work / "certs"),
        "--directory",
        UNREACHABLE_CA,
        "--http01",
        f"tcp:{busy_port}:interface=127.0.0.1",
        "a.example.test",
        timeout=30,
    )
    assert result.returncode != 0
    line = _one_error_line(result)
    assert f"tcp:{busy_port}" in line and "Address already in use" in line


def test_cli_unreachable_store(work: Path) -> None:
    store = f"postgresql://txacme:hunter2pw@127.0.0.1:{free_port()}/txacme"
    result = run_cli(
        "issue",
        "-C",
        str(work / "certs"),
        "--store",
        store,
        "--directory",
        UNREACHABLE_CA,
        "--http01",
        "tcp:0:interface=127.0.0.1",
        "a.example.test",
        timeout=30,
    )
    assert result.returncode != 0
    line = _one_error_line(result)
    assert "Connection refused" in line
    assert "hunter2pw" not in result.stderr + result.stdout


def test_cli_account_rejected(work: Path) -> None:
    pebble = start_pebble(eab=True)
    try:
        result = run_cli(
            "account",
            "create",
            "-C",
            str(work / "certs"),
            "--directory",
            pebble.directory_url,
            "--ca-file",
            pebble.ca_file,
            timeout=60,
        )
    finally:
        pebble.stop()
    assert result.returncode != 0
    assert "external account binding" in _one_error_line(result)


def test_under_the_endpoint_service_the_failure_is_handled() -> None:
    """
    Called by Twisted's StreamServerEndpointService (as under twistd), a failed
    start asks for the exit and the service logs nothing of its own.
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tests.harness.logcapture import captured_logs
    from txacme.stores.memory import MemoryStore

    reactor = _FakeReactor()
    registered: list[int] = []

    class _Refusing(TCP4ServerEndpoint):
        def listen(self, factory: Any) -> Deferred[Any]:
            return fail(CannotListenError("127.0.0.1", 4431, OSError(98, "Address already in use")))

    endpoint = StartGuardedEndpoint(
        reactor,
        _Refusing(reactor, 4431),
        MemoryStore(),
        lambda: fail(RuntimeError("no CA")),
        watch_interval=None,
    )
    endpoint.label = "acme:/srv/certs"
    endpoint.exit_factory = lambda r: ProcessExit(r, lambda f, status: registered.append(status))  # type: ignore[method-assign,assignment,misc]
    service = StreamServerEndpointService(endpoint, object())
    service._raiseSynchronously = True  # as strports.service() makes it
    with captured_logs() as events:
        service.privilegedStartService()
    assert registered == [EXIT_START_FAILED]
    assert reactor.stopped == 1
    texts = [
        formatEvent(e) for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)
    ]
    assert texts == [
        "acme:/srv/certs: cannot start: cannot listen on 127.0.0.1:4431: "
        "Address already in use; exiting with status 1"
    ]


def test_account_watch_keeps_the_creator_signature() -> None:
    """The endpoint passes on_exchange= only to a creator that takes it."""
    from txacme.serving.endpoint import _accepts_keyword

    watch = _AccountWatch(lambda reason: None)

    def plain() -> Deferred[object]:
        return succeed(_Client(succeed(None)))

    def counting(on_exchange: object = None) -> Deferred[object]:
        return succeed(_Client(succeed(None)))

    assert not _accepts_keyword(watch.wrap(plain), "on_exchange")
    assert _accepts_keyword(watch.wrap(counting), "on_exchange")
