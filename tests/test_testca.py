"""
Tests for :mod:`txacme.testca`, driven by a raw RFC 8555 client written here
(so that every protocol detail, and every way of getting it wrong, can be sent).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import attrs
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from josepy import jwa
from josepy.jwk import JWK, JWKEC, JWKRSA
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.names import dns
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tests.harness import chains
from txacme.errors import ConfigurationError
from txacme.testca import (
    Profile,
    TestCA,
    TestDNSServer,
    cert_id,
    dns01_txt_value,
    pytest_fixture,
)
from txacme.testca._validation import Validator, _resends

R: Any = reactor
ACME = "urn:ietf:params:acme:error:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- a raw ACME client ------------------------------------------------------


@attrs.define
class Reply:
    """A response: status, headers, body."""

    code: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def problem(self) -> str | None:
        if (self.header("content-type") or "").startswith("application/problem+json"):
            return str(self.json()["type"]).removeprefix(ACME)
        return None


def ec_key(curve: ec.EllipticCurve | None = None) -> JWK:
    return JWKEC(key=ec.generate_private_key(curve or ec.SECP256R1()))


def alg_for(key: JWK) -> str:
    raw: Any = key.key
    if isinstance(key, JWKRSA):
        return "RS256"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[raw.curve.name]


class RawClient:
    """Signs and sends ACME requests, with knobs to get them wrong."""

    def __init__(self, ca: TestCA, key: JWK | None = None) -> None:
        self.ca = ca
        self.key = key or ec_key()
        self.kid: str | None = None
        self.pool = HTTPConnectionPool(R, persistent=True)
        self.http = HTTPClient(Agent(R, contextFactory=ca.https_policy(), pool=self.pool))
        self.directory: dict[str, Any] = {}
        self.nonces: list[str] = []

    def close(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = self.pool.closeCachedConnections()
        return d

    async def request(
        self, method: str, url: str, body: bytes | None = None, ctype: str | None = None
    ) -> Reply:
        headers = {"Content-Type": [ctype]} if ctype else {}
        response = await self.http.request(method, url, data=body, headers=headers)
        content = await treq.content(response)
        raw = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        reply = Reply(response.code, raw, content)
        nonce = reply.header("replay-nonce")
        if nonce:
            self.nonces.append(nonce)
        return reply

    async def start(self) -> None:
        self.directory = (await self.request("GET", self.ca.directory_url)).json()

    async def nonce(self) -> str:
        if not self.nonces:
            await self.request("HEAD", self.directory["newNonce"])
        return self.nonces.pop()

    def sign(
        self,
        url: str,
        payload: Any,
        nonce: str | None,
        *,
        key: JWK | None = None,
        use_jwk: bool | None = None,
        kid: str | None = None,
        alg: str | None = None,
        protected: dict[str, Any] | None = None,
        tamper: bool = False,
    ) -> dict[str, Any]:
        key = key or self.key
        kid = kid if kid is not None else self.kid
        header: dict[str, Any] = {"alg": alg or alg_for(key), "url": url}
        if nonce is not None:
            header["nonce"] = nonce
        if use_jwk or (use_jwk is None and kid is None):
            header["jwk"] = key.public_key().to_json()
        else:
            header["kid"] = kid
        header.update(protected or {})
        header = {k: v for k, v in header.items() if v is not None}
        protected_b64 = b64(json.dumps(header).encode())
        if payload is None:
            payload_b64 = ""
        elif isinstance(payload, bytes):
            payload_b64 = b64(payload)
        else:
            payload_b64 = b64(json.dumps(payload).encode())
        signing_input = f"{protected_b64}.{payload_b64}".encode()
        algorithm = {
            "RS256": jwa.RS256,
            "ES256": jwa.ES256,
            "ES384": jwa.ES384,
            "ES512": jwa.ES512,
        }.get(alg_for(key))
        assert algorithm is not None
        raw_key: Any = key.key
        signature = algorithm.sign(getattr(raw_key, "_wrapped", raw_key), signing_input)
        if tamper:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        return {"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}

    async def post(self, url: str, payload: Any = None, **options: Any) -> Reply:
        nonce = options.pop("nonce", None) or await self.nonce()
        ctype = options.pop("ctype", "application/jose+json")
        extra = options.pop("extra_members", {})
        body = self.sign(url, payload, nonce, **options)
        body.update(extra)
        return await self.request("POST", url, json.dumps(body).encode(), ctype)

    async def new_account(self, **payload: Any) -> Reply:
        payload.setdefault("termsOfServiceAgreed", True)
        reply = await self.post(self.directory["newAccount"], payload, use_jwk=True)
        if reply.code in (200, 201):
            self.kid = reply.header("location")
        return reply

    async def new_order(self, *names: str, **payload: Any) -> Reply:
        identifiers = [{"type": "ip" if _is_ip(n) else "dns", "value": n} for n in names]
        return await self.post(self.directory["newOrder"], {"identifiers": identifiers, **payload})

    def key_authorization(self, token: str) -> str:
        return f"{token}.{b64(self.key.thumbprint())}"

    async def challenge(self, order: Reply, ctype: str, index: int = 0) -> dict[str, Any]:
        authz = (await self.post(order.json()["authorizations"][index])).json()
        return next(c for c in authz["challenges"] if c["type"] == ctype)

    async def finalize(self, order: Reply, names: Sequence[str], key: Any = None) -> Reply:
        csr = make_csr(key or ec.generate_private_key(ec.SECP256R1()), names)
        der = csr.public_bytes(serialization.Encoding.DER)
        return await self.post(order.json()["finalize"], {"csr": b64(der)})


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def make_csr(key: Any, names: Sequence[str]) -> x509.CertificateSigningRequest:
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names
    ]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )


def verify_chain(
    chain_pem: bytes, root_pem: bytes, name: str, when: datetime.datetime
) -> list[x509.Certificate]:
    """Verify a PEM chain for ``name`` against ``root_pem`` as a TLS client would."""
    return chains.verify_pem_chain(chain_pem, [root_pem], name, when)


# -- challenge responders for the tests -------------------------------------


class TokenResource(Resource):
    """Serves ``/.well-known/acme-challenge/<token>`` from a dict; records Host headers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, bytes] = {}
        self.hosts: list[str] = []

    def render_GET(self, request: Any) -> bytes:
        self.hosts.append(request.getHeader("host"))
        parts = request.path.decode().split("/")
        if parts[1:3] == [".well-known", "acme-challenge"] and parts[3] in self.tokens:
            return self.tokens[parts[3]]
        request.setResponseCode(404)
        return b"not found"


def listen_http01(test: unittest.TestCase) -> tuple[TokenResource, int]:
    """Serve tokens on a free loopback port until the test ends."""
    resource = TokenResource()
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    port = R.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return resource, port.getHost().port


def alpn_certificate(
    name: str, key_authorization: str, digest: bytes | None = None, critical: bool = True
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    value = digest if digest is not None else hashlib.sha256(key_authorization.encode()).digest()
    san: x509.GeneralName = (
        x509.IPAddress(ipaddress.ip_address(name)) if _is_ip(name) else x509.DNSName(name)
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"), b"\x04\x20" + value
            ),
            critical=critical,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    def __init__(self, ctx: SSL.Context) -> None:
        self._ctx = ctx

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        return SSL.Connection(self._ctx, None)


def listen_tlsalpn01(
    test: unittest.TestCase, key: Any, cert: x509.Certificate, alpn: bool = True
) -> int:
    """A TLS server answering ``acme-tls/1`` with ``cert``."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    if alpn:
        ctx.set_alpn_select_callback(
            lambda conn, offered: (
                b"acme-tls/1" if b"acme-tls/1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS
            )
        )
    factory = Factory.forProtocol(Protocol)
    factory.noisy = False
    port = R.listenSSL(0, factory, _ServerTLS(ctx), interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)


class CATestCase(unittest.TestCase):
    """Starts a CA and a raw client for each test."""

    ca_options: dict[str, Any] = {}

    async def start_ca(self, **options: Any) -> tuple[TestCA, RawClient]:
        merged = {**self.ca_options, **options}
        ca = await TestCA.start_for_test(self, R, **merged)
        client = self.client(ca)
        await client.start()
        return ca, client

    def client(self, ca: TestCA, key: JWK | None = None) -> RawClient:
        client = RawClient(ca, key)
        client.directory = {}
        self.addCleanup(client.close)
        return client

    async def valid_order(
        self, ca: TestCA, client: RawClient, tokens: TokenResource, *names: str, **payload: Any
    ) -> Reply:
        """Create an order and complete its http-01 challenges; the order is then ready."""
        order = await client.new_order(*names, **payload)
        self.assertEqual(order.code, 201, order.body)
        for index in range(len(order.json()["authorizations"])):
            challenge = await client.challenge(order, "http-01", index)
            token = challenge["token"]
            tokens.tokens[token] = client.key_authorization(token).encode()
            await client.post(challenge["url"], {})
        await ca.idle()
        return order

    async def issue(
        self, ca: TestCA, client: RawClient, tokens: TokenResource, *names: str, **payload: Any
    ) -> tuple[Reply, bytes]:
        """Obtain a certificate; returns the (valid) order and the PEM chain."""
        order = await self.valid_order(ca, client, tokens, *names, **payload)
        finalized = await client.finalize(order, names)
        self.assertEqual(finalized.code, 200, finalized.body)
        await ca.idle()
        done = await client.post(order.header("location"))
        self.assertEqual(done.json()["status"], "valid")
        chain = await client.post(done.json()["certificate"])
        return done, chain.body


# -- directory, nonces, plain HTTP ------------------------------------------


class DirectoryTests(CATestCase):
    async def test_directory(self) -> None:
        """The directory lists every resource, the meta fields and ARI."""
        ca, client = await self.start_ca()
        reply = await client.request("GET", ca.directory_url)
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.header("content-type"), "application/json")
        doc = reply.json()
        for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
            self.assertTrue(doc[name].startswith(ca.base_url + "/acme/"), name)
        self.assertEqual(doc["renewalInfo"], ca.base_url + "/acme/renewal-info")
        self.assertEqual(doc["meta"]["termsOfService"], ca.terms_of_service)
        self.assertEqual(set(doc["meta"]["profiles"]), {"classic", "shortlived"})
        self.assertIs(doc["meta"]["externalAccountRequired"], False)
        self.assertTrue(reply.header("replay-nonce"))
        self.assertIn(f'<{ca.directory_url}>;rel="index"', reply.headers["link"])

    async def test_nonces(self) -> None:
        """HEAD newNonce is 200, GET is 204, both uncacheable with a fresh nonce."""
        ca, client = await self.start_ca()
        head = await client.request("HEAD", client.directory["newNonce"])
        get = await client.request("GET", client.directory["newNonce"])
        self.assertEqual((head.code, get.code), (200, 204))
        for reply in (head, get):
            self.assertEqual(reply.header("cache-control"), "no-store")
        self.assertNotEqual(head.header("replay-nonce"), get.header("replay-nonce"))

    async def test_get_on_post_resource(self) -> None:
        """Resources other than the directory and newNonce refuse GET (405, problem)."""
        ca, client = await self.start_ca()
        reply = await client.request("GET", client.directory["newOrder"])
        self.assertEqual(reply.code, 405)
        self.assertEqual(reply.problem, "malformed")
        self.assertTrue(reply.header("replay-nonce"))
        missing = await client.request("GET", ca.base_url + "/nowhere")
        self.assertEqual((missing.code, missing.problem), (404, "malformed"))

    async def test_stop(self) -> None:
        """stop() closes the port and deletes the PEM files; a second stop is harmless."""
        ca = await TestCA.start(R)
        path = ca.https_ca_file
        self.assertTrue(os.path.exists(path))
        await ca.stop()
        await ca.stop()
        self.assertFalse(os.path.exists(path))
        self.assertRaises(ConfigurationError, lambda: ca.https_ca_file)

    def test_bad_options(self) -> None:
        """Bad options raise ConfigurationError naming them."""
        for options in [
            {"bad_nonce_rate": 2.0},
            {"challenge_types": ["tls-sni-01"]},
            {"default_profile": "nope"},
            {"eab_keys": {"k": "not base64!"}},
            {"retry_after": -1},
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                TestCA(R, **options)
            self.assertIn(next(iter(options)), str(caught.exception))

    async def test_running_context_manager(self) -> None:
        """``async with TestCA.running()`` serves inside the block and stops after it."""
        async with TestCA.running(R) as ca:
            client = self.client(ca)
            await client.start()
            self.assertIn("newOrder", client.directory)
            path = ca.root_file
            self.assertEqual(open(path, "rb").read(), ca.root_pem)
        self.assertFalse(os.path.exists(path))


# -- JWS ----------------------------------------------------------------------


class JWSTests(CATestCase):
    async def test_account_lifecycle(self) -> None:
        """201 + Location for a new account; the same key again gives 200 and the same URL."""
        ca, client = await self.start_ca()
        created = await client.new_account(contact=["mailto:a@example.com"])
        self.assertEqual(created.code, 201)
        self.assertEqual(created.json()["status"], "valid")
        self.assertEqual(created.json()["orders"], created.header("location") + "/orders")
        self.assertIn(f'<{ca.terms_of_service}>;rel="terms-of-service"', created.headers["link"])
        again = await client.post(client.directory["newAccount"], {}, use_jwk=True)
        self.assertEqual(again.code, 200)
        self.assertEqual(again.header("location"), created.header("location"))
        stranger = self.client(ca)
        stranger.directory = client.directory
        lookup = await stranger.post(
            client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
        )
        self.assertEqual(lookup.problem, "accountDoesNotExist")

    async def test_algorithms(self) -> None:
        """ES256, ES384, ES512 and RS256 accounts are accepted; weak keys are not."""
        ca, client = await self.start_ca()
        keys = [
            ec_key(ec.SECP384R1()),
            ec_key(ec.SECP521R1()),
            JWKRSA(key=rsa.generate_private_key(65537, 2048)),
        ]
        for key in keys:
            other = self.client(ca, key)
            other.directory = client.directory
            reply = await other.new_account()
            self.assertEqual(reply.code, 201, alg_for(key))
            order = await other.new_order("x.test")
            self.assertEqual(order.code, 201, alg_for(key))
        weak = self.client(ca, JWKRSA(key=rsa.generate_private_key(65537, 1024)))
        weak.directory = client.directory
        self.assertEqual((await weak.new_account()).problem, "badPublicKey")

    async def test_signature_checks(self) -> None:
        """Bad signatures, algorithms and key/alg mismatches are refused."""
        ca, client = await self.start_ca()
        await client.new_account()
        url = client.directory["newOrder"]
        order = {"identifiers": [{"type": "dns", "value": "x.test"}]}
        tampered = await client.post(url, order, tamper=True)
        self.assertEqual((tampered.code, tampered.problem), (400, "malformed"))
        self.assertIn("signature", tampered.json()["detail"])
        for alg in ("none", "HS256"):
            reply = await client.post(url, order, protected={"alg": alg})
            self.assertEqual(reply.problem, "badSignatureAlgorithm", alg)
            self.assertIn("ES256", reply.json()["algorithms"])
        mismatch = await client.post(url, order, protected={"alg": "ES384"})
        self.assertEqual(mismatch.problem, "badSignatureAlgorithm")
        private = await client.post(
            client.directory["newAccount"],
            {},
            use_jwk=True,
            protected={"jwk": client.key.to_json()},
        )
        self.assertEqual(private.problem, "badPublicKey")

    async def test_url_and_key_headers(self) -> None:
        """The url header must be the request URL; exactly one of jwk/kid, as the resource needs."""
        ca, client = await self.start_ca()
        await client.new_account()
        url = client.directory["newOrder"]
        order = {"identifiers": [{"type": "dns", "value": "x.test"}]}
        wrong_url = await client.post(url, order, protected={"url": client.directory["newNonce"]})
        self.assertEqual((wrong_url.code, wrong_url.problem), (403, "unauthorized"))
        both = await client.post(url, order, protected={"jwk": client.key.public_key().to_json()})
        self.assertEqual(both.problem, "malformed")
        jwk_for_order = await client.post(url, order, use_jwk=True)
        self.assertEqual(jwk_for_order.problem, "malformed")
        self.assertIn("kid", jwk_for_order.json()["detail"])
        kid_for_account = await client.post(client.directory["newAccount"], {}, use_jwk=False)
        self.assertEqual(kid_for_account.problem, "malformed")
        unknown = await client.post(url, order, kid=ca.base_url + "/acme/acct/nobody")
        self.assertEqual(unknown.problem, "accountDoesNotExist")

    async def test_envelope_checks(self) -> None:
        """Content-Type, the unprotected header and a missing url are refused."""
        ca, client = await self.start_ca()
        await client.new_account()
        url = client.directory["newOrder"]
        order = {"identifiers": [{"type": "dns", "value": "x.test"}]}
        wrong_type = await client.post(url, order, ctype="application/json")
        self.assertEqual((wrong_type.code, wrong_type.problem), (415, "malformed"))
        unprotected = await client.post(url, order, extra_members={"header": {"kid": "x"}})
        self.assertEqual(unprotected.problem, "malformed")
        no_url = await client.post(url, order, protected={"url": None})
        self.assertEqual(no_url.problem, "malformed")
        garbage = await client.request("POST", url, b"{not json", "application/jose+json")
        self.assertEqual(garbage.problem, "malformed")

    async def test_nonce_checks(self) -> None:
        """A reused, unknown or missing nonce is badNonce; the problem carries a fresh nonce."""
        ca, client = await self.start_ca()
        await client.new_account()
        url = client.directory["newOrder"]
        order = {"identifiers": [{"type": "dns", "value": "x.test"}]}
        nonce = await client.nonce()
        first = await client.post(url, order, nonce=nonce)
        self.assertEqual(first.code, 201)
        replay = await client.post(url, order, nonce=nonce)
        self.assertEqual((replay.code, replay.problem), (400, "badNonce"))
        fresh = replay.header("replay-nonce")
        self.assertEqual((await client.post(url, order, nonce=fresh)).code, 201)
        unknown = await client.post(url, order, nonce=b64(os.urandom(16)))
        self.assertEqual(unknown.problem, "badNonce")
        body = client.sign(url, order, None)
        missing = await client.request(
            "POST", url, json.dumps(body).encode(), "application/jose+json"
        )
        self.assertEqual(missing.problem, "badNonce")

    async def test_bad_nonce_rate(self) -> None:
        """With bad_nonce_rate=1 every good nonce is rejected."""
        ca, client = await self.start_ca(bad_nonce_rate=1.0)
        reply = await client.new_account()
        self.assertEqual(reply.problem, "badNonce")
        ca.bad_nonce_rate = 0.0
        self.assertEqual((await client.new_account()).code, 201)

    async def test_post_as_get_recorded(self) -> None:
        """Request records tell POST-as-GET from POSTs with a payload."""
        ca, client = await self.start_ca()
        await client.new_account()
        order = await client.new_order("x.test")
        await client.post(order.header("location"))
        records = [(r.endpoint, r.post_as_get, r.status) for r in ca.requests]
        self.assertIn(("newOrder", False, 201), records)
        self.assertIn(("order", True, 200), records)
        bad = await client.post(order.header("location"), {})
        self.assertEqual(bad.problem, "malformed")


# -- accounts -------------------------------------------------------------------


class AccountTests(CATestCase):
    async def test_contact_update_and_checks(self) -> None:
        """Contacts are mailto: addresses; they can be updated."""
        ca, client = await self.start_ca()
        bad = await client.new_account(contact=["tel:+1555"])
        self.assertEqual(bad.problem, "unsupportedContact")
        bad = await client.new_account(contact=["mailto:a@b.test,c@d.test"])
        self.assertEqual(bad.problem, "invalidContact")
        await client.new_account(contact=["mailto:a@example.com"])
        assert client.kid is not None
        updated = await client.post(client.kid, {"contact": ["mailto:b@example.com"]})
        self.assertEqual(updated.json()["contact"], ["mailto:b@example.com"])
        fetched = await client.post(client.kid)
        self.assertEqual(fetched.json()["contact"], ["mailto:b@example.com"])

    async def test_terms_agreement_required(self) -> None:
        """require_terms_agreement refuses accounts that do not agree."""
        ca, client = await self.start_ca(require_terms_agreement=True)
        refused = await client.new_account(termsOfServiceAgreed=False)
        self.assertEqual(refused.problem, "malformed")
        self.assertEqual((await client.new_account()).code, 201)

    async def test_deactivation(self) -> None:
        """A deactivated account can no longer act; its pending authorizations are deactivated."""
        ca, client = await self.start_ca()
        await client.new_account()
        order = await client.new_order("x.test")
        assert client.kid is not None
        reply = await client.post(client.kid, {"status": "deactivated"})
        self.assertEqual(reply.json()["status"], "deactivated")
        refused = await client.post(order.header("location"))
        self.assertEqual((refused.code, refused.problem), (403, "unauthorized"))
        again = await client.post(client.directory["newAccount"], {}, use_jwk=True)
        self.assertEqual((again.code, again.problem), (403, "unauthorized"))
        authz = ca._authzs[order.json()["authorizations"][0].rsplit("/", 1)[1]]
        self.assertEqual(authz.status, "deactivated")

    async def test_key_change(self) -> None:
        """keyChange rolls the account key; the old key no longer finds the account."""
        ca, client = await self.start_ca()
        await client.new_account()
        old_key, new_key = client.key, ec_key(ec.SECP384R1())
        url = client.directory["keyChange"]
        assert client.kid is not None
        inner = client.sign(
            url,
            {"account": client.kid, "oldKey": old_key.public_key().to_json()},
            None,
            key=new_key,
            use_jwk=True,
        )
        reply = await client.post(url, inner)
        self.assertEqual(reply.code, 200, reply.body)
        client.key = new_key
        self.assertEqual((await client.new_order("x.test")).code, 201)
        old = self.client(ca, old_key)
        old.directory = client.directory
        lookup = await old.post(
            client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
        )
        self.assertEqual(lookup.problem, "accountDoesNotExist")
        # The inner JWS must name the account's current key.
        inner = client.sign(
            url,
            {"account": client.kid, "oldKey": old_key.public_key().to_json()},
            None,
            key=ec_key(),
            use_jwk=True,
        )
        self.assertEqual((await client.post(url, inner)).problem, "unauthorized")

    async def test_external_account_binding(self) -> None:
        """EAB: required, checked (kid, MAC, key, url), then accepted."""
        ca, client = await self.start_ca(eab_required=True)
        self.assertIs(client.directory["meta"]["externalAccountRequired"], True)
        ((eab_kid, mac_b64),) = ca.eab_keys.items()
        missing = await client.new_account()
        self.assertEqual(missing.problem, "externalAccountRequired")

        def binding(mac_key: bytes, kid: str = eab_kid, key: JWK | None = None) -> dict[str, str]:
            protected = b64(
                json.dumps(
                    {"alg": "HS256", "kid": kid, "url": client.directory["newAccount"]}
                ).encode()
            )
            payload = b64(json.dumps((key or client.key).public_key().to_json()).encode())
            mac = hmac.new(mac_key, f"{protected}.{payload}".encode(), "sha256").digest()
            return {"protected": protected, "payload": payload, "signature": b64(mac)}

        mac_key = base64.urlsafe_b64decode(mac_b64 + "=" * (-len(mac_b64) % 4))
        wrong_mac = await client.new_account(externalAccountBinding=binding(b"wrong"))
        self.assertEqual(wrong_mac.problem, "unauthorized")
        wrong_kid = await client.new_account(externalAccountBinding=binding(mac_key, "nope"))
        self.assertEqual(wrong_kid.problem, "unauthorized")
        other_key = await client.new_account(externalAccountBinding=binding(mac_key, key=ec_key()))
        self.assertEqual(other_key.problem, "unauthorized")
        ok = await client.new_account(externalAccountBinding=binding(mac_key))
        self.assertEqual(ok.code, 201, ok.body)


# -- orders, validation, issuance ---------------------------------------------------


class IssuanceTests(CATestCase):
    async def test_http01_flow(self) -> None:
        """The whole RFC 8555 flow over http-01, with its headers."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        order = await client.new_order("www.x.test", "x.test")
        self.assertEqual(order.code, 201)
        body = order.json()
        self.assertEqual(body["status"], "pending")
        self.assertTrue(order.header("location").startswith(ca.base_url + "/acme/order/"))
        self.assertEqual(len(body["authorizations"]), 2)
        self.assertEqual(body["profile"], "classic")
        authz = (await client.post(body["authorizations"][0])).json()
        self.assertEqual(sorted(c["type"] for c in authz["challenges"]), ["http-01", "tls-alpn-01"])
        early = await client.finalize(order, ["x.test", "www.x.test"])
        self.assertEqual((early.code, early.problem), (403, "orderNotReady"))
        for index in range(2):
            challenge = await client.challenge(order, "http-01", index)
            token = challenge["token"]
            tokens.tokens[token] = client.key_authorization(token).encode()
            answered = await client.post(challenge["url"], {})
            self.assertEqual(answered.code, 200)
            self.assertEqual(answered.json()["status"], "processing")
            self.assertEqual(answered.header("retry-after"), "1")
            up = f'<{order.json()["authorizations"][index]}>;rel="up"'
            self.assertIn(up, answered.headers["link"])
        await ca.idle()
        self.assertEqual(sorted(tokens.hosts), ["www.x.test", "x.test"])
        ready = await client.post(order.header("location"))
        self.assertEqual(ready.json()["status"], "ready")
        finalized = await client.finalize(order, ["x.test", "www.x.test"])
        self.assertEqual(finalized.code, 200)
        self.assertEqual(finalized.json()["status"], "processing")
        self.assertEqual(finalized.header("retry-after"), "1")
        self.assertEqual(finalized.header("location"), order.header("location"))
        await ca.idle()
        done = await client.post(order.header("location"))
        self.assertEqual(done.json()["status"], "valid")
        chain = await client.post(done.json()["certificate"])
        self.assertEqual(chain.header("content-type"), "application/pem-certificate-chain")
        certs = x509.load_pem_x509_certificates(chain.body)
        self.assertEqual(len(certs), 2)
        leaf = certs[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sorted(sans.get_values_for_type(x509.DNSName)), ["www.x.test", "x.test"])
        self.assertEqual(
            leaf.not_valid_after_utc - leaf.not_valid_before_utc,
            datetime.timedelta(days=90, seconds=-1),
        )
        verified = verify_chain(chain.body, ca.root_pem, "www.x.test", ca.now())
        self.assertEqual(verified[-1], ca.root)
        self.assertEqual(ca.certificates[0].certificate, leaf)
        self.assertFalse(ca.is_revoked(chain.body))

    async def test_http01_failures(self) -> None:
        """A wrong body is incorrectResponse, a 404 unauthorized, no listener connection."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        cases = [("wrong", b"not the key authorization"), ("missing", None)]
        expected = {"wrong": "incorrectResponse", "missing": "unauthorized"}
        for label, body in cases:
            order = await client.new_order(f"{label}.x.test")
            challenge = await client.challenge(order, "http-01")
            if body is not None:
                tokens.tokens[challenge["token"]] = body
            await client.post(challenge["url"], {})
            await ca.idle()
            authz = (await client.post(order.json()["authorizations"][0])).json()
            self.assertEqual(authz["status"], "invalid")
            failed = next(c for c in authz["challenges"] if c["type"] == "http-01")
            self.assertEqual(failed["error"]["type"], ACME + expected[label])
            self.assertEqual(failed["error"]["identifier"]["value"], f"{label}.x.test")
            order_now = (await client.post(order.header("location"))).json()
            self.assertEqual(order_now["status"], "invalid")
            self.assertEqual(order_now["error"]["type"], ACME + expected[label])
        ca.http01_port = 1  # nothing listens there
        order = await client.new_order("refused.x.test")
        challenge = await client.challenge(order, "http-01")
        await client.post(challenge["url"], {})
        await ca.idle()
        authz = (await client.post(order.json()["authorizations"][0])).json()
        self.assertEqual(authz["challenges"][0]["error"]["type"], ACME + "connection")

    async def test_finalize_checks(self) -> None:
        """The CSR must match the order and must not use the account key."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        order = await self.valid_order(ca, client, tokens, "x.test")
        wrong_names = await client.finalize(order, ["x.test", "y.test"])
        self.assertEqual(wrong_names.problem, "badCSR")
        raw: Any = client.key.key
        account_key = await client.finalize(order, ["x.test"], key=raw._wrapped)
        self.assertEqual(account_key.problem, "badCSR")
        garbage = await client.post(order.json()["finalize"], {"csr": "AAAA"})
        self.assertEqual(garbage.problem, "badCSR")
        self.assertEqual((await client.finalize(order, ["x.test"])).code, 200)

    async def test_identifiers(self) -> None:
        """Bad, forbidden and unsupported identifiers are refused; IPs get no dns-01."""
        ca, client = await self.start_ca()
        await client.new_account()
        for names, problem in [
            (["bad_name.test"], "rejectedIdentifier"),
            (["*.*.x.test"], "rejectedIdentifier"),
            (["localhost"], "rejectedIdentifier"),
            (["*.x.test"], "rejectedIdentifier"),  # no dns-01 without a DNS server
        ]:
            reply = await client.new_order(*names)
            self.assertEqual(reply.problem, problem, names)
        email = await client.post(
            client.directory["newOrder"],
            {"identifiers": [{"type": "email", "value": "a@x.test"}]},
        )
        self.assertEqual(email.problem, "unsupportedIdentifier")
        ca.forbidden_names.add("blocked.test")
        blocked = await client.new_order("blocked.test")
        self.assertEqual(blocked.problem, "rejectedIdentifier")
        self.assertEqual(blocked.json()["identifier"]["value"], "blocked.test")
        order = await client.new_order("127.0.0.1", "X.Test")
        self.assertEqual(
            order.json()["identifiers"],
            [{"type": "ip", "value": "127.0.0.1"}, {"type": "dns", "value": "x.test"}],
        )
        authz = (await client.post(order.json()["authorizations"][0])).json()
        self.assertEqual(authz["identifier"], {"type": "ip", "value": "127.0.0.1"})
        self.assertEqual(sorted(c["type"] for c in authz["challenges"]), ["http-01", "tls-alpn-01"])

    async def test_ip_identifier_http01(self) -> None:
        """An IP identifier is validated with the address as the Host header."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        done, chain = await self.issue(ca, client, tokens, "127.0.0.1")
        self.assertEqual(tokens.hosts, ["127.0.0.1"])
        verify_chain(chain, ca.root_pem, "127.0.0.1", ca.now())

    async def test_profiles(self) -> None:
        """The profile chooses the lifetime; unknown profiles are refused."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(
            http01_port=port,
            profiles={
                "classic": Profile("90 days", datetime.timedelta(days=90)),
                "tiny": Profile("one hour", datetime.timedelta(hours=1)),
            },
        )
        await client.new_account()
        refused = await client.new_order("x.test", profile="nope")
        self.assertEqual(refused.problem, "invalidProfile")
        done, chain = await self.issue(ca, client, tokens, "x.test", profile="tiny")
        self.assertEqual(done.json()["profile"], "tiny")
        leaf = x509.load_pem_x509_certificate(chain)
        self.assertEqual(
            leaf.not_valid_after_utc - leaf.not_valid_before_utc,
            datetime.timedelta(hours=1, seconds=-1),
        )

    async def test_authorization_reuse_and_deactivation(self) -> None:
        """With reuse a second order is ready at once; a deactivated authorization is not."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port, reuse_authorizations=True)
        await client.new_account()
        first = await self.valid_order(ca, client, tokens, "x.test")
        second = await client.new_order("x.test")
        self.assertEqual(second.json()["status"], "ready")
        self.assertEqual(second.json()["authorizations"], first.json()["authorizations"])
        first_authz = first.json()["authorizations"][0]
        deactivated = await client.post(first_authz, {"status": "deactivated"})
        self.assertEqual(deactivated.json()["status"], "deactivated")
        third = await client.new_order("x.test")
        self.assertEqual(third.json()["status"], "pending")
        self.assertNotEqual(third.json()["authorizations"], first.json()["authorizations"])
        listing = (await client.post(client.kid + "/orders")).json()  # type: ignore[operator]
        self.assertEqual(len(listing["orders"]), 3)

    async def test_resources_belong_to_their_account(self) -> None:
        """Another account may not read an order, authorization or certificate."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        done, _ = await self.issue(ca, client, tokens, "x.test")
        other = self.client(ca)
        other.directory = client.directory
        await other.new_account()
        for url in (
            done.header("location"),
            done.json()["authorizations"][0],
            done.json()["certificate"],
        ):
            self.assertEqual((await other.post(url)).problem, "unauthorized", url)

    async def test_alternate_chains(self) -> None:
        """Alternate chains are linked with rel=alternate and lead to alternate roots."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port, alternate_chains=1)
        await client.new_account()
        done, chain = await self.issue(ca, client, tokens, "x.test")
        url = done.json()["certificate"]
        default = await client.post(url)
        self.assertEqual(" ".join(default.headers["link"]).count('rel="alternate"'), 1)
        alternate_url = next(
            link.split(">")[0][1:] for link in default.headers["link"] if "alternate" in link
        )
        alternate = await client.post(alternate_url)
        self.assertIn(f"<{url}>", " ".join(alternate.headers["link"]))
        self.assertEqual(len(ca.root_pems), 2)
        verify_chain(alternate.body, ca.root_pems[1], "x.test", ca.now())
        with self.assertRaises(verification.VerificationError):
            verify_chain(alternate.body, ca.root_pem, "x.test", ca.now())
        self.assertEqual(
            x509.load_pem_x509_certificates(alternate.body)[0],
            x509.load_pem_x509_certificate(chain),
        )


class TLSALPN01Tests(CATestCase):
    async def _validate(
        self, name: str, digest: bytes | None = None, alpn: bool = True, critical: bool = True
    ) -> dict[str, Any]:
        ca, client = await self.start_ca()
        await client.new_account()
        order = await client.new_order(name)
        challenge = await client.challenge(order, "tls-alpn-01")
        key, cert = alpn_certificate(
            name, client.key_authorization(challenge["token"]), digest, critical
        )
        ca.tlsalpn01_port = listen_tlsalpn01(self, key, cert, alpn)
        await client.post(challenge["url"], {})
        await ca.idle()
        authz = (await client.post(order.json()["authorizations"][0])).json()
        result: dict[str, Any] = next(c for c in authz["challenges"] if c["type"] == "tls-alpn-01")
        return result

    async def test_valid(self) -> None:
        """A correct acme-tls/1 certificate validates a DNS name."""
        result = await self._validate("x.test")
        self.assertEqual(result["status"], "valid")
        self.assertIn("validated", result)

    async def test_valid_ip(self) -> None:
        """A correct acme-tls/1 certificate validates an IP address."""
        self.assertEqual((await self._validate("127.0.0.1"))["status"], "valid")

    async def test_wrong_digest(self) -> None:
        """A wrong acmeIdentifier digest is incorrectResponse."""
        result = await self._validate("x.test", digest=b"\0" * 32)
        self.assertEqual(result["error"]["type"], ACME + "incorrectResponse")

    async def test_not_critical(self) -> None:
        """The acmeIdentifier extension must be critical."""
        result = await self._validate("x.test", critical=False)
        self.assertEqual(result["error"]["type"], ACME + "unauthorized")

    async def test_no_alpn(self) -> None:
        """A server that does not negotiate acme-tls/1 fails with a tls problem."""
        result = await self._validate("x.test", alpn=False)
        self.assertEqual(result["status"], "invalid")
        self.assertIn(result["error"]["type"], (ACME + "tls", ACME + "connection"))


class DNS01Tests(CATestCase):
    async def test_dns01_and_wildcard(self) -> None:
        """dns-01 asks the configured DNS server; wildcards get only dns-01."""
        dns = await TestDNSServer.start(R)
        self.addCleanup(dns.stop)
        ca, client = await self.start_ca(dns_server=dns.address)
        await client.new_account()
        order = await client.new_order("*.x.test")
        authz = (await client.post(order.json()["authorizations"][0])).json()
        self.assertEqual(authz["identifier"], {"type": "dns", "value": "x.test"})
        self.assertIs(authz["wildcard"], True)
        self.assertEqual([c["type"] for c in authz["challenges"]], ["dns-01"])
        challenge = authz["challenges"][0]
        value = dns01_txt_value(client.key_authorization(challenge["token"]))
        dns.set_txt("_acme-challenge.x.test", "unrelated", value)
        await client.post(challenge["url"], {})
        await ca.idle()
        self.assertEqual((await client.post(order.header("location"))).json()["status"], "ready")
        finalized = await client.finalize(order, ["*.x.test"])
        self.assertEqual(finalized.code, 200)
        await ca.idle()
        done = (await client.post(order.header("location"))).json()
        chain = (await client.post(done["certificate"])).body
        verify_chain(chain, ca.root_pem, "anything.x.test", ca.now())

    async def test_dns01_failures(self) -> None:
        """A missing record is a dns problem, a wrong one unauthorized."""
        dns = await TestDNSServer.start(R)
        self.addCleanup(dns.stop)
        ca, client = await self.start_ca(dns_server=dns.address, challenge_types=["dns-01"])
        await client.new_account()
        dns.set_txt("_acme-challenge.wrong.test", "nope")
        for name, problem in [("missing.test", "dns"), ("wrong.test", "unauthorized")]:
            order = await client.new_order(name)
            challenge = await client.challenge(order, "dns-01")
            await client.post(challenge["url"], {})
            await ca.idle()
            authz = (await client.post(order.json()["authorizations"][0])).json()
            self.assertEqual(authz["challenges"][0]["error"]["type"], ACME + problem, name)


# -- revocation, ARI, clock, faults ----------------------------------------------------


class RevocationTests(CATestCase):
    async def test_revocation(self) -> None:
        """Revocation by the account, by the certificate key, and refusals."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        cert_key = ec.generate_private_key(ec.SECP256R1())
        order = await self.valid_order(ca, client, tokens, "x.test")
        await client.finalize(order, ["x.test"], key=cert_key)
        await ca.idle()
        done = (await client.post(order.header("location"))).json()
        pem_chain = (await client.post(done["certificate"])).body
        der = x509.load_pem_x509_certificate(pem_chain).public_bytes(serialization.Encoding.DER)
        url = client.directory["revokeCert"]
        stranger = self.client(ca)
        stranger.directory = client.directory
        await stranger.new_account()
        refused = await stranger.post(url, {"certificate": b64(der)})
        self.assertEqual(refused.problem, "unauthorized")
        bad_reason = await client.post(url, {"certificate": b64(der), "reason": 7})
        self.assertEqual(bad_reason.problem, "badRevocationReason")
        ok = await client.post(url, {"certificate": b64(der), "reason": 4})
        self.assertEqual(ok.code, 200)
        self.assertTrue(ca.is_revoked(pem_chain))
        self.assertEqual(ca.record_for(pem_chain).revocation_reason, 4)
        again = await client.post(
            url, {"certificate": b64(der)}, key=JWKEC(key=cert_key), use_jwk=True
        )
        self.assertEqual(again.problem, "alreadyRevoked")
        unknown = await client.post(url, {"certificate": b64(der[:-3] + b"abc")})
        self.assertIn(unknown.problem, ("malformed",))

    async def test_revocation_by_certificate_key(self) -> None:
        """The certificate's key may revoke it (jwk-signed request)."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        cert_key = ec.generate_private_key(ec.SECP256R1())
        order = await self.valid_order(ca, client, tokens, "x.test")
        await client.finalize(order, ["x.test"], key=cert_key)
        await ca.idle()
        record = ca.certificates[0]
        der = record.certificate.public_bytes(serialization.Encoding.DER)
        wrong_key = await client.post(
            client.directory["revokeCert"], {"certificate": b64(der)}, key=ec_key(), use_jwk=True
        )
        self.assertEqual(wrong_key.problem, "unauthorized")
        ok = await client.post(
            client.directory["revokeCert"],
            {"certificate": b64(der), "reason": 1},
            key=JWKEC(key=cert_key),
            use_jwk=True,
        )
        self.assertEqual(ok.code, 200, ok.body)
        self.assertEqual(record.revocation_reason, 1)


class RenewalInfoTests(CATestCase):
    async def test_renewal_info(self) -> None:
        """ARI: default window, Retry-After, a moved window, a revoked certificate, 404."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port, ari_retry_after=3600)
        await client.new_account()
        _, chain = await self.issue(ca, client, tokens, "x.test")
        leaf = x509.load_pem_x509_certificate(chain)
        ari = client.directory["renewalInfo"] + "/" + cert_id(leaf)
        reply = await client.request("GET", ari)
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.header("retry-after"), "3600")
        window = reply.json()["suggestedWindow"]
        start = datetime.datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
        nb = leaf.not_valid_before_utc
        self.assertLess(abs((start - nb) - datetime.timedelta(days=60)).total_seconds(), 2)
        moved_start = ca.now() - datetime.timedelta(days=1)
        moved_end = ca.now() + datetime.timedelta(days=1)
        ca.set_renewal_window(leaf, moved_start, moved_end, "https://testca.invalid/why")
        moved = (await client.request("GET", ari)).json()
        self.assertEqual(moved["explanationURL"], "https://testca.invalid/why")
        self.assertEqual(moved["suggestedWindow"]["end"], moved_end.strftime("%Y-%m-%dT%H:%M:%SZ"))
        missing = await client.request("GET", client.directory["renewalInfo"] + "/AAAA.AAAA")
        self.assertEqual((missing.code, missing.problem), (404, "malformed"))
        self.assertEqual((await client.request("POST", ari, b"{}", "application/json")).code, 405)

    async def test_revoked_certificate_window_is_past(self) -> None:
        """After revocation the ARI window lies in the past: renew now."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        _, chain = await self.issue(ca, client, tokens, "x.test")
        der = x509.load_pem_x509_certificate(chain).public_bytes(serialization.Encoding.DER)
        await client.post(client.directory["revokeCert"], {"certificate": b64(der)})
        start, end = ca.renewal_window(chain)
        self.assertLessEqual(end, ca.now())

    async def test_replaces(self) -> None:
        """An order may replace a certificate once; the order echoes 'replaces'."""
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port)
        await client.new_account()
        _, chain = await self.issue(ca, client, tokens, "x.test")
        old_id = cert_id(x509.load_pem_x509_certificate(chain))
        unrelated = await client.new_order("y.test", replaces=old_id)
        self.assertEqual(unrelated.problem, "malformed")
        renewal = await client.new_order("x.test", replaces=old_id)
        self.assertEqual(renewal.code, 201, renewal.body)
        self.assertEqual(renewal.json()["replaces"], old_id)
        self.assertEqual(ca.record_for(old_id).replaced_by, renewal.header("location"))
        twice = await client.new_order("x.test", replaces=old_id)
        self.assertEqual((twice.code, twice.problem), (409, "alreadyReplaced"))
        other = self.client(ca)
        other.directory = client.directory
        await other.new_account()
        foreign = await other.new_order("x.test", replaces=old_id)
        self.assertEqual(foreign.problem, "unauthorized")
        unknown = await client.new_order("x.test", replaces="AAAA.AAAA")
        self.assertEqual(unknown.problem, "malformed")


class ClockTests(CATestCase):
    async def test_clock_moves_validity_and_ari(self) -> None:
        """A task.Clock drives certificate dates: move it into the ARI window, renew, and
        the new certificate starts at the moved time."""
        clock = task.Clock()
        start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
        clock.advance(start.timestamp())
        tokens, port = listen_http01(self)
        ca, client = await self.start_ca(http01_port=port, clock=clock)
        self.assertEqual(ca.now(), start)
        await client.new_account()
        _, chain = await self.issue(ca, client, tokens, "x.test")
        first = x509.load_pem_x509_certificate(chain)
        self.assertEqual(first.not_valid_before_utc, start - datetime.timedelta(minutes=1))
        window_start, window_end = ca.renewal_window(first)
        self.assertGreater(window_start, ca.now())
        clock.advance(datetime.timedelta(days=61).total_seconds())
        self.assertTrue(window_start <= ca.now() <= window_end)
        _, renewed = await self.issue(ca, client, tokens, "x.test", replaces=cert_id(first))
        second = x509.load_pem_x509_certificate(renewed)
        self.assertEqual(
            second.not_valid_before_utc,
            start + datetime.timedelta(days=61) - datetime.timedelta(minutes=1),
        )
        verify_chain(renewed, ca.root_pem, "x.test", ca.now())

    async def test_advance_expires_orders(self) -> None:
        """advance() moves the CA's own clock: pending orders expire after a week."""
        ca, client = await self.start_ca()
        await client.new_account()
        order = await client.new_order("x.test")
        before = ca.now()
        ca.advance(datetime.timedelta(days=8))
        self.assertGreaterEqual((ca.now() - before).total_seconds(), 8 * 86400)
        expired = (await client.post(order.header("location"))).json()
        self.assertEqual(expired["status"], "invalid")
        authz = (await client.post(order.json()["authorizations"][0])).json()
        self.assertEqual(authz["status"], "expired")


class FaultTests(CATestCase):
    async def test_fail_next(self) -> None:
        """An injected problem answers the next matching request only, with its headers."""
        ca, client = await self.start_ca()
        await client.new_account()
        ca.fail_next("rateLimited", "slow down", endpoint="newOrder", retry_after=7)
        nonce_reply = await client.request("HEAD", client.directory["newNonce"])
        self.assertEqual(nonce_reply.code, 200)
        limited = await client.new_order("x.test")
        self.assertEqual((limited.code, limited.problem), (429, "rateLimited"))
        self.assertEqual(limited.json()["detail"], "slow down")
        self.assertEqual(limited.header("retry-after"), "7")
        self.assertTrue(limited.header("replay-nonce"))
        self.assertEqual((await client.new_order("x.test")).code, 201)
        ca.fail_next("serverInternal", count=2)
        self.assertEqual((await client.request("GET", ca.directory_url)).code, 500)
        self.assertEqual((await client.request("GET", ca.directory_url)).code, 500)
        self.assertEqual((await client.request("GET", ca.directory_url)).code, 200)
        self.assertEqual(
            [r.problem for r in ca.requests[-3:]], [ACME + "serverInternal"] * 2 + [None]
        )

    async def test_delay_next(self) -> None:
        """A delayed request is answered after requests sent later."""
        ca, client = await self.start_ca()
        ca.delay_next(0.3, endpoint="directory")
        order: list[str] = []
        slow = defer.Deferred.fromCoroutine(client.request("GET", ca.directory_url))
        slow.addCallback(lambda _: order.append("delayed"))
        other = self.client(ca)
        await other.request("HEAD", client.directory["newNonce"])
        order.append("prompt")
        await slow
        await ca.idle()
        self.assertEqual(order, ["prompt", "delayed"])


# -- the subprocess runner and its pytest fixture --------------------------------------

ca_process = pytest_fixture()


def test_process_fixture(ca_process: Any) -> None:
    """The pytest fixture runs a TestCA in a child process that tests control over HTTPS."""
    context = ssl.create_default_context(cafile=ca_process.https_ca_file)
    with urllib.request.urlopen(ca_process.directory_url, context=context) as response:
        directory = json.load(response)
    assert directory["renewalInfo"].startswith(ca_process.base_url)
    assert ca_process.root_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    before = ca_process.now()
    ca_process.advance(datetime.timedelta(days=2))
    assert (ca_process.now() - before).total_seconds() >= 2 * 86400
    ca_process.fail_next("serverInternal", endpoint="directory")
    try:
        urllib.request.urlopen(ca_process.directory_url, context=context)
    except urllib.error.HTTPError as error:
        assert error.code == 500
    else:
        raise AssertionError("the injected fault was not served")
    served = ca_process.requests()
    assert [(r["endpoint"], r["status"]) for r in served] == [
        ("directory", 200),
        ("directory", 500),
    ]
    files = ca_process.https_ca_file
    ca_process.stop()
    assert not os.path.exists(files)


# -- DNS queries of the validator ---------------------------------------------------------------


class _DropsFirst(DatagramProtocol):
    """A DNS server on loopback that ignores the first query it gets, then answers TXT ``ok``."""

    def __init__(self) -> None:
        self.queries = 0
        self.ids: list[int] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        message = dns.Message()
        message.fromStr(data)
        self.queries += 1
        self.ids.append(message.id)
        if self.queries == 1:
            return  # as a lost packet
        message.answer = True
        message.answers = [
            dns.RRHeader(
                message.queries[0].name.name, dns.TXT, payload=dns.Record_TXT(b"ok", ttl=60)
            )
        ]
        assert self.transport is not None
        self.transport.write(message.toStr(), addr)


class ValidatorDNSTests(unittest.TestCase):
    def test_resends_fill_the_budget(self) -> None:
        """Sent again after 1 s, then waits that double; the waits add up to the budget."""
        self.assertEqual(_resends(5.0), (1.0, 2.0, 2.0))
        self.assertEqual(_resends(0.5), (0.5,))
        for total in (1.0, 2.0, 5.0, 10.0, 30.0):
            waits = _resends(total)
            self.assertAlmostEqual(sum(waits), total)
            self.assertEqual(waits[0], 1.0)

    @defer.inlineCallbacks
    def test_a_lost_query_is_sent_again(self) -> Any:
        """The first query lost: the validator asks again (same id) and gets the record."""
        server = _DropsFirst()
        port = reactor.listenUDP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        validator = Validator(reactor, 5.0)
        self.addCleanup(validator.close)
        records = yield defer.Deferred.fromCoroutine(
            validator._txt("_acme-challenge.example.test", ("127.0.0.1", port.getHost().port))
        )
        self.assertEqual(records, [b"ok"])
        self.assertEqual(server.queries, 2)
        self.assertEqual(server.ids[0], server.ids[1])
