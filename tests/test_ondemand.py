"""
On-demand issuance: the ClientHello parser, handshakes held by HelloHookFactory
(over real loopback sockets), the policy (allow-list and ask URL), the issuer's
rate limits on a Clock, and the whole thing against Pebble.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.harness.tlsclient import tls_exchange
from txacme.certificates import certificate_names
from txacme.errors import ConfigurationError
from txacme.issuing.ondemand import OnDemandIssuer, OnDemandPolicy, RateLimiter
from txacme.serving.hello import (
    NEED_MORE,
    ClientHello,
    HelloHookFactory,
    combine_hooks,
    parse_client_hello,
)
from txacme.serving.index import CertificateIndex
from txacme.serving.tls import SNIConnectionCreator
from txacme.testing import make_pem_objects


def client_hello(
    server_name: bytes | None = b"a.example",
    alpn: list[bytes] | None = None,
    max_version: int | None = None,
) -> bytes:
    """The bytes of a real ClientHello, made by pyOpenSSL over a memory BIO."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    if server_name is not None:
        connection.set_tlsext_host_name(server_name)
    if alpn is not None:
        connection.set_alpn_protos(alpn)
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


def split_into_records(data: bytes, at: int) -> bytes:
    """The same handshake message carried by two TLS records."""
    assert data[0] == 22
    body = data[5:]
    first, second = body[:at], body[at:]
    return b"".join(
        bytes([22]) + data[1:3] + struct.pack("!H", len(part)) + part for part in (first, second)
    )


def entry(name: str) -> list[Any]:
    now = datetime.now(timezone.utc)
    return make_pem_objects([name], now - timedelta(hours=1), now + timedelta(days=30))


class ParseTests(SynchronousTestCase):
    def test_tls13_with_sni_and_alpn(self) -> None:
        """SNI (lower-cased, no trailing dot) and ALPN in the client's order."""
        hello = parse_client_hello(client_hello(b"Mixed.Example.", [b"h2", b"http/1.1"]))
        self.assertEqual(hello, ClientHello("mixed.example", (b"h2", b"http/1.1")))

    def test_tls12_validator(self) -> None:
        """A TLS 1.2 hello offering only acme-tls/1."""
        data = client_hello(b"v.example", [b"acme-tls/1"], max_version=SSL.TLS1_2_VERSION)
        self.assertEqual(parse_client_hello(data), ClientHello("v.example", (b"acme-tls/1",)))

    def test_no_sni(self) -> None:
        """No server_name extension: None."""
        self.assertEqual(parse_client_hello(client_hello(None)), ClientHello(None, ()))

    def test_incomplete(self) -> None:
        """Every proper prefix needs more bytes."""
        data = client_hello()
        for cut in (0, 1, 4, 5, 6, 40, len(data) - 1):
            self.assertIs(parse_client_hello(data[:cut]), NEED_MORE, cut)

    def test_fragmented_over_records(self) -> None:
        """A ClientHello split over two records is reassembled."""
        data = client_hello(b"frag.example", [b"http/1.1"])
        for at in (2, 50, len(data) - 10):
            self.assertEqual(
                parse_client_hello(split_into_records(data, at)),
                ClientHello("frag.example", (b"http/1.1",)),
            )

    def test_not_a_client_hello(self) -> None:
        """Plain HTTP, other record types and nonsense lengths are not waited for."""
        self.assertIsNone(parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertIsNone(parse_client_hello(b"\x15\x03\x03\x00\x02\x02\x28"))
        self.assertIsNone(parse_client_hello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"))
        data = bytearray(client_hello())
        data[9 + 2 + 32] = 250  # session id longer than the message
        self.assertIsNone(parse_client_hello(bytes(data)))


class Hook:
    """A hook that holds the handshakes of names in ``hold``."""

    def __init__(self, hold: set[str]) -> None:
        self.hold = hold
        self.seen: list[ClientHello] = []
        self.waiting: list[Deferred[None]] = []

    def __call__(self, hello: ClientHello) -> Deferred[None] | None:
        self.seen.append(hello)
        if hello.server_name in self.hold:
            d: Deferred[None] = Deferred()
            self.waiting.append(d)
            return d
        return None


def handshake(port: int, name: str) -> x509.Certificate:
    """Blocking: handshake with SNI ``name`` (no verification); the served certificate."""
    return tls_exchange(port, name).certificate


san = certificate_names


class HeldHandshakeTests(TestCase):
    timeout = 30

    def listen(self, hook: Any, index: CertificateIndex, timeout: float = 10.0) -> int:
        creator = SNIConnectionCreator(index)
        factory = HelloHookFactory(
            creator, Factory.forProtocol(Protocol), hook, timeout=timeout, clock=reactor
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def wait_for(self, predicate: Any) -> Any:
        deadline = time.monotonic() + 10
        while not predicate():
            self.assertLess(time.monotonic(), deadline, "condition not reached")
            yield deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def test_held_until_certificate_exists(self) -> Any:
        """The first handshake waits and gets the certificate made meanwhile."""
        index = CertificateIndex()
        hook = Hook({"new.example"})
        port = self.listen(hook, index)
        result = threads.deferToThread(handshake, port, "new.example")
        yield self.wait_for(lambda: hook.waiting)
        self.assertFalse(result.called)
        index.update("new.example", entry("new.example"))
        hook.waiting[0].callback(None)
        cert = yield result
        self.assertEqual(san(cert), ["new.example"])

    @inlineCallbacks
    def test_known_names_are_not_held(self) -> Any:
        """A hook returning None lets the handshake go on at once."""
        index = CertificateIndex()
        index.update("known.example", entry("known.example"))
        hook = Hook(set())
        port = self.listen(hook, index)
        cert = yield threads.deferToThread(handshake, port, "known.example")
        self.assertEqual(san(cert), ["known.example"])
        self.assertEqual([h.server_name for h in hook.seen], ["known.example"])

    @inlineCallbacks
    def test_timeout_falls_back_to_default(self) -> Any:
        """After the timeout the handshake goes on with the default certificate."""
        index = CertificateIndex()
        index.set_default(entry("default.example"))
        hook = Hook({"slow.example"})
        port = self.listen(hook, index, timeout=0.2)
        cert = yield threads.deferToThread(handshake, port, "slow.example")
        self.assertEqual(san(cert), ["default.example"])

    @inlineCallbacks
    def test_timeout_without_default_fails_cleanly(self) -> Any:
        """Without a default certificate the client gets a handshake failure."""
        hook = Hook({"slow.example"})
        port = self.listen(hook, CertificateIndex(), timeout=0.2)
        yield self.assertFailure(
            threads.deferToThread(handshake, port, "slow.example"), ssl.SSLError, OSError
        )

    @inlineCallbacks
    def test_client_gone_while_held(self) -> Any:
        """A client that leaves while held is forgotten; firing the hook later is harmless."""
        index = CertificateIndex()
        hook = Hook({"gone.example"})
        port = self.listen(hook, index)

        def send_and_leave() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(client_hello(b"gone.example"))
                deadline = time.monotonic() + 5
                while not hook.waiting and time.monotonic() < deadline:
                    time.sleep(0.01)

        yield threads.deferToThread(send_and_leave)
        yield deferLater(reactor, 0.05, lambda: None)
        hook.waiting[0].callback(None)
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_not_tls(self) -> Any:
        """Bytes that are not a ClientHello go straight to OpenSSL, which refuses them."""
        hook = Hook(set())
        port = self.listen(hook, CertificateIndex())

        def talk_http() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return raw.recv(100)

        answer = yield threads.deferToThread(talk_http)
        self.assertEqual(hook.seen, [])
        self.assertTrue(answer == b"" or answer[0] == 21)  # closed, or a TLS alert

    def test_combine_hooks(self) -> None:
        """Combined hooks wait for every Deferred and skip failing hooks."""
        first, second = Hook({"x"}), Hook({"x"})

        def broken(hello: ClientHello) -> None:
            raise ZeroDivisionError()

        hook = combine_hooks(first, None, broken, second)
        self.assertIsNone(hook(ClientHello("y")))
        waiting = hook(ClientHello("x"))
        assert waiting is not None
        first.waiting[0].callback(None)
        self.assertFalse(waiting.called)
        second.waiting[0].callback(None)
        self.assertTrue(waiting.called)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)


class PolicyTests(TestCase):
    timeout = 30

    def test_allow_list(self) -> None:
        """Exact names and one-label wildcards; nothing else."""
        policy = OnDemandPolicy(allow=["a.example", "*.Shop.Example"], clock=reactor)
        decide = policy.decide
        self.assertTrue(self.successResultOf(decide("a.example")))
        self.assertTrue(self.successResultOf(decide("x.shop.example")))
        self.assertFalse(self.successResultOf(decide("shop.example")))
        self.assertFalse(self.successResultOf(decide("a.b.shop.example")))
        self.assertFalse(self.successResultOf(decide("b.example")))
        self.assertFalse(self.successResultOf(decide("*.shop.example")))

    def test_configuration_errors(self) -> None:
        """No policy, bad patterns and plain-HTTP ask URLs off loopback are refused."""
        self.assertRaises(ConfigurationError, OnDemandPolicy, clock=reactor)
        self.assertRaises(ConfigurationError, OnDemandPolicy, allow=["*"], clock=reactor)
        self.assertRaises(ConfigurationError, OnDemandPolicy, allow=["a..example"], clock=reactor)
        self.assertRaises(
            ConfigurationError, OnDemandPolicy, ask="http://ask.example/", clock=reactor
        )
        self.assertRaises(ConfigurationError, OnDemandPolicy, ask="ftp://127.0.0.1/", clock=reactor)
        OnDemandPolicy(ask="http://127.0.0.1:1/ask", clock=reactor)
        OnDemandPolicy(ask="https://ask.example/check", clock=reactor)

    def ask_server(self, allowed: set[str], hang: bool = False) -> tuple[str, list[str]]:
        asked: list[str] = []

        class Ask(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> Any:
                domain = request.args[b"domain"][0].decode()
                asked.append(domain)
                if hang:
                    return NOT_DONE_YET
                request.setResponseCode(200 if domain in allowed else 403)
                return b"ok"

        port = reactor.listenTCP(0, Site(Ask()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/ask?token=t", asked

    @inlineCallbacks
    def test_ask_url(self) -> Any:
        """The ask URL decides; answers are cached."""
        url, asked = self.ask_server({"yes.example"})
        policy = OnDemandPolicy(ask=url, clock=reactor)
        self.assertTrue((yield policy.decide("yes.example")))
        self.assertFalse((yield policy.decide("no.example")))
        self.assertTrue((yield policy.decide("yes.example")))
        self.assertEqual(asked, ["yes.example", "no.example"])

    @inlineCallbacks
    def test_ask_timeout_refuses(self) -> Any:
        """No answer in time is a refusal."""
        url, asked = self.ask_server(set(), hang=True)
        policy = OnDemandPolicy(ask=url, ask_timeout=0.2, clock=reactor)
        self.assertFalse((yield policy.decide("slow.example")))
        self.assertEqual(asked, ["slow.example"])
        # Let the server side of the abandoned request close.
        yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_ask_unreachable_refuses(self) -> Any:
        """An ask URL nobody answers on is a refusal, not an error."""
        from tests.harness.pebble import free_port

        policy = OnDemandPolicy(ask=f"http://127.0.0.1:{free_port()}/ask", clock=reactor)
        self.assertFalse((yield policy.decide("x.example")))


class FakeIssue:
    """``issue(name)`` whose Deferreds the test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[Any]]] = []

    def __call__(self, name: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((name, d))
        return d

    def succeed(self, index: int = 0) -> None:
        name, d = self.calls[index]

        class Issued:
            pem_objects = entry(name)

        d.callback(Issued())


class IssuerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.index = CertificateIndex()
        self.issue = FakeIssue()
        self.policy = OnDemandPolicy(allow=["*.ok.example", "one.example"], clock=self.clock)
        self.issuer = OnDemandIssuer(
            self.policy,
            self.issue,
            self.index,
            rate=3,
            per=60,
            max_pending=10,
            failure_cooldown=300,
            clock=self.clock,
        )

    def test_allowed_name_issued_once(self) -> None:
        """Handshakes for one allowed name share one issuance; then it is served."""
        first = self.issuer.hello_hook(ClientHello("a.ok.example", (b"http/1.1",)))
        second = self.issuer.hello_hook(ClientHello("a.ok.example"))
        assert first is not None and second is not None
        self.assertEqual([n for n, _ in self.issue.calls], ["a.ok.example"])
        self.issue.succeed()
        self.assertTrue(self.successResultOf(first))
        self.assertTrue(self.successResultOf(second))
        self.assertIsNotNone(self.index.find("a.ok.example"))
        self.assertIsNone(self.issuer.hello_hook(ClientHello("a.ok.example")))

    def test_refused_never_issued(self) -> None:
        """Names outside the policy are refused at once and never issued."""
        for name in ("evil.example", "a.b.ok.example", "ok.example"):
            self.assertIsNone(self.issuer.hello_hook(ClientHello(name)))
        self.assertEqual(self.issue.calls, [])
        self.assertEqual(self.issuer.refused, 3)

    def test_ignored_hellos(self) -> None:
        """No SNI, validators, bad names, IPs and wildcards do not trigger issuance."""
        for hello in (
            ClientHello(None),
            ClientHello("v.ok.example", (b"acme-tls/1",)),
            ClientHello("bad_name.ok.example"),
            ClientHello("127.0.0.1"),
            ClientHello("*.ok.example"),
        ):
            self.assertIsNone(self.issuer.hello_hook(hello))
        self.assertEqual(self.issue.calls, [])

    def test_flood_respects_rate(self) -> None:
        """A flood of random allowed names starts at most `rate` issuances per window."""
        for i in range(100):
            self.issuer.hello_hook(ClientHello(f"r{i}-{uuid.uuid4().hex[:6]}.ok.example"))
        self.assertEqual(len(self.issue.calls), 3)
        self.assertEqual(self.issuer.limited, 97)
        self.clock.advance(59)
        self.issuer.hello_hook(ClientHello("late.ok.example"))
        self.assertEqual(len(self.issue.calls), 3)
        self.clock.advance(1)
        self.issuer.hello_hook(ClientHello("later.ok.example"))
        self.assertEqual(len(self.issue.calls), 4)

    def test_max_pending(self) -> None:
        """At most max_pending issuances run at once."""
        issuer = OnDemandIssuer(
            self.policy, self.issue, self.index, rate=100, max_pending=2, clock=self.clock
        )
        for i in range(5):
            issuer.request(f"p{i}.ok.example")
        self.assertEqual(len(self.issue.calls), 2)
        self.issue.succeed(0)
        issuer.request("p9.ok.example")
        self.assertEqual(len(self.issue.calls), 3)

    def test_failure_cooldown(self) -> None:
        """A failed name is not tried again during the cooldown."""
        d = self.issuer.request("f.ok.example")
        self.issue.calls[0][1].errback(RuntimeError("CA said no"))
        self.assertFalse(self.successResultOf(d))
        self.assertFalse(self.successResultOf(self.issuer.request("f.ok.example")))
        self.assertEqual(len(self.issue.calls), 1)
        self.clock.advance(301)
        self.issuer.request("f.ok.example")
        self.assertEqual(len(self.issue.calls), 2)

    def test_rate_limiter(self) -> None:
        """A sliding window."""
        limiter = RateLimiter(2, 10, self.clock)
        self.assertEqual([limiter.try_take() for _ in range(3)], [True, True, False])
        self.clock.advance(10)
        self.assertTrue(limiter.try_take())
        self.assertRaises(ConfigurationError, RateLimiter, 0, 10, self.clock)


class OnDemandPebbleTests(TestCase):
    """On-demand issuance end to end: Pebble validates over tls-alpn-01 on the same port."""

    timeout = 120

    def setUp(self) -> None:
        from tests.harness.pebble import pebble_or_skip

        self.pebble = pebble_or_skip()
        roots = self.mktemp()
        with open(roots, "wb") as f:
            f.write(b"".join(self.pebble.roots()))
        self.roots = roots

    @inlineCallbacks
    def start_server(self, rate: int = 10) -> Any:
        from txacme.challenges.tlsalpn01 import TLSALPN01Responder
        from txacme.issuing.service import AcmeIssuingService
        from txacme.keys import generate_private_key, jwk_for
        from txacme.protocol.client import Client
        from txacme.testing import MemoryStore

        key = jwk_for(generate_private_key())
        clients: list[Client] = []

        def client_creator() -> Deferred[Client]:
            d = Client.from_url(
                reactor, self.pebble.directory_url, key, ca_file=self.pebble.ca_file
            )
            return d.addCallback(lambda c: clients.append(c) or c)

        self.addCleanup(lambda: DeferredList([c.close() for c in clients]))
        index = CertificateIndex()
        responder = TLSALPN01Responder()
        self.store = MemoryStore()
        service = AcmeIssuingService(
            self.store, client_creator, reactor, [responder], on_stored=index.update
        )
        service.startService()
        self.addCleanup(service.stopService)
        policy = OnDemandPolicy(allow=["*.ondemand.test"], clock=reactor)
        self.issuer = OnDemandIssuer(
            policy, service.issue_cert, index, rate=rate, per=3600, clock=reactor
        )
        self.addCleanup(self.issuer.stop)
        creator = SNIConnectionCreator(index, challenges=responder.registry)
        factory = HelloHookFactory(
            creator,
            Factory.forProtocol(Protocol),
            self.issuer.hello_hook,
            timeout=30,
            clock=reactor,
        )
        port = reactor.listenTCP(self.pebble.tls_port, factory, interface="127.0.0.1", backlog=128)
        self.addCleanup(port.stopListening)
        yield succeed(None)

    def verified_handshake(self, name: str) -> x509.Certificate:
        context = ssl.create_default_context(cafile=self.roots)
        with socket.create_connection(("127.0.0.1", self.pebble.tls_port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    @inlineCallbacks
    def test_allowed_refused_and_flood(self) -> Any:
        """
        The first handshake for an allowed name gets a CA-signed certificate;
        a refused name never reaches the CA; a flood of allowed names makes
        no more orders than the rate limit allows.
        """
        from tests.test_cluster import pebble_issued, pebble_order_count

        yield self.start_server(rate=4)
        tag = uuid.uuid4().hex[:8]
        log_start = len(self.pebble.log_text())

        allowed = f"shop-{tag}.ondemand.test"
        started = time.monotonic()
        cert = yield threads.deferToThread(self.verified_handshake, allowed)
        first = time.monotonic() - started
        self.assertEqual(san(cert), [allowed])
        self.assertIn(allowed, self.store.certs)  # stored, so renewed like any name

        refused = f"evil-{tag}.example"
        yield self.assertFailure(
            threads.deferToThread(self.verified_handshake, refused), ssl.SSLError, OSError
        )

        flood = [f"f{i}-{tag}.ondemand.test" for i in range(25)]
        results = yield DeferredList(
            [threads.deferToThread(self.verified_handshake, n) for n in flood],
            consumeErrors=True,
        )
        served = [n for n, (ok, _) in zip(flood, results, strict=True) if ok]
        issued = yield threads.deferToThread(pebble_issued, self.pebble, log_start)
        names = {n for cert_names in issued for n in cert_names}
        self.assertNotIn(refused, names)
        self.assertEqual(pebble_order_count(self.pebble, log_start), 4)
        self.assertEqual(len(issued), 4)
        self.assertEqual(len(served), 3)
        self.assertTrue(set(served) <= names)
        print(f"\nfirst on-demand handshake took {first:.2f} s (issuance included)")
