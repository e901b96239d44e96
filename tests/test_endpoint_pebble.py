"""
AutoTLSEndpoint end to end against Pebble: certificates obtained over tls-alpn-01
on the serving port itself (Pebble's validator connects to it on loopback), then
served by SNI and verified against Pebble's root.
"""

from __future__ import annotations

import os
import socket
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pem
from cryptography import x509
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.harness.pebble import shared_pebble
from tests.harness.tlsclient import http_get, tls_exchange
from txacme.certificates import certificate_names
from txacme.config.endpoint import EndpointConfig, endpoint_from_config
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client, Exchange
from txacme.serving.endpoint import AutoTLSEndpoint
from txacme.stores.directory import DirectoryStore

PAGE = b"hello over automatic TLS\n"


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/plain"))
    return Site(root)


def fetch(port: int, name: str, cafile: str, alpn: list[str] | None = None) -> dict[str, Any]:
    """Blocking: GET / from 127.0.0.1:port with SNI ``name``, verifying against ``cafile``."""
    answer = tls_exchange(port, name, cafile, alpn=alpn, request=http_get(name))
    return {
        "body": answer.data.split(b"\r\n\r\n", 1)[-1],
        "cert": answer.certificate,
        "alpn": answer.alpn,
    }


def scrape(url: str) -> str:
    """Blocking: the text of a plain HTTP GET."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def request_counts(body: str) -> dict[tuple[str, str, str], float]:
    """``txacme_acme_requests_total`` of a scrape, by (endpoint, method, status)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "txacme_acme_requests_total":
                labels = sample.labels
                key = (labels["endpoint"], labels["method"], labels["status"])
                counts[key] = sample.value
    return counts


dns_names = certificate_names


class AutoTLSEndpointPebbleTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.pebble = shared_pebble()
        self.certs = Path(tempfile.mkdtemp(prefix="txacme-certs-"))
        roots = self.certs.parent / (self.certs.name + "-roots.pem")
        roots.write_bytes(b"".join(self.pebble.roots()))
        self.roots = str(roots)
        self.addCleanup(os.remove, roots)

    def make_endpoint(self, **kwargs: Any) -> AutoTLSEndpoint:
        key = jwk_for(generate_private_key("ec256"))

        def client_creator(
            on_exchange: Callable[[Exchange], object] | None = None,
        ) -> Deferred[Client]:
            d = Client.from_url(
                reactor,
                self.pebble.directory_url,
                key,
                ca_file=self.pebble.ca_file,
                on_exchange=on_exchange,
            )

            def keep(client: Client) -> Client:
                self.addCleanup(client.close)
                return client

            return d.addCallback(keep)

        return AutoTLSEndpoint(
            reactor,
            TCP4ServerEndpoint(reactor, self.pebble.tls_port, interface="127.0.0.1", backlog=128),
            DirectoryStore(str(self.certs)),
            client_creator,
            **kwargs,
        )

    @inlineCallbacks
    def test_issue_at_startup_and_serve(self) -> Any:
        """
        An empty ``<name>.pem`` is issued before ``listen`` fires; the port then
        serves it by SNI with a chain that verifies against Pebble's root, and
        the application's ALPN protocol is still negotiated.
        """
        (self.certs / "a.example.test.pem").write_bytes(b"")
        endpoint = self.make_endpoint(acceptable_protocols=[b"http/1.1"])
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().port, self.pebble.tls_port)
        self.assertGreater((self.certs / "a.example.test.pem").stat().st_size, 0)
        self.assertEqual(os.stat(self.certs / "a.example.test.pem").st_mode & 0o777, 0o600)
        result = yield threads.deferToThread(
            fetch, self.pebble.tls_port, "a.example.test", self.roots, ["http/1.1"]
        )
        self.assertEqual(result["body"], PAGE)
        self.assertEqual(dns_names(result["cert"]), ["a.example.test"])
        self.assertEqual(result["alpn"], "http/1.1")

    @inlineCallbacks
    def test_new_entry_issued_without_restart(self) -> Any:
        """An empty entry that appears while running is issued and served."""
        (self.certs / "first.example.test.pem").write_bytes(b"")
        endpoint = self.make_endpoint(watch_interval=0.1)
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        (self.certs / "later.example.test.pem").write_bytes(b"")
        for _ in range(200):
            if (self.certs / "later.example.test.pem").stat().st_size:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        result = yield threads.deferToThread(
            fetch, self.pebble.tls_port, "later.example.test", self.roots
        )
        self.assertEqual(dns_names(result["cert"]), ["later.example.test"])
        self.assertEqual(result["body"], PAGE)

    @inlineCallbacks
    def test_stop_listening_stops_service(self) -> Any:
        """stopListening stops the port and the issuing service."""
        (self.certs / "stop.example.test.pem").write_bytes(b"")
        endpoint = self.make_endpoint()
        port = yield endpoint.listen(site())
        self.assertTrue(endpoint.service.running)
        yield port.stopListening()
        self.assertFalse(endpoint.service.running)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.pebble.tls_port), timeout=2).close()

    @inlineCallbacks
    def test_same_directory_served_by_txsni_and_ssl(self) -> Any:
        """
        The directory txacme writes is the one ``txsni:`` and Twisted's ``ssl:``
        endpoint read: all three serve the same certificate.
        """
        (self.certs / "shared.example.test.pem").write_bytes(b"")
        endpoint = self.make_endpoint()
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        ours = yield threads.deferToThread(
            fetch, self.pebble.tls_port, "shared.example.test", self.roots
        )
        pem_path = str(self.certs / "shared.example.test.pem")
        quoted_dir = str(self.certs).replace(":", "\\:")
        quoted_pem = pem_path.replace(":", "\\:")
        for description in (
            f"txsni:{quoted_dir}:tcp:0:interface=127.0.0.1",
            f"ssl:0:interface=127.0.0.1:privateKey={quoted_pem}:certKey={quoted_pem}"
            f":extraCertChain={quoted_pem}",
        ):
            other = yield serverFromString(reactor, description).listen(site())
            self.addCleanup(other.stopListening)
            theirs = yield threads.deferToThread(
                fetch, other.getHost().port, "shared.example.test", self.roots
            )
            self.assertEqual(theirs["cert"], ours["cert"], description)
            self.assertEqual(theirs["body"], PAGE)

    @inlineCallbacks
    def test_http01_endpoint(self) -> Any:
        """
        With tls-alpn-01 off, the http-01 listener (port 80's stand-in) answers
        the challenge and the TLS port, anywhere, serves the certificate.
        """
        (self.certs / "web.example.test.pem").write_bytes(b"")
        endpoint = self.make_endpoint(
            tls_alpn=False,
            http01_endpoint=TCP4ServerEndpoint(
                reactor, self.pebble.http_port, interface="127.0.0.1"
            ),
        )
        endpoint.sub_endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        result = yield threads.deferToThread(
            fetch, port.getHost().port, "web.example.test", self.roots
        )
        self.assertEqual(dns_names(result["cert"]), ["web.example.test"])
        yield port.stopListening()
        # The http-01 listener went away with the port.
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.pebble.http_port), timeout=2).close()

    @inlineCallbacks
    def test_metrics_and_state_file(self) -> Any:
        """
        With ``metrics=`` the endpoint serves Prometheus metrics that report the
        issued certificate and the requests made to the CA (its client creator
        takes ``on_exchange``); with ``state_file`` the outcome is recorded for
        ``txacme status``.
        """
        from txacme.reporting.state import StateFile

        (self.certs / "metered.example.test.pem").write_bytes(b"")
        state_path = str(self.certs / ".txacme-state.json")
        endpoint = self.make_endpoint(metrics="tcp:0:interface=127.0.0.1", state_file=state_path)
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        metrics_port = endpoint.metrics_port.port.getHost().port
        body = yield threads.deferToThread(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        stored = pem.parse_file(str(self.certs / "metered.example.test.pem"))
        cert = x509.load_pem_x509_certificate(stored[1].as_bytes())
        lines = [
            line
            for line in body.splitlines()
            if line.startswith("txacme_certificate_not_after")
            and 'name="metered.example.test"' in line
        ]
        self.assertEqual(len(lines), 1, body)
        self.assertAlmostEqual(
            float(lines[0].rsplit(" ", 1)[1]), cert.not_valid_after_utc.timestamp(), delta=1
        )
        record = StateFile(state_path).get("metered.example.test")
        self.assertIsNotNone(record.last_success)
        self.assertIsNone(record.last_error)
        requests = request_counts(body)
        self.assertEqual(requests.get(("directory", "GET", "200")), 1.0, body)
        self.assertEqual(requests.get(("newOrder", "POST", "201")), 1.0, body)
        self.assertEqual(requests.get(("finalize", "POST", "200")), 1.0, body)
        self.assertGreaterEqual(requests.get(("certificate", "POST", "200"), 0.0), 1.0, body)
        self.assertGreaterEqual(requests.get(("challenge", "POST", "200"), 0.0), 1.0, body)

    @inlineCallbacks
    def test_metrics_count_requests_from_endpoint_string(self) -> Any:
        """
        An endpoint built from its string form (``metrics=`` set) counts the
        requests of the client it creates in ``txacme_acme_requests_total``.
        """
        (self.certs / "counted.example.test.pem").write_bytes(b"")
        config = EndpointConfig(
            prefix="acme",
            cert_dir=str(self.certs),
            sub_endpoint=f"tcp:{self.pebble.tls_port}:interface=127.0.0.1",
            directory_url=self.pebble.directory_url,
            ca_file=self.pebble.ca_file,
            metrics="tcp:0:interface=127.0.0.1",
        )
        endpoint = endpoint_from_config(reactor, config)
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        self.assertGreater((self.certs / "counted.example.test.pem").stat().st_size, 0)
        metrics_port = endpoint.metrics_port.port.getHost().port
        body = yield threads.deferToThread(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        requests = request_counts(body)
        self.assertEqual(requests.get(("newOrder", "POST", "201")), 1.0, body)
        self.assertEqual(requests.get(("finalize", "POST", "200")), 1.0, body)
        self.assertGreaterEqual(requests.get(("newNonce", "HEAD", "200"), 0.0), 1.0, body)
        self.assertGreaterEqual(requests.get(("newAccount", "POST", "201"), 0.0), 1.0, body)
