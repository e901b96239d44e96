"""
Handshake deadlines: connections that send nothing, part of a ClientHello, or
stall in the handshake are aborted at txacme's deadline
(:mod:`txacme.serving.deadline`); established connections are left alone; a
handshake held for a ClientHello hook gets its full deadline afterwards.

The end-to-end tests run a real ``AutoTLSEndpoint`` on loopback with a 1 s
deadline, open thousands of hostile connections from a thread of this process,
and make ordinary handshakes meanwhile; one runs ``twistd web`` with the
keyword in its endpoint string.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness.closes import watch_closes
from tests.harness.logcapture import capture_log
from tests.test_endpoint_parsing import parse
from tests.test_hostile import GOOD, PAGE, client_hello, openssl_handshake, site
from txacme.config.endpoint import endpoint_from_config
from txacme.errors import ConfigurationError
from txacme.issuing.ondemand import OnDemandPolicy
from txacme.serving.deadline import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    GRANULARITY,
    LOG_INTERVAL,
    HandshakeDeadlines,
    check_handshake_timeout,
)
from txacme.serving.endpoint import AutoTLSEndpoint, AutoTLSPort
from txacme.serving.hello import HelloHookFactory, ServerTLSFactory, _NotStarted
from txacme.serving.index import CertificateIndex
from txacme.serving.tls import SNIConnectionCreator
from txacme.stores.directory import DirectoryStore
from txacme.testing import FakeClient, make_pem_objects

DEADLINE = 1.0


class _Conn:
    def __init__(self) -> None:
        self.expired = 0

    def handshake_expired(self) -> None:
        self.expired += 1


class HandshakeDeadlinesTests(SynchronousTestCase):
    """The bookkeeping, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = HandshakeDeadlines(self.clock, 2.0)

    def test_expires_at_the_deadline_not_before(self) -> None:
        a, b = _Conn(), _Conn()
        self.deadlines.add(a)
        self.clock.advance(0.5)
        self.deadlines.add(b)
        self.clock.advance(1.4)
        self.assertEqual((a.expired, b.expired), (0, 0))
        self.clock.advance(0.1)
        self.assertEqual((a.expired, b.expired), (1, 0))
        self.clock.advance(0.5)
        self.assertEqual((a.expired, b.expired), (1, 1))
        self.assertEqual(len(self.deadlines), 0)
        self.assertEqual(self.deadlines.expired, 2)

    def test_discarded_connections_never_expire(self) -> None:
        a, b = _Conn(), _Conn()
        self.deadlines.add(a)
        self.deadlines.add(b)
        self.deadlines.discard(a)
        self.deadlines.discard(_Conn())  # unknown: ignored
        self.clock.advance(5)
        self.assertEqual((a.expired, b.expired), (0, 1))

    def test_restart_gives_a_full_deadline(self) -> None:
        a, b = _Conn(), _Conn()
        self.deadlines.add(a)
        self.deadlines.add(b)
        self.clock.advance(1.5)
        self.deadlines.add(a)  # restarted: now due at 3.5, after b
        self.clock.advance(0.5)
        self.assertEqual((a.expired, b.expired), (0, 1))
        self.clock.advance(1.4)
        self.assertEqual(a.expired, 0)
        self.clock.advance(0.1)
        self.assertEqual(a.expired, 1)

    def test_one_pass_for_a_burst(self) -> None:
        connections = [_Conn() for _ in range(1000)]
        for i, c in enumerate(connections):
            self.deadlines.add(c)
            if i % 100 == 99:
                self.clock.advance(GRANULARITY / 20)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timer, not 1,000
        self.clock.advance(2.0)
        self.assertEqual(sum(c.expired for c in connections), 1000)

    def test_stop_leaves_no_timer_once_idle(self) -> None:
        a = _Conn()
        self.deadlines.add(a)
        self.deadlines.stop()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # a still has its deadline
        self.clock.advance(2.0)
        self.assertEqual(a.expired, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        b = _Conn()
        self.deadlines.add(b)
        self.deadlines.discard(b)
        self.deadlines.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logged_in_aggregate(self) -> None:
        """10,000 expiries over 20 s: a handful of lines, each with a count."""
        events = capture_log(self)
        for _ in range(200):
            for _ in range(50):
                self.deadlines.add(_Conn())
            self.clock.advance(0.1)
        self.clock.advance(LOG_INTERVAL * 3)
        self.deadlines.stop()
        lines = [e for e in events if "did not complete the TLS handshake" in e["log_format"]]
        self.assertLessEqual(len(lines), 20 / LOG_INTERVAL + 2)
        self.assertEqual(sum(e["count"] for e in lines), 10_000)
        self.assertEqual(self.deadlines.expired, 10_000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_values(self) -> None:
        self.assertIsNone(check_handshake_timeout(None))
        self.assertEqual(check_handshake_timeout(3), 3.0)
        for bad in (0, -1, True, "5", float("nan")):
            with self.assertRaises(ConfigurationError) as raised:
                check_handshake_timeout(bad)
            self.assertIn("handshake_timeout=", str(raised.exception))


class KeywordTests(SynchronousTestCase):
    """``handshake_timeout=`` on the endpoint string."""

    def parse(self, **kwargs: str) -> Any:
        options = "".join(f":{k}={v}" for k, v in kwargs.items())
        return parse(f"le:/srv/certs:tcp:443{options}")

    def test_default_and_value(self) -> None:
        self.assertEqual(self.parse().handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT)
        self.assertEqual(DEFAULT_HANDSHAKE_TIMEOUT, 10.0)
        config = self.parse(handshake_timeout="2.5")
        self.assertEqual(config.handshake_timeout, 2.5)
        self.assertEqual(config.sub_endpoint, "tcp:443")

    def test_bad_values_name_the_keyword(self) -> None:
        for bad in ("0", "-3", "soon", ""):
            with self.assertRaises(ConfigurationError) as raised:
                self.parse(handshake_timeout=bad)
            self.assertIn("handshake_timeout", str(raised.exception))

    def test_reaches_the_endpoint(self) -> None:
        import os

        directory = self.mktemp()
        os.makedirs(directory)
        config = parse(f"le:{directory}:tcp:0:interface=127.0.0.1:handshake_timeout=3")
        endpoint = endpoint_from_config(reactor, config)
        self.assertEqual(endpoint.handshake_timeout, 3.0)


# -- against a real listening endpoint ------------------------------------------------


def _partial_hello() -> bytes:
    """The first 60 bytes of a real ClientHello for an allowed on-demand name."""
    return client_hello(b"new.ondemand.test")[:60]


class _Hostile:
    """Opens silent and partial connections from a thread; records when each closes."""

    def __init__(self, port: int, silent: int, partial: int, wait: float) -> None:
        self.port = port
        self.silent = silent
        self.partial = partial
        self.wait = wait
        self.opened = threading.Event()
        self.closed_after: list[float] = []
        self.still_open = 0
        self.data_received = 0

    def run(self) -> None:
        opened: dict[socket.socket, float] = {}
        hello = _partial_hello()
        try:
            for i in range(self.silent + self.partial):
                connecting = time.monotonic()  # the server's clock starts later, at accept
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                if i >= self.silent:
                    s.sendall(hello)
                s.setblocking(False)
                opened[s] = connecting
        finally:
            self.opened.set()
        self.closed_after, self.data_received = watch_closes(opened, self.wait)
        self.still_open = len(opened)
        for s in opened:
            s.close()


def _handshake(port: int) -> bytes | Exception:
    """Blocking (no ``select``: descriptors are many): the server's certificate, or the error."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=GOOD) as s:
                certificate = s.getpeercert(binary_form=True)
                assert certificate is not None
                return certificate
    except Exception as e:
        return e


def _idle_then_request(port: int, idle: float) -> bytes:
    """Blocking: handshake, stay idle ``idle`` seconds, then GET / and read the answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=GOOD) as s:
            time.sleep(idle)
            s.sendall(b"GET / HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return answer


def _stall_after_server_flight(port: int) -> tuple[int, float]:
    """Blocking: send a whole ClientHello, read the server's flight, never finish.
    Returns the bytes received and how long after connecting the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(client_hello(GOOD.encode()))
        received = 0
        try:
            while chunk := s.recv(4096):
                received += len(chunk)
        except ConnectionResetError:
            pass
        return received, time.monotonic() - started


class DeadlineEndToEndTests(TestCase):
    """A real ``AutoTLSEndpoint`` with ``handshake_timeout=1``."""

    timeout = 120

    def setUp(self) -> None:
        self.directory = self.mktemp()
        import os

        os.makedirs(self.directory)
        self.store = DirectoryStore(self.directory)
        now = datetime.now(timezone.utc)
        good = make_pem_objects([GOOD], now - timedelta(days=1), now + timedelta(days=89))
        self.successResultOf(self.store.store(GOOD, good))
        self.certificate = x509.load_pem_x509_certificate(good[1].as_bytes()).public_bytes(
            serialization.Encoding.DER
        )

    async def listen(self, on_demand: bool = False) -> tuple[AutoTLSPort, int]:
        options: dict[str, Any] = {}
        if on_demand:
            options["on_demand"] = OnDemandPolicy(allow=["*.ondemand.test"], clock=reactor)
        endpoint = AutoTLSEndpoint(
            reactor,
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1", backlog=2048),
            self.store,
            FakeClient,
            watch_interval=None,
            handshake_timeout=DEADLINE,
            **options,
        )
        port = await endpoint.listen(site())
        assert isinstance(port, AutoTLSPort)
        self.addCleanup(port.stopListening)
        factory = port.port.factory  # type: ignore[attr-defined]
        self.assertIsInstance(factory, HelloHookFactory if on_demand else ServerTLSFactory)
        return port, port.getHost().port

    async def flood(self, on_demand: bool, silent: int, partial: int) -> None:
        port, number = await self.listen(on_demand)
        deadlines = port.port.factory.deadlines  # type: ignore[attr-defined]
        hostile = _Hostile(number, silent, partial, wait=DEADLINE * 4 + 6)
        running = deferToThread(hostile.run)
        await deferToThread(hostile.opened.wait)
        pending = len(deadlines)
        # Ordinary handshakes while they are pending.
        served = [await deferToThread(_handshake, number) for _ in range(5)]
        await running
        total = silent + partial
        self.assertEqual(served, [self.certificate] * 5)
        self.assertEqual(hostile.still_open, 0)
        self.assertEqual(len(hostile.closed_after), total)
        self.assertEqual(hostile.data_received, 0)  # aborted: no alert, no ServerHello
        # Measured from the client's connect; the server starts the clock at accept.
        self.assertGreaterEqual(min(hostile.closed_after), DEADLINE - GRANULARITY)
        self.assertLess(max(hostile.closed_after), DEADLINE + 4.0)
        self.assertEqual(deadlines.expired, total)
        self.assertEqual(len(deadlines), 0)
        closed = sorted(hostile.closed_after)
        print(
            f"\n{total} hostile connections ({silent} silent, {partial} partial), "
            f"{pending} pending when all were open; closed after "
            f"min {closed[0]:.2f} s, median {closed[len(closed) // 2]:.2f} s, "
            f"max {closed[-1]:.2f} s"
        )

    def test_silent_and_partial_connections_closed_at_the_deadline(self) -> None:
        """2,000 silent and 200 partial-ClientHello connections, no hook."""
        return Deferred.fromCoroutine(self.flood(False, 2000, 200))

    def test_with_on_demand_the_buffered_hello_has_a_deadline(self) -> None:
        """With on-demand, txacme buffers the ClientHello itself: also aborted."""
        return Deferred.fromCoroutine(self.flood(True, 1000, 1000))

    def test_established_connections_are_left_to_the_application(self) -> None:
        async def check() -> None:
            port, number = await self.listen()
            answer = await deferToThread(_idle_then_request, number, DEADLINE * 2)
            self.assertIn(PAGE, answer)
            self.assertEqual(port.port.factory.deadlines.expired, 0)  # type: ignore[attr-defined]

        return Deferred.fromCoroutine(check())

    def test_stalled_handshake_is_aborted(self) -> None:
        """The client got the server's flight and never answered: aborted too."""

        async def check() -> None:
            port, number = await self.listen()
            received, after = await deferToThread(_stall_after_server_flight, number)
            self.assertGreater(received, 100)  # ServerHello and the rest
            self.assertGreaterEqual(after, DEADLINE - 0.05)
            self.assertLess(after, DEADLINE + 2.0)
            self.assertEqual(port.port.factory.deadlines.expired, 1)  # type: ignore[attr-defined]

        return Deferred.fromCoroutine(check())


class HookHoldTests(TestCase):
    """The time a hook holds the handshake is not the client's."""

    timeout = 30

    def test_held_longer_than_the_deadline_still_completes(self) -> None:
        async def check() -> None:
            directory = self.mktemp()
            import os

            os.makedirs(directory)
            store = DirectoryStore(directory)
            now = datetime.now(timezone.utc)
            good = make_pem_objects([GOOD], now - timedelta(days=1), now + timedelta(days=89))
            self.successResultOf(store.store(GOOD, good))
            index = CertificateIndex()
            await index.load_from(store)
            creator = SNIConnectionCreator(index, acceptable_protocols=[b"http/1.1"])
            holds: list[float] = []

            def hook(hello: Any) -> Deferred[None]:
                holds.append(time.monotonic())
                return deferLater(reactor, DEADLINE * 1.5, lambda: None)

            factory = HelloHookFactory(
                creator, site(), hook, timeout=5.0, clock=reactor, handshake_timeout=DEADLINE
            )
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            started = time.monotonic()
            result = await deferToThread(openssl_handshake, port.getHost().port, GOOD.encode())
            self.assertNotIsInstance(result, Exception)
            self.assertGreater(time.monotonic() - started, DEADLINE * 1.4)
            self.assertEqual(len(holds), 1)
            self.assertEqual(factory.deadlines.expired, 0)  # type: ignore[union-attr]

        return Deferred.fromCoroutine(check())


class LazyConnectionTests(SynchronousTestCase):
    """No OpenSSL connection before a whole first record has arrived."""

    def test_made_when_the_first_record_is_complete(self) -> None:
        from twisted.internet.testing import StringTransport

        index = CertificateIndex()
        creator = SNIConnectionCreator(index)
        factory = ServerTLSFactory(
            creator, Factory.forProtocol(Protocol), clock=Clock(), handshake_timeout=None
        )
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        self.assertIsInstance(protocol._tlsConnection, _NotStarted)  # type: ignore[attr-defined]
        hello = client_hello(GOOD.encode())
        head = hello[:-1]
        for i in range(0, len(head), 7):
            protocol.dataReceived(head[i : i + 7])
        self.assertIsInstance(protocol._tlsConnection, _NotStarted)  # type: ignore[attr-defined]
        protocol.dataReceived(hello[-1:])
        self.assertNotIsInstance(protocol._tlsConnection, _NotStarted)  # type: ignore[attr-defined]

    def test_not_tls_goes_to_openssl_at_once(self) -> None:
        from twisted.internet.testing import StringTransport

        creator = SNIConnectionCreator(CertificateIndex())
        factory = ServerTLSFactory(
            creator, Factory.forProtocol(Protocol), clock=Clock(), handshake_timeout=None
        )
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.disconnecting)


class TwistdDeadlineTests(TestCase):
    """``twistd web --port acme:...:handshake_timeout=1``: silent connections closed."""

    timeout = 90

    def test_twistd_closes_silent_connections(self) -> None:
        import os
        import shutil
        import tempfile
        from pathlib import Path

        from tests.harness.pebble import shared_pebble
        from tests.harness.processes import free_port, stop_process
        from tests.harness.twistd import quote, start_web

        pebble = shared_pebble()
        work = Path(tempfile.mkdtemp(prefix="txacme-deadline-twistd-"))
        self.addCleanup(shutil.rmtree, work, True)
        certs = work / "certs"
        certs.mkdir()
        now = datetime.now(timezone.utc)
        good = make_pem_objects([GOOD], now - timedelta(days=1), now + timedelta(days=89))
        (certs / f"{GOOD}.pem").write_bytes(b"".join(o.as_bytes() for o in good))
        os.chmod(certs / f"{GOOD}.pem", 0o600)
        port = free_port()
        description = (
            f"acme:{quote(str(certs))}:tcp:{port}:interface=127.0.0.1:backlog=1024"
            f":directory={quote(pebble.directory_url)}:ca_file={quote(pebble.ca_file)}"
            ":handshake_timeout=1"
        )
        proc = start_web(description, work, work, work / "twistd.log")
        self.addCleanup(stop_process, proc)

        async def check() -> None:
            for _ in range(300):
                result = await deferToThread(_handshake, port)
                if isinstance(result, bytes):
                    break
                if proc.poll() is not None:
                    self.fail((work / "twistd.log").read_text(errors="replace"))
                await deferLater(reactor, 0.1, lambda: None)
            else:
                self.fail("twistd never served a handshake")
            hostile = _Hostile(port, 300, 100, wait=8.0)
            await deferToThread(hostile.run)
            self.assertEqual(hostile.still_open, 0)
            self.assertEqual(len(hostile.closed_after), 400)
            self.assertGreaterEqual(min(hostile.closed_after), 1.0 - GRANULARITY)
            self.assertLess(max(hostile.closed_after), 5.0)
            self.assertIsInstance(await deferToThread(_handshake, port), bytes)
            text = (work / "twistd.log").read_text(errors="replace")
            self.assertIn("did not complete the TLS handshake within 1.0 s", text)

        return Deferred.fromCoroutine(check())
