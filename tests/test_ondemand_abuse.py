"""
On-demand issuance under attack (issue 17): floods of random names against an
ask URL, the cap on names, idle expiry, CA rate limits, public-suffix patterns,
failed names leaving no trace, and the log volume of refused handshakes.
"""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import string
import subprocess
import sys
import time
import uuid
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.harness.logcapture import capture_txacme_lines
from tests.test_ondemand import FakeIssue, client_hello, entry
from txacme.config.endpoint import parse_endpoint_string_parts
from txacme.config.ondemand import OnDemandLimits
from txacme.errors import ConfigurationError, RateLimited
from txacme.issuing.ondemand import (
    DEFAULT_DOMAIN_RATE,
    DEFAULT_RATE,
    LRUCache,
    OnDemandIssuer,
    OnDemandPolicy,
    check_pattern,
    parse_duration,
    parse_rate,
    registered_domain,
)
from txacme.issuing.refusals import MAX_NAME_LENGTH, RefusalLog, safe_name
from txacme.reporting.state import StateFile, StateRecorder
from txacme.serving.hello import ClientHello, HelloHookFactory
from txacme.serving.index import CertificateIndex
from txacme.serving.tls import SNIConnectionCreator


def random_name(suffix: str = "flood.test") -> str:
    label = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(12))
    return f"{label}.{suffix}"


def parse(**keywords: str) -> Any:
    return parse_endpoint_string_parts(
        "acme", "https://ca.test/dir", ["/tmp", "tcp", "443"], keywords
    )


class PatternTests(SynchronousTestCase):
    """Allow-list patterns are checked when the endpoint string is parsed."""

    def test_public_suffixes_refused_at_parse_time(self) -> None:
        for pattern in (
            "*.com",
            "*.co.uk",
            "com",
            "co.uk",
            "*.github.io",
            "*.kawasaki.jp",
            "*.nosuchtld",
        ):
            with self.assertRaises(ConfigurationError) as caught:
                parse(on_demand=pattern)
            message = str(caught.exception)
            self.assertNotIn("\n", message)
            self.assertIn(repr(pattern), message)
            self.assertIn("public suffix", message)

    def test_patterns_that_never_match_refused(self) -> None:
        for pattern in (
            "*.*.example.com",
            "a.*.example.com",
            "*",
            "*.",
            "a..example.com",
            "*..example.com",
            "bad_name.example.com",
            "ex ample.com",
            "*.exa/mple.com",
        ):
            with self.assertRaises(ConfigurationError) as caught:
                parse(on_demand=pattern)
            self.assertNotIn("\n", str(caught.exception))

    def test_good_patterns_accepted(self) -> None:
        config = parse(on_demand="*.example.com,*.shop.example.co.uk,example.org,a.github.io")
        self.assertEqual(len(config.on_demand), 4)
        self.assertEqual(check_pattern("*.Example.COM"), "*.example.com")

    def test_registered_domain(self) -> None:
        self.assertEqual(registered_domain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(registered_domain("x.example.com"), "example.com")
        self.assertEqual(registered_domain("user.github.io"), "user.github.io")


class KeywordTests(SynchronousTestCase):
    """The on_demand_* keywords: defaults below the CA's limits, and one-line errors."""

    def test_defaults_below_lets_encrypt_limits(self) -> None:
        config = parse(on_demand="*.example.com")
        limits = config.on_demand_limits
        self.assertEqual(limits, OnDemandLimits())
        count, per = limits.rate
        # Let's Encrypt: 300 new orders per account per 3 hours.
        self.assertLess(count * (3 * 3600 / per), 300)
        count, per = limits.domain_rate
        # Let's Encrypt: 50 certificates per registered domain per week.
        self.assertLess(count * (7 * 86400 / per), 50)
        self.assertEqual(limits.max_names, 100)
        self.assertEqual(limits.idle, 30 * 86400)
        self.assertEqual((DEFAULT_RATE, DEFAULT_DOMAIN_RATE), ((50, 3600.0), (20, 604800.0)))

    def test_keywords(self) -> None:
        config = parse(
            on_demand="*.example.com",
            on_demand_rate="30/3h",
            on_demand_domain_rate="10/w",
            on_demand_max="500",
            on_demand_idle="7d",
            on_demand_ask_rate="3",
            on_demand_ask_concurrency="2",
        )
        limits = config.on_demand_limits
        self.assertEqual(limits.rate, (30, 3 * 3600.0))
        self.assertEqual(limits.domain_rate, (10, 7 * 86400.0))
        self.assertEqual((limits.max_names, limits.idle), (500, 7 * 86400.0))
        self.assertEqual((limits.ask_rate, limits.ask_concurrency), (3, 2))
        # A bare number keeps its old meaning: a minute.
        self.assertEqual(
            parse(on_demand="a.example.com", on_demand_rate="5").on_demand_limits.rate, (5, 60.0)
        )

    def test_bad_keywords(self) -> None:
        for keyword, value in [
            ("on_demand_rate", "fast"),
            ("on_demand_rate", "0/h"),
            ("on_demand_rate", "5/fortnight"),
            ("on_demand_idle", "soon"),
            ("on_demand_idle", "-1d"),
            ("on_demand_max", "0"),
            ("on_demand_max", "many"),
            ("on_demand_ask_rate", "1.5"),
            ("on_demand_domain_rate", "x/w"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                parse(on_demand="a.example.com", **{keyword: value})
            self.assertIn(keyword, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_parsers(self) -> None:
        self.assertEqual(parse_duration("x", "90m"), 5400.0)
        self.assertEqual(parse_duration("x", "45"), 45.0)
        self.assertEqual(parse_rate("x", "50/h"), (50, 3600.0))
        self.assertEqual(parse_rate("x", "7", bare_unit="w"), (7, 604800.0))


class CacheTests(SynchronousTestCase):
    def test_lru(self) -> None:
        cache: LRUCache[str, int] = LRUCache(3)
        for i, key in enumerate("abc"):
            cache.put(key, i)
        self.assertEqual(cache.get("a"), 0)  # now the most recent
        cache.put("d", 3)
        self.assertIsNone(cache.get("b"))
        self.assertEqual(len(cache), 3)
        self.assertEqual([cache.get(k) for k in "acd"], [0, 2, 3])

    def test_answers_bounded_and_refusals_never_evict_allowed(self) -> None:
        """40,000 refused names keep the caches at their size; the allowed answer stays."""
        clock = Clock()
        asked: list[str] = []

        def http_get(url: str) -> Deferred[int]:
            asked.append(url)
            return succeed(200 if "good.example" in url else 403)

        policy = OnDemandPolicy(
            ask="http://127.0.0.1/ask",
            ask_rate=1000,
            cache_size=1000,
            http_get=http_get,
            clock=clock,
        )
        self.assertTrue(self.successResultOf(policy.decide("good.example")))
        started = time.perf_counter()
        for i in range(40):
            for j in range(1000):
                policy.decide(f"n{i}-{j}.example")
            clock.advance(1)
        elapsed = time.perf_counter() - started
        self.assertEqual(len(policy._refused), 1000)
        self.assertEqual(len(policy._allowed), 1)
        count = len(asked)
        self.assertTrue(self.successResultOf(policy.decide("good.example")))
        self.assertEqual(len(asked), count)  # answered from the cache
        print(f"\n40,000 refused answers cached in {elapsed * 1e6 / 40000:.1f} us each")


class AskLimitTests(SynchronousTestCase):
    def test_limits_apply_before_asking(self) -> None:
        """Beyond the concurrency and the rate, unknown names are refused without an ask."""
        clock = Clock()
        waiting: list[Deferred[int]] = []

        def http_get(url: str) -> Deferred[int]:
            d: Deferred[int] = Deferred()
            waiting.append(d)
            return d

        policy = OnDemandPolicy(
            ask="http://127.0.0.1/ask",
            ask_rate=5,
            ask_concurrency=3,
            http_get=http_get,
            clock=clock,
        )
        results = [policy.decide(random_name()) for _ in range(100)]
        self.assertEqual(len(waiting), 3)
        self.assertEqual(policy.ask_limited, 97)
        self.assertFalse(any(self.successResultOf(d) for d in results[3:]))
        for d in waiting:
            d.callback(403)
        # The rate: 2 more this second (5 per second), then 5 in the next.
        for _ in range(20):
            policy.decide(random_name())
            if waiting[-1].called is False:
                waiting[-1].callback(403)
        self.assertEqual(policy.asked, 5)
        clock.advance(1)
        for _ in range(20):
            policy.decide(random_name())
            if waiting[-1].called is False:
                waiting[-1].callback(403)
        self.assertEqual(policy.asked, 10)


class IssuerLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.index = CertificateIndex()
        self.issue = FakeIssue()
        self.policy = OnDemandPolicy(allow=["*.ok.example", "*.other.example"], clock=self.clock)
        self.removed: list[str] = []
        self.forgotten: list[str] = []
        self.registry = self.mktemp()

    def issuer(self, **options: Any) -> OnDemandIssuer:
        arguments: dict[str, Any] = dict(
            rate=1000,
            per=3600,
            max_pending=100,
            registry=self.registry,
            remove=self.remove,
            forget=[self.forgotten.append],
            clock=self.clock,
        )
        arguments.update(options)
        return OnDemandIssuer(self.policy, self.issue, self.index, **arguments)

    def remove(self, name: str) -> Deferred[None]:
        self.removed.append(name)
        self.index.remove(name)
        return succeed(None)

    def test_cap_on_names(self) -> None:
        """At most max_names names issued on demand are held; the next is not ordered."""
        issuer = self.issuer(max_names=3)
        for i in range(3):
            issuer.request(f"n{i}.ok.example")
            self.issue.succeed(i)
        self.assertEqual(len(issuer.held), 3)
        self.assertFalse(self.successResultOf(issuer.request("n3.ok.example")))
        self.assertEqual(len(self.issue.calls), 3)
        self.assertEqual(issuer.limited, 1)

    def test_idle_names_removed_and_not_renewed(self) -> None:
        """No handshake for `idle` seconds: removed from the store and forgotten."""
        issuer = self.issuer(idle=30 * 86400)
        issuer.start()
        for name in ("busy.ok.example", "idle.ok.example"):
            issuer.request(name)
        self.issue.succeed(0)
        self.issue.succeed(1)
        for _ in range(24 * 40):  # 40 days, a handshake for busy every hour
            self.clock.advance(3600)
            issuer.hello_hook(ClientHello("busy.ok.example"))
        self.assertEqual(self.removed, ["idle.ok.example"])
        self.assertIn("idle.ok.example", self.forgotten)
        self.assertEqual(set(issuer.held), {"busy.ok.example"})
        self.assertIsNone(self.index.find("idle.ok.example"))
        self.assertIsNotNone(self.index.find("busy.ok.example"))
        # The registry on disk holds the same, and a restart reads it.
        issuer.stop()
        with open(self.registry) as f:
            self.assertEqual(set(json.load(f)["names"]), {"busy.ok.example"})
        again = self.issuer(idle=30 * 86400)
        self.assertEqual(set(again.held), {"busy.ok.example"})
        self.assertEqual(issuer.expired, 1)

    def test_restart_keeps_cap(self) -> None:
        first = self.issuer(max_names=2)
        first.request("a.ok.example")
        first.request("b.ok.example")
        self.issue.succeed(0)
        self.issue.succeed(1)
        second = self.issuer(max_names=2)
        self.assertFalse(self.successResultOf(second.request("c.ok.example")))
        self.assertEqual(len(self.issue.calls), 2)

    def test_failed_names_leave_no_trace(self) -> None:
        issuer = self.issuer()
        d = issuer.request("bad.ok.example")
        self.issue.calls[0][1].errback(RuntimeError("no"))
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(self.forgotten, ["bad.ok.example"])
        self.assertNotIn("bad.ok.example", issuer.held)
        self.assertFalse(os.path.exists(self.registry))

    def test_rate_limited_pauses_every_order(self) -> None:
        """A rateLimited answer for one name holds back every on-demand order."""
        issuer = self.issuer()
        issuer.request("a.ok.example")
        self.issue.calls[0][1].errback(RateLimited(detail="too many", retry_after=600))
        for name in ("b.ok.example", "c.other.example"):
            self.assertFalse(self.successResultOf(issuer.request(name)))
        self.assertEqual(len(self.issue.calls), 1)
        self.clock.advance(601)
        issuer.request("b.ok.example")
        self.assertEqual(len(self.issue.calls), 2)

    def test_domain_rate(self) -> None:
        issuer = self.issuer(domain_rate=2, domain_per=7 * 86400)
        for name in ("a.ok.example", "b.ok.example", "c.ok.example", "a.other.example"):
            issuer.request(name)
        self.assertEqual(
            [n for n, _ in self.issue.calls], ["a.ok.example", "b.ok.example", "a.other.example"]
        )

    def test_default_rate_per_three_hours(self) -> None:
        """The default issues at most 150 in 3 hours, under Let's Encrypt's 300 orders."""
        issuer = OnDemandIssuer(
            self.policy,
            self.issue,
            self.index,
            max_pending=10**6,
            max_names=10**6,
            domain_rate=10**6,
            clock=self.clock,
        )
        for _minute in range(180):
            for _i in range(20):
                issuer.request(f"{uuid.uuid4().hex[:10]}.ok.example")
            self.clock.advance(60)
        self.assertEqual(len(self.issue.calls), 150)


class StateForgetTests(SynchronousTestCase):
    def test_state_file_forgets(self) -> None:
        """A failed on-demand name's record is removed from the state file."""
        from datetime import datetime, timezone

        from twisted.python.failure import Failure

        from txacme.issuing.events import Failed, Obtaining

        directory = self.mktemp()
        os.mkdir(directory)
        state = StateFile.for_directory(directory)
        clock = Clock()
        recorder = StateRecorder(state, clock)
        state.record_attempt("kept.example", datetime.now(timezone.utc))
        recorder(Obtaining("gone.example", ("gone.example",), "missing", 1, None))
        clock.advance(0)
        self.assertIn("gone.example", state.read())
        recorder(Failed("gone.example", "urn:x", "no", 1, None, Failure(RuntimeError("no"))))
        recorder.forget("gone.example")
        clock.advance(0)
        self.assertEqual(set(state.read()), {"kept.example"})


class LogVolumeTests(SynchronousTestCase):
    def test_ten_thousand_refusals(self) -> None:
        """10,000 refused handshakes with 250-byte hostile names over 10 minutes: 10 lines."""
        lines = capture_txacme_lines(self)
        clock = Clock()
        refusals = RefusalLog(clock, interval=60)
        hostile = b"\x1b[31m" + b"\x00\n\r\xff" * 20 + b"a" * 160
        for i in range(10_000):
            refusals.refused("unknown_name", hostile + str(i).encode())
            clock.advance(0.06)
        refusals.stop()
        size = sum(len(line.encode()) + 1 for line in lines)
        self.assertLessEqual(len(lines), 11)
        self.assertLess(size, 11 * 700)
        self.assertEqual(refusals.counts["unknown_name"], 10_000)
        for line in lines:
            self.assertTrue(line.isprintable())
            self.assertNotIn("\x1b", line)
        print(f"\n10,000 refusals: {len(lines)} log lines, {size} bytes")

    def test_safe_name(self) -> None:
        self.assertEqual(safe_name(b"a\x00b\n"), "a\\x00b\\x0a")
        self.assertEqual(len(safe_name("x" * 300)), MAX_NAME_LENGTH)
        self.assertEqual(safe_name(None), "(none)")
        self.assertEqual(safe_name("caf\u00e9\u2028"), "caf\\xe9\\u2028")


class _Hello(Protocol):
    """Sends a ClientHello and goes when the server answers or closes."""

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(self.factory.hello)  # type: ignore[attr-defined]
        self.timer = reactor.callLater(5, self.transport.abortConnection)  # type: ignore

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self.timer.active():
            self.timer.cancel()
        self.factory.done.callback(None)  # type: ignore[attr-defined]


class _HelloFactory(ClientFactory):
    protocol = _Hello

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.done: Deferred[None] = Deferred()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        self.done.callback(None)


FLOOD_NAMES = r"""
import json, random, socket, ssl, string, sys, threading, time
port, count = int(sys.argv[1]), int(sys.argv[2])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
lock = threading.Lock()
state = {"next": 0, "sent": 0}

def hello(name):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()

def worker():
    while True:
        with lock:
            if state["next"] >= count:
                return
            state["next"] += 1
        label = "".join(random.choices(string.ascii_lowercase + string.digits, k=12))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(hello(label + ".flood.test"))
            try:
                s.recv(4096)  # the server's alert, once it decided
            except OSError:
                pass
        with lock:
            state["sent"] += 1

started = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(50)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"sent": state["sent"], "seconds": time.monotonic() - started}))
"""


class FloodTests(TestCase):
    """A real ask server and real ClientHellos on loopback."""

    timeout = 300

    def ask_server(self) -> tuple[str, dict[str, int]]:
        seen = {"asks": 0, "running": 0, "most": 0}

        class Ask(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> Any:
                seen["asks"] += 1
                seen["running"] += 1
                seen["most"] = max(seen["most"], seen["running"])

                def answer() -> None:
                    seen["running"] -= 1
                    request.setResponseCode(403)
                    request.finish()

                reactor.callLater(0.05, answer)
                return NOT_DONE_YET

        port = reactor.listenTCP(0, Site(Ask()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/ask", seen

    @inlineCallbacks
    def test_flood_of_random_names(self) -> Any:
        """
        2,000 ClientHellos with random names: the ask URL sees a bounded number
        of requests, and handshakes for a known name stay fast.
        """
        url, seen = self.ask_server()
        index = CertificateIndex()
        known = "known.flood.test"
        index.update(known, entry(known))
        policy = OnDemandPolicy(ask=url, ask_rate=10, ask_concurrency=10, clock=reactor)
        refusals = RefusalLog(reactor)
        issuer = OnDemandIssuer(
            policy,
            lambda name: fail(RuntimeError("never")),
            index,
            refusals=refusals,
            clock=reactor,
        )
        self.addCleanup(issuer.stop)
        creator = SNIConnectionCreator(index)
        creator.refusals = refusals
        factory = HelloHookFactory(
            creator, Factory.forProtocol(Protocol), issuer.hello_hook, timeout=5, clock=reactor
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
        self.addCleanup(port.stopListening)
        address = port.getHost().port

        latencies: list[float] = []
        stop = [False]

        def known_handshakes() -> None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            while not stop[0] or len(latencies) < 5:
                started = time.monotonic()
                with socket.create_connection(("127.0.0.1", address), timeout=30) as raw:
                    with context.wrap_socket(raw, server_hostname=known):
                        pass
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

        stop[0] = True
        yield threads.deferToThread(known_handshakes)
        quiet = sorted(latencies)
        latencies.clear()
        stop[0] = False
        measuring = threads.deferToThread(known_handshakes)
        started = time.monotonic()
        # The flood comes from another process, as an attacker's would.
        result = yield threads.deferToThread(
            subprocess.run,
            [sys.executable, "-c", FLOOD_NAMES, str(address), "2000"],
            capture_output=True,
            text=True,
            timeout=240,
        )
        flood_seconds = time.monotonic() - started
        report = json.loads(result.stdout)
        self.assertEqual(report["sent"], 2000, result.stderr)
        stop[0] = True
        yield measuring
        yield deferLater(reactor, 0.2, lambda: None)
        latencies.sort()
        print(
            f"\nflood of 2,000 random names in {flood_seconds:.1f} s: {seen['asks']} asks "
            f"(at most {seen['most']} at once), {policy.ask_limited} refused without asking; "
            f"known name quiet: median {quiet[len(quiet) // 2] * 1000:.1f} ms, max "
            f"{quiet[-1] * 1000:.1f} ms; {len(latencies)} handshakes for it during the flood: "
            "median "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
        # At most 10 asks a second and 10 at once, whatever the flood.
        self.assertLessEqual(seen["asks"], 10 * (int(flood_seconds) + 2))
        self.assertLessEqual(seen["most"], 10)
        self.assertEqual(policy.asked, seen["asks"])
        self.assertEqual(policy.asked + policy.ask_limited, 2000)
        self.assertEqual(refusals.counts["on_demand_refused"], policy.asked)
        self.assertEqual(refusals.counts["on_demand_limited"], policy.ask_limited)
        self.assertEqual(issuer.limited, policy.ask_limited)
        self.assertLess(latencies[-1], 2.0)


class OnDemandCapPebbleTests(TestCase):
    """The cap and idle expiry against Pebble, with a directory store."""

    timeout = 180

    def setUp(self) -> None:
        from tests.harness.pebble import pebble_or_skip

        self.pebble = pebble_or_skip()

    @inlineCallbacks
    def test_cap_and_idle_expiry(self) -> Any:
        from twisted.internet.defer import DeferredList

        from tests.test_cluster import pebble_order_count
        from txacme.challenges.tlsalpn01 import TLSALPN01Responder
        from txacme.issuing.service import AcmeIssuingService
        from txacme.keys import generate_private_key, jwk_for
        from txacme.protocol.client import Client
        from txacme.serving.ondemand import make_on_demand_issuer
        from txacme.stores.directory import DirectoryStore

        key = jwk_for(generate_private_key())
        clients: list[Client] = []

        def client_creator() -> Deferred[Client]:
            d = Client.from_url(
                reactor, self.pebble.directory_url, key, ca_file=self.pebble.ca_file
            )
            return d.addCallback(lambda c: clients.append(c) or c)

        self.addCleanup(lambda: DeferredList([c.close() for c in clients]))
        directory = self.mktemp()
        os.mkdir(directory)
        store = DirectoryStore(directory)
        index = CertificateIndex()
        responder = TLSALPN01Responder()
        service = AcmeIssuingService(
            store, client_creator, reactor, [responder], on_stored=index.update
        )
        service.startService()
        self.addCleanup(service.stopService)
        policy = OnDemandPolicy(allow=["*.ondemand.test"], clock=reactor)
        issuer = make_on_demand_issuer(
            policy,
            service.issue_cert,
            index,
            store,
            options={"max_names": 1, "idle": 3.0, "rate": 10, "per": 60.0},
            refusals=RefusalLog(reactor),
            metrics=None,
            state=None,
            clock=reactor,
        )
        issuer.start()
        self.addCleanup(issuer.stop)
        creator = SNIConnectionCreator(index, challenges=responder.registry)
        factory = HelloHookFactory(
            creator, Factory.forProtocol(Protocol), issuer.hello_hook, timeout=30, clock=reactor
        )
        port = reactor.listenTCP(self.pebble.tls_port, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        tag = uuid.uuid4().hex[:8]
        first, second = f"one-{tag}.ondemand.test", f"two-{tag}.ondemand.test"
        since = len(self.pebble.log_text())
        served = yield issuer.request(first)
        self.assertTrue(served)
        self.assertTrue(os.path.exists(os.path.join(directory, first + ".pem")))
        orders = pebble_order_count(self.pebble, since)
        # The cap: a second allowed name is not ordered.
        self.assertFalse((yield issuer.request(second)))
        self.assertEqual(pebble_order_count(self.pebble, since), orders)
        with open(os.path.join(directory, ".txacme-ondemand.json")) as f:
            self.assertEqual(list(json.load(f)["names"]), [first])
        # Idle for 3 s: removed from the directory and the index.
        for _ in range(100):
            yield deferLater(reactor, 0.1, lambda: None)
            if not os.path.exists(os.path.join(directory, first + ".pem")):
                break
        self.assertFalse(os.path.exists(os.path.join(directory, first + ".pem")))
        self.assertIsNone(index.find(first))
        self.assertEqual(issuer.held, {})
        # Room again: the second name is issued now.
        self.assertTrue((yield issuer.request(second)))
        print(
            f"\nPebble: cap held ({orders} order(s) for the first name, none for the "
            f"second), idle name removed after 3 s"
        )


class RefusalMetricsTests(SynchronousTestCase):
    def test_counted_without_names(self) -> None:
        """Refusals are counted by reason; the names never become labels."""
        try:
            from prometheus_client import generate_latest
        except ImportError:
            raise SkipTest("prometheus-client is not installed")
        from txacme.reporting.metrics import Metrics

        clock = Clock()
        metrics = Metrics(clock=clock)
        refusals = RefusalLog(clock)
        stop = metrics.observe_refusals(refusals)
        for i in range(1000):
            refusals.refused("unknown_name", f"n{i}.example")
        refusals.refused("on_demand_limited", "x.example")
        text = generate_latest(metrics.registry).decode()
        self.assertIn('txacme_handshakes_refused_total{reason="unknown_name"} 1000.0', text)
        self.assertIn('txacme_handshakes_refused_total{reason="on_demand_limited"} 1.0', text)
        self.assertNotIn("n1.example", text)
        stop()
        refusals.stop()


class RefusedHandshakeLogTests(TestCase):
    """Real ClientHellos with hostile names against the TLS layer: counted, one line."""

    timeout = 120

    @inlineCallbacks
    def test_refused_handshakes_logged_in_aggregate(self) -> Any:
        from txacme.serving.tls import tls_server_factory

        lines = capture_txacme_lines(self)
        refusals = RefusalLog(reactor, interval=60)
        creator = SNIConnectionCreator(CertificateIndex())
        creator.refusals = refusals
        port = reactor.listenTCP(
            0, tls_server_factory(creator, Factory.forProtocol(Protocol)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        address = port.getHost().port
        label = "x" * 60
        count = 1000
        for wave in range(0, count, 200):
            factories = [
                _HelloFactory(client_hello(f"{i}{label}.{label}.{label}.evil".encode()))
                for i in range(wave, wave + 200)
            ]
            for f in factories:
                reactor.connectTCP("127.0.0.1", address, f)
            for f in factories:
                yield f.done
        self.assertEqual(lines, [])  # nothing until the interval ends
        refusals.stop()
        self.assertEqual(refusals.counts["unknown_name"], count)
        self.assertEqual(len(lines), 1)
        self.assertIn(f"refused {count} handshakes", lines[0])
        self.assertLess(len(lines[0]), 600)
        print(f"\n{count} refused handshakes (250-byte names): 1 line of {len(lines[0])} bytes")


class EndpointStringPebbleTests(TestCase):
    """The keywords through a real ``acme:`` endpoint, Pebble and the metrics port."""

    timeout = 180

    def setUp(self) -> None:
        from tests.harness.pebble import pebble_or_skip

        self.pebble = pebble_or_skip()
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise SkipTest("prometheus-client is not installed")

    def handshake(self, name: str) -> bool:
        context = ssl.create_default_context(cafile=self.roots)
        try:
            with socket.create_connection(("127.0.0.1", self.pebble.tls_port), timeout=30) as raw:
                with context.wrap_socket(raw, server_hostname=name):
                    return True
        except (ssl.SSLError, OSError):
            return False

    @inlineCallbacks
    def test_cap_refusals_and_metrics(self) -> Any:
        from tests.test_endpoint_pebble import scrape, site
        from txacme.config.endpoint import endpoint_from_config

        certs = self.mktemp()
        os.mkdir(certs)
        self.roots = os.path.join(certs, "..", "roots.pem")
        with open(self.roots, "wb") as f:
            f.write(b"".join(self.pebble.roots()))
        config = parse_endpoint_string_parts(
            "acme",
            self.pebble.directory_url,
            [certs, "tcp", str(self.pebble.tls_port)],
            {
                "interface": "127.0.0.1",
                "ca_file": self.pebble.ca_file,
                "on_demand": "*.ondemand.test",
                "on_demand_max": "1",
                "on_demand_rate": "5/h",
                "metrics": "tcp:0:interface=127.0.0.1",
            },
        )
        endpoint = endpoint_from_config(reactor, config)
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        tag = uuid.uuid4().hex[:8]
        first, second = f"a-{tag}.ondemand.test", f"b-{tag}.ondemand.test"
        self.assertTrue((yield threads.deferToThread(self.handshake, first)))
        self.assertTrue(os.path.exists(os.path.join(certs, first + ".pem")))
        with open(os.path.join(certs, ".txacme-ondemand.json")) as f:
            self.assertEqual(list(json.load(f)["names"]), [first])
        self.assertFalse((yield threads.deferToThread(self.handshake, second)))  # the cap
        self.assertFalse((yield threads.deferToThread(self.handshake, f"evil-{tag}.example")))
        self.assertFalse(os.path.exists(os.path.join(certs, second + ".pem")))
        assert endpoint.metrics_port is not None
        address = endpoint.metrics_port.getHost().port
        body = yield threads.deferToThread(scrape, f"http://127.0.0.1:{address}/metrics")
        self.assertIn('txacme_handshakes_refused_total{reason="on_demand_limited"} 1.0', body)
        self.assertIn('txacme_handshakes_refused_total{reason="on_demand_refused"} 1.0', body)
        self.assertIn('txacme_handshakes_refused_total{reason="unknown_name"} 2.0', body)
        self.assertNotIn(f"evil-{tag}", body)


class SharedStoreTests(SynchronousTestCase):
    def test_shared_store_never_loses_entries_to_one_process(self) -> None:
        """With a coordinating store, idle names are forgotten here, not removed from the store."""
        from txacme.serving.ondemand import make_on_demand_issuer
        from txacme.stores.memory import MemoryCoordinatingStore

        clock = Clock()
        store = MemoryCoordinatingStore(clock=clock)
        issue = FakeIssue()
        forgotten: list[str] = []
        issuer = make_on_demand_issuer(
            OnDemandPolicy(allow=["*.ok.example"], clock=clock),
            issue,
            CertificateIndex(),
            store,
            options={"idle": 100.0},
            refusals=RefusalLog(clock),
            metrics=None,
            state=None,
            clock=clock,
        )
        issuer.forget.append(forgotten.append)
        self.assertIsNone(issuer.registry)
        store.store("a.ok.example", entry("a.ok.example"))
        issuer.request("a.ok.example")
        issue.succeed(0)
        issuer.start()
        clock.advance(200)
        self.assertEqual(issuer.held, {})
        self.assertEqual(forgotten, [])
        self.assertIn("a.ok.example", store.certs)
        issuer.stop()
