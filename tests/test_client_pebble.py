"""
txacme.protocol.client end to end against Pebble over loopback (real HTTPS, real
http-01 validation). Helpers here are shared with test_issuance_pebble.
"""

from __future__ import annotations

import functools
import json
import ssl
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.defer import Deferred
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest
from twisted.web.server import Site

from tests.harness import chains
from txacme import errors
from txacme.challenges.http01 import HTTP01Responder, http01_root
from txacme.issuing.order import IssuedCertificate, obtain_certificate
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.ari import ari_cert_id
from txacme.protocol.client import Client
from txacme.protocol.resources import EAB
from txacme.testing import make_certificate

try:
    from tests.harness.pebble import PebbleUnavailable, shared_pebble, start_pebble
except ImportError:  # pragma: no cover - the fixture lands separately
    shared_pebble = start_pebble = None  # type: ignore[assignment]
    PebbleUnavailable = RuntimeError  # type: ignore[assignment,misc]


def inline(
    f: Callable[..., Coroutine[Any, Any, Any]],
) -> Callable[..., Deferred[Any]]:
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


def pebble_or_skip() -> Any:
    if shared_pebble is None:
        raise unittest.SkipTest("tests/pebble.py is not there yet")
    try:
        return shared_pebble()
    except PebbleUnavailable as e:
        raise unittest.SkipTest(str(e))


async def close_all(factory: WrappingFactory) -> None:
    """Drop every open connection of ``factory`` and wait until they are gone."""
    for proto in list(factory.protocols):
        proto.transport.abortConnection()
    for _ in range(500):
        if not factory.protocols:
            return
        await task.deferLater(reactor, 0.005)
    raise AssertionError(f"connections still open: {list(factory.protocols)}")


class HTTP01Server:
    """An http-01 responder served on 127.0.0.1:``port`` for Pebble's validator."""

    def __init__(self, port: int) -> None:
        self.responder = HTTP01Responder()
        site = Site(http01_root(self.responder))
        site.noisy = False
        self.factory = WrappingFactory(site)
        self.port = reactor.listenTCP(port, self.factory, interface="127.0.0.1", backlog=512)

    async def stop(self) -> None:
        await self.port.stopListening()
        await close_all(self.factory)


class PebbleCase(unittest.TestCase):
    """Gives each test a Pebble, an http-01 server on its port and client factory."""

    timeout = 120

    def setUp(self) -> None:
        self.pebble = pebble_or_skip()

    def serve_http01(self, pebble: Any = None) -> HTTP01Responder:
        server = HTTP01Server((pebble or self.pebble).http_port)
        self.addCleanup(lambda: Deferred.fromCoroutine(server.stop()))
        return server.responder

    async def client(self, pebble: Any = None, key: Any = None, **kw: Any) -> Client:
        pebble = pebble or self.pebble
        jwk = key if key is not None else jwk_for(generate_private_key())
        client = await Client.from_url(
            reactor, pebble.directory_url, jwk, ca_file=pebble.ca_file, **kw
        )
        self.addCleanup(client.close)
        return client


def verify_chain(pebble: Any, issued: IssuedCertificate, name: str) -> list[x509.Certificate]:
    """Verify the chain up to Pebble's current root for ``name`` (server auth)."""
    return chains.verify_chain(issued.certificate, issued.chain, pebble.roots(), name)


def cert_status(pebble: Any, cert: x509.Certificate) -> dict[str, Any]:
    """Pebble's own view of a certificate (management interface)."""
    context = ssl.create_default_context(cafile=pebble.ca_file)
    url = f"{pebble.mgmt_url}/cert-status-by-serial/{cert.serial_number:x}"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return dict(json.loads(response.read()))


def throwaway_ca_file(path: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_certificate([], key=key, ca=True, common_name="not Pebble's CA")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


class DirectoryAndAccountTests(PebbleCase):
    @inline
    async def test_directory(self) -> None:
        client = await self.client()
        self.assertTrue(client.directory["newOrder"].startswith("https://127.0.0.1:"))
        self.assertTrue(client.terms_of_service)
        self.assertFalse(client.external_account_required)
        advertised = self.pebble.directory()
        self.assertEqual(client.supports_ari, "renewalInfo" in advertised)
        meta: Any = advertised.get("meta", {})
        self.assertEqual(client.profiles, dict(meta.get("profiles", {})))

    @inline
    async def test_account_lifecycle(self) -> None:
        client = await self.client()
        with self.assertRaises(errors.AccountDoesNotExist):
            await client.lookup_account()
        created = await client.start("admin@example.com")
        self.assertEqual(created.body.contact, ("mailto:admin@example.com",))
        found = await client.start("admin@example.com")
        self.assertEqual(found.uri, created.uri)
        updated = await client.update_account("ops@example.com")
        self.assertEqual(updated.body.contact, ("mailto:ops@example.com",))
        deactivated = await client.deactivate_account()
        self.assertEqual(deactivated.body.status, "deactivated")
        with self.assertRaises(errors.Unauthorized):
            await client.new_order(["example.com"])

    @inline
    async def test_unknown_profile(self) -> None:
        client = await self.client()
        await client.start()
        with self.assertRaises(errors.ConfigurationError) as cm:
            await client.new_order(["example.com"], profile="no-such-profile")
        self.assertIn("'no-such-profile'", str(cm.exception))

    @inline
    async def test_profile_issuance(self) -> None:
        """Issue with an advertised profile; this Pebble (2.4) may advertise none."""
        client = await self.client()
        await client.start()
        if not client.profiles:
            with self.assertRaises(errors.ConfigurationError) as cm:
                await client.new_order(["profile.example.com"], profile="classic")
            self.assertIn("advertises: none", str(cm.exception))
            return
        profile = sorted(client.profiles)[0]
        responder = self.serve_http01()
        issued = await obtain_certificate(
            client, ["profile.example.com"], [responder], profile=profile
        )
        self.assertEqual(issued.names, ["profile.example.com"])

    @inline
    async def test_rejected_identifier(self) -> None:
        """Pebble refuses an underscore name: the problem comes back typed."""
        client = await self.client()
        await client.start()
        with self.assertRaises(errors.ACMEProblem) as cm:
            await client.new_order(["bad_name.example.com"])
        self.assertIn(cm.exception.code, ("rejectedIdentifier", "malformed"))
        self.assertEqual(cm.exception.status, 400)


class EABTests(PebbleCase):
    def setUp(self) -> None:
        super().setUp()
        self.eab_pebble = start_pebble(eab=True)
        self.addCleanup(self.eab_pebble.stop)

    @inline
    async def test_eab_required(self) -> None:
        client = await self.client(self.eab_pebble)
        self.assertTrue(client.external_account_required)
        with self.assertRaises(errors.ConfigurationError):
            await client.new_account()
        kid, mac = sorted(self.eab_pebble.eab_keys.items())[0]
        with self.assertRaises(errors.ACMEProblem):
            await client.new_account(eab=EAB(kid, b"\x00" * 32))
        account = await client.start("eab@example.com", eab=EAB(kid, mac))
        self.assertTrue(account.uri.startswith("https://127.0.0.1:"))
        # Once bound, the key finds its account without EAB.
        again = await client.start()
        self.assertEqual(again.uri, account.uri)


class CertificateTests(PebbleCase):
    @inline
    async def test_revoke_by_account_key(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        issued = await obtain_certificate(client, ["revoke.example.com"], [responder])
        self.assertEqual(cert_status(self.pebble, issued.certificate)["Status"], "Valid")
        await client.revoke(issued.certificate, reason=4)
        self.assertEqual(cert_status(self.pebble, issued.certificate)["Status"], "Revoked")
        with self.assertRaises(errors.AlreadyRevoked):
            await client.revoke(issued.certificate)

    @inline
    async def test_revoke_by_certificate_key(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        issued = await obtain_certificate(client, ["revoke2.example.com"], [responder])
        stranger = await self.client()  # no account at all
        await stranger.revoke(issued.certificate, key=issued.key)
        self.assertEqual(cert_status(self.pebble, issued.certificate)["Status"], "Revoked")

    @inline
    async def test_ari(self) -> None:
        """Pebble 2.4 has no renewalInfo: a clear error; the id is still computable."""
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        issued = await obtain_certificate(client, ["ari.example.com"], [responder])
        cert_id = ari_cert_id(issued.certificate)
        aki, serial = cert_id.split(".")
        self.assertTrue(aki and serial)
        if client.supports_ari:
            info = await client.renewal_info(issued.certificate)
            self.assertLess(info.start, info.end)
        else:
            with self.assertRaises(errors.ConfigurationError):
                await client.renewal_info(issued.certificate)

    @inline
    async def test_key_rollover_then_order(self) -> None:
        """After keyChange the new key signs, and a new order goes through."""
        client = await self.client()
        account = await client.start()
        responder = self.serve_http01()
        new_key = jwk_for(generate_private_key("ec384"))
        await client.change_key(new_key)
        self.assertEqual(client.alg.name, "ES384")
        issued = await obtain_certificate(client, ["rollover.example.com"], [responder])
        self.assertEqual(issued.names, ["rollover.example.com"])
        # The new key finds the same account; the old one no longer does.
        fresh = await self.client(key=new_key)
        self.assertEqual((await fresh.lookup_account()).uri, account.uri)

    @inline
    async def test_fetch_certificate_again(self) -> None:
        client = await self.client()
        await client.start()
        responder = self.serve_http01()
        issued = await obtain_certificate(client, ["again.example.com"], [responder])
        assert issued.url is not None and issued.order_url is not None
        from acme import messages

        order = messages.OrderResource(
            uri=issued.order_url, body=messages.Order(certificate=issued.url)
        )
        chain = await client.fetch_certificate(order, preferred_chain="no such issuer")
        self.assertEqual(chain.certificate, issued.certificate)
        self.assertEqual(chain.url, issued.url)


class TransportTests(PebbleCase):
    @inline
    async def test_untrusted_ca_refused(self) -> None:
        """Another CA file, or the system store, does not trust Pebble: no connection."""
        other = throwaway_ca_file(self.mktemp())
        for kwargs in ({"ca_file": other}, {}):
            with self.assertRaises(Exception) as cm:
                client = await Client.from_url(
                    reactor,
                    self.pebble.directory_url,
                    jwk_for(generate_private_key()),
                    timeout=10,
                    **kwargs,
                )
                await client.close()
            self.assertNotIsInstance(cm.exception, errors.ACMEProblem)
            self.assertIn("certificate verify failed", repr(cm.exception))

    @inline
    async def test_request_timeout(self) -> None:
        """A server that accepts and never answers gives ACMETimeout."""
        silent = WrappingFactory(protocol.Factory.forProtocol(protocol.Protocol))
        port = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(lambda: Deferred.fromCoroutine(close_all(silent)))
        self.addCleanup(port.stopListening)
        url = f"https://127.0.0.1:{port.getHost().port}/dir"
        with self.assertRaises(errors.ACMETimeout):
            await Client.from_url(
                reactor,
                url,
                jwk_for(generate_private_key()),
                ca_file=self.pebble.ca_file,
                timeout=0.3,
            )

    @inline
    async def test_connection_refused_propagates(self) -> None:
        """A refused connection is a CAUnreachable naming the directory URL."""
        from twisted.internet.error import ConnectionRefusedError

        probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        free = probe.getHost().port
        await probe.stopListening()
        url = f"https://127.0.0.1:{free}/dir"
        with self.assertRaises(errors.CAUnreachable) as raised:
            await Client.from_url(
                reactor, url, jwk_for(generate_private_key()), ca_file=self.pebble.ca_file
            )
        self.assertEqual(str(raised.exception), f"cannot reach the CA at {url}: connection refused")
        self.assertEqual(raised.exception.url, url)
        self.assertIsInstance(raised.exception.__cause__, ConnectionRefusedError)

    @inline
    async def test_untrusted_ca(self) -> None:
        """A CA whose certificate does not verify is a CAUntrusted saying to give ca_file=."""
        with self.assertRaises(errors.CAUntrusted) as raised:
            await Client.from_url(
                reactor, self.pebble.directory_url, jwk_for(generate_private_key())
            )
        message = str(raised.exception)
        self.assertIn(self.pebble.directory_url, message)
        self.assertIn("certificate verify failed", message)
        self.assertIn("ca_file=", message)

    @inline
    async def test_dns_failure(self) -> None:
        """A CA host name that does not resolve is a CAUnreachable saying so."""
        url = "https://no-such-ca.invalid/dir"
        with self.assertRaises(errors.CAUnreachable) as raised:
            await Client.from_url(
                reactor, url, jwk_for(generate_private_key()), ca_file=self.pebble.ca_file
            )
        self.assertIn(f"cannot reach the CA at {url}: DNS lookup failed", str(raised.exception))

    @inline
    async def test_connections_reused(self) -> None:
        """Many requests, few TLS connections: the pool keeps them open."""
        client = await self.client()
        await client.start()
        for i in range(10):
            await client.new_order([f"reuse{i}.example.com"])
        pool = client._pool
        assert pool is not None
        cached = sum(len(v) for v in pool._connections.values())
        self.assertGreaterEqual(cached, 1)
        self.assertLessEqual(cached, 2)
        await client.close()
        self.assertIsNone(client._pool)
        await defer.succeed(None)
