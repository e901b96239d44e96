"""
Tests for the per-connection shortcuts of txacme's server TLS layer
(``ServerTLSProtocol``, the ALPN list asked once per factory, the connection
class that only challenge connections leave): real handshakes over loopback,
compared with Twisted's own ``TLSMemoryBIOFactory`` where behaviour must match.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from zope.interface import providedBy

from tests.test_tls import (
    TLS12,
    TLS13,
    AppFactory,
    AppProtocol,
    Challenge,
    NegotiatingAppFactory,
    TLSServerMixin,
    make_creator,
    shared_ca,
)
from txacme.challenges.tlsalpn01 import ACME_TLS_1, TLSALPN01Responder
from txacme.serving.hello import HelloHookFactory, ServerTLSProtocol
from txacme.serving.tls import SNIConnectionCreator, _ServerConnection, tls_server_factory


class RecordingProtocol(AppProtocol):
    """Records its transport and the TLS connection object; may greet or hang up."""

    factory: RecordingFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.transports.append(self.transport)
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)  # type: ignore[union-attr]
        if self.factory.hang_up:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.factory.handles.append(self.transport.getHandle())  # type: ignore[union-attr]
        super().dataReceived(data)


class RecordingFactory(AppFactory):
    protocol = RecordingProtocol

    def __init__(self, greeting: bytes = b"", hang_up: bool = False) -> None:
        super().__init__()
        self.greeting = greeting
        self.hang_up = hang_up
        self.transports: list[Any] = []
        self.handles: list[SSL.Connection] = []


class CountingNegotiatingFactory(NegotiatingAppFactory):
    def __init__(self, protocols: list[bytes]) -> None:
        super().__init__(protocols)
        self.asked = 0

    def acceptableProtocols(self) -> list[bytes]:
        self.asked += 1
        return super().acceptableProtocols()


class FastPathTests(TLSServerMixin, unittest.TestCase):
    def setUp(self) -> None:
        self.ca = shared_ca()
        self.entries = {"a.example.com": self.ca.issue(["a.example.com"])}

    def listen_with(self, factory: Any) -> None:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    @defer.inlineCallbacks
    def test_interfaces_declared_as_twisted_does(self) -> Any:
        """The application's transport provides what Twisted's own TLS transport does."""
        _, creator = make_creator(self.entries)
        ours, twisted = RecordingFactory(), RecordingFactory()
        self.listen_with(tls_server_factory(creator, ours))
        for version in (TLS12, TLS13):
            yield self.connect(b"a.example.com", payload=b"x", max_version=version)
        self.listen_with(TLSMemoryBIOFactory(creator, False, twisted))
        yield self.connect(b"a.example.com", payload=b"x")
        self.assertEqual(len(ours.transports), 2)
        for transport in ours.transports:
            self.assertIsInstance(transport, ServerTLSProtocol)
            self.assertTrue(ITCPTransport.providedBy(transport))
            self.assertTrue(ISSLTransport.providedBy(transport))
            self.assertEqual(list(providedBy(transport)), list(providedBy(twisted.transports[0])))

    @defer.inlineCallbacks
    def test_server_speaks_first(self) -> Any:
        """Bytes written in connectionMade arrive after the handshake."""
        _, creator = make_creator(self.entries)
        self.listen_with(tls_server_factory(creator, RecordingFactory(greeting=b"220 hi\r\n")))
        for version in (TLS12, TLS13):
            outcome = yield self.connect(b"a.example.com", payload=b"ping", max_version=version)
            self.assertTrue(outcome.handshake)
            self.assertEqual(outcome.received[:8], b"220 hi\r\n")

    @defer.inlineCallbacks
    def test_hang_up_in_connection_made_as_twisted(self) -> Any:
        """An application closing at once: the same outcome as with Twisted's factory."""
        _, creator = make_creator(self.entries)
        outcomes = []
        for factory in (
            tls_server_factory(creator, RecordingFactory(hang_up=True)),
            TLSMemoryBIOFactory(creator, False, RecordingFactory(hang_up=True)),
        ):
            self.listen_with(factory)
            outcome = yield self.connect(b"a.example.com", payload=b"x")
            outcomes.append((outcome.handshake, outcome.received, type(outcome.reason.value)))
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertFalse(outcomes[0][0])

    @defer.inlineCallbacks
    def test_alpn_protocols_asked_once_per_factory(self) -> Any:
        _, creator = make_creator(self.entries, acceptable_protocols=[b"spdy/3"])
        first = CountingNegotiatingFactory([b"h2", b"http/1.1"])
        second = CountingNegotiatingFactory([b"http/1.1"])
        self.listen_with(tls_server_factory(creator, first))
        for _ in range(3):
            outcome = yield self.connect(b"a.example.com", [b"http/1.1", b"h2"])
            self.assertEqual(outcome.protocol, b"h2")
        outcome = yield self.connect(b"a.example.com", [b"spdy/3"])
        self.assertEqual(outcome.protocol, b"spdy/3")
        self.listen_with(HelloHookFactory(creator, second, lambda hello: None, clock=reactor))
        outcome = yield self.connect(b"a.example.com", [b"h2", b"http/1.1"])
        self.assertEqual(outcome.protocol, b"http/1.1")
        self.assertEqual((first.asked, second.asked), (1, 1))

    @defer.inlineCallbacks
    def test_ordinary_connections_keep_pyopenssl_io(self) -> Any:
        """Only challenge connections get the no-data recv/send."""
        responder = TLSALPN01Responder()
        challenge = Challenge()
        responder.start_responding("a.example.com", challenge, challenge)
        _, creator = make_creator(self.entries, challenges=responder.registry)
        self.assertIsInstance(creator, SNIConnectionCreator)
        app = RecordingFactory()
        self.listen_with(tls_server_factory(creator, app))
        outcome = yield self.connect(b"a.example.com", payload=b"data")
        self.assertEqual(outcome.received, b"data")
        (handle,) = app.handles
        self.assertIs(type(handle), _ServerConnection)
        self.assertFalse(handle.txacme_no_data)  # type: ignore[attr-defined]
        self.assertIs(type(handle).recv, SSL.Connection.recv)
        self.assertIs(type(handle).send, SSL.Connection.send)
        outcome = yield self.connect(b"a.example.com", [ACME_TLS_1], payload=b"data")
        self.assertEqual(outcome.protocol, ACME_TLS_1)
        self.assertEqual(outcome.received, b"")
        self.assertEqual(len(app.handles), 1)
        self.assertEqual(app.received, [b"data"])
