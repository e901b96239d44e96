"""
Strict JWS checks for ACME requests (RFC 8555 section 6.2, RFC 7515, RFC 7518).

Only the flattened JSON serialization with a protected header is accepted; the
signature is checked with josepy's algorithms over the exact bytes the client
sent, not a re-encoding of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy import errors as jose_errors
from josepy import jwa
from josepy.jwk import JWK

from txacme.testca._problems import Problem

#: JWS algorithms accepted for account and certificate keys.
SIGNATURE_ALGORITHMS: dict[str, jwa.JWASignature] = {
    "RS256": jwa.RS256,
    "ES256": jwa.ES256,
    "ES384": jwa.ES384,
    "ES512": jwa.ES512,
}
#: MAC algorithms accepted for external account binding.
MAC_ALGORITHMS: dict[str, jwa.JWASignature] = {
    "HS256": jwa.HS256,
    "HS384": jwa.HS384,
    "HS512": jwa.HS512,
}
_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")


def b64encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: object, what: str) -> bytes:
    """Strict base64url without padding; a :class:`Problem` (malformed) otherwise."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise Problem("malformed", f"{what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Problem("malformed", f"{what} is not unpadded base64url")


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object; a :class:`Problem` (malformed) otherwise."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Problem("malformed", f"{what} is not valid JSON")
    if not isinstance(value, dict):
        raise Problem("malformed", f"{what} is not a JSON object")
    return value


@attrs.frozen
class FlattenedJWS:
    """A parsed, not yet verified, flattened JWS."""

    protected: dict[str, Any]
    payload: bytes
    payload_b64: str
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        """The ``alg`` header."""
        return str(self.protected.get("alg"))

    @property
    def post_as_get(self) -> bool:
        """True for an empty payload (RFC 8555 section 6.3)."""
        return self.payload_b64 == ""

    def payload_json(self) -> dict[str, Any]:
        """The payload as a JSON object."""
        return json_object(self.payload, "JWS payload")


def parse(body: object, what: str = "request body") -> FlattenedJWS:
    """Parse a flattened JWS given as bytes or as an already decoded JSON object."""
    doc = json_object(body, what) if isinstance(body, bytes) else body
    if not isinstance(doc, dict):
        raise Problem("malformed", f"{what} is not a JSON object")
    if "signatures" in doc:
        raise Problem("malformed", f"{what}: only the flattened JWS serialization is accepted")
    if "header" in doc:
        raise Problem("malformed", f"{what}: the JWS unprotected header must not be used")
    unknown = set(doc) - {"protected", "payload", "signature"}
    if unknown:
        raise Problem("malformed", f"{what}: unexpected JWS members {sorted(unknown)}")
    for member in ("protected", "payload", "signature"):
        if not isinstance(doc.get(member), str):
            raise Problem("malformed", f"{what}: JWS member {member!r} missing or not a string")
    protected_b64: str = doc["protected"]
    payload_b64: str = doc["payload"]
    protected = json_object(b64decode(protected_b64, "JWS protected header"), "protected header")
    payload = b64decode(payload_b64, "JWS payload")
    signature = b64decode(doc["signature"], "JWS signature")
    if not isinstance(protected.get("alg"), str):
        raise Problem("malformed", "JWS protected header has no 'alg'")
    return FlattenedJWS(
        protected=protected,
        payload=payload,
        payload_b64=payload_b64,
        signing_input=f"{protected_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )


def raw_key(jwk: JWK) -> Any:
    """The ``cryptography`` key inside a josepy JWK (josepy wraps it)."""
    return getattr(jwk.key, "_wrapped", jwk.key)


def load_public_jwk(value: object) -> JWK:
    """Load a public JWK from a protected header, refusing private or odd keys."""
    if not isinstance(value, dict):
        raise Problem("malformed", "'jwk' is not a JSON object")
    if "d" in value or value.get("kty") not in ("EC", "RSA"):
        raise Problem("badPublicKey", "only public RSA and EC keys are accepted")
    try:
        jwk: Any = JWK.from_json(value)
    except (jose_errors.Error, ValueError, TypeError) as e:
        raise Problem("badPublicKey", f"unusable JWK: {e}")
    key = raw_key(jwk)
    if isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= 4096:
            raise Problem("badPublicKey", f"RSA keys must be 2048 to 4096 bits, not {key.key_size}")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_FOR_ALG.values():
            raise Problem("badPublicKey", f"unsupported curve {key.curve.name}")
    else:
        raise Problem("badPublicKey", "only public RSA and EC keys are accepted")
    result: JWK = jwk
    return result


def verify(jws: FlattenedJWS, jwk: JWK) -> None:
    """Check that ``alg`` suits ``jwk`` and that the signature verifies."""
    alg = jws.alg
    algorithm = SIGNATURE_ALGORITHMS.get(alg)
    key = raw_key(jwk)
    if algorithm is None:
        raise Problem(
            "badSignatureAlgorithm",
            f"JWS algorithm {alg!r} is not supported",
            extra={"algorithms": sorted(SIGNATURE_ALGORITHMS)},
        )
    if alg == "RS256":
        suits = isinstance(key, rsa.RSAPublicKey)
    else:
        suits = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVE_FOR_ALG[alg]
    if not suits:
        raise Problem(
            "badSignatureAlgorithm",
            f"JWS algorithm {alg!r} does not match the key",
            extra={"algorithms": sorted(SIGNATURE_ALGORITHMS)},
        )
    if not algorithm.verify(key, jws.signing_input, jws.signature):
        raise Problem("malformed", "JWS signature is invalid")


def verify_mac(jws: FlattenedJWS, mac_key: bytes) -> None:
    """Check an external account binding MAC."""
    algorithm = MAC_ALGORITHMS.get(jws.alg)
    if algorithm is None:
        raise Problem("malformed", f"external account binding algorithm {jws.alg!r} unsupported")
    if not algorithm.verify(mac_key, jws.signing_input, jws.signature):
        raise Problem("unauthorized", "external account binding MAC is invalid")


def same_key(a: JWK, b: JWK) -> bool:
    """True when two JWKs hold the same public key."""
    return bool(a.thumbprint() == b.thumbprint())
