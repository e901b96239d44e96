"""
One ACME order, from the names to a stored-ready certificate.

:func:`obtain_certificate` joins a :class:`txacme.protocol.client.Client` and the
challenge responders: it places the order, answers every pending authorization
at once (each with the first responder, in the order given, whose challenge
type the CA offers), always stops the responders again, finalizes with a CSR
for a fresh key and downloads the chain. Authorizations the CA already holds
as ``valid`` (it may reuse them) need no work.

The service calls it; it does not know about stores or schedules.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import pem
from acme import challenges, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWK
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txacme.certificates import IGNORED_KEY_TYPES, certificate_names, public_key_der
from txacme.challenges.dnsaccount01 import DNSAccount01
from txacme.challenges.dnspersist01 import DNSPersist01
from txacme.errors import (
    ConfigurationError,
    IssuanceFailed,
    NoSupportedChallenge,
    OrderNotReady,
    ProtocolError,
)
from txacme.interfaces import IResponder
from txacme.keys import KEY_TYPES, PrivateKey, generate_private_key, make_csr, private_key_pem
from txacme.logs import Logger
from txacme.names import normalize_server_names
from txacme.protocol.client import CertificateChain, Client

if TYPE_CHECKING:
    from typing_extensions import Self

log = Logger()


@attrs.frozen
class IssuedCertificate:
    """
    A certificate just issued, with its private key.

    :ivar key: the private key (cryptography object; never in ``repr``).
    :ivar pem_objects: ``pem`` objects: the key, the certificate, then the
        chain, exactly what :meth:`txacme.interfaces.ICertificateStore.store` takes.
    :ivar certificate: the end-entity certificate.
    :ivar chain: the issuer certificates that came with it.
    :ivar names: the (normalized) names asked for.
    :ivar not_before: start of validity (timezone-aware).
    :ivar not_after: end of validity (timezone-aware).
    :ivar url: where the CA serves the certificate.
    :ivar order_url: the order that produced it.
    """

    key: PrivateKey = attrs.field(repr=False)
    pem_objects: list[pem.AbstractPEMObject] = attrs.field(repr=False)
    certificate: x509.Certificate = attrs.field(repr=False)
    chain: list[x509.Certificate] = attrs.field(repr=False)
    names: list[str]
    not_before: datetime.datetime
    not_after: datetime.datetime
    url: str | None = None
    order_url: str | None = None

    @classmethod
    def from_pem_objects(
        cls, pem_objects: Sequence[pem.AbstractPEMObject], names: Sequence[str] | None = None
    ) -> Self:
        """
        The certificate of a store entry (key, certificate, chain), e.g. one
        another process stored.

        :param names: the names it was asked for; by default those the
            certificate holds (:func:`txacme.certificates.certificate_names`).
        :raises ValueError: when the entry holds no readable certificate, or no
            readable RSA or EC private key.
        """
        objects = list(pem_objects)
        certificates = [
            x509.load_pem_x509_certificate(o.as_bytes())
            for o in objects
            if isinstance(o, pem.Certificate)
        ]
        if not certificates:
            raise ValueError("the store entry holds no certificate")
        keys = [
            o
            for o in objects
            if isinstance(o, pem.PrivateKey) and not isinstance(o, IGNORED_KEY_TYPES)
        ]
        key = serialization.load_pem_private_key(keys[0].as_bytes(), None) if keys else None
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError("the store entry holds no RSA or EC private key")
        certificate = certificates[0]
        return cls(
            key=key,
            pem_objects=objects,
            certificate=certificate,
            chain=certificates[1:],
            names=list(names) if names is not None else certificate_names(certificate),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )


def _challenge_type(challb: messages.ChallengeBody) -> str | None:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        typ = chall.jobj.get("type")
        return typ if isinstance(typ, str) else None
    typ = getattr(chall, "typ", None)
    return typ if isinstance(typ, str) else None


def _key_authorization(chall: challenges.Challenge, account_key: JWK) -> str:
    """The key authorization (RFC 8555 section 8.1) of a token challenge."""
    if isinstance(chall, challenges.KeyAuthorizationChallenge):
        return chall.key_authorization(account_key)
    token: object = None
    if isinstance(chall, challenges.UnrecognizedChallenge):
        token = chall.jobj.get("token")
    if not isinstance(token, str) or not token:
        raise ProtocolError("the challenge has no token")
    thumbprint = account_key.thumbprint(hash_function=hashes.SHA256)
    return token + "." + base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode("ascii")


def challenge_response(
    chall: challenges.Challenge,
    account_key: JWK,
    *,
    account_uri: str | None = None,
    wildcard: bool = False,
) -> challenges.ChallengeResponse:
    """
    The response to a challenge: the challenge type's own response class when
    the ``acme`` package (or a registered class) knows it, else a plain
    ``KeyAuthorizationChallengeResponse`` (e.g. for ``tls-alpn-01``, which
    ``acme`` no longer models). ``dns-persist-01`` and ``dns-account-01``
    responses carry ``account_uri`` (and ``wildcard``) for their responders.
    """
    if isinstance(chall, DNSPersist01):
        if account_uri is None:
            raise ProtocolError("dns-persist-01 needs the account URI")
        return chall.answer(account_uri, wildcard)
    if isinstance(chall, DNSAccount01):
        if account_uri is None:
            raise ProtocolError("dns-account-01 needs the account URI")
        return chall.answer(account_key, account_uri)
    if isinstance(chall, challenges.KeyAuthorizationChallenge):
        return chall.response(account_key)
    return challenges.KeyAuthorizationChallengeResponse(
        key_authorization=_key_authorization(chall, account_key)
    )


def _choose(
    authz: messages.AuthorizationResource, responders: Sequence[IResponder]
) -> tuple[IResponder, messages.ChallengeBody]:
    offered = list(authz.body.challenges or ())
    for responder in responders:
        for challb in offered:
            if _challenge_type(challb) == responder.challenge_type:
                return responder, challb
    types = sorted({t for t in (_challenge_type(c) for c in offered) if t})
    name = _identifier_name(authz)
    supported = sorted({str(r.challenge_type) for r in responders})
    raise NoSupportedChallenge(
        f"no responder for the challenges offered for {name}: the CA offers "
        f"{', '.join(types) or 'none'}; responders answer {', '.join(supported) or 'none'}"
    )


def _identifier_name(authz: messages.AuthorizationResource) -> str:
    ident = authz.body.identifier
    if ident is None:
        return authz.uri
    value = str(ident.value)
    return "*." + value if authz.body.wildcard else value


async def _complete_authorization(
    client: Client, url: str, responders: Sequence[IResponder]
) -> None:
    authz = await client.fetch_authorization(url)
    status = authz.body.status
    if status == messages.STATUS_VALID:
        log.debug("authorization for {name} already valid", name=_identifier_name(authz))
        return
    if status != messages.STATUS_PENDING:
        raise IssuanceFailed(
            f"authorization for {_identifier_name(authz)} is {status.name}, not pending"
        )
    responder, challb = _choose(authz, responders)
    server_name = str(authz.body.identifier.value)
    response = challenge_response(
        challb.chall,
        client.key,
        account_uri=client.account.uri if client.account is not None else None,
        wildcard=bool(authz.body.wildcard),
    )
    log.debug(
        "answering {challenge_type} for {name}",
        challenge_type=responder.challenge_type,
        name=_identifier_name(authz),
    )
    started = False
    try:
        await defer.maybeDeferred(responder.start_responding, server_name, challb.chall, response)
        started = True
        await client.answer_challenge(challb, response)
        await client.poll_authorization(url)
    finally:
        if started:
            try:
                await defer.maybeDeferred(
                    responder.stop_responding, server_name, challb.chall, response
                )
            except Exception:
                log.failure(
                    "stopping the {challenge_type} responder for {name} failed",
                    challenge_type=responder.challenge_type,
                    name=server_name,
                )


async def _authorize_all(
    client: Client, urls: Sequence[str], responders: Sequence[IResponder]
) -> None:
    """Answer every authorization concurrently; wait for all, raise the first failure."""
    results = await defer.DeferredList(
        [Deferred.fromCoroutine(_complete_authorization(client, u, responders)) for u in urls],
        consumeErrors=True,
    )
    for ok, result in results:
        if not ok:
            assert isinstance(result, Failure)
            result.raiseException()


def _check_certificate(issued: CertificateChain, key: PrivateKey, names: Sequence[str]) -> None:
    cert = issued.certificate
    if public_key_der(cert) != public_key_der(key):
        raise ProtocolError(f"the certificate at {issued.url} is not for the key that was sent")
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise ProtocolError(f"the certificate at {issued.url} has no subjectAltName")
    present = set(certificate_names(cert))
    missing = [n for n in names if n not in present]
    if missing:
        raise ProtocolError(f"the certificate at {issued.url} does not cover {', '.join(missing)}")


def obtain_certificate(
    client: Client,
    names: Sequence[str],
    responders: Sequence[IResponder],
    *,
    key: PrivateKey | None = None,
    key_type: str = "ec256",
    profile: str | None = None,
    replaces: str | None = None,
    preferred_chain: str | None = None,
) -> Deferred[IssuedCertificate]:
    """
    Obtain one certificate for ``names`` over ``client`` (whose account must be
    ready, e.g. after :meth:`~txacme.protocol.client.Client.start`).

    :param names: DNS names, ``*.`` wildcards or IP addresses; the first DNS
        name becomes the subject common name.
    :param responders: :class:`~txacme.interfaces.IResponder` providers, in
        order of preference.
    :param key: the certificate's private key; a fresh one of ``key_type`` when
        ``None`` (RSA keys are generated in a thread of the reactor's pool).
    :param key_type: ``"ec256"`` (default), ``"ec384"``, ``"rsa2048"``,
        ``"rsa3072"`` or ``"rsa4096"``.
    :param profile: an ACME profile the CA advertises.
    :param replaces: the ARI identifier of the certificate being replaced.
    :param preferred_chain: issuer common name of the preferred chain.
    :return: a ``Deferred`` firing with an :class:`IssuedCertificate`.
    :raises txacme.errors.NoSupportedChallenge: when an authorization offers no
        challenge a responder answers.
    :raises txacme.errors.IssuanceFailed: when an authorization or the order
        becomes invalid (``problem`` says why).
    """
    return Deferred.fromCoroutine(
        _obtain(client, names, responders, key, key_type, profile, replaces, preferred_chain)
    )


async def _obtain(
    client: Client,
    names: Sequence[str],
    responders: Sequence[IResponder],
    key: PrivateKey | None,
    key_type: str,
    profile: str | None,
    replaces: str | None,
    preferred_chain: str | None,
) -> IssuedCertificate:
    canonical = normalize_server_names(names, "a certificate")
    responders = list(responders)
    if not responders:
        raise ConfigurationError("obtain_certificate needs at least one challenge responder")
    for responder in responders:
        if not isinstance(getattr(responder, "challenge_type", None), str):
            raise ConfigurationError(f"{responder!r} has no challenge_type: not a responder")
    if key is None:
        if key_type not in KEY_TYPES:
            generate_private_key(key_type)  # raises UnsupportedKeyType naming it
        if key_type.startswith("rsa"):
            # RSA generation takes from tens of milliseconds to a second and
            # releases the GIL: keep the reactor serving meanwhile.
            key = await threads.deferToThread(generate_private_key, key_type)
        else:
            key = generate_private_key(key_type)
    csr = make_csr(key, canonical)

    log.debug("ordering a certificate for {names}", names=", ".join(canonical))
    order = await client.new_order(canonical, profile=profile, replaces=replaces)
    if order.body.status == messages.STATUS_PENDING:
        await _authorize_all(client, list(order.body.authorizations or ()), responders)
    elif order.body.status == messages.STATUS_INVALID:
        raise IssuanceFailed(f"order {order.uri} for {', '.join(canonical)} is invalid")
    try:
        order = await client.finalize(order, csr)
    except OrderNotReady:
        # The CA had not yet seen every authorization as valid: wait, then retry.
        order = await client.poll_order(order)
        order = await client.finalize(order, csr)
    issued = await client.fetch_certificate(order, preferred_chain=preferred_chain)
    _check_certificate(issued, key, canonical)

    key_pem = private_key_pem(key)
    objects = pem.parse(key_pem) + [
        pem.Certificate(c.public_bytes(serialization.Encoding.PEM)) for c in issued.certificates
    ]
    cert = issued.certificate
    result = IssuedCertificate(
        key=key,
        pem_objects=objects,
        certificate=cert,
        chain=issued.chain,
        names=canonical,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        url=issued.url,
        order_url=order.uri,
    )
    log.debug(
        "received the certificate for {names}: serial {serial}, valid until {not_after}",
        names=", ".join(canonical),
        serial=f"{cert.serial_number:x}",
        not_after=result.not_after.isoformat(),
    )
    return result


__all__ = ["IssuedCertificate", "challenge_response", "obtain_certificate"]
