"""
Tests for what a server TLS connection does not do any more, and must not be
seen to miss: the session tickets of a TLS 1.3 handshake held until there is
something else to send, the application's HTTP protocol made only when the
client sends something (closed after the factory's idle timeout otherwise),
the end of a stream without close_notify told as Twisted tells it, and the
TLS 1.3 cipher suite preferred. Driven in memory, byte by byte, with Python's
``ssl`` as the client.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from unittest import skipUnless

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.test_tls import AppFactory, make_creator, shared_ca
from txacme.serving.hello import ServerTLSProtocol, defer_accept
from txacme.serving.tls import tls_server_factory

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class TCPStringTransport(StringTransport):
    """A ``StringTransport`` with the TCP option ``twisted.web`` sets."""

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        self.no_delay = enabled


class Client:
    """A Python ``ssl`` client over memory BIOs, talking to one server protocol."""

    def __init__(self, protocol: Any, transport: StringTransport, version: ssl.TLSVersion) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = context.maximum_version = version
        context.set_alpn_protocols(["h2", "http/1.1"])
        if version == ssl.TLSVersion.TLSv1_3:
            context.set_ciphersuites = None  # type: ignore[attr-defined]
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="a.example.com")
        self.protocol = protocol
        self.transport = transport

    def to_server(self) -> None:
        data = self.outgoing.read()
        if data:
            self.protocol.dataReceived(data)

    def from_server(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        self.incoming.write(data)
        return data

    def handshake(self, data: bytes = b"") -> bytes:
        """
        Complete the handshake, sending ``data`` (if any) in the same read as
        the client's Finished; return what the server sent after that.
        """
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.to_server()
                self.from_server()
        if data:
            self.tls.write(data)
        self.to_server()
        return self.from_server()

    def read(self) -> bytes:
        try:
            return self.tls.read(65536)
        except ssl.SSLWantReadError:
            return b""


class CountingSite(Site):
    """A ``Site`` counting the HTTP protocols it builds."""

    built = 0

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        self.built += 1
        return super().buildProtocol(addr)


def site(clock: Clock, timeout: float | None = 60) -> CountingSite:
    root = Resource()
    root.putChild(b"", Data(b"hello", "text/plain"))
    result = CountingSite(root, timeout=timeout, reactor=clock)
    return result


class LeanConnectionTests(unittest.TestCase):
    def setUp(self) -> None:
        ca = shared_ca()
        _, self.creator = make_creator({"a.example.com": ca.issue(["a.example.com"])})
        self.clock = Clock()

    def connect(self, app: Any, twisted: bool = False) -> tuple[Any, StringTransport]:
        if twisted:
            factory: Any = TLSMemoryBIOFactory(self.creator, False, app, clock=self.clock)
        else:
            factory = tls_server_factory(self.creator, app, clock=self.clock)
        protocol = factory.buildProtocol(ADDRESS)
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    # -- session tickets ----------------------------------------------------

    def test_tls13_tickets_wait_for_application_bytes(self) -> None:
        """
        After a TLS 1.3 handshake nothing is sent until the application
        writes; then the held tickets go first and the client reads the data.
        """
        app = AppFactory()
        protocol, transport = self.connect(app)
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(client.handshake(), b"")
        self.assertEqual(app.made, 1)
        client.tls.write(b"ping")
        client.to_server()  # the application echoes it
        self.assertEqual(app.received, [b"ping"])
        self.clock.advance(0)  # Twisted's TLS transport gathers small writes for a turn
        sent = client.from_server()
        self.assertGreater(len(sent), 2 * 22 + len(b"ping"))  # tickets, then the data
        self.assertEqual(client.read(), b"ping")

    def test_tls13_tickets_leave_with_close_notify(self) -> None:
        """An application closing without writing: tickets and close_notify are sent."""
        app = AppFactory()
        protocol, transport = self.connect(app)
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(client.handshake(), b"")
        protocol.loseConnection()
        sent = client.from_server()
        self.assertGreater(len(sent), 24)  # more than the close_notify record alone
        self.assertEqual(client.tls.read(10), b"")  # the client saw close_notify

    def test_tls12_final_flight_is_not_held(self) -> None:
        """TLS 1.2: the server's Finished is sent at once (a client waits for it)."""
        app = AppFactory()
        protocol, transport = self.connect(app)
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_2)
        client.tls.do_handshake  # noqa: B018
        while True:
            try:
                client.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                client.to_server()
                sent = client.from_server()
                if not sent:
                    self.fail("the server held its TLS 1.2 handshake messages")

    # -- the end of the stream ------------------------------------------------

    def lost_reason(self, twisted: bool, close_notify: bool) -> type[BaseException]:
        app = AppFactory()
        protocol, transport = self.connect(app, twisted=twisted)
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_3)
        client.handshake()
        if close_notify:
            try:
                client.tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            client.to_server()
        protocol.connectionLost(Failure(ConnectionDone()))
        (reason,) = app.lost
        return type(reason.value)

    def test_eof_without_close_notify_as_twisted(self) -> None:
        """A client gone without close_notify: ConnectionLost, as Twisted says it."""
        ours = self.lost_reason(twisted=False, close_notify=False)
        self.assertIs(ours, self.lost_reason(twisted=True, close_notify=False))
        self.assertIs(ours, ConnectionLost)

    def test_eof_after_close_notify_as_twisted(self) -> None:
        ours = self.lost_reason(twisted=False, close_notify=True)
        self.assertIs(ours, self.lost_reason(twisted=True, close_notify=True))
        self.assertIs(ours, ConnectionDone)

    def test_eof_before_hello_as_twisted(self) -> None:
        """A client gone before sending anything: the same reason as with Twisted's factory."""
        reasons = []
        for twisted in (False, True):
            app = AppFactory()
            protocol, _ = self.connect(app, twisted=twisted)
            protocol.connectionLost(Failure(ConnectionDone()))
            reasons.append([type(r.value) for r in app.lost])
        self.assertEqual(reasons[0], reasons[1])

    # -- the HTTP protocol, made when the client speaks ----------------------

    def http_handshake(self, timeout: float = 60) -> tuple[CountingSite, Any, Any, Client]:
        """A Site behind the TLS factory, and a client that completed its TLS 1.3 handshake."""
        web = site(self.clock, timeout=timeout)
        protocol, transport = self.connect(web)
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(client.handshake(), b"")
        return web, protocol, transport, client

    def test_http_protocol_made_at_first_request(self) -> None:
        """A handshake alone makes no HTTP protocol; the first request makes one and is served."""
        web, protocol, transport, client = self.http_handshake()
        self.assertEqual(web.built, 0)
        client.tls.write(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        client.to_server()
        self.assertEqual(web.built, 1)
        self.clock.advance(0)
        client.from_server()
        response = client.read()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK"), response)
        self.assertTrue(response.endswith(b"hello"), response)
        self.assertIs(protocol.transport, transport)

    def test_http_handshake_only_never_builds(self) -> None:
        """Handshakes that fail, or complete and close, never reach the Site."""
        web, protocol, _, _ = self.http_handshake()
        protocol.connectionLost(Failure(ConnectionDone()))
        protocol, transport = self.connect(web)
        protocol.dataReceived(b"\x16\x03\x01\x00\x05garbage")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(web.built, 0)

    def test_http_idle_client_closed_after_site_timeout(self) -> None:
        """A client silent after its handshake is closed after the Site's timeOut, not before."""
        web, _, transport, client = self.http_handshake(timeout=30)
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)  # not waiting for the client's close_notify
        client.from_server()
        self.assertEqual(client.read(), b"")  # it got close_notify
        self.assertEqual(client.tls.read(10), b"")
        self.assertEqual(web.built, 0)

    def test_http_request_cancels_idle_close(self) -> None:
        web, _, transport, client = self.http_handshake(timeout=30)
        self.clock.advance(20)
        client.tls.write(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        client.to_server()
        self.clock.advance(15)  # past the idle deadline of the handshake; the channel's own runs
        self.assertFalse(transport.disconnecting)
        self.assertEqual(web.built, 1)

    def test_no_timer_left_after_the_port_stopped(self) -> None:
        """
        A handshake completing after the last port stopped, then the client
        leaving: no deadline timer of the factory is left behind.
        """
        web = site(self.clock, timeout=30)
        factory = tls_server_factory(self.creator, web, clock=self.clock)
        factory.doStart()
        protocol = factory.buildProtocol(ADDRESS)
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        factory.doStop()
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_3)
        client.handshake()  # the idle deadline starts now, after the stop
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        factory.doStart()  # listening again: deadlines work as before
        protocol = factory.buildProtocol(ADDRESS)
        transport = TCPStringTransport()
        protocol.makeConnection(transport)
        Client(protocol, transport, ssl.TLSVersion.TLSv1_3).handshake()
        self.clock.advance(31)
        self.assertTrue(transport.disconnecting)
        factory.doStop()

    def test_other_protocols_connected_at_once(self) -> None:
        """A factory that is not HTTP gets its protocol at accept time, as with Twisted."""
        app = AppFactory()
        self.connect(app)
        self.assertEqual(app.made, 1)
        plain = Factory.forProtocol(Protocol)
        protocol, transport = self.connect(plain)
        self.assertIsInstance(protocol, ServerTLSProtocol)
        self.assertIsInstance(protocol.wrappedProtocol, Protocol)
        self.assertIs(protocol.wrappedProtocol.transport, protocol)

    # -- cipher suite ----------------------------------------------------------

    def test_tls13_prefers_aes128(self) -> None:
        """With a client listing AES-256 first, the server still picks AES-128-GCM."""
        app = AppFactory()
        protocol, transport = self.connect(app)
        client = Client(protocol, transport, ssl.TLSVersion.TLSv1_3)
        client.handshake()
        cipher = client.tls.cipher()
        assert cipher is not None
        self.assertEqual(cipher[0], "TLS_AES_128_GCM_SHA256")


class RecordingSocket(socket.socket):
    """A real TCP socket recording the options set on it."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: Any, *args: Any) -> None:  # type: ignore[override]
        self.options.append((level, option, value))
        super().setsockopt(level, option, value, *args)


class SocketStringTransport(TCPStringTransport):
    """A ``StringTransport`` with a ``socket`` attribute, as Twisted's TCP transport has."""

    def __init__(self) -> None:
        super().__init__()
        self.socket = RecordingSocket()


@skipUnless(hasattr(socket, "TCP_QUICKACK"), "TCP_QUICKACK is Linux's")
class AcknowledgeTests(unittest.TestCase):
    def setUp(self) -> None:
        ca = shared_ca()
        _, self.creator = make_creator({"a.example.com": ca.issue(["a.example.com"])})

    def quick_acks(self, version: ssl.TLSVersion, request: bytes) -> list[Any]:
        factory = tls_server_factory(self.creator, AppFactory(), clock=Clock())
        protocol = factory.buildProtocol(ADDRESS)
        transport = SocketStringTransport()
        self.addCleanup(transport.socket.close)
        protocol.makeConnection(transport)
        client = Client(protocol, transport, version)
        client.handshake(request)
        quick = (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return [o for o in transport.socket.options if o == quick]

    def test_finished_acknowledged_at_once_when_nothing_to_send(self) -> None:
        """
        TLS 1.3 with the tickets held and nothing else to send: the client's
        Finished is acknowledged at once (a client with Nagle's algorithm on
        waits for that ACK before sending its request), once.
        """
        self.assertEqual(len(self.quick_acks(ssl.TLSVersion.TLSv1_3, b"")), 1)

    def test_no_extra_ack_when_the_application_answers(self) -> None:
        """Finished and request together: the answer carries the ACK, no option set."""
        self.assertEqual(self.quick_acks(ssl.TLSVersion.TLSv1_3, b"ping"), [])

    def test_tls12_sends_its_finished(self) -> None:
        self.assertEqual(self.quick_acks(ssl.TLSVersion.TLSv1_2, b""), [])


class DeferAcceptTests(unittest.TestCase):
    @skipUnless(hasattr(socket, "TCP_DEFER_ACCEPT"), "TCP_DEFER_ACCEPT is Linux's")
    def test_set_on_a_tcp_port(self) -> None:
        from twisted.internet import reactor

        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.assertTrue(defer_accept(port))
        value = port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
        self.assertGreater(value, 0)

    def test_other_ports_left_alone(self) -> None:
        self.assertFalse(defer_accept(object()))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
            holder = type("Port", (), {"socket": unix})()
            self.assertFalse(defer_accept(holder))


class LogPrefixTests(unittest.TestCase):
    def test_http_connection_log_prefix(self) -> None:
        """Twisted's log lines of a Site's TLS connection name HTTP, not a stand-in."""
        _, creator = make_creator({"a.example.com": shared_ca().issue(["a.example.com"])})
        factory = tls_server_factory(creator, site(Clock()), clock=Clock())
        protocol = factory.buildProtocol(ADDRESS)
        self.assertEqual(protocol.logPrefix(), "HTTPChannel (ServerTLSProtocol)")
