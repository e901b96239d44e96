"""
The ACME resources the client sends and gets back, as values: external account binding,
certificate chains, renewal windows, identifiers, contacts and problem documents.

Owns the conversions between ACME's JSON and txacme's values; nothing here does I/O. May import
the core modules and :mod:`txacme.protocol.ari`.
"""

from __future__ import annotations

import binascii
import datetime
import ipaddress
import json
import random
from collections.abc import Callable, Mapping, Sequence

import attrs
from acme import jws as acme_jws
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy.errors import DeserializationError
from josepy.jwa import HS256, HS384, HS512
from josepy.jwk import JWK, JWKOct

from txacme.errors import ACMEProblem, ConfigurationError, IssuanceFailed, ProtocolError
from txacme.formats import b64url_decode
from txacme.names import is_ip_address
from txacme.protocol.ari import DEFAULT_ARI_RETRY_AFTER, ari_retry_after

__all__ = [
    "EAB",
    "CertificateChain",
    "RenewalInfo",
    "identifier_for",
]

_MAC_ALGORITHMS = {"HS256": HS256, "HS384": HS384, "HS512": HS512}


@attrs.frozen(repr=False)
class EAB:
    """
    External account binding credentials (RFC 8555 section 7.3.4).

    :ivar kid: the key identifier the CA gave.
    :ivar hmac_key: the MAC key: ``bytes`` are the raw key, a ``str`` is
        base64url (as CAs print it). Never shown by ``repr``.
    :ivar alg: the MAC algorithm, ``"HS256"`` (default), ``"HS384"`` or ``"HS512"``.
    """

    kid: str
    hmac_key: bytes
    alg: str = "HS256"

    def __init__(self, kid: str, hmac_key: bytes | str, alg: str = "HS256") -> None:
        if not isinstance(kid, str) or not kid:
            raise ConfigurationError(f"EAB key identifier must be a non-empty str, not {kid!r}")
        raw = _mac_key(kid, hmac_key)
        if alg not in _MAC_ALGORITHMS:
            raise ConfigurationError(
                f"unsupported EAB MAC algorithm {alg!r}; use HS256, HS384 or HS512"
            )
        self.__attrs_init__(kid, raw, alg)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"EAB(kid={self.kid!r}, hmac_key=<hidden>, alg={self.alg!r})"

    __str__ = __repr__

    def binding(self, account_key: JWK, url: str) -> dict[str, object]:
        """
        The ``externalAccountBinding`` JWS: the account's public JWK signed with
        the MAC key, protected header ``alg``, ``kid`` and ``url`` (``newAccount``).
        """
        payload = json.dumps(account_key.public_key().to_partial_json()).encode()
        signed = acme_jws.JWS.sign(
            payload,
            key=JWKOct(key=self.hmac_key),
            alg=_MAC_ALGORITHMS[self.alg],
            nonce=None,
            url=url,
            kid=self.kid,
        )
        return signed.to_partial_json()  # type: ignore[no-any-return]


def _mac_key(kid: str, hmac_key: bytes | str) -> bytes:
    """The raw EAB MAC key: ``bytes`` as given, a ``str`` decoded from base64url."""
    if isinstance(hmac_key, str):
        try:
            raw = b64url_decode(hmac_key)
        except (ValueError, binascii.Error):
            raise ConfigurationError(f"EAB MAC key for {kid!r} is not valid base64url")
    elif isinstance(hmac_key, bytes):
        raw = hmac_key
    else:
        raise ConfigurationError(f"EAB MAC key for {kid!r} must be bytes or a base64url str")
    if not raw:
        raise ConfigurationError(f"EAB MAC key for {kid!r} is empty")
    return raw


@attrs.frozen
class CertificateChain:
    """
    A certificate chain as the CA serves it.

    :ivar url: where it was downloaded from.
    :ivar pem: the PEM bytes exactly as served (leaf first).
    :ivar certificates: the parsed certificates, leaf first.
    :ivar alternates: URLs of alternate chains (``Link: rel="alternate"``).
    """

    url: str
    pem: bytes = attrs.field(repr=False)
    certificates: list[x509.Certificate] = attrs.field(repr=False)
    alternates: list[str] = attrs.field(factory=list)

    @property
    def certificate(self) -> x509.Certificate:
        """The end-entity certificate."""
        return self.certificates[0]

    @property
    def chain(self) -> list[x509.Certificate]:
        """The issuer certificates after the end-entity one."""
        return self.certificates[1:]

    def issuer_names(self) -> list[str]:
        """The issuer common names, leaf first."""
        return [_issuer_cn(c) for c in self.certificates]

    @classmethod
    def from_pem(cls, url: str, pem: bytes, alternates: Sequence[str] = ()) -> CertificateChain:
        """
        Parse a PEM chain.

        :raises txacme.errors.ProtocolError: if ``pem`` holds no certificate.
        """
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError as e:
            raise ProtocolError(f"certificate chain from {url} is not PEM: {e}")
        if not certs:
            raise ProtocolError(f"certificate chain from {url} has no certificate")
        return cls(url=url, pem=pem, certificates=certs, alternates=list(alternates))


def _issuer_cn(cert: x509.Certificate) -> str:
    attrs_ = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not attrs_:
        return ""
    value = attrs_[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def pick_chain(chains: Sequence[CertificateChain], issuer: str) -> CertificateChain:
    """
    Among ``chains`` (the default first), the first whose topmost certificate is
    issued by ``issuer``; failing that, the first with any certificate issued by
    it; failing that, the default.
    """
    for chain in chains:
        if chain.issuer_names()[-1] == issuer:
            return chain
    for chain in chains:
        if issuer in chain.issuer_names():
            return chain
    return chains[0]


@attrs.frozen
class RenewalInfo:
    """
    The CA's suggested renewal window for a certificate (RFC 9773, ARI).

    :ivar start: start of the window (timezone-aware).
    :ivar end: end of the window (timezone-aware).
    :ivar explanation_url: a page explaining an unusual window, or ``None``.
    :ivar retry_after: seconds until the window should be asked again (from
        ``Retry-After``, clamped to one minute .. one day; 6 hours by default).
    """

    start: datetime.datetime
    end: datetime.datetime
    explanation_url: str | None = None
    retry_after: float = DEFAULT_ARI_RETRY_AFTER

    def pick(self, rand: Callable[[], float] = random.random) -> datetime.datetime:
        """A uniformly random moment in the window (as RFC 9773 recommends)."""
        return self.start + (self.end - self.start) * rand()

    @classmethod
    def from_json(
        cls, jobj: Mapping[str, object], retry_after: float | None, url: str
    ) -> RenewalInfo:
        """
        The renewal information in the CA's answer ``jobj`` from ``url``, asked
        again after ``retry_after`` (the answer's ``Retry-After``, clamped).

        :raises txacme.errors.ProtocolError: for a malformed answer or one with
            no usable window.
        """
        try:
            info = messages.RenewalInfo.from_json(jobj)
            start, end = info.suggested_window.start, info.suggested_window.end
        except (DeserializationError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise ProtocolError(f"malformed renewal information from {url}: {e}")
        if start is None or end is None or end < start:
            raise ProtocolError(f"renewal information from {url} has no usable window")
        explanation = jobj.get("explanationURL")
        return cls(
            start=start,
            end=end,
            explanation_url=explanation if isinstance(explanation, str) else None,
            retry_after=ari_retry_after(retry_after),
        )


def parse_directory(jobj: Mapping[str, object], url: str) -> messages.Directory:
    """
    The CA's directory in ``jobj`` (from ``url``).

    :raises txacme.errors.ProtocolError: when it is malformed or lacks the
        ``newNonce``, ``newAccount`` or ``newOrder`` URL.
    """
    try:
        directory = messages.Directory.from_json(dict(jobj))
    except (DeserializationError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed ACME directory at {url}: {e}")
    for needed in ("newNonce", "newAccount", "newOrder"):
        if not isinstance(jobj.get(needed), str):
            raise ProtocolError(f"ACME directory at {url} has no {needed!r} URL")
    return directory


def directory_entry(directory: messages.Directory, name: str) -> object:
    """The entry ``name`` of a directory (a URL, or ``meta``), or ``None``."""
    try:
        entry: object = directory[name]
    except KeyError:
        return None
    return entry


def directory_meta(directory: messages.Directory) -> messages.Directory.Meta | None:
    """The ``meta`` object of a directory, if it has one."""
    meta = directory_entry(directory, "meta")
    return meta if isinstance(meta, messages.Directory.Meta) else None


def identifier_for(name: str) -> dict[str, str]:
    """
    The ACME identifier object for a name: ``{"type": "ip", ...}`` for an IPv4 or
    IPv6 address (canonical form, RFC 8738), else ``{"type": "dns", ...}``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"invalid ACME identifier {name!r}: need a non-empty str")
    if is_ip_address(name):
        return {"type": "ip", "value": ipaddress.ip_address(name).compressed}
    return {"type": "dns", "value": name.lower()}


def order_identifiers(names: Sequence[str]) -> list[dict[str, str]]:
    """
    The ACME identifiers of an order's names.

    :raises txacme.errors.ConfigurationError: for a bare string, no names or an
        invalid one.
    """
    if isinstance(names, str):
        raise ConfigurationError(
            f"identifiers must be a sequence of names, not the string {names!r}"
        )
    idents = [identifier_for(name) for name in names]
    if not idents:
        raise ConfigurationError("an order needs at least one identifier")
    return idents


def csr_der(csr: x509.CertificateSigningRequest | bytes) -> bytes:
    """
    The DER of a CSR given as a cryptography CSR or as PEM or DER bytes.

    :raises txacme.errors.ConfigurationError: for bytes that are neither.
    """
    if isinstance(csr, bytes):
        try:
            csr = (
                x509.load_pem_x509_csr(csr)
                if csr.lstrip().startswith(b"-----")
                else x509.load_der_x509_csr(csr)
            )
        except ValueError:
            raise ConfigurationError("the CSR given to finalize is neither PEM nor DER")
    return csr.public_bytes(serialization.Encoding.DER)


def contact_uris(email: str | None) -> list[str]:
    """
    The account ``contact`` list for ``email``: each comma-separated address as a
    ``mailto:`` URI; ``[]`` for ``None``.

    :raises txacme.errors.ConfigurationError: for an address that is not one.
    """
    if email is None:
        return []
    if not isinstance(email, str):
        raise ConfigurationError(f"email must be a str, not {type(email).__name__}")
    contacts = []
    for address in email.split(","):
        address = address.strip()
        if not address:
            continue
        if "@" not in address or any(c.isspace() for c in address):
            raise ConfigurationError(f"invalid contact email address {address!r}")
        contacts.append(address if address.startswith("mailto:") else "mailto:" + address)
    return contacts


def missing_parts(decoded: object) -> str | None:
    """What a decoded order or authorization lacks that txacme relies on, if anything."""
    if isinstance(decoded, (messages.Order, messages.Authorization)) and decoded.status is None:
        return "no status"
    if isinstance(decoded, messages.Authorization) and decoded.identifier is None:
        return "no identifier"
    if isinstance(decoded, messages.Order):
        authorizations = decoded.authorizations or ()
        if not isinstance(authorizations, (list, tuple)):
            return "authorizations is not a list"
        urls = [decoded.finalize, decoded.certificate, *authorizations]
        if any(u is not None and not isinstance(u, str) for u in urls):
            return "a URL that is not a string"
    return None


def problem_from_error(err: messages.Error, url: str) -> ACMEProblem:
    """The :class:`~txacme.errors.ACMEProblem` for a problem embedded in a resource."""
    return ACMEProblem.from_json(err.to_json(), url=url)


def authorization_failure(authz: messages.AuthorizationResource, url: str) -> IssuanceFailed:
    """
    The failure of an authorization (at ``url``) that ended other than ``valid``,
    with the problem of its first failed challenge.
    """
    problem = None
    for challb in authz.body.challenges or ():
        if challb.error is not None:
            problem = problem_from_error(challb.error, url)
            break
    name = authz.body.identifier.value if authz.body.identifier else url
    text = f"authorization for {name} is {authz.body.status.name}"
    if problem is not None:
        text += f": {problem}"
    return IssuanceFailed(text, problem)


def order_failure(order: messages.OrderResource) -> IssuanceFailed:
    """The failure of an ``invalid`` order, with its problem."""
    problem = problem_from_error(order.body.error, order.uri) if order.body.error else None
    text = f"order {order.uri} is invalid"
    if problem is not None:
        text += f": {problem}"
    return IssuanceFailed(text, problem)


def problem_type(body: bytes) -> str | None:
    """The ``type`` of the problem document ``body``, if it is one."""
    try:
        document: object = json.loads(body)
    except ValueError:
        return None
    ptype = document.get("type") if isinstance(document, dict) else None
    return ptype if isinstance(ptype, str) and ptype else None
