"""Tests for txacme.challenges.http01, served by a real twisted.web site on loopback."""

from __future__ import annotations

from typing import Any

import treq
from acme import challenges
from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface.verify import verifyObject

from txacme.challenges import HTTP01Responder, http01_root
from txacme.errors import ConfigurationError, ProtocolError
from txacme.interfaces import IResponder
from txacme.keys import generate_private_key, jwk_for

reactor: Any = _reactor

ACCOUNT = jwk_for(generate_private_key())
PREFIX = "/.well-known/acme-challenge/"


def make_challenge(seed: int) -> tuple[challenges.HTTP01, challenges.HTTP01Response]:
    challenge = challenges.HTTP01(token=bytes([seed]) * 32)
    return challenge, challenge.response(ACCOUNT)


class FakeChallenge:
    def __init__(self, token: Any) -> None:
        self.token = token

    def encode(self, name: str) -> Any:
        assert name == "token"
        return self.token


class FakeResponse:
    def __init__(self, key_authorization: Any) -> None:
        self.key_authorization = key_authorization


class CatchAll(Resource):
    """A leaf fallback that reports the path it was given."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"catch-all " + b"/".join(request.prepath) + b" | " + b"/".join(request.postpath)


class ResponderUnitTests(TestCase):
    """HTTP01Responder without the network."""

    def test_interface(self) -> None:
        responder = HTTP01Responder()
        self.assertTrue(verifyObject(IResponder, responder))
        self.assertEqual(responder.challenge_type, "http-01")

    def test_start_stop_return_none(self) -> None:
        responder = HTTP01Responder()
        challenge, response = make_challenge(1)
        self.assertIsNone(responder.start_responding("example.com", challenge, response))
        self.assertEqual(responder.active_tokens(), {challenge.encode("token")})
        self.assertIsNone(responder.stop_responding("example.com", challenge, response))
        self.assertEqual(responder.active_tokens(), frozenset())
        # Stopping again does nothing.
        self.assertIsNone(responder.stop_responding("example.com", challenge, response))

    def test_bad_token(self) -> None:
        responder = HTTP01Responder()
        for token in ["", "a/b", "a.b", "..", "tok en", "é", b"abc", None]:
            self.assertRaises(
                ProtocolError,
                responder.start_responding,
                "example.com",
                FakeChallenge(token),
                FakeResponse(f"{token}.x"),
            )
        self.assertEqual(responder.active_tokens(), frozenset())

    def test_bad_key_authorization(self) -> None:
        responder = HTTP01Responder()
        challenge, response = make_challenge(2)
        other_challenge, other_response = make_challenge(3)
        for key_authorization in [
            other_response.key_authorization,
            challenge.encode("token"),
            "é" + response.key_authorization,
            response.key_authorization.encode("ascii"),
            None,
        ]:
            self.assertRaises(
                ConfigurationError,
                responder.start_responding,
                "example.com",
                challenge,
                FakeResponse(key_authorization),
            )
        self.assertEqual(responder.active_tokens(), frozenset())


class ServedTests(TestCase):
    """The responder's resource behind a real Site on 127.0.0.1, fetched with treq."""

    def setUp(self) -> None:
        self.responder = HTTP01Responder()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.pool = pool

    @inlineCallbacks
    def serve(self, root: Any) -> Any:
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        yield None
        return port

    def mounted_root(self) -> Resource:
        root = Resource()
        well_known = Resource()
        root.putChild(b".well-known", well_known)
        well_known.putChild(b"acme-challenge", self.responder.resource)
        return root

    @inlineCallbacks
    def fetch(self, path: str, method: str = "GET") -> Any:
        response = yield treq.request(method, self.base + path, pool=self.pool)
        body = yield response.content()
        return response, body

    @inlineCallbacks
    def test_lifecycle(self) -> Any:
        yield self.serve(self.mounted_root())
        challenge, response = make_challenge(4)
        url = challenge.path
        self.assertTrue(url.startswith(PREFIX))

        before, _ = yield self.fetch(url)
        self.assertEqual(before.code, 404)

        self.responder.start_responding("example.com", challenge, response)
        served, body = yield self.fetch(url)
        self.assertEqual(served.code, 200)
        self.assertEqual(body, response.key_authorization.encode("ascii"))
        content_type = served.headers.getRawHeaders(b"content-type")
        self.assertEqual(content_type, [b"text/plain; charset=us-ascii"])
        # What we serve is what the CA checks.
        fetched = challenges.HTTP01Response(key_authorization=body.decode("ascii"))
        self.assertTrue(fetched.verify(challenge, ACCOUNT.public_key()))

        self.responder.stop_responding("example.com", challenge, response)
        after, _ = yield self.fetch(url)
        self.assertEqual(after.code, 404)

    @inlineCallbacks
    def test_several_at_once(self) -> Any:
        yield self.serve(self.mounted_root())
        pairs = [make_challenge(seed) for seed in (5, 6, 7)]
        for challenge, response in pairs:
            self.responder.start_responding("example.com", challenge, response)
        self.responder.stop_responding("example.com", *pairs[1])
        for index, (challenge, response) in enumerate(pairs):
            served, body = yield self.fetch(challenge.path)
            if index == 1:
                self.assertEqual(served.code, 404)
            else:
                self.assertEqual(served.code, 200)
                self.assertEqual(body, response.key_authorization.encode("ascii"))

    @inlineCallbacks
    def test_not_found_and_methods(self) -> Any:
        yield self.serve(self.mounted_root())
        challenge, response = make_challenge(8)
        self.responder.start_responding("127.0.0.1", challenge, response)
        token = challenge.encode("token")
        for path in [
            PREFIX,
            PREFIX.rstrip("/"),
            PREFIX + "unknown",
            PREFIX + token + "/",
            PREFIX + token + "/extra",
            PREFIX + token.lower() if token.lower() != token else PREFIX + token + "x",
            PREFIX + token + ".",
            PREFIX + "%2e%2e",
            PREFIX + "..%2f" + token,
            PREFIX + "%ff",
            PREFIX + token + "%00",
        ]:
            answer, body = yield self.fetch(path)
            self.assertEqual(answer.code, 404, path)
            self.assertNotIn(token.encode(), body, path)
        head, body = yield self.fetch(challenge.path, method="HEAD")
        self.assertEqual(head.code, 200)
        self.assertEqual(body, b"")
        post, _ = yield self.fetch(challenge.path, method="POST")
        self.assertEqual(post.code, 405)

    @inlineCallbacks
    def test_http01_root_alone(self) -> Any:
        yield self.serve(http01_root(self.responder))
        challenge, response = make_challenge(9)
        self.responder.start_responding("example.com", challenge, response)
        served, body = yield self.fetch(challenge.path)
        self.assertEqual((served.code, body), (200, response.key_authorization.encode()))
        for path in ["/", "/index.html", "/.well-known/", "/.well-known/security.txt"]:
            answer, _ = yield self.fetch(path)
            self.assertEqual(answer.code, 404, path)

    @inlineCallbacks
    def test_http01_root_with_fallback(self) -> Any:
        fallback = Resource()
        fallback.putChild(b"", Data(b"home", "text/plain"))
        fallback.putChild(b"hello", Data(b"hello there", "text/plain"))
        well_known = Resource()
        well_known.putChild(b"security.txt", Data(b"Contact: x", "text/plain"))
        fallback.putChild(b".well-known", well_known)
        yield self.serve(http01_root(self.responder, fallback))
        challenge, response = make_challenge(10)
        self.responder.start_responding("example.com", challenge, response)
        expected = {
            challenge.path: (200, response.key_authorization.encode()),
            "/": (200, b"home"),
            "/hello": (200, b"hello there"),
            "/.well-known/security.txt": (200, b"Contact: x"),
            "/missing": (404, None),
            PREFIX + "unknown": (404, None),
        }
        for path, (code, wanted) in expected.items():
            answer, body = yield self.fetch(path)
            self.assertEqual(answer.code, code, path)
            if wanted is not None:
                self.assertEqual(body, wanted, path)

    @inlineCallbacks
    def test_http01_root_with_leaf_fallback(self) -> Any:
        yield self.serve(http01_root(self.responder, CatchAll()))
        challenge, response = make_challenge(11)
        self.responder.start_responding("example.com", challenge, response)
        served, body = yield self.fetch(challenge.path)
        self.assertEqual((served.code, body), (200, response.key_authorization.encode()))
        answer, body = yield self.fetch("/some/deep/path")
        self.assertEqual(body, b"catch-all  | some/deep/path")
        answer, body = yield self.fetch("/")
        self.assertEqual(answer.code, 200)
        self.assertTrue(body.startswith(b"catch-all"))
        # A leaf fallback owns /.well-known/ too, except the challenge directory.
        answer, body = yield self.fetch("/.well-known/security.txt")
        self.assertEqual(body, b"catch-all  | .well-known/security.txt")
        answer, body = yield self.fetch("/.well-known/")
        self.assertEqual(body, b"catch-all  | .well-known/")
        answer, body = yield self.fetch("/.well-known")
        self.assertEqual(body, b"catch-all  | .well-known")
