"""
The ``tls-alpn-01`` challenge (RFC 8737, and RFC 8738 for IP addresses).

The CA connects to port 443 of the identifier, sends the identifier as SNI
(for an IP address: its reverse-DNS name, ``4.3.2.1.in-addr.arpa`` or
``...ip6.arpa``) and offers only the ALPN protocol ``acme-tls/1``. The server
must negotiate ``acme-tls/1`` and present a self-signed *challenge certificate*
whose only subject alternative name is the identifier and which carries the
critical ``id-pe-acmeIdentifier`` extension (1.3.6.1.5.5.7.1.31) holding the
SHA-256 digest of the key authorization as a DER ``OCTET STRING``.

This module has three parts:

* :class:`TLSALPN01` / :class:`TLSALPN01Response`: the challenge message types,
  registered with :mod:`acme.challenges` so that ``acme.messages.ChallengeBody``
  decodes ``"tls-alpn-01"`` (the ``acme`` package no longer ships them).
  Registration happens once, on first import, and never replaces a class that
  is already registered for the type.
* :class:`TLSALPN01Registry`: the challenges being answered, by the name a
  validator sends as SNI. :class:`txacme.serving.tls.SNIConnectionCreator` consults it
  during handshakes; it builds the challenge certificates.
* :class:`TLSALPN01Responder`: the :class:`~txacme.interfaces.IResponder` that
  adds and removes registry entries.

Challenge certificates are valid from an hour ago for one day (validators do not
check validity, a short lifetime limits any misuse) and signed by a fresh
ECDSA P-256 key. When the certificate a name normally serves uses another kind
of key (RSA, P-384...), the TLS layer asks for a challenge certificate with a
key of that kind, because under TLS 1.2 the cipher suite, chosen before ALPN,
is tied to the key type: those are made on first use and cached; RSA keys are
2048 bits and one is shared by all challenges of a registry.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

from acme import challenges as acme_challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from josepy.jwk import JWK
from zope.interface import implementer

from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import IResponder
from txacme.logs import Logger
from txacme.names import is_ip_address, is_wildcard, normalize_server_name

log = Logger()

CHALLENGE_TYPE = "tls-alpn-01"
"""The ACME challenge type this module answers (RFC 8737)."""
ACME_TLS_1 = b"acme-tls/1"
"""The ALPN protocol name of RFC 8737."""

ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
"""The OID of the ``acmeIdentifier`` certificate extension."""

CHALLENGE_VALIDITY = datetime.timedelta(days=1)
CLOCK_SKEW = datetime.timedelta(hours=1)

ChallengeKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
"""The private key types a challenge certificate can have."""


# ---------------------------------------------------------------------------
# Message types
# ---------------------------------------------------------------------------


class TLSALPN01Response(acme_challenges.KeyAuthorizationChallengeResponse):
    """The response to a ``tls-alpn-01`` challenge (an empty JSON object on the wire)."""

    typ = CHALLENGE_TYPE


class TLSALPN01(acme_challenges.KeyAuthorizationChallenge):
    """The ``tls-alpn-01`` challenge: a token, answered over TLS with ALPN."""

    response_cls = TLSALPN01Response
    typ = CHALLENGE_TYPE

    def validation(self, account_key: JWK, **unused_kwargs: Any) -> bytes:
        """
        The SHA-256 digest of the key authorization: what the ``acmeIdentifier``
        extension of the challenge certificate must hold.
        """
        return key_authorization_digest(self.key_authorization(account_key))


def _register() -> None:
    """
    Register the message types, unless a class from elsewhere (a future ``acme``
    release, another library) already answers to the type. Running it again,
    or reloading this module, leaves exactly one registration.
    """
    for registry, cls in (
        (acme_challenges.Challenge.TYPES, TLSALPN01),
        (acme_challenges.ChallengeResponse.TYPES, TLSALPN01Response),
    ):
        existing = registry.get(CHALLENGE_TYPE)
        if existing is None or existing.__module__ == __name__:
            registry[CHALLENGE_TYPE] = cls


_register()


# ---------------------------------------------------------------------------
# Challenge certificates
# ---------------------------------------------------------------------------


def key_authorization_digest(key_authorization: str) -> bytes:
    """
    SHA-256 of the ASCII key authorization.

    :raises txacme.errors.ConfigurationError: if it is not an ASCII string.
    """
    if not isinstance(key_authorization, str) or not key_authorization.isascii():
        raise ConfigurationError("tls-alpn-01 key authorization must be an ASCII string")
    return hashlib.sha256(key_authorization.encode("ascii")).digest()


def acme_identifier_extension(digest: bytes) -> x509.UnrecognizedExtension:
    """
    The ``acmeIdentifier`` extension value: ``OCTET STRING`` (``04 20``) of the
    32-byte digest.
    """
    if len(digest) != 32:
        raise ConfigurationError("the acmeIdentifier digest must be 32 bytes (SHA-256)")
    return x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest)


def _signature_hash(key: ChallengeKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _subject_alternative_name(identifier: str) -> x509.GeneralName:
    if is_ip_address(identifier):
        return x509.IPAddress(ipaddress.ip_address(identifier))
    return x509.DNSName(identifier)


def challenge_certificate(
    identifier: str,
    digest: bytes,
    key: ChallengeKey,
    *,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """
    Build the self-signed RFC 8737 challenge certificate.

    :param identifier: the canonical DNS name or IP address being validated;
        the certificate's only subject alternative name.
    :param digest: :func:`key_authorization_digest` of the key authorization.
    :param key: the certificate's (and signer's) private key.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME tls-alpn-01 challenge")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CHALLENGE_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([_subject_alternative_name(identifier)]), critical=False
        )
        .add_extension(acme_identifier_extension(digest), critical=True)
    )
    return builder.sign(key, _signature_hash(key))


KeyKind = tuple[str, ...]
"""What a TLS server's certificate slot depends on: ``("ec", curve)``, ``("rsa",)``..."""


def key_kind(key: object) -> KeyKind:
    """
    The kind of a private or public key as far as certificate selection in a
    TLS handshake goes: ``("ec", <curve name>)``, ``("rsa",)``, ``("ed25519",)``
    or ``("ed448",)``; ``("other",)`` for anything else.
    """
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return ("ec", key.curve.name)
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return ("rsa",)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ("ed25519",)
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return ("ed448",)
    return ("other",)


_EC_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}

DEFAULT_KIND: KeyKind = ("ec", "secp256r1")


class PendingChallenge:
    """
    One challenge being answered: the identifier, the digest of its key
    authorization, and its challenge certificates by key kind.

    :ivar identifier: the canonical DNS name or IP address.
    :ivar digest: the SHA-256 digest of the key authorization.
    """

    def __init__(
        self,
        identifier: str,
        digest: bytes,
        rsa_key: Callable[[], rsa.RSAPrivateKey],
    ) -> None:
        self.identifier = identifier
        self.digest = digest
        self._rsa_key = rsa_key
        self._certificates: dict[KeyKind, tuple[x509.Certificate, ChallengeKey]] = {}
        self.certificate_for(DEFAULT_KIND)

    def __repr__(self) -> str:
        return f"<PendingChallenge for {self.identifier!r}>"

    def _new_key(self, kind: KeyKind) -> ChallengeKey:
        if kind[0] == "ec" and len(kind) == 2 and kind[1] in _EC_CURVES:
            return ec.generate_private_key(_EC_CURVES[kind[1]]())
        if kind == ("rsa",):
            return self._rsa_key()
        if kind == ("ed25519",):
            return ed25519.Ed25519PrivateKey.generate()
        if kind == ("ed448",):
            return ed448.Ed448PrivateKey.generate()
        return ec.generate_private_key(ec.SECP256R1())

    def certificate_for(
        self, kind: KeyKind = DEFAULT_KIND
    ) -> tuple[x509.Certificate, ChallengeKey]:
        """
        The challenge certificate and its key, with a key of ``kind`` (see
        :func:`key_kind`); made on first use and kept.
        """
        found = self._certificates.get(kind)
        if found is None:
            key = self._new_key(kind)
            found = (challenge_certificate(self.identifier, self.digest, key), key)
            self._certificates[kind] = found
        return found


def sni_names(identifier: str) -> tuple[str, ...]:
    """
    The SNI values under which a validator may ask for ``identifier``.

    A DNS name is asked for by itself. An IP address by its reverse-DNS name
    (RFC 8738 section 6), and also by the address itself, which the TLS layer
    uses for clients that send no SNI.
    """
    if is_ip_address(identifier):
        return (ipaddress.ip_address(identifier).reverse_pointer, identifier)
    return (identifier,)


class TLSALPN01Registry:
    """
    The ``tls-alpn-01`` challenges being answered, by SNI name.

    Several challenges for one identifier may overlap (two orders at once): the
    one added last is served, and removing it brings back the previous one.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, list[PendingChallenge]] = {}
        self._rsa: rsa.RSAPrivateKey | None = None

    def _rsa_key(self) -> rsa.RSAPrivateKey:
        if self._rsa is None:
            self._rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._rsa

    def add(self, identifier: str, key_authorization: str) -> PendingChallenge:
        """
        Start answering for ``identifier`` (a DNS name or an IP address).

        :raises txacme.errors.InvalidServerName: for a wildcard or a bad name
            (``tls-alpn-01`` cannot validate wildcards).
        :raises txacme.errors.ConfigurationError: for a key authorization that
            is not an ASCII string.
        """
        name = normalize_server_name(identifier)
        if is_wildcard(name):
            raise InvalidServerName(identifier, "tls-alpn-01 cannot validate a wildcard name")
        pending = PendingChallenge(name, key_authorization_digest(key_authorization), self._rsa_key)
        for sni in sni_names(name):
            self._by_name.setdefault(sni, []).append(pending)
        return pending

    def remove(self, identifier: str, key_authorization: str | None = None) -> None:
        """
        Stop answering the challenge for ``identifier`` with that key
        authorization (``None``: every challenge for it). Unknown ones are
        ignored.
        """
        try:
            name = normalize_server_name(identifier)
        except InvalidServerName:
            return
        digest = None
        if key_authorization is not None:
            try:
                digest = key_authorization_digest(key_authorization)
            except ConfigurationError:
                return
        for sni in sni_names(name):
            stack = self._by_name.get(sni)
            if not stack:
                continue
            if digest is None:
                stack.clear()
            else:
                for index in range(len(stack) - 1, -1, -1):
                    if stack[index].digest == digest:
                        del stack[index]
                        break
            if not stack:
                del self._by_name[sni]

    def lookup(self, sni_name: str) -> PendingChallenge | None:
        """
        The challenge to serve to a validator that sent ``sni_name`` (already
        lower-cased), or ``None``. Never raises, whatever the name.
        """
        stack = self._by_name.get(sni_name)
        if stack:
            return stack[-1]
        return None

    def __len__(self) -> int:
        return len({id(p) for stack in self._by_name.values() for p in stack})

    def __iter__(self) -> Iterator[PendingChallenge]:
        seen: set[int] = set()
        for stack in self._by_name.values():
            for pending in stack:
                if id(pending) not in seen:
                    seen.add(id(pending))
                    yield pending


# ---------------------------------------------------------------------------
# The responder
# ---------------------------------------------------------------------------


@implementer(IResponder)
class TLSALPN01Responder:
    """
    Answers ``tls-alpn-01`` challenges through the TLS layer.

    Give the same ``registry`` to :class:`txacme.serving.tls.SNIConnectionCreator`
    (``SNIConnectionCreator(index, challenges=responder.registry)``) on the
    listener that the CA reaches on port 443.

    :ivar registry: the :class:`TLSALPN01Registry` this responder fills.
    """

    challenge_type = CHALLENGE_TYPE

    def __init__(self, registry: TLSALPN01Registry | None = None) -> None:
        self.registry = registry if registry is not None else TLSALPN01Registry()

    @staticmethod
    def _key_authorization(challenge: Any, response: Any) -> str:
        key_authorization = getattr(response, "key_authorization", None)
        if not isinstance(key_authorization, str) or not key_authorization.isascii():
            raise ConfigurationError("tls-alpn-01 key authorization must be an ASCII string")
        try:
            token = challenge.encode("token")
        except Exception:
            token = None
        if isinstance(token, str) and not key_authorization.startswith(token + "."):
            raise ConfigurationError(f"tls-alpn-01 key authorization is not for token {token!r}")
        return key_authorization

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """
        Serve a challenge certificate for ``server_name`` to validators that
        offer only ``acme-tls/1``, from now on.

        :raises txacme.errors.ConfigurationError: for a bad name (including a
            wildcard) or key authorization.
        """
        key_authorization = self._key_authorization(challenge, response)
        pending = self.registry.add(server_name, key_authorization)
        log.debug("answering tls-alpn-01 for {server_name}", server_name=pending.identifier)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """
        Stop serving that challenge certificate (no-op if it is not served).
        """
        key_authorization = getattr(response, "key_authorization", None)
        self.registry.remove(
            server_name, key_authorization if isinstance(key_authorization, str) else None
        )
        log.debug("stopped answering tls-alpn-01 for {server_name}", server_name=server_name)


__all__ = [
    "ACME_TLS_1",
    "CHALLENGE_TYPE",
    "ID_PE_ACME_IDENTIFIER",
    "PendingChallenge",
    "TLSALPN01",
    "TLSALPN01Registry",
    "TLSALPN01Responder",
    "TLSALPN01Response",
    "acme_identifier_extension",
    "challenge_certificate",
    "key_authorization_digest",
    "key_kind",
    "sni_names",
]
