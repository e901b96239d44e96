"""
Tests for txacme.challenges.tlsalpn01: the challenge certificate, the registry,
the responder and the acme message types.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from typing import Any

import josepy as jose
from acme import challenges as acme_challenges
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from txacme.challenges import tlsalpn01
from txacme.challenges.tlsalpn01 import (
    ACME_TLS_1,
    ID_PE_ACME_IDENTIFIER,
    TLSALPN01,
    TLSALPN01Registry,
    TLSALPN01Responder,
    TLSALPN01Response,
    acme_identifier_extension,
    challenge_certificate,
    key_authorization_digest,
    key_kind,
    sni_names,
)
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import IResponder

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


class FakeChallenge:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token

    def encode(self, name: str) -> str:
        return self.token


class FakeResponse:
    def __init__(self, key_authorization: Any) -> None:
        self.key_authorization = key_authorization


def account_key() -> jose.JWK:
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


class ChallengeCertificateTests(unittest.TestCase):
    def check(self, certificate: x509.Certificate, identifier: str, digest: bytes) -> None:
        extension = certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        self.assertTrue(extension.critical)
        value = extension.value
        assert isinstance(value, x509.UnrecognizedExtension)
        # DER OCTET STRING (tag 4, length 32) of the SHA-256 digest.
        self.assertEqual(value.value, b"\x04\x20" + digest)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(len(list(san)), 1)
        # Self-signed: verifiable with its own public key.
        certificate.verify_directly_issued_by(certificate)
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        self.assertLessEqual(lifetime, datetime.timedelta(days=2))
        self.assertLess(
            certificate.not_valid_before_utc, datetime.datetime.now(datetime.timezone.utc)
        )

    def test_dns_identifier(self) -> None:
        key_authorization = TOKEN + ".thumb"
        digest = key_authorization_digest(key_authorization)
        self.assertEqual(digest, hashlib.sha256(key_authorization.encode()).digest())
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = challenge_certificate("www.example.com", digest, key)
        self.check(certificate, "www.example.com", digest)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["www.example.com"])

    def test_ip_identifiers(self) -> None:
        digest = key_authorization_digest("k.a")
        for address in ("192.0.2.1", "2001:db8::1"):
            key = ec.generate_private_key(ec.SECP256R1())
            certificate = challenge_certificate(address, digest, key)
            self.check(certificate, address, digest)
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.assertEqual(
                san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address(address)]
            )

    def test_key_kinds(self) -> None:
        """Certificates can be made with any kind of key; the registry caches them."""
        registry = TLSALPN01Registry()
        pending = registry.add("a.example", "k.a")
        seen = {}
        for kind in (("ec", "secp256r1"), ("ec", "secp384r1"), ("rsa",), ("ed25519",), ("x",)):
            certificate, key = pending.certificate_for(kind)
            self.check(certificate, "a.example", pending.digest)
            self.assertIs(pending.certificate_for(kind)[0], certificate)
            seen[kind] = key
        self.assertEqual(key_kind(seen[("ec", "secp384r1")]), ("ec", "secp384r1"))
        self.assertIsInstance(seen[("rsa",)], rsa.RSAPrivateKey)
        self.assertIsInstance(seen[("ed25519",)], ed25519.Ed25519PrivateKey)
        self.assertEqual(key_kind(seen[("x",)]), ("ec", "secp256r1"))
        # One RSA key per registry, a new certificate per challenge.
        other = registry.add("b.example", "k.b")
        self.assertIs(other.certificate_for(("rsa",))[1], seen[("rsa",)])
        self.assertNotEqual(
            other.certificate_for(("rsa",))[0], pending.certificate_for(("rsa",))[0]
        )

    def test_fresh_default_key_per_challenge(self) -> None:
        registry = TLSALPN01Registry()
        a = registry.add("a.example", "k.a").certificate_for()[0]
        b = registry.add("a.example", "k.b").certificate_for()[0]
        self.assertNotEqual(a.public_key(), b.public_key())
        self.assertIsInstance(a.public_key(), ec.EllipticCurvePublicKey)

    def test_bad_input(self) -> None:
        self.assertRaises(ConfigurationError, key_authorization_digest, "é")
        self.assertRaises(ConfigurationError, key_authorization_digest, b"bytes")  # type: ignore[arg-type]
        self.assertRaises(ConfigurationError, acme_identifier_extension, b"short")

    def test_key_kind(self) -> None:
        self.assertEqual(key_kind(ec.generate_private_key(ec.SECP256R1())), ("ec", "secp256r1"))
        self.assertEqual(key_kind(object()), ("other",))


class RegistryTests(unittest.TestCase):
    def test_sni_names(self) -> None:
        self.assertEqual(sni_names("a.example"), ("a.example",))
        self.assertEqual(sni_names("127.0.0.1"), ("1.0.0.127.in-addr.arpa", "127.0.0.1"))
        self.assertEqual(sni_names("::1")[0], "1." + "0." * 31 + "ip6.arpa")

    def test_lookup(self) -> None:
        registry = TLSALPN01Registry()
        self.assertIsNone(registry.lookup("a.example"))
        pending = registry.add("A.Example", "k.a")
        self.assertIs(registry.lookup("a.example"), pending)
        self.assertIsNone(registry.lookup("b.example"))
        self.assertEqual(len(registry), 1)
        registry.remove("a.example", "k.a")
        self.assertIsNone(registry.lookup("a.example"))
        self.assertEqual(len(registry), 0)

    def test_ip(self) -> None:
        registry = TLSALPN01Registry()
        v4 = registry.add("192.0.2.1", "k.4")
        v6 = registry.add("2001:DB8:0:0::1", "k.6")
        self.assertIs(registry.lookup("1.2.0.192.in-addr.arpa"), v4)
        self.assertIs(registry.lookup("192.0.2.1"), v4)
        self.assertIs(registry.lookup(ipaddress.ip_address("2001:db8::1").reverse_pointer), v6)
        self.assertIs(registry.lookup("2001:db8::1"), v6)
        self.assertEqual(v6.identifier, "2001:db8::1")
        self.assertEqual(len(registry), 2)
        self.assertEqual({p.identifier for p in registry}, {"192.0.2.1", "2001:db8::1"})
        registry.remove("2001:db8::1", "k.6")
        self.assertIsNone(registry.lookup("2001:db8::1"))
        self.assertIsNone(registry.lookup(ipaddress.ip_address("2001:db8::1").reverse_pointer))

    def test_overlap(self) -> None:
        registry = TLSALPN01Registry()
        first = registry.add("a.example", "k.1")
        second = registry.add("a.example", "k.2")
        self.assertIs(registry.lookup("a.example"), second)
        registry.remove("a.example", "k.1")
        self.assertIs(registry.lookup("a.example"), second)
        registry.remove("a.example", "k.2")
        self.assertIsNone(registry.lookup("a.example"))
        registry.add("a.example", "k.1")
        registry.add("a.example", "k.2")
        registry.remove("a.example")
        self.assertIsNone(registry.lookup("a.example"))
        del first

    def test_refused(self) -> None:
        registry = TLSALPN01Registry()
        self.assertRaises(InvalidServerName, registry.add, "*.example.com", "k.a")
        self.assertRaises(InvalidServerName, registry.add, "../etc", "k.a")
        self.assertRaises(ConfigurationError, registry.add, "a.example", "é")
        registry.remove("../etc", "k.a")
        registry.remove("a.example", "é")
        registry.remove("never.example", "k.a")

    def test_hostile_lookups(self) -> None:
        registry = TLSALPN01Registry()
        registry.add("a.example", "k.a")
        for name in ("", "../a.example", "a.example\0", "A.EXAMPLE", "x" * 1000):
            self.assertIsNone(registry.lookup(name))


class ResponderTests(unittest.TestCase):
    def test_interface(self) -> None:
        responder = TLSALPN01Responder()
        self.assertTrue(verifyObject(IResponder, responder))
        self.assertEqual(responder.challenge_type, "tls-alpn-01")
        self.assertIsInstance(responder.registry, TLSALPN01Registry)
        registry = TLSALPN01Registry()
        self.assertIs(TLSALPN01Responder(registry).registry, registry)

    def test_start_stop(self) -> None:
        responder = TLSALPN01Responder()
        challenge, response = FakeChallenge(), FakeResponse(TOKEN + ".thumb")
        self.assertIsNone(responder.start_responding("www.example.com", challenge, response))
        pending = responder.registry.lookup("www.example.com")
        assert pending is not None
        self.assertEqual(pending.digest, hashlib.sha256((TOKEN + ".thumb").encode()).digest())
        self.assertIsNone(responder.stop_responding("www.example.com", challenge, response))
        self.assertIsNone(responder.registry.lookup("www.example.com"))
        # Stopping twice, or something never started, is harmless.
        responder.stop_responding("www.example.com", challenge, response)

    def test_bad_challenges(self) -> None:
        responder = TLSALPN01Responder()
        challenge = FakeChallenge()
        for response in (FakeResponse(None), FakeResponse("é"), FakeResponse("other.thumb")):
            self.assertRaises(
                ConfigurationError, responder.start_responding, "a.example", challenge, response
            )
        self.assertRaises(
            ConfigurationError,
            responder.start_responding,
            "*.example.com",
            challenge,
            FakeResponse(TOKEN + ".t"),
        )
        self.assertEqual(len(responder.registry), 0)

    def test_real_messages(self) -> None:
        """Works with the message objects an ACME server's JSON decodes to."""
        key = account_key()
        body = messages.ChallengeBody.from_json(
            {
                "type": "tls-alpn-01",
                "url": "https://ca.example/chall/1",
                "token": TOKEN,
                "status": "pending",
            }
        )
        challenge = body.chall
        response = challenge.response(key)
        responder = TLSALPN01Responder()
        responder.start_responding("a.example", challenge, response)
        pending = responder.registry.lookup("a.example")
        assert pending is not None
        self.assertEqual(pending.digest, challenge.validation(key))
        # An UnrecognizedChallenge (if another class had taken the type) works too.
        unrecognized = acme_challenges.UnrecognizedChallenge(
            {"type": "tls-alpn-01", "token": TOKEN}
        )
        plain = acme_challenges.KeyAuthorizationChallengeResponse(
            key_authorization=response.key_authorization
        )
        responder.start_responding("b.example", unrecognized, plain)
        self.assertIsNotNone(responder.registry.lookup("b.example"))


class MessageTypeTests(unittest.TestCase):
    def test_decodes(self) -> None:
        body = messages.ChallengeBody.from_json(
            {
                "type": "tls-alpn-01",
                "url": "https://ca.example/chall/1",
                "token": TOKEN,
                "status": "pending",
            }
        )
        self.assertIsInstance(body.chall, TLSALPN01)
        self.assertEqual(body.chall.typ, "tls-alpn-01")
        self.assertEqual(body.chall.encode("token"), TOKEN)
        key = account_key()
        response = body.chall.response(key)
        self.assertIsInstance(response, TLSALPN01Response)
        self.assertEqual(response.key_authorization, body.chall.key_authorization(key))
        self.assertTrue(response.verify(body.chall, key.public_key()))
        # The response is an empty JSON object on the wire (RFC 8555 section 7.5.1).
        self.assertEqual(response.to_partial_json(), {})
        self.assertEqual(
            body.chall.validation(key),
            hashlib.sha256(response.key_authorization.encode()).digest(),
        )

    def test_registration_is_idempotent(self) -> None:
        """Registering again keeps exactly one registration, of the same classes."""
        before = dict(acme_challenges.Challenge.TYPES)
        responses = dict(acme_challenges.ChallengeResponse.TYPES)
        tlsalpn01._register()
        tlsalpn01._register()
        self.assertEqual(acme_challenges.Challenge.TYPES, before)
        self.assertEqual(acme_challenges.ChallengeResponse.TYPES, responses)
        self.assertIs(acme_challenges.Challenge.TYPES["tls-alpn-01"], TLSALPN01)
        self.assertIs(acme_challenges.ChallengeResponse.TYPES["tls-alpn-01"], TLSALPN01Response)

    def test_does_not_replace_other_registrations(self) -> None:
        class Other(acme_challenges.KeyAuthorizationChallenge):
            typ = "tls-alpn-01"
            response_cls = TLSALPN01Response

            def validation(self, account_key: jose.JWK, **kwargs: Any) -> None:
                return None

        saved = acme_challenges.Challenge.TYPES["tls-alpn-01"]
        acme_challenges.Challenge.TYPES["tls-alpn-01"] = Other
        self.addCleanup(acme_challenges.Challenge.TYPES.__setitem__, "tls-alpn-01", saved)
        tlsalpn01._register()
        self.assertIs(acme_challenges.Challenge.TYPES["tls-alpn-01"], Other)

    def test_constants(self) -> None:
        self.assertEqual(ACME_TLS_1, b"acme-tls/1")
        self.assertEqual(ID_PE_ACME_IDENTIFIER.dotted_string, "1.3.6.1.5.5.7.1.31")
