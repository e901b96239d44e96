"""
txacme.issuing.order end to end against Pebble: real http-01 validation over loopback.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest

from tests.harness.logcapture import txacme_log_level
from tests.test_client_pebble import (
    PebbleCase,
    close_all,
    inline,
    start_pebble,
    verify_chain,
)
from txacme import errors
from txacme.issuing.order import IssuedCertificate, obtain_certificate
from txacme.keys import generate_private_key, jwk_for, key_type_of


class CountingResponder:
    """Wraps a responder, counting starts and stops."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.challenge_type = inner.challenge_type
        self.started: list[str] = []
        self.stopped: list[str] = []

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        self.started.append(server_name)
        self.inner.start_responding(server_name, challenge, response)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        self.stopped.append(server_name)
        self.inner.stop_responding(server_name, challenge, response)


class SilentResponder:
    """Claims http-01 but serves nothing, so validation fails."""

    challenge_type = "http-01"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        self.started.append(server_name)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        self.stopped.append(server_name)


def check_issued(
    case: unittest.TestCase, pebble: Any, issued: IssuedCertificate, names: list[str]
) -> None:
    case.assertEqual(issued.names, names)
    chain = verify_chain(pebble, issued, names[0])
    case.assertGreaterEqual(len(chain), 3)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    case.assertEqual(
        issued.certificate.public_key().public_bytes(der, public),
        issued.key.public_key().public_bytes(der, public),
    )
    kinds = [type(o).__name__ for o in issued.pem_objects]
    case.assertEqual(kinds[0], "PrivateKey")
    case.assertEqual(kinds[1:], ["Certificate"] * (1 + len(issued.chain)))
    case.assertLess(issued.not_before, issued.not_after)


class IssuanceTests(PebbleCase):
    @inline
    async def test_one_name(self) -> None:
        client = await self.client()
        await client.start()
        responder = CountingResponder(self.serve_http01())
        issued = await obtain_certificate(client, ["one.example.com"], [responder])
        check_issued(self, self.pebble, issued, ["one.example.com"])
        self.assertIsInstance(issued.key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key_type_of(issued.key), "ec256")
        self.assertEqual(responder.started, responder.stopped)
        self.assertEqual(responder.inner.active_tokens(), frozenset())

    @inline
    async def test_several_names(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        names = [f"n{i}.several.example.com" for i in range(6)] + ["127.0.0.1"]
        issued = await obtain_certificate(client, names, [responder])
        check_issued(self, self.pebble, issued, names)
        verify_chain(self.pebble, issued, "127.0.0.1")
        verify_chain(self.pebble, issued, "n5.several.example.com")

    @inline
    async def test_key_types(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        for key_type in ("ec256", "ec384", "rsa2048"):
            issued = await obtain_certificate(
                client, [f"{key_type}.example.com"], [responder], key_type=key_type
            )
            check_issued(self, self.pebble, issued, [f"{key_type}.example.com"])
            self.assertEqual(key_type_of(issued.key), key_type)
        rsa_key = generate_private_key("rsa2048")
        issued = await obtain_certificate(client, ["given.example.com"], [responder], key=rsa_key)
        self.assertIsInstance(issued.key, rsa.RSAPrivateKey)
        self.assertIs(issued.key, rsa_key)

    @inline
    async def test_rsa_account_key(self) -> None:
        rsa_client = await self.client(key=jwk_for(generate_private_key("rsa2048")))
        self.assertEqual(rsa_client.alg.name, "RS256")
        await rsa_client.start()
        responder = self.serve_http01()
        issued = await obtain_certificate(rsa_client, ["rsa-account.example.com"], [responder])
        check_issued(self, self.pebble, issued, ["rsa-account.example.com"])

    @inline
    async def test_concurrent_orders(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        names = [[f"c{i}.example.com", f"www.c{i}.example.com"] for i in range(10)]
        results = await defer.gatherResults(
            [obtain_certificate(client, n, [responder]) for n in names]
        )
        for issued, n in zip(results, names, strict=True):
            check_issued(self, self.pebble, issued, n)

    @inline
    async def test_wildcard_needs_dns01(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        with self.assertRaises(errors.NoSupportedChallenge) as cm:
            await obtain_certificate(client, ["*.wild.example.com"], [responder])
        self.assertIn("dns-01", str(cm.exception))

    @inline
    async def test_failed_validation(self) -> None:
        """Nothing served: the authorization is invalid; the responder is stopped."""
        client = await self.client()
        await client.start()
        self.serve_http01()  # the port answers, but 404 for every token
        silent = SilentResponder()
        with self.assertRaises(errors.IssuanceFailed) as cm:
            await obtain_certificate(client, ["fail.example.com"], [silent])
        self.assertIsInstance(cm.exception.problem, errors.ACMEProblem)
        self.assertIn("fail.example.com", str(cm.exception))
        self.assertEqual(silent.started, ["fail.example.com"])
        self.assertEqual(silent.stopped, ["fail.example.com"])

    @inline
    async def test_tls_alpn_01(self) -> None:
        """tls-alpn-01 through the TLS layer, for a DNS name and an IP address."""
        from txacme.challenges.tlsalpn01 import TLSALPN01Responder
        from txacme.serving.tls import CertificateIndex, SNIConnectionCreator, tls_server_factory

        responder = TLSALPN01Responder()
        creator = SNIConnectionCreator(CertificateIndex(), challenges=responder.registry)
        factory = WrappingFactory(
            tls_server_factory(creator, protocol.Factory.forProtocol(protocol.Protocol))
        )
        port = reactor.listenTCP(self.pebble.tls_port, factory, interface="127.0.0.1")
        self.addCleanup(lambda: Deferred.fromCoroutine(close_all(factory)))
        self.addCleanup(port.stopListening)
        client = await self.client()
        await client.start()
        names = ["alpn.example.com", "127.0.0.1"]
        counting = CountingResponder(responder)
        issued = await obtain_certificate(client, names, [counting])
        check_issued(self, self.pebble, issued, names)
        self.assertIn("alpn.example.com", counting.started)
        self.assertEqual(sorted(counting.started), sorted(counting.stopped))
        self.assertEqual(len(responder.registry), 0)

    @inline
    async def test_store_accepts_result(self) -> None:
        from txacme.testing import MemoryStore

        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        issued = await obtain_certificate(client, ["stored.example.com"], [responder])
        store = MemoryStore()
        await store.store("stored.example.com", issued.pem_objects)
        self.assertEqual(len(await store.get("stored.example.com")), len(issued.pem_objects))


class PrivatePebbleTests(PebbleCase):
    def private(self, **env: str) -> Any:
        pebble = start_pebble(env=env)
        self.addCleanup(pebble.stop)
        return pebble

    @inline
    async def test_authorization_reuse(self) -> None:
        """With PEBBLE_AUTHZREUSE=100 the second order needs no validation."""
        pebble = self.private(PEBBLE_AUTHZREUSE="100")
        client = await self.client(pebble)
        await client.start()
        responder = CountingResponder(self.serve_http01(pebble))
        names = ["reuse.example.com", "www.reuse.example.com"]
        first = await obtain_certificate(client, names, [responder])
        self.assertEqual(sorted(responder.started), sorted(names))
        second = await obtain_certificate(client, names, [responder])
        self.assertEqual(sorted(responder.started), sorted(names))
        self.assertNotEqual(first.certificate.serial_number, second.certificate.serial_number)
        check_issued(self, pebble, second, names)

    @inline
    async def test_nonce_rejections(self) -> None:
        """Half the nonces rejected: several certificates, in turn and at once."""
        txacme_log_level(self, "debug")  # the badNonce retries are logged at debug
        pebble = self.private(PEBBLE_WFE_NONCEREJECT="50")
        retries: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "badNonce" in str(event.get("log_format", "")):
                retries.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        client = await self.client(pebble)
        await client.start()
        responder = self.serve_http01(pebble)
        for i in range(4):
            issued = await obtain_certificate(client, [f"nonce{i}.example.com"], [responder])
            check_issued(self, pebble, issued, [f"nonce{i}.example.com"])
        results = await defer.gatherResults(
            [obtain_certificate(client, [f"par{i}.example.com"], [responder]) for i in range(6)]
        )
        for i, issued in enumerate(results):
            check_issued(self, pebble, issued, [f"par{i}.example.com"])
        self.assertGreater(len(retries), 10)
