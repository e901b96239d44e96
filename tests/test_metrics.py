"""
txacme.reporting.metrics: the issuing service's events as Prometheus metrics, scraped
over HTTP after real issuance against Pebble, and fed by a fake issuer through
the real service.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pem
import treq
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from tests.harness.pebble import pebble_or_skip
from txacme.challenges.http01 import HTTP01Responder, http01_root
from txacme.errors import ConfigurationError, IssuanceFailed, RateLimited
from txacme.issuing.events import Failed, ServiceEvent
from txacme.issuing.service import AcmeIssuingService
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client
from txacme.stores.directory import DirectoryStore
from txacme.testing import FakeClient, FakeIssuer, MemoryStore, make_pem_objects

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - the metrics extra is not installed
    text_string_to_metric_families = None

from txacme.reporting.metrics import Metrics, serve_metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def value(scraped: dict[Any, float], metric: str, /, **labels: str) -> float | None:
    """One sample's value, or ``None`` when there is no such sample."""
    return scraped.get((metric, tuple(sorted(labels.items()))))


async def scrape(url: str, accept: bytes | None = None) -> tuple[bytes, bytes]:
    """GET ``url``: (content type, body)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    headers = {b"accept": [accept]} if accept else None
    response = await treq.get(url, headers=headers, pool=pool)
    body = await treq.content(response)
    [content_type] = response.headers.getRawHeaders(b"content-type")
    return content_type, body


class NamedSilence:
    """An http-01 responder that never answers for one name (so it fails)."""

    def __init__(self, inner: HTTP01Responder, silent: str) -> None:
        self.inner = inner
        self.silent = silent
        self.challenge_type = inner.challenge_type

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        if server_name != self.silent:
            self.inner.start_responding(server_name, challenge, response)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        self.inner.stop_responding(server_name, challenge, response)


class MetricsPebbleTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if text_string_to_metric_families is None:
            raise SkipTest("prometheus-client is not installed")
        self.pebble = pebble_or_skip()
        self.http = HTTP01Responder()
        port = reactor.listenTCP(
            self.pebble.http_port, Site(http01_root(self.http)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)

    def test_scrape_after_issuance(self) -> Deferred[None]:
        """
        After the start-up check of a directory holding one valid certificate,
        one empty entry Pebble validates and one it cannot, the scraped
        metrics tell each name's expiry, renewal plan and failures, and count
        the attempts, the outcome and the emergency.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        store = DirectoryStore(directory)
        now = datetime.now(timezone.utc)
        held = make_pem_objects(
            ["held.metrics.example"], now - timedelta(days=1), now + timedelta(days=89)
        )
        with open(os.path.join(directory, "held.metrics.example.pem"), "wb") as f:
            f.write(b"".join(o.as_bytes() for o in held))
        for name in ("new.metrics.example", "fail.metrics.example"):
            with open(os.path.join(directory, name + ".pem"), "wb"):
                pass
        clients: list[Client] = []
        key = jwk_for(generate_private_key())

        def keep(client: Client) -> Client:
            clients.append(client)
            return client

        def client_creator() -> Deferred[Client]:
            d = Client.from_url(
                reactor, self.pebble.directory_url, key, ca_file=self.pebble.ca_file
            )
            return d.addCallback(keep)

        service = AcmeIssuingService(
            store, client_creator, reactor, [NamedSilence(self.http, "fail.metrics.example")]
        )
        events: list[ServiceEvent] = []
        service.subscribe(events.append)

        async def run() -> None:
            port = await serve_metrics(reactor, "tcp:0:interface=127.0.0.1", service, store=store)
            try:
                service.startService()
                try:
                    await service.when_certs_valid()
                finally:
                    await service.stopService()
                    for client in clients:
                        await client.close()
                url = f"http://127.0.0.1:{port.getHost().port}/metrics"
                content_type, body = await scrape(url)
                open_type, open_body = await scrape(
                    url, b"application/openmetrics-text; version=1.0.0"
                )
            finally:
                await port.stopListening()
            self.assertTrue(content_type.startswith(b"text/plain"), content_type)
            self.assertTrue(open_type.startswith(b"application/openmetrics-text"), open_type)
            self.assertTrue(open_body.endswith(b"# EOF\n"))
            got = samples(body.decode("utf-8"))

            issued = pem.parse_file(os.path.join(directory, "new.metrics.example.pem"))
            cert = x509.load_pem_x509_certificate(issued[1].as_bytes())
            not_after = cert.not_valid_after_utc
            lifetime = not_after - cert.not_valid_before_utc
            held_cert = x509.load_pem_x509_certificate(held[1].as_bytes())

            expiry = "txacme_certificate_not_after_timestamp_seconds"
            self.assertEqual(value(got, expiry, name="new.metrics.example"), not_after.timestamp())
            self.assertEqual(
                value(got, expiry, name="held.metrics.example"),
                held_cert.not_valid_after_utc.timestamp(),
            )
            self.assertEqual(value(got, expiry, name="fail.metrics.example"), 0.0)

            renewal = "txacme_certificate_renewal_timestamp_seconds"
            expected = (not_after - lifetime / 3).timestamp()
            got_renewal = value(got, renewal, name="new.metrics.example")
            assert got_renewal is not None
            self.assertAlmostEqual(got_renewal, expected, delta=1)
            reason = "txacme_certificate_renewal_reason"
            self.assertEqual(value(got, reason, name="new.metrics.example", reason="lifetime"), 1)
            self.assertIsNone(value(got, reason, name="new.metrics.example", reason="missing"))
            self.assertEqual(value(got, reason, name="held.metrics.example", reason="lifetime"), 1)

            [failed] = [e for e in events if isinstance(e, Failed)]
            code = failed.problem.rsplit(":", 1)[-1]
            self.assertEqual(value(got, "txacme_issuance_attempts_total", reason="missing"), 2)
            self.assertEqual(value(got, "txacme_issuance_successes_total"), 1)
            self.assertEqual(value(got, "txacme_issuance_failures_total", problem=code), 1)
            self.assertEqual(value(got, "txacme_issuance_emergencies_total"), 1)
            self.assertEqual(
                value(got, "txacme_certificate_failures", name="fail.metrics.example"), 1
            )
            self.assertEqual(
                value(got, "txacme_certificate_failures", name="new.metrics.example"), 0
            )
            duration = "txacme_issuance_duration_seconds_count"
            self.assertEqual(value(got, duration, outcome="success"), 1)
            self.assertEqual(value(got, duration, outcome="failure"), 1)

        return Deferred.fromCoroutine(run())


class MetricsServiceTests(TestCase):
    """The real service with a fake issuer and a fake clock."""

    def setUp(self) -> None:
        if text_string_to_metric_families is None:
            raise SkipTest("prometheus-client is not installed")
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore({"a.example": [], "b.example": []})
        self.issuer = FakeIssuer(self.clock.seconds)
        self.service = AcmeIssuingService(
            self.store, None, self.clock, [], client=FakeClient(), issue=self.issuer
        )
        self.metrics = Metrics(clock=self.clock)
        self.detach = self.metrics.attach(self.service)

    def scraped(self) -> dict[Any, float]:
        from prometheus_client import generate_latest

        return samples(generate_latest(self.metrics.registry).decode("utf-8"))

    def test_events(self) -> None:
        """Attempts, outcomes, failure durations, rate limits and backoff show up."""
        self.service.startService()
        a, b = sorted(self.issuer.calls, key=lambda c: c.names)
        self.clock.advance(7)
        a.succeed()
        b.fail(
            IssuanceFailed(
                "nope",
                RateLimited(
                    "urn:ietf:params:acme:error:rateLimited", "slow down", retry_after=3600
                ),
            )
        )
        got = self.scraped()
        self.assertEqual(value(got, "txacme_issuance_attempts_total", reason="missing"), 2)
        self.assertEqual(value(got, "txacme_issuance_failures_total", problem="rateLimited"), 1)
        self.assertEqual(value(got, "txacme_issuance_duration_seconds_count", outcome="failure"), 1)
        self.assertEqual(value(got, "txacme_issuance_duration_seconds_sum", outcome="failure"), 7)
        self.assertEqual(value(got, "txacme_certificate_failures", name="b.example"), 1)
        retry = value(got, "txacme_certificate_renewal_timestamp_seconds", name="b.example")
        assert retry is not None
        self.assertGreaterEqual(retry, self.clock.seconds() + 3600)
        expiry = value(got, "txacme_certificate_not_after_timestamp_seconds", name="a.example")
        self.assertEqual(expiry, self.clock.seconds() + 90 * 86400)
        self.detach()
        self.service.stopService()
        before = self.scraped()
        self.service.startService()
        self.assertEqual(
            value(self.scraped(), "txacme_issuance_attempts_total", reason="missing"),
            value(before, "txacme_issuance_attempts_total", reason="missing"),
        )
        self.service.stopService()

    def test_exchanges_and_forget(self) -> None:
        """ACME exchanges are counted by resource and status; forget drops a name."""

        class Exchange:
            def __init__(self, endpoint: str, status: int | None) -> None:
                self.endpoint, self.method, self.status = endpoint, "POST", status

        self.metrics.observe_exchange(Exchange("newOrder", 201))
        self.metrics.observe_exchange(Exchange("newOrder", 201))
        self.metrics.observe_exchange(Exchange("finalize", None))
        got = self.scraped()
        name = "txacme_acme_requests_total"
        self.assertEqual(value(got, name, endpoint="newOrder", method="POST", status="201"), 2)
        self.assertEqual(value(got, name, endpoint="finalize", method="POST", status="error"), 1)

        self.service.startService()
        self.assertIsNotNone(
            value(self.scraped(), "txacme_certificate_renewal_timestamp_seconds", name="a.example")
        )
        self.metrics.forget("a.example")
        self.assertFalse([k for k in self.scraped() if ("name", "a.example") in k[1]])
        self.service.stopService()

    def test_observe_store(self) -> None:
        """Reading a store sets expiries and forgets names that left it."""
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        store = MemoryStore(
            {"c.example": make_pem_objects(["c.example"], now, now + timedelta(days=6))}
        )
        self.metrics.observe_certificate("gone.example", None)
        self.successResultOf(self.metrics.observe_store(store))
        got = self.scraped()
        name = "txacme_certificate_not_after_timestamp_seconds"
        self.assertEqual(value(got, name, name="c.example"), self.clock.seconds() + 6 * 86400)
        self.assertIsNone(value(got, name, name="gone.example"))

    def test_missing_package(self) -> None:
        """Without prometheus-client, Metrics says which extra to install."""
        saved = sys.modules["prometheus_client"]
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        self.addCleanup(sys.modules.__setitem__, "prometheus_client", saved)
        error = self.assertRaises(ConfigurationError, Metrics)
        self.assertIn("txacme[metrics]", str(error))

    def test_bad_description(self) -> None:
        """A bad endpoint description fails naming the metrics= input."""
        failure = self.failureResultOf(
            serve_metrics(self.clock, "bogus:1", self.service), ConfigurationError
        )
        self.assertIn("metrics='bogus:1'", str(failure.value))
