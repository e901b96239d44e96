"""
Unit tests for txacme.protocol.client and txacme.issuing.order, without any network.

The client talks to :class:`FakeCA`, a small in-memory ACME server (a
``twisted.web`` resource behind ``treq.testing.StubTreq``) that verifies every
JWS it gets: signature, ``url``, nonce freshness, ``jwk`` versus ``kid``. Time is
a :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import hmac
import itertools
import json
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from acme import challenges, messages
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256, ES384, RS256
from josepy.jwk import JWK, JWKEC, JWKRSA, JWKOct
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.harness.logcapture import txacme_log_level
from txacme import errors
from txacme.issuing.order import IssuedCertificate, challenge_response, obtain_certificate
from txacme.keys import jws_algorithm
from txacme.protocol.ari import ari_cert_id
from txacme.protocol.client import Client
from txacme.protocol.resources import EAB, CertificateChain, RenewalInfo, identifier_for
from txacme.protocol.transport import parse_retry_after
from txacme.testing import make_certificate

BASE = "https://ca.test"
PROBLEM = "urn:ietf:params:acme:error:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def thumbprint(jwk: JWK) -> str:
    """RFC 7638 thumbprint, computed here without josepy's helper."""
    full = jwk.public_key().to_partial_json()
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[full["kty"]]
    canonical = json.dumps({k: full[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


def name_(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_cert(
    cn: str, key: Any, issuer_cn: str, issuer_key: Any, now: datetime.datetime
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name_(cn))
        .issuer_name(name_(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def drive(clock: task.Clock, d: Deferred[Any], limit: int = 100000) -> Deferred[Any]:
    """Advance ``clock`` from one delayed call to the next until ``d`` fires."""
    for _ in range(limit):
        if d.called:
            break
        calls = clock.getDelayedCalls()
        if not calls:
            break
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    return d


@attrs.define
class Seen:
    """One request the fake CA received."""

    method: str
    path: str
    time: float
    protected: dict[str, Any] = attrs.field(factory=dict)
    payload: Any = None
    raw_payload: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)


Reply = tuple[int, dict[str, str], bytes]


def problem(code: str, status: int = 400, detail: str = "", **extra: Any) -> Reply:
    doc = {"type": PROBLEM + code, "detail": detail, **extra}
    return status, {"Content-Type": "application/problem+json"}, json.dumps(doc).encode()


def ok_json(doc: Any, status: int = 200, **headers: str) -> Reply:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(doc).encode()


class FakeCA(Resource):
    """A tiny ACME CA in memory. Knobs are public attributes."""

    isLeaf = True

    def __init__(
        self, clock: task.Clock, *, meta: dict[str, Any] | None = None, ari: bool = False
    ) -> None:
        super().__init__()
        self.clock = clock
        self.meta: dict[str, Any] = {"termsOfService": BASE + "/tos"} if meta is None else meta
        self.ari = ari
        self.seen: list[Seen] = []
        self.overrides: dict[str, Callable[[Seen], Reply | None]] = {}
        self.issued_nonces: set[str] = set()
        self.reject_nonces = 0
        self.eab_keys: dict[str, bytes] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.authzs: dict[str, dict[str, Any]] = {}
        self.challenges: dict[str, dict[str, Any]] = {}
        self.certs: dict[str, list[bytes]] = {}
        self.revoked: list[tuple[int, int]] = []
        self.counter = itertools.count(1)
        # behaviour knobs
        self.challenge_types = ["http-01", "dns-01", "tls-alpn-01"]
        self.reuse_valid: set[str] = set()
        self.fail_names: dict[str, dict[str, Any]] = {}
        self.pending_polls = 0
        self.processing_polls = 0
        self.poll_retry_after: str | None = None
        self.ari_window: dict[str, str] = {
            "start": "2030-01-01T00:00:00Z",
            "end": "2030-01-03T00:00:00Z",
        }
        self.ari_retry_after: str | None = None
        self.ari_explanation: str | None = None
        now = datetime.datetime.now(datetime.timezone.utc)
        self.root_key = ec_key()
        self.alt_root_key = ec_key()
        self.inter_key = ec_key()
        self.root = make_ca_cert("Fake Root X1", self.root_key, "Fake Root X1", self.root_key, now)
        self.inter = make_ca_cert(
            "Fake Intermediate A", self.inter_key, "Fake Root X1", self.root_key, now
        )
        self.alt_inter = make_ca_cert(
            "Fake Intermediate A", self.inter_key, "Fake Alt Root", self.alt_root_key, now
        )
        self.alternates = False

    # -- plumbing -------------------------------------------------------------------

    def directory(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "newNonce": BASE + "/nonce",
            "newAccount": BASE + "/new-acct",
            "newOrder": BASE + "/new-order",
            "revokeCert": BASE + "/revoke",
            "keyChange": BASE + "/key-change",
            "meta": self.meta,
        }
        if self.ari:
            d["renewalInfo"] = BASE + "/ari/"
        return d

    def new_nonce(self) -> str:
        nonce = b64(secrets.token_bytes(12))
        self.issued_nonces.add(nonce)
        return nonce

    def posts(self, path_prefix: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path.startswith(path_prefix)]

    def render(self, request: Any) -> bytes:
        method = request.method.decode()
        path = request.path.decode()
        seen = Seen(method=method, path=path, time=self.clock.seconds())
        for key, values in request.requestHeaders.getAllRawHeaders():
            seen.headers[key.decode().lower()] = values[-1].decode()
        self.seen.append(seen)
        body = request.content.read()
        result: Reply | None
        if method == "POST":
            result = self.verify(seen, body)
            if result is None:
                override = self.overrides.get(path)
                result = override(seen) if override is not None else None
                if result is None:
                    result = self.route(seen)
        else:
            override = self.overrides.get(path)
            result = override(seen) if override is not None else None
            if result is None:
                result = self.route_get(seen)
        if result is NOT_DONE_YET:  # type: ignore[comparison-overlap]
            return NOT_DONE_YET  # type: ignore[return-value]
        code, headers, payload = result
        request.setResponseCode(code)
        if path != "/dir":
            request.setHeader("Replay-Nonce", self.new_nonce())
        for key, value in headers.items():
            request.setHeader(key, value)
        return payload

    def verify(self, seen: Seen, body: bytes) -> Reply | None:
        """Check the JWS like a CA would; a problem reply when it is wrong."""
        try:
            outer = json.loads(body)
            seen.protected = json.loads(unb64(outer["protected"]))
            seen.raw_payload = unb64(outer["payload"])
            seen.payload = json.loads(seen.raw_payload) if seen.raw_payload else None
            jws = acme_jws.JWS.from_json(outer)
        except Exception as e:
            return problem("malformed", detail=f"bad JWS: {e}")
        protected = seen.protected
        if protected.get("url") != BASE + seen.path:
            return problem("unauthorized", detail=f"url {protected.get('url')} != {seen.path}")
        nonce = protected.get("nonce")
        if nonce not in self.issued_nonces:
            return problem("badNonce", detail="unknown or reused nonce")
        self.issued_nonces.discard(nonce)
        if self.reject_nonces > 0:
            self.reject_nonces -= 1
            return problem("badNonce", detail="rejected on purpose")
        if ("jwk" in protected) == ("kid" in protected):
            return problem("malformed", detail="need exactly one of jwk and kid")
        if "jwk" in protected:
            key = JWK.from_json(protected["jwk"])
        else:
            account = self.accounts.get(protected["kid"])
            if account is None:
                return problem("accountDoesNotExist", detail="unknown kid")
            if account["status"] != "valid":
                return problem("unauthorized", 403, detail="account is deactivated")
            key = account["jwk"]
        expected_alg = {
            "EC": {"P-256": "ES256", "P-384": "ES384"}.get(key.to_partial_json().get("crv", "")),
            "RSA": "RS256",
        }[key.to_partial_json()["kty"]]
        if protected.get("alg") != expected_alg:
            return problem("badSignatureAlgorithm", detail=f"{protected.get('alg')}")
        if not jws.verify(key):
            return problem("unauthorized", detail="bad signature")
        seen.protected["_key"] = key
        return None

    def route_get(self, seen: Seen) -> Reply:
        if seen.path == "/dir" and seen.method == "GET":
            return ok_json(self.directory())
        if seen.path == "/nonce" and seen.method in ("HEAD", "GET"):
            return 200, {"Cache-Control": "no-store"}, b""
        if seen.path.startswith("/ari/") and self.ari:
            doc: dict[str, Any] = {"suggestedWindow": self.ari_window}
            if self.ari_explanation:
                doc["explanationURL"] = self.ari_explanation
            headers = {"Retry-After": self.ari_retry_after} if self.ari_retry_after else {}
            return ok_json(doc, **headers)
        return problem("malformed", 405, detail=f"{seen.method} {seen.path}")

    def account_url_for(self, key: JWK) -> str | None:
        for url, account in self.accounts.items():
            if account["jwk"].public_key() == key.public_key():
                return url
        return None

    def route(self, seen: Seen) -> Reply:
        path, payload = seen.path, seen.payload
        key: JWK = seen.protected["_key"]
        kid = seen.protected.get("kid")
        if path == "/new-acct":
            existing = self.account_url_for(key)
            if payload.get("onlyReturnExisting"):
                if existing is None:
                    return problem("accountDoesNotExist", detail="no account for this key")
                return ok_json(self.account_doc(existing), Location=existing)
            if existing is not None:
                return ok_json(self.account_doc(existing), Location=existing)
            if self.meta.get("externalAccountRequired"):
                binding = payload.get("externalAccountBinding")
                if binding is None:
                    return problem("externalAccountRequired")
                error = self.check_eab(binding, key)
                if error:
                    return problem("unauthorized", detail=error)
            url = f"{BASE}/acct/{next(self.counter)}"
            self.accounts[url] = {
                "jwk": key.public_key(),
                "contact": payload.get("contact", []),
                "status": "valid",
            }
            return ok_json(self.account_doc(url), 201, Location=url)
        if path.startswith("/acct/"):
            url = BASE + path
            if kid != url:
                return problem("unauthorized", detail="not your account")
            if payload and "contact" in payload:
                self.accounts[url]["contact"] = payload["contact"]
            if payload and payload.get("status") == "deactivated":
                self.accounts[url]["status"] = "deactivated"
            return ok_json(self.account_doc(url))
        if path == "/new-order":
            return self.new_order(seen)
        if path.startswith("/authz/"):
            return self.get_authz(path)
        if path.startswith("/chall/"):
            return self.answer(path)
        if path.startswith("/order/"):
            return ok_json(self.order_doc(path, poll=True), **self.retry_header())
        if path.startswith("/finalize/"):
            return self.finalize(seen)
        if path.startswith("/cert/"):
            if seen.headers.get("accept") != "application/pem-certificate-chain":
                return problem("malformed", detail="wrong Accept")
            return self.get_cert(path)
        if path == "/key-change":
            return self.key_change(seen)
        if path == "/revoke":
            return self.revoke(seen)
        return problem("malformed", 404, detail=f"no route {path}")

    def retry_header(self) -> dict[str, str]:
        return {"Retry-After": self.poll_retry_after} if self.poll_retry_after else {}

    def account_doc(self, url: str) -> dict[str, Any]:
        account = self.accounts[url]
        return {
            "status": account["status"],
            "contact": account["contact"],
            "key": account["jwk"].to_partial_json(),
            "orders": url + "/orders",
        }

    def check_eab(self, binding: dict[str, Any], key: JWK) -> str | None:
        protected = json.loads(unb64(binding["protected"]))
        if protected.get("alg") != "HS256" or protected.get("url") != BASE + "/new-acct":
            return f"bad EAB header {protected}"
        if "nonce" in protected or "jwk" in protected:
            return "EAB header must not have nonce or jwk"
        mac_key = self.eab_keys.get(protected.get("kid"))
        if mac_key is None:
            return "unknown EAB kid"
        signing_input = (binding["protected"] + "." + binding["payload"]).encode()
        expected = hmac.new(mac_key, signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, unb64(binding["signature"])):
            return "bad EAB MAC"
        bound = JWK.from_json(json.loads(unb64(binding["payload"])))
        if bound != key.public_key():
            return "EAB binds another key"
        return None

    # -- orders --------------------------------------------------------------------

    def new_order(self, seen: Seen) -> Reply:
        n = next(self.counter)
        authz_paths = []
        for ident in seen.payload["identifiers"]:
            value = ident["value"]
            wildcard = value.startswith("*.")
            base = value[2:] if wildcard else value
            a = next(self.counter)
            challs = []
            types = ["dns-01"] if wildcard else list(self.challenge_types)
            for typ in types:
                c = next(self.counter)
                chall = {
                    "type": typ,
                    "url": f"{BASE}/chall/{c}",
                    "status": "pending",
                    "token": b64(secrets.token_bytes(32)),
                    "authz": f"/authz/{a}",
                }
                self.challenges[f"/chall/{c}"] = chall
                challs.append(chall)
            self.authzs[f"/authz/{a}"] = {
                "identifier": {"type": ident["type"], "value": base},
                "status": "valid" if value in self.reuse_valid else "pending",
                "wildcard": wildcard,
                "challenges": challs,
                "polls_left": self.pending_polls,
                "answered": False,
            }
            authz_paths.append(f"/authz/{a}")
        self.orders[f"/order/{n}"] = {
            "identifiers": seen.payload["identifiers"],
            "authz": authz_paths,
            "finalize": f"{BASE}/finalize/{n}",
            "cert": None,
            "processing_left": None,
            "profile": seen.payload.get("profile"),
            "replaces": seen.payload.get("replaces"),
            "account": seen.protected.get("kid"),
        }
        return ok_json(self.order_doc(f"/order/{n}"), 201, Location=f"{BASE}/order/{n}")

    def order_status(self, path: str, poll: bool = False) -> str:
        order = self.orders[path]
        if order["processing_left"] is not None:
            if order["processing_left"] > 0:
                if poll:
                    order["processing_left"] -= 1
                return "processing"
            return "valid"
        statuses = [self.authzs[a]["status"] for a in order["authz"]]
        if "invalid" in statuses:
            return "invalid"
        if all(s == "valid" for s in statuses):
            return "ready"
        return "pending"

    def order_doc(self, path: str, poll: bool = False) -> dict[str, Any]:
        order = self.orders[path]
        status = self.order_status(path, poll)
        doc: dict[str, Any] = {
            "status": status,
            "identifiers": order["identifiers"],
            "authorizations": [BASE + a for a in order["authz"]],
            "finalize": order["finalize"],
        }
        if status == "valid":
            doc["certificate"] = BASE + order["cert"]
        if status == "invalid":
            doc["error"] = {"type": PROBLEM + "unauthorized", "detail": "authz failed"}
        if order["profile"]:
            doc["profile"] = order["profile"]
        return doc

    def chall_doc(self, chall: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in chall.items() if k != "authz"}

    def get_authz(self, path: str) -> Reply:
        authz = self.authzs[path]
        if authz["answered"] and authz["status"] == "pending":
            if authz["polls_left"] > 0:
                authz["polls_left"] -= 1
            else:
                name = authz["identifier"]["value"]
                failed = self.fail_names.get(name)
                chall = next(c for c in authz["challenges"] if c["status"] == "processing")
                if failed is not None:
                    authz["status"] = "invalid"
                    chall["status"] = "invalid"
                    chall["error"] = failed
                else:
                    authz["status"] = "valid"
                    chall["status"] = "valid"
        doc = {
            "status": authz["status"],
            "identifier": authz["identifier"],
            "challenges": [self.chall_doc(c) for c in authz["challenges"]],
            "expires": "2099-01-01T00:00:00Z",
        }
        if authz["wildcard"]:
            doc["wildcard"] = True
        return ok_json(doc, **self.retry_header())

    def answer(self, path: str) -> Reply:
        chall = self.challenges[path]
        authz = self.authzs[chall["authz"]]
        if authz["status"] == "pending" and not authz["answered"]:
            authz["answered"] = True
            chall["status"] = "processing"
        return ok_json(self.chall_doc(chall), Link=f'<{BASE}{chall["authz"]}>;rel="up"')

    def finalize(self, seen: Seen) -> Reply:
        path = "/order/" + seen.path.rsplit("/", 1)[1]
        if self.order_status(path) != "ready":
            return problem("orderNotReady", 403, detail="order is not ready")
        csr = x509.load_der_x509_csr(unb64(seen.payload["csr"]))
        order = self.orders[path]
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        now = datetime.datetime.now(datetime.timezone.utc)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.inter.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(san, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.inter_key.public_key()),
                False,
            )
            .sign(self.inter_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        leaf_pem = leaf.public_bytes(pem)
        n = next(self.counter)
        self.certs[f"/cert/{n}"] = [
            leaf_pem + self.inter.public_bytes(pem),
            leaf_pem + self.alt_inter.public_bytes(pem),
        ]
        order["cert"] = f"/cert/{n}"
        order["processing_left"] = self.processing_polls
        return ok_json(self.order_doc(path), **self.retry_header())

    def get_cert(self, path: str) -> Reply:
        base, _, alt = path.partition("/alt")
        chains = self.certs[base]
        index = int(alt) if alt else 0
        headers = {"Content-Type": "application/pem-certificate-chain"}
        if self.alternates:
            links = [
                f'<{BASE}{base}/alt{i}>;rel="alternate"'
                for i in range(len(chains))
                if i and i != index
            ]
            if index:
                links.append(f'<{base}>; rel="alternate"')
            headers["Link"] = ", ".join(links)
        return 200, headers, chains[index]

    def key_change(self, seen: Seen) -> Reply:
        inner_outer = seen.payload
        inner = acme_jws.JWS.from_json(inner_outer)
        protected = json.loads(unb64(inner_outer["protected"]))
        if "nonce" in protected or "kid" in protected or "jwk" not in protected:
            return problem("malformed", detail="bad inner header")
        if protected["url"] != BASE + "/key-change":
            return problem("malformed", detail="inner url mismatch")
        new_key = JWK.from_json(protected["jwk"])
        if not inner.verify(new_key):
            return problem("malformed", detail="bad inner signature")
        inner_payload = json.loads(unb64(inner_outer["payload"]))
        kid = seen.protected["kid"]
        if inner_payload["account"] != kid:
            return problem("malformed", detail="account mismatch")
        if JWK.from_json(inner_payload["oldKey"]) != self.accounts[kid]["jwk"]:
            return problem("malformed", detail="oldKey mismatch")
        self.accounts[kid]["jwk"] = new_key.public_key()
        return ok_json({})

    def revoke(self, seen: Seen) -> Reply:
        cert = x509.load_der_x509_certificate(unb64(seen.payload["certificate"]))
        if "jwk" in seen.protected:
            key = seen.protected["_key"]
            cert_key = JWK.load(
                cert.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            if key.public_key() != cert_key:
                return problem("unauthorized", 403, detail="not the certificate's key")
        self.revoked.append((cert.serial_number, seen.payload.get("reason", 0)))
        return 200, {}, b""


class ClientTestMixin:
    """Build a fake CA, a clock and a client."""

    clock: task.Clock

    def make(
        self,
        key: Any = None,
        *,
        meta: dict[str, Any] | None = None,
        ari: bool = False,
        ca: FakeCA | None = None,
        **options: Any,
    ) -> tuple[FakeCA, Client]:
        if ca is None:
            self.clock = task.Clock()
            ca = FakeCA(self.clock, meta=meta, ari=ari)
        if isinstance(key, JWK):
            jwk = key
        elif isinstance(key, rsa.RSAPrivateKey):
            jwk = JWKRSA(key=key)
        else:
            jwk = JWKEC(key=key or ec_key())
        d = Client.from_url(self.clock, BASE + "/dir", jwk, http=StubTreq(ca), **options)
        client = self.successResultOf(d)  # type: ignore[attr-defined]
        return ca, client

    def ok(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(drive(self.clock, d))  # type: ignore[attr-defined]

    def err(self, d: Deferred[Any], *types: type[BaseException]) -> Any:
        failure = self.failureResultOf(drive(self.clock, d), *types)  # type: ignore[attr-defined]
        return failure.value


# ---------------------------------------------------------------------------
# Problems and Retry-After


class ProblemTests(ClientTestMixin, unittest.TestCase):
    def answer_with(self, ca: FakeCA, reply: Reply) -> None:
        ca.overrides["/new-order"] = lambda seen: reply

    def test_every_problem_type_maps_to_its_class(self) -> None:
        """
        Each ACME problem type registered in txacme.errors comes back from the
        client as an instance of exactly that class, with status and detail.
        """
        ca, client = self.make()
        self.ok(client.new_account())
        registry = errors.ACMEProblem._registry
        self.assertGreater(len(registry), 20)
        for code, klass in registry.items():
            self.answer_with(ca, problem(code, 403, detail=f"the {code} detail"))
            exc = self.err(client.new_order(["example.com"]), errors.ACMEProblem)
            self.assertIs(type(exc), klass, code)
            self.assertEqual(exc.code, code)
            self.assertEqual(exc.status, 403)
            self.assertEqual(exc.detail, f"the {code} detail")
            self.assertEqual(exc.url, BASE + "/new-order")

    def test_unknown_type_is_generic_problem(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        self.answer_with(ca, problem("somethingNew", 400))
        exc = self.err(client.new_order(["example.com"]), errors.ACMEProblem)
        self.assertIs(type(exc), errors.ACMEProblem)
        self.assertEqual(exc.code, "somethingNew")
        self.answer_with(ca, ok_json({"type": "https://example.com/oops", "detail": "x"}, 400))
        exc = self.err(client.new_order(["example.com"]), errors.ACMEProblem)
        self.assertIs(type(exc), errors.ACMEProblem)
        self.assertEqual(exc.type, "https://example.com/oops")

    def test_subproblems_and_identifier(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        doc = {
            "type": PROBLEM + "compound",
            "detail": "several",
            "subproblems": [
                {
                    "type": PROBLEM + "rejectedIdentifier",
                    "detail": "no",
                    "identifier": {"type": "dns", "value": "bad.example"},
                },
                {
                    "type": PROBLEM + "caa",
                    "detail": "caa says no",
                    "identifier": {"type": "dns", "value": "caa.example"},
                },
                "not a problem",
            ],
        }
        self.answer_with(
            ca, (400, {"Content-Type": "application/problem+json"}, json.dumps(doc).encode())
        )
        exc = self.err(client.new_order(["bad.example", "caa.example"]), errors.Compound)
        self.assertEqual(len(exc.subproblems), 2)
        self.assertIsInstance(exc.subproblems[0], errors.RejectedIdentifier)
        self.assertEqual(exc.subproblems[0].identifier, {"type": "dns", "value": "bad.example"})
        self.assertIsInstance(exc.subproblems[1], errors.CAA)
        self.assertIn("caa.example", str(exc))

    def test_malformed_problem_documents(self) -> None:
        """
        Problem bodies that are not objects, lack a type or have odd fields
        still give an ACMEProblem carrying the status, never a crash.
        """
        ca, client = self.make()
        self.ok(client.new_account())
        cases: list[tuple[bytes, type[errors.ACMEProblem]]] = [
            (b"[1, 2, 3]", errors.ServerInternal),
            (b'"just a string"', errors.ServerInternal),
            (b"{}", errors.ACMEProblem),
            (
                json.dumps(
                    {"type": 42, "detail": ["x"], "identifier": "nope", "subproblems": "nope"}
                ).encode(),
                errors.ACMEProblem,
            ),
            (
                json.dumps({"type": PROBLEM + "malformed", "detail": None}).encode(),
                errors.Malformed,
            ),
        ]
        for body, klass in cases:
            self.answer_with(ca, (400, {"Content-Type": "application/problem+json"}, body))
            exc = self.err(client.new_order(["example.com"]), errors.ACMEProblem)
            self.assertIs(type(exc), klass, body)
            self.assertEqual(exc.status, 400)

    def test_non_json_error_body(self) -> None:
        """A proxy's HTML 502 page becomes ServerInternal with the status."""
        ca, client = self.make()
        self.ok(client.new_account())
        self.answer_with(
            ca, (502, {"Content-Type": "text/html"}, b"<html><body>Bad Gateway</body></html>")
        )
        exc = self.err(client.new_order(["example.com"]), errors.ServerInternal)
        self.assertEqual(exc.status, 502)
        self.assertIn("502", exc.detail)
        self.assertIn("Bad Gateway", exc.detail)
        self.answer_with(ca, (500, {}, b""))
        exc = self.err(client.new_order(["example.com"]), errors.ServerInternal)
        self.assertEqual(exc.status, 500)

    def test_problem_content_type_with_success_status(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        self.answer_with(ca, problem("malformed", 200))
        self.err(client.new_order(["example.com"]), errors.Malformed)

    def test_malformed_success_json(self) -> None:
        """Unparseable or wrongly typed JSON in a success is a ProtocolError."""
        ca, client = self.make()
        self.ok(client.new_account())
        for body in (b"{not json", b"[]", json.dumps({"status": "bogus"}).encode()):
            self.answer_with(
                ca, (201, {"Content-Type": "application/json", "Location": BASE + "/order/x"}, body)
            )
            self.err(client.new_order(["example.com"]), errors.ProtocolError)

    def test_missing_location(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        self.answer_with(
            ca,
            ok_json(
                {
                    "status": "pending",
                    "identifiers": [],
                    "authorizations": [],
                    "finalize": BASE + "/f",
                },
                201,
            ),
        )
        exc = self.err(client.new_order(["example.com"]), errors.ProtocolError)
        self.assertIn("Location", str(exc))

    def test_retry_after_seconds_on_problem(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        status, headers, body = problem("rateLimited", 429, detail="slow down")
        self.answer_with(ca, (status, {**headers, "Retry-After": "3600"}, body))
        exc = self.err(client.new_order(["example.com"]), errors.RateLimited)
        self.assertEqual(exc.retry_after, 3600.0)
        self.assertEqual(exc.status, 429)

    def test_retry_after_http_date_on_problem(self) -> None:
        ca, client = self.make()
        self.clock.advance(1_700_000_000)
        self.ok(client.new_account())
        when = email.utils.formatdate(1_700_000_000 + 90, usegmt=True)
        status, headers, body = problem("rateLimited", 429)
        self.answer_with(ca, (status, {**headers, "Retry-After": when}, body))
        exc = self.err(client.new_order(["example.com"]), errors.RateLimited)
        self.assertEqual(exc.retry_after, 90.0)

    def test_parse_retry_after(self) -> None:
        now = 1_700_000_000.0
        self.assertEqual(parse_retry_after("120", now), 120.0)
        self.assertEqual(parse_retry_after(b" 0 ", now), 0.0)
        self.assertEqual(
            parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now), 30.0
        )
        self.assertEqual(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), 0.0)
        self.assertEqual(parse_retry_after("Tue, 14 Nov 2023 22:13:20 GMT", 1_699_999_999.0), 1.0)
        for bad in (None, "", "soon", "-5", "1.5e3", "Mon, 99 Foo 2020"):
            self.assertIsNone(parse_retry_after(bad, now), bad)


# ---------------------------------------------------------------------------
# Nonces, JWS, timeouts


class TransportTests(ClientTestMixin, unittest.TestCase):
    def test_nonce_pool_fed_by_responses(self) -> None:
        """newNonce is asked once; later requests use the nonces of responses."""
        ca, client = self.make()
        self.ok(client.new_account())
        for _ in range(3):
            self.ok(client.new_order(["example.com"]))
        heads = [s for s in ca.seen if s.path == "/nonce"]
        self.assertEqual(len(heads), 1)
        self.assertEqual(heads[0].method, "HEAD")

    def test_bad_nonce_retried(self) -> None:
        """Rejected nonces are retried with fresh ones until one is accepted."""
        ca, client = self.make()
        self.ok(client.new_account())
        before = len(ca.posts("/new-order"))
        ca.reject_nonces = 7
        order = self.ok(client.new_order(["example.com"]))
        self.assertEqual(order.body.status, messages.STATUS_PENDING)
        self.assertEqual(len(ca.posts("/new-order")) - before, 8)
        nonces = [s.protected["nonce"] for s in ca.posts("/new-order")]
        self.assertEqual(len(set(nonces)), len(nonces))

    def test_bad_nonce_bounded(self) -> None:
        """After max_nonce_attempts rejections the BadNonce is raised."""
        ca, client = self.make(max_nonce_attempts=10)
        self.ok(client.new_account())
        ca.reject_nonces = 100
        exc = self.err(client.new_order(["example.com"]), errors.BadNonce)
        self.assertEqual(exc.status, 400)
        self.assertEqual(len(ca.posts("/new-order")), 10)

    def test_bad_nonce_default_bound(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        ca.reject_nonces = 100
        self.err(client.new_order(["example.com"]), errors.BadNonce)
        self.assertEqual(len(ca.posts("/new-order")), 20)

    def test_other_problems_not_retried(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        ca.overrides["/new-order"] = lambda seen: problem("malformed")
        self.err(client.new_order(["example.com"]), errors.Malformed)
        self.assertEqual(len(ca.posts("/new-order")), 1)

    def test_jws_algorithms(self) -> None:
        """ES256 for P-256, ES384 for P-384, RS256 for RSA; the fake CA verifies."""
        for key, alg in ((ec_key(), ES256), (ec_key(ec.SECP384R1()), ES384), (RSA_KEY, RS256)):
            ca, client = self.make(key)
            self.assertEqual(client.alg, alg)
            self.ok(client.new_account())
            self.ok(client.new_order(["example.com"]))
            algs = {s.protected["alg"] for s in ca.posts()}
            self.assertEqual(algs, {alg.name})

    def test_jws_algorithm(self) -> None:
        self.assertEqual(jws_algorithm(JWKEC(key=ec_key())), ES256)
        self.assertEqual(jws_algorithm(JWKEC(key=ec_key(ec.SECP384R1()))), ES384)
        self.assertEqual(jws_algorithm(JWKRSA(key=RSA_KEY)), RS256)
        self.assertEqual(jws_algorithm(JWKEC(key=ec_key(ec.SECP521R1()))).name, "ES512")
        with self.assertRaises(errors.UnsupportedKeyType):
            jws_algorithm(JWKOct(key=b"secret"))
        with self.assertRaises(errors.UnsupportedKeyType):
            jws_algorithm(JWKEC(key=ec_key().public_key()))

    def test_jwk_then_kid(self) -> None:
        """newAccount is signed with jwk; everything after it with kid."""
        ca, client = self.make()
        account = self.ok(client.new_account())
        self.ok(client.new_order(["example.com"]))
        first, second = ca.posts()
        self.assertIn("jwk", first.protected)
        self.assertNotIn("kid", first.protected)
        self.assertEqual(second.protected["kid"], account.uri)
        self.assertNotIn("jwk", second.protected)

    def test_post_as_get(self) -> None:
        """Resources are fetched with POST-as-GET: a JWS with an empty payload."""
        ca, client = self.make()
        self.ok(client.new_account())
        order = self.ok(client.new_order(["example.com"]))
        self.ok(client.fetch_authorization(order.body.authorizations[0]))
        fetch = ca.posts("/authz/")[-1]
        self.assertEqual(fetch.raw_payload, b"")
        self.assertFalse([s for s in ca.seen if s.method == "GET" and s.path != "/dir"])

    def test_request_timeout(self) -> None:
        """A request with no answer fails with ACMETimeout after `timeout`."""
        ca, client = self.make(timeout=7.0)
        self.ok(client.new_account())
        ca.overrides["/new-order"] = lambda seen: NOT_DONE_YET  # type: ignore[return-value]
        d = client.new_order(["example.com"])
        self.clock.advance(6.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        exc = self.failureResultOf(d, errors.ACMETimeout).value
        self.assertIn("7", str(exc))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_carries_user_agent_and_content_type(self) -> None:
        ca, client = self.make(user_agent="test-agent/1")
        self.ok(client.new_account())
        post = ca.posts()[0]
        self.assertEqual(post.headers["user-agent"], "test-agent/1")
        self.assertEqual(post.headers["content-type"], "application/jose+json")

    def test_identifier_for(self) -> None:
        self.assertEqual(identifier_for("Example.COM"), {"type": "dns", "value": "example.com"})
        self.assertEqual(identifier_for("192.0.2.1"), {"type": "ip", "value": "192.0.2.1"})
        self.assertEqual(identifier_for("2001:DB8:0::1"), {"type": "ip", "value": "2001:db8::1"})
        with self.assertRaises(errors.ConfigurationError):
            identifier_for("")

    def test_close_without_pool(self) -> None:
        ca, client = self.make()
        self.assertIsNone(self.successResultOf(client.close()))

    def test_from_url_rejects_non_jwk(self) -> None:
        d = Client.from_url(
            task.Clock(),
            BASE + "/dir",
            ec_key(),  # type: ignore[arg-type]
            http=StubTreq(FakeCA(task.Clock())),
        )
        self.failureResultOf(d, errors.ConfigurationError)

    def test_from_url_bad_ca_file(self) -> None:
        d = Client.from_url(
            task.Clock(), BASE + "/dir", JWKEC(key=ec_key()), ca_file="/nonexistent/ca.pem"
        )
        exc = self.failureResultOf(d, errors.ConfigurationError).value
        self.assertIn("/nonexistent/ca.pem", str(exc))
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a certificate")
        d = Client.from_url(task.Clock(), BASE + "/dir", JWKEC(key=ec_key()), ca_file=path)
        self.assertIn(path, str(self.failureResultOf(d, errors.ConfigurationError).value))

    def test_directory_problem(self) -> None:
        clock = task.Clock()
        ca = FakeCA(clock)
        ca.overrides["/dir"] = lambda seen: (503, {"Content-Type": "text/plain"}, b"down")
        d = Client.from_url(clock, BASE + "/dir", JWKEC(key=ec_key()), http=StubTreq(ca))
        self.assertEqual(self.failureResultOf(d, errors.ServerInternal).value.status, 503)
        ca.overrides["/dir"] = lambda seen: ok_json({"meta": {}})
        d = Client.from_url(clock, BASE + "/dir", JWKEC(key=ec_key()), http=StubTreq(ca))
        self.failureResultOf(d, errors.ProtocolError)

    def test_logs_have_no_secrets(self) -> None:
        """Debug logs name method, URL and status, never a key or a body."""
        txacme_log_level(self, "debug")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        mac = secrets.token_bytes(32)
        ca, client = self.make(meta={"externalAccountRequired": True})
        ca.eab_keys["kid-1"] = mac
        self.ok(client.new_account("a@example.com", eab=EAB("kid-1", b64(mac))))
        self.ok(client.new_order(["example.com"]))
        requests = [e for e in events if e.get("method") == "POST"]
        self.assertTrue(requests)
        self.assertTrue(all({"url", "status"} <= set(e) for e in requests))
        text = repr(events)
        private = client.key.to_partial_json()["d"]
        for secret in (b64(mac), private, "protected", "signature"):
            self.assertNotIn(secret, text)


# ---------------------------------------------------------------------------
# Polling


class PollingTests(ClientTestMixin, unittest.TestCase):
    def answered_authz(self, ca: FakeCA, client: Client) -> str:
        self.ok(client.new_account())
        order = self.ok(client.new_order(["example.com"]))
        url = order.body.authorizations[0]
        authz = self.ok(client.fetch_authorization(url))
        challb = next(c for c in authz.body.challenges if c.chall.typ == "http-01")
        self.ok(client.answer_challenge(challb, challb.chall.response(client.key)))
        return url

    def poll_times(self, ca: FakeCA) -> list[float]:
        return [s.time for s in ca.posts("/authz/")][1:]

    def test_fast_polling_doubles(self) -> None:
        """Without Retry-After, waits start at poll_initial and double to poll_max."""
        ca, client = self.make(poll_initial=0.005, poll_max=0.04)
        ca.pending_polls = 6
        url = self.answered_authz(ca, client)
        start = self.clock.seconds()
        authz = self.ok(client.poll_authorization(url))
        self.assertEqual(authz.body.status, messages.STATUS_VALID)
        times = [start] + self.poll_times(ca)[1:]
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
        self.assertEqual(gaps, [0.005, 0.01, 0.02, 0.04, 0.04, 0.04])

    def test_retry_after_honoured(self) -> None:
        """Each wait is at least the Retry-After of the last answer."""
        ca, client = self.make(poll_initial=0.005, poll_max=2.0)
        ca.pending_polls = 3
        ca.poll_retry_after = "3"
        url = self.answered_authz(ca, client)
        start = self.clock.seconds()
        self.ok(client.poll_authorization(url))
        times = [start] + self.poll_times(ca)[1:]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertEqual(len(gaps), 3)
        self.assertTrue(all(g >= 3.0 for g in gaps), gaps)

    def test_poll_deadline(self) -> None:
        """An authorization that never settles fails with ACMETimeout by the deadline."""
        ca, client = self.make(poll_timeout=60.0, poll_max=5.0)
        ca.pending_polls = 10**6
        url = self.answered_authz(ca, client)
        start = self.clock.seconds()
        exc = self.err(client.poll_authorization(url), errors.ACMETimeout)
        self.assertIn("pending", str(exc))
        self.assertLessEqual(self.clock.seconds() - start, 60.0)
        self.assertGreater(self.clock.seconds() - start, 50.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_after_past_deadline_fails_early(self) -> None:
        ca, client = self.make(poll_timeout=60.0)
        ca.pending_polls = 10
        ca.poll_retry_after = "3600"
        url = self.answered_authz(ca, client)
        start = self.clock.seconds()
        self.err(client.poll_authorization(url), errors.ACMETimeout)
        self.assertEqual(self.clock.seconds(), start)

    def test_invalid_authorization(self) -> None:
        """An invalid authorization raises IssuanceFailed with the challenge's problem."""
        ca, client = self.make()
        ca.fail_names["example.com"] = {
            "type": PROBLEM + "incorrectResponse",
            "detail": "wrong key authorization",
            "status": 403,
        }
        url = self.answered_authz(ca, client)
        exc = self.err(client.poll_authorization(url), errors.IssuanceFailed)
        self.assertIsInstance(exc.problem, errors.IncorrectResponse)
        self.assertEqual(exc.problem.detail, "wrong key authorization")
        self.assertIn("example.com", str(exc))

    def test_finalize_polls_processing(self) -> None:
        """finalize polls the order through processing until valid."""
        ca, client = self.make(poll_initial=0.01)
        ca.processing_polls = 3
        order = self.answered_order(ca, client)
        csr = self.csr(["example.com"])
        before = len(ca.posts("/order/"))
        done = self.ok(client.finalize(order, csr))
        self.assertEqual(done.body.status, messages.STATUS_VALID)
        self.assertTrue(done.body.certificate)
        # finalize answers "processing"; three polls say so too, the fourth is valid.
        self.assertEqual(len(ca.posts("/order/")) - before, 4)

    def test_finalize_accepts_pem_and_der(self) -> None:
        ca, client = self.make()
        order = self.answered_order(ca, client)
        pem = self.csr(["example.com"]).public_bytes(serialization.Encoding.PEM)
        self.assertEqual(self.ok(client.finalize(order, pem)).body.status, messages.STATUS_VALID)
        self.err(client.finalize(order, b"garbage"), errors.ConfigurationError)

    def test_finalize_invalid_order(self) -> None:
        ca, client = self.make()
        order = self.answered_order(ca, client)
        ca.overrides["/finalize/" + order.body.finalize.rsplit("/", 1)[1]] = lambda seen: ok_json(
            {
                "status": "invalid",
                "error": {"type": PROBLEM + "badCSR", "detail": "weak key"},
                "identifiers": [],
                "authorizations": [],
                "finalize": order.body.finalize,
            }
        )
        exc = self.err(client.finalize(order, self.csr(["example.com"])), errors.IssuanceFailed)
        self.assertIsInstance(exc.problem, errors.BadCSR)

    def answered_order(self, ca: FakeCA, client: Client) -> messages.OrderResource:
        url = self.answered_authz(ca, client)
        self.ok(client.poll_authorization(url))
        order_url = BASE + next(iter(ca.orders))
        order = messages.OrderResource(uri=order_url, body=messages.Order(status=None))
        ready = self.ok(client.poll_order(order))
        self.assertEqual(ready.body.status, messages.STATUS_READY)
        return ready

    def csr(self, names: list[str]) -> x509.CertificateSigningRequest:
        return (
            x509.CertificateSigningRequestBuilder()
            .subject_name(name_(names[0]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(ec_key(), hashes.SHA256())
        )


# ---------------------------------------------------------------------------
# Accounts, EAB, directory


class AccountTests(ClientTestMixin, unittest.TestCase):
    def test_directory_meta(self) -> None:
        ca, client = self.make(
            meta={
                "termsOfService": "https://ca.test/tos",
                "externalAccountRequired": True,
                "profiles": {"classic": "The usual", "shortlived": "Six days"},
            },
            ari=True,
        )
        self.assertEqual(client.terms_of_service, "https://ca.test/tos")
        self.assertTrue(client.external_account_required)
        self.assertEqual(client.profiles, {"classic": "The usual", "shortlived": "Six days"})
        self.assertTrue(client.supports_ari)
        self.assertEqual(client.directory["newOrder"], BASE + "/new-order")

        ca, client = self.make(meta={})
        self.assertIsNone(client.terms_of_service)
        self.assertFalse(client.external_account_required)
        self.assertEqual(client.profiles, {})
        self.assertFalse(client.supports_ari)

    def test_start_creates_then_finds(self) -> None:
        ca, client = self.make()
        account = self.ok(client.start("admin@example.com"))
        self.assertEqual(client.account, account)
        self.assertEqual(account.body.contact, ("mailto:admin@example.com",))
        self.assertTrue(ca.posts()[-1].payload["termsOfServiceAgreed"])
        self.assertEqual(len(ca.accounts), 1)
        again = self.ok(client.start("admin@example.com"))
        self.assertEqual(again.uri, account.uri)
        self.assertEqual(len(ca.accounts), 1)
        self.assertTrue(ca.posts()[-1].payload["onlyReturnExisting"])

    def test_start_updates_contact(self) -> None:
        ca, client = self.make()
        self.ok(client.start("old@example.com"))
        account = self.ok(client.start("new@example.com"))
        self.assertEqual(account.body.contact, ("mailto:new@example.com",))
        self.assertEqual(ca.posts()[-1].payload, {"contact": ["mailto:new@example.com"]})

    def test_lookup_missing(self) -> None:
        ca, client = self.make()
        self.err(client.lookup_account(), errors.AccountDoesNotExist)
        self.assertIsNone(client.account)

    def test_update_and_deactivate(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account("a@example.com"))
        account = self.ok(client.update_account("b@example.com, c@example.com"))
        self.assertEqual(account.body.contact, ("mailto:b@example.com", "mailto:c@example.com"))
        account = self.ok(client.update_account(None))
        self.assertEqual(account.body.contact, ())
        account = self.ok(client.deactivate_account())
        self.assertEqual(account.body.status, "deactivated")
        self.err(client.new_order(["example.com"]), errors.Unauthorized)

    def test_bad_email(self) -> None:
        ca, client = self.make()
        self.err(client.new_account("not an email"), errors.ConfigurationError)
        self.assertEqual(ca.posts(), [])

    def test_needs_account(self) -> None:
        ca, client = self.make()
        exc = self.err(client.new_order(["example.com"]), errors.ConfigurationError)
        self.assertIn("start()", str(exc))

    def test_eab_required_without_eab(self) -> None:
        """A clear ConfigurationError, and nothing is sent."""
        ca, client = self.make(meta={"externalAccountRequired": True})
        exc = self.err(client.new_account(), errors.ConfigurationError)
        self.assertIn("external account binding", str(exc))
        self.assertEqual([s.path for s in ca.seen], ["/dir"])

    def test_start_with_eab_required(self) -> None:
        ca, client = self.make(meta={"externalAccountRequired": True})
        self.err(client.start(), errors.ConfigurationError)
        self.assertEqual([s.payload for s in ca.posts()], [{"onlyReturnExisting": True}])

    def test_eab_binding(self) -> None:
        """The binding is an HS256 JWS over the account's public JWK, verified by the CA."""
        mac = secrets.token_bytes(32)
        ca, client = self.make(meta={"externalAccountRequired": True})
        ca.eab_keys["kid-1"] = mac
        account = self.ok(client.start(eab=EAB("kid-1", b64(mac))))
        self.assertTrue(account.uri.startswith(BASE + "/acct/"))
        binding = ca.posts("/new-acct")[-1].payload["externalAccountBinding"]
        protected = json.loads(unb64(binding["protected"]))
        self.assertEqual(protected, {"alg": "HS256", "kid": "kid-1", "url": BASE + "/new-acct"})
        self.assertEqual(
            json.loads(unb64(binding["payload"])), client.key.public_key().to_partial_json()
        )

    def test_eab_given_to_the_client(self) -> None:
        """The client's own EAB serves start() and new_account() when they are given none."""
        mac = secrets.token_bytes(32)
        ca, client = self.make(meta={"externalAccountRequired": True}, eab=EAB("kid-2", mac))
        ca.eab_keys["kid-2"] = mac
        self.assertEqual(client.eab, EAB("kid-2", mac))
        self.ok(client.start())
        binding = ca.posts("/new-acct")[-1].payload["externalAccountBinding"]
        self.assertEqual(json.loads(unb64(binding["protected"]))["kid"], "kid-2")
        ca, client = self.make(meta={"externalAccountRequired": True}, eab=EAB("kid-2", mac))
        ca.eab_keys["kid-3"] = mac
        self.ok(client.new_account(eab=EAB("kid-3", mac)))
        binding = ca.posts("/new-acct")[-1].payload["externalAccountBinding"]
        self.assertEqual(json.loads(unb64(binding["protected"]))["kid"], "kid-3")

    def test_eab_must_be_an_eab(self) -> None:
        clock = task.Clock()
        directory = messages.Directory.from_json(FakeCA(clock).directory())
        with self.assertRaises(errors.ConfigurationError):
            Client(
                clock, directory, JWKEC(key=ec_key()), http=StubTreq(FakeCA(clock)), eab="kid:key"
            )  # type: ignore[arg-type]

    def test_eab_wrong_key_rejected(self) -> None:
        ca, client = self.make(meta={"externalAccountRequired": True})
        ca.eab_keys["kid-1"] = b"right key"
        self.err(client.new_account(eab=EAB("kid-1", b"wrong key")), errors.Unauthorized)

    def test_eab_value(self) -> None:
        mac = secrets.token_bytes(32)
        eab = EAB("kid-9", b64(mac))
        self.assertEqual(eab.hmac_key, mac)
        self.assertEqual(EAB("kid-9", mac), eab)
        self.assertEqual(EAB("kid-9", b64(mac) + "=="), eab)
        for text in (repr(eab), str(eab)):
            self.assertIn("kid-9", text)
            self.assertNotIn(b64(mac), text)
            self.assertNotIn(repr(mac), text)
        with self.assertRaises(errors.ConfigurationError) as cm:
            EAB("kid-9", "not base64!")
        self.assertIn("kid-9", str(cm.exception))
        with self.assertRaises(errors.ConfigurationError):
            EAB("", mac)
        with self.assertRaises(errors.ConfigurationError):
            EAB("kid", b"")
        with self.assertRaises(errors.ConfigurationError):
            EAB("kid", mac, alg="none")

    def test_change_key(self) -> None:
        """keyChange: inner JWS by the new key (jwk), outer by the old (kid); then new key."""
        ca, client = self.make()
        account = self.ok(client.new_account())
        new = JWKEC(key=ec_key(ec.SECP384R1()))
        self.ok(client.change_key(new))
        self.assertEqual(ca.accounts[account.uri]["jwk"], new.public_key())
        self.assertEqual(client.key, new)
        self.assertEqual(client.alg, ES384)
        self.ok(client.new_order(["example.com"]))
        last = ca.posts()[-1]
        self.assertEqual(last.protected["alg"], "ES384")
        self.assertEqual(last.protected["_key"].public_key(), new.public_key())
        self.assertEqual(self.ok(client.lookup_account()).uri, account.uri)


# ---------------------------------------------------------------------------
# Orders, certificates, revocation, ARI


def cert_with(aki: bytes | None, serial: int) -> x509.Certificate:
    return make_certificate(["ari.example"], key=ec_key(), serial=serial, authority_key_id=aki)


class OrderTests(ClientTestMixin, unittest.TestCase):
    def test_new_order_identifiers(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        order = self.ok(client.new_order(["Example.com", "*.example.com", "192.0.2.7", "::1"]))
        self.assertEqual(
            ca.posts()[-1].payload,
            {
                "identifiers": [
                    {"type": "dns", "value": "example.com"},
                    {"type": "dns", "value": "*.example.com"},
                    {"type": "ip", "value": "192.0.2.7"},
                    {"type": "ip", "value": "::1"},
                ]
            },
        )
        self.assertTrue(order.uri.startswith(BASE + "/order/"))
        self.assertEqual(len(order.body.authorizations), 4)
        self.assertEqual(order.body.status, messages.STATUS_PENDING)
        self.err(client.new_order([]), errors.ConfigurationError)
        self.err(client.new_order("example.com"), errors.ConfigurationError)

    def test_profile_validation(self) -> None:
        """An unadvertised profile fails before sending, naming it and the advertised ones."""
        ca, client = self.make(meta={"profiles": {"classic": "x", "tlsserver": "y"}})
        self.ok(client.new_account())
        sent = len(ca.posts())
        exc = self.err(
            client.new_order(["example.com"], profile="shortlived"), errors.ConfigurationError
        )
        self.assertIn("'shortlived'", str(exc))
        self.assertIn("classic, tlsserver", str(exc))
        self.assertEqual(len(ca.posts()), sent)
        order = self.ok(client.new_order(["example.com"], profile="tlsserver"))
        self.assertEqual(ca.posts()[-1].payload["profile"], "tlsserver")
        self.assertEqual(order.body.profile, "tlsserver")

    def test_profile_without_profiles(self) -> None:
        ca, client = self.make(meta={})
        self.ok(client.new_account())
        exc = self.err(
            client.new_order(["example.com"], profile="classic"), errors.ConfigurationError
        )
        self.assertIn("advertises: none", str(exc))

    def test_replaces(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        self.ok(client.new_order(["example.com"], replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"))
        self.assertEqual(ca.posts()[-1].payload["replaces"], "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        self.err(client.new_order(["example.com"], replaces="nodot"), errors.ConfigurationError)

    def issue(self, ca: FakeCA, client: Client, names: list[str]) -> messages.OrderResource:
        responder = Responder("http-01")
        issued = self.ok(obtain_certificate(client, names, [responder]))
        self.assertIsInstance(issued, IssuedCertificate)
        return messages.OrderResource(
            uri=issued.order_url, body=messages.Order(certificate=issued.url)
        )

    def test_fetch_certificate_default_chain(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        order = self.issue(ca, client, ["example.com"])
        chain = self.ok(client.fetch_certificate(order))
        self.assertIsInstance(chain, CertificateChain)
        self.assertEqual(len(chain.certificates), 2)
        self.assertEqual(chain.issuer_names(), ["Fake Intermediate A", "Fake Root X1"])
        self.assertEqual(chain.alternates, [])
        self.assertTrue(chain.pem.startswith(b"-----BEGIN CERTIFICATE-----"))
        self.assertEqual(chain.url, order.body.certificate)

    def test_preferred_chain(self) -> None:
        """Alternates come from Link rel=alternate; preferred_chain picks by issuer CN."""
        ca, client = self.make()
        ca.alternates = True
        self.ok(client.new_account())
        order = self.issue(ca, client, ["example.com"])
        default = self.ok(client.fetch_certificate(order))
        self.assertEqual(default.alternates, [order.body.certificate + "/alt1"])
        alt = self.ok(client.fetch_certificate(order, preferred_chain="Fake Alt Root"))
        self.assertEqual(alt.url, order.body.certificate + "/alt1")
        self.assertEqual(alt.certificates[-1].issuer.rfc4514_string(), "CN=Fake Alt Root")
        self.assertEqual(alt.alternates, [order.body.certificate])
        same = self.ok(client.fetch_certificate(order, preferred_chain="Fake Root X1"))
        self.assertEqual(same.url, order.body.certificate)
        other = self.ok(client.fetch_certificate(order, preferred_chain="Nobody"))
        self.assertEqual(other.url, order.body.certificate)
        # Any certificate's issuer counts when no topmost issuer matches.
        any_ = self.ok(client.fetch_certificate(order, preferred_chain="Fake Intermediate A"))
        self.assertEqual(any_.url, order.body.certificate)

    def test_chain_not_pem(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        order = self.issue(ca, client, ["example.com"])
        path = order.body.certificate[len(BASE) :]
        ca.overrides[path] = lambda seen: (200, {}, b"<html>oops</html>")
        self.err(client.fetch_certificate(order), errors.ProtocolError)

    def test_revoke_by_account(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        order = self.issue(ca, client, ["example.com"])
        chain = self.ok(client.fetch_certificate(order))
        self.ok(client.revoke(chain.certificate, 4))
        self.assertEqual(ca.revoked, [(chain.certificate.serial_number, 4)])
        self.assertIn("kid", ca.posts("/revoke")[-1].protected)
        self.err(client.revoke(chain.certificate, 99), errors.ConfigurationError)

    def test_revoke_by_certificate_key(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        key = ec_key()
        issued = self.ok(
            obtain_certificate(client, ["example.com"], [Responder("http-01")], key=key)
        )
        _, stranger = self.make(ca=ca)  # a client with no account at all
        self.ok(stranger.revoke(issued.certificate, key=key))
        self.assertEqual(ca.revoked, [(issued.certificate.serial_number, 0)])
        post = ca.posts("/revoke")[-1]
        self.assertEqual(post.protected["jwk"], JWKEC(key=key).public_key().to_partial_json())
        self.assertNotIn("kid", post.protected)

    def test_revoke_by_certificate_key_signs_with_jwk(self) -> None:
        ca, client = self.make()
        self.ok(client.new_account())
        key = ec_key()
        issued = self.ok(
            obtain_certificate(client, ["example.com"], [Responder("http-01")], key=key)
        )
        self.ok(client.revoke(issued.certificate, key=JWKEC(key=key)))
        post = ca.posts("/revoke")[-1]
        self.assertIn("jwk", post.protected)
        self.assertNotIn("kid", post.protected)
        self.assertEqual(ca.revoked[-1][0], issued.certificate.serial_number)
        self.err(client.revoke(issued.certificate, key=ec_key()), errors.Unauthorized)

    def test_ari_cert_id_rfc_vector(self) -> None:
        """The example of RFC 9773 section 4.1."""
        aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
        cert = cert_with(aki, 0x0087654321)
        self.assertEqual(ari_cert_id(cert), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")

    def test_ari_cert_id_independent(self) -> None:
        """Serial encodings computed by hand: no padding byte unless the high bit is set."""
        aki = bytes(range(20))
        expected_aki = base64.urlsafe_b64encode(aki).decode().rstrip("=")
        for serial, der in (
            (0x7F, b"\x7f"),
            (0x80, b"\x00\x80"),
            (0x0102, b"\x01\x02"),
            (0xFFFF, b"\x00\xff\xff"),
            (1, b"\x01"),
        ):
            expected = expected_aki + "." + base64.urlsafe_b64encode(der).decode().rstrip("=")
            self.assertEqual(ari_cert_id(cert_with(aki, serial)), expected, hex(serial))

    def test_ari_cert_id_needs_aki(self) -> None:
        with self.assertRaises(errors.ConfigurationError):
            ari_cert_id(cert_with(None, 1234))

    def test_renewal_info(self) -> None:
        ca, client = self.make(ari=True)
        ca.ari_explanation = "https://ca.test/why"
        cert = cert_with(bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"), 0x87654321)
        info = self.ok(client.renewal_info(cert))
        self.assertIsInstance(info, RenewalInfo)
        self.assertEqual(ca.seen[-1].method, "GET")
        self.assertEqual(ca.seen[-1].path, "/ari/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        utc = datetime.timezone.utc
        self.assertEqual(info.start, datetime.datetime(2030, 1, 1, tzinfo=utc))
        self.assertEqual(info.end, datetime.datetime(2030, 1, 3, tzinfo=utc))
        self.assertEqual(info.explanation_url, "https://ca.test/why")
        self.assertEqual(info.retry_after, 6 * 3600)
        self.assertEqual(info.pick(lambda: 0.5), datetime.datetime(2030, 1, 2, tzinfo=utc))
        ca.ari_retry_after = "7200"
        self.assertEqual(self.ok(client.renewal_info(cert)).retry_after, 7200)
        ca.ari_retry_after = "1"
        self.assertEqual(self.ok(client.renewal_info(cert)).retry_after, 60)
        ca.ari_window = {"start": "2030-01-03T00:00:00Z", "end": "2030-01-01T00:00:00Z"}
        self.err(client.renewal_info(cert), errors.ProtocolError)

    def test_renewal_info_without_ari(self) -> None:
        ca, client = self.make(ari=False)
        cert = cert_with(b"\x01" * 20, 5)
        exc = self.err(client.renewal_info(cert), errors.ConfigurationError)
        self.assertIn("renewal", str(exc))


# ---------------------------------------------------------------------------
# Issuance


class Responder:
    """A recording responder; ``gate`` (if set) delays start_responding."""

    def __init__(
        self,
        challenge_type: str,
        gate: Deferred[None] | None = None,
        fail_start: bool = False,
        fail_stop: bool = False,
    ) -> None:
        self.challenge_type = challenge_type
        self.gate = gate
        self.fail_start = fail_start
        self.fail_stop = fail_stop
        self.started: list[tuple[str, Any, Any]] = []
        self.stopped: list[tuple[str, Any, Any]] = []

    def start_responding(self, name: str, challenge: Any, response: Any) -> Any:
        self.started.append((name, challenge, response))
        if self.fail_start:
            raise RuntimeError("cannot start")
        if self.gate is not None:
            gate = Deferred[None]()
            self.gate.addCallback(lambda _: gate.callback(None))
            return gate
        return None

    def stop_responding(self, name: str, challenge: Any, response: Any) -> Any:
        self.stopped.append((name, challenge, response))
        if self.fail_stop:
            return defer.fail(RuntimeError("cannot stop"))
        return defer.succeed(None)


class IssuanceTests(ClientTestMixin, unittest.TestCase):
    def setup(self, **kw: Any) -> tuple[FakeCA, Client]:
        ca, client = self.make(**kw)
        self.ok(client.start())
        return ca, client

    def test_issue(self) -> None:
        ca, client = self.setup()
        responder = Responder("http-01")
        issued = self.ok(
            obtain_certificate(
                client, ["WWW.example.com", "example.com", "www.example.com"], [responder]
            )
        )
        self.assertEqual(issued.names, ["www.example.com", "example.com"])
        self.assertEqual(
            sorted(n for n, _, _ in responder.started), ["example.com", "www.example.com"]
        )
        self.assertEqual(
            sorted(n for n, _, _ in responder.stopped), ["example.com", "www.example.com"]
        )
        kinds = [type(o).__name__ for o in issued.pem_objects]
        self.assertEqual(kinds, ["PrivateKey", "Certificate", "Certificate"])
        self.assertEqual(
            issued.pem_objects[1].as_bytes(),
            issued.certificate.public_bytes(serialization.Encoding.PEM),
        )
        self.assertEqual(issued.not_after, issued.certificate.not_valid_after_utc)
        self.assertEqual(issued.not_before, issued.certificate.not_valid_before_utc)
        self.assertEqual(
            [c.subject.rfc4514_string() for c in issued.chain], ["CN=Fake Intermediate A"]
        )
        self.assertIsInstance(issued.key, ec.EllipticCurvePrivateKey)
        self.assertNotIn("PRIVATE", repr(issued))

    def test_key_authorization(self) -> None:
        """The responder gets the key authorization token.thumbprint(account key)."""
        ca, client = self.setup()
        responder = Responder("http-01")
        self.ok(obtain_certificate(client, ["example.com"], [responder]))
        name, chall, response = responder.started[0]
        self.assertIsInstance(chall, challenges.HTTP01)
        self.assertIsInstance(response, challenges.HTTP01Response)
        token = b64(chall.token)
        self.assertEqual(response.key_authorization, f"{token}.{thumbprint(client.key)}")

    def test_responder_preference_order(self) -> None:
        ca, client = self.setup()
        dns, http = Responder("dns-01"), Responder("http-01")
        self.ok(obtain_certificate(client, ["example.com"], [dns, http]))
        self.assertEqual(len(dns.started), 1)
        self.assertEqual(http.started, [])
        posted = ca.posts("/chall/")
        self.assertEqual(len(posted), 1)
        self.assertEqual(posted[0].payload, {})
        self.assertEqual(ca.challenges[posted[0].path]["type"], "dns-01")

    def test_tls_alpn_unrecognized(self) -> None:
        """tls-alpn-01 (not modelled by acme) still gets its key authorization."""
        ca, client = self.setup()
        ca.challenge_types = ["tls-alpn-01"]
        tls = Responder("tls-alpn-01")
        self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01"), tls]))
        name, chall, response = tls.started[0]
        token = (
            chall.jobj["token"]
            if isinstance(chall, challenges.UnrecognizedChallenge)
            else b64(chall.token)
        )
        self.assertEqual(response.key_authorization, f"{token}.{thumbprint(client.key)}")

    def test_challenge_response_helper(self) -> None:
        key = JWKEC(key=ec_key())
        token = b64(secrets.token_bytes(32))
        unknown = challenges.Challenge.from_json({"type": "tls-alpn-01", "token": token})
        response = challenge_response(unknown, key)
        self.assertEqual(response.key_authorization, f"{token}.{thumbprint(key)}")
        with self.assertRaises(errors.ProtocolError):
            challenge_response(challenges.Challenge.from_json({"type": "x-new"}), key)

    def test_wildcard(self) -> None:
        """A wildcard authorization is answered for the base name."""
        ca, client = self.setup()
        dns = Responder("dns-01")
        issued = self.ok(
            obtain_certificate(
                client, ["*.example.com", "example.com"], [Responder("http-01"), dns]
            )
        )
        self.assertEqual(issued.names, ["*.example.com", "example.com"])
        self.assertIn(("example.com"), [n for n, _, _ in dns.started])

    def test_no_supported_challenge(self) -> None:
        """NoSupportedChallenge names the offered types; nothing is started."""
        ca, client = self.setup()
        http = Responder("http-01")
        exc = self.err(
            obtain_certificate(client, ["*.example.com"], [http]), errors.NoSupportedChallenge
        )
        self.assertIn("dns-01", str(exc))
        self.assertIn("*.example.com", str(exc))
        self.assertEqual(http.started, [])

    def test_reused_authorizations(self) -> None:
        """Authorizations already valid need no responder at all."""
        ca, client = self.setup()
        ca.reuse_valid = {"example.com", "www.example.com"}
        responder = Responder("http-01")
        self.ok(obtain_certificate(client, ["example.com", "www.example.com"], [responder]))
        self.assertEqual(responder.started, [])
        self.assertEqual(ca.posts("/chall/"), [])

    def test_concurrent_authorizations(self) -> None:
        """Every authorization is started before any of them is answered."""
        ca, client = self.setup()
        gate = Deferred[None]()
        responder = Responder("http-01", gate=gate)
        names = [f"n{i}.example.com" for i in range(5)]
        d = obtain_certificate(client, names, [responder])
        self.assertEqual(len(responder.started), 5)
        self.assertEqual(ca.posts("/chall/"), [])
        gate.callback(None)
        issued = self.ok(d)
        self.assertEqual(issued.names, names)
        self.assertEqual(len(responder.stopped), 5)

    def test_failure_stops_responders(self) -> None:
        """An invalid authorization fails the order; every responder is stopped."""
        ca, client = self.setup()
        ca.fail_names["bad.example.com"] = {"type": PROBLEM + "connection", "detail": "refused"}
        responder = Responder("http-01")
        exc = self.err(
            obtain_certificate(client, ["good.example.com", "bad.example.com"], [responder]),
            errors.IssuanceFailed,
        )
        self.assertIsInstance(exc.problem, errors.Connection)
        self.assertIn("bad.example.com", str(exc))
        self.assertEqual(
            sorted(n for n, _, _ in responder.stopped), ["bad.example.com", "good.example.com"]
        )
        self.assertEqual(ca.posts("/finalize/"), [])

    def test_start_failure_not_stopped(self) -> None:
        ca, client = self.setup()
        responder = Responder("http-01", fail_start=True)
        self.err(obtain_certificate(client, ["example.com"], [responder]), RuntimeError)
        self.assertEqual(responder.stopped, [])

    def test_stop_failure_logged_not_raised(self) -> None:
        ca, client = self.setup()
        responder = Responder("http-01", fail_stop=True)
        issued = self.ok(obtain_certificate(client, ["example.com"], [responder]))
        self.assertEqual(issued.names, ["example.com"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_key_types(self) -> None:
        ca, client = self.setup()
        issued = self.ok(
            obtain_certificate(client, ["example.com"], [Responder("http-01")], key_type="ec384")
        )
        self.assertEqual(issued.key.curve.name, "secp384r1")
        issued = self.ok(
            obtain_certificate(client, ["example.com"], [Responder("http-01")], key=RSA_KEY)
        )
        self.assertIs(issued.key, RSA_KEY)
        self.err(
            obtain_certificate(client, ["example.com"], [Responder("http-01")], key_type="dsa"),
            errors.UnsupportedKeyType,
        )

    def test_bad_input(self) -> None:
        ca, client = self.setup()
        self.err(obtain_certificate(client, [], [Responder("http-01")]), errors.ConfigurationError)
        self.err(obtain_certificate(client, ["example.com"], []), errors.ConfigurationError)
        self.err(
            obtain_certificate(client, ["exa mple.com"], [Responder("http-01")]),
            errors.InvalidServerName,
        )
        self.err(obtain_certificate(client, ["example.com"], [object()]), errors.ConfigurationError)
        self.assertEqual(ca.posts("/new-order"), [])

    def test_order_not_ready_retried(self) -> None:
        """orderNotReady at finalize: poll the order, then finalize again."""
        ca, client = self.setup()
        calls = []

        def once(seen: Seen) -> Reply | None:
            calls.append(seen)
            return problem("orderNotReady", 403) if len(calls) == 1 else None

        ca.overrides = _Prefix("/finalize/", once)  # type: ignore[assignment]
        issued = self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))
        self.assertEqual(len(calls), 2)
        self.assertEqual(issued.names, ["example.com"])

    def test_certificate_for_other_key_rejected(self) -> None:
        ca, client = self.setup()
        other_chain = self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))
        pem = other_chain.certificate.public_bytes(serialization.Encoding.PEM)
        ca.overrides = _Prefix("/cert/", lambda seen: (200, {}, pem))  # type: ignore
        exc = self.err(
            obtain_certificate(client, ["example.com"], [Responder("http-01")]),
            errors.ProtocolError,
        )
        self.assertIn("key", str(exc))

    def test_nonce_rejections_during_issuance(self) -> None:
        ca, client = self.setup()
        original = ca.verify
        count = itertools.count()

        def flaky(seen: Seen, body: bytes) -> Reply | None:
            result = original(seen, body)
            if result is None and next(count) % 2 == 0:
                return problem("badNonce", detail="every other one")
            return result

        ca.verify = flaky  # type: ignore[method-assign]
        issued = self.ok(
            obtain_certificate(client, ["a.example.com", "b.example.com"], [Responder("http-01")])
        )
        self.assertEqual(issued.names, ["a.example.com", "b.example.com"])


class _Prefix(dict):  # type: ignore[type-arg]
    """An overrides mapping that matches every path with a prefix."""

    def __init__(self, prefix: str, handler: Callable[[Seen], Reply | None]) -> None:
        super().__init__()
        self.prefix = prefix
        self.handler = handler

    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        return self.handler if path.startswith(self.prefix) else default
