"""
An asynchronous ACME (RFC 8555) client built on treq.

Every method that talks to the CA returns a ``Deferred``. The client speaks the
protocol and nothing else: it knows nothing of stores, responders or schedules
(see :mod:`txacme.issuing.order` for one order end to end).

* Message types come from the ``acme`` package (:mod:`acme.messages`,
  :mod:`acme.challenges`, :mod:`acme.jws`); JWS signing is josepy's. Requests
  are signed with ES256 (P-256 keys), ES384 (P-384), ES512 (P-521) or RS256
  (RSA), with ``jwk`` for account creation, look-up and revocation by
  certificate key, and ``kid`` (the account URL) otherwise. Every fetch of a
  resource is a POST-as-GET.
* Nonces: each response's ``Replay-Nonce`` goes into a small pool, ``newNonce``
  is asked only when the pool is empty, and a ``badNonce`` problem is retried
  with a fresh nonce up to ``max_nonce_attempts`` times before it is raised.
* Problems: every error response becomes a :class:`txacme.errors.ACMEProblem`
  subclass (``Retry-After`` in seconds on ``retry_after``); a non-JSON error
  body (say a proxy's HTML 502 page) becomes a ``ServerInternal`` carrying the
  HTTP status; an unparseable success body raises
  :class:`txacme.errors.ProtocolError`. Connection errors (refused, TLS
  verification failed...) propagate unchanged, except that a request that
  never reached the server is re-sent once with a fresh nonce.
* Time: every request has a timeout, and polling an authorization or order has
  an overall deadline; both raise :class:`txacme.errors.ACMETimeout`. Polling
  starts a few milliseconds after the previous answer and doubles up to a
  ceiling, never sooner than a ``Retry-After`` asks. All waiting goes through
  the reactor given, so tests drive it with :class:`twisted.internet.task.Clock`.
* Transport: an ``HTTPConnectionPool`` keeps connections to the CA open between
  requests; :meth:`Client.close` closes them. HTTPS is verified against the
  system trust store, or only against the PEM file ``ca_file`` when given;
  verification is never switched off.

Objects returned: accounts are :class:`acme.messages.RegistrationResource`,
orders :class:`acme.messages.OrderResource` (``uri`` and ``body``),
authorizations :class:`acme.messages.AuthorizationResource`, challenges
:class:`acme.messages.ChallengeBody`; certificates are
:class:`CertificateChain` and ARI answers :class:`RenewalInfo`.

Every HTTP exchange with the CA (retries included) is reported to the
``on_exchange`` callback, if given, as an :class:`Exchange`; that is what
:meth:`txacme.reporting.metrics.Metrics.observe_exchange` counts.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import ipaddress
import json
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin

import attrs
import treq
from acme import challenges, messages
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.b64 import b64decode
from josepy.errors import DeserializationError
from josepy.jwa import ES256, ES384, ES512, HS256, HS384, HS512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA, JWKOct
from twisted.internet import defer, error, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.web import client as web_client
from twisted.web._newclient import RequestNotSent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from txacme import __version__
from txacme.errors import (
    ACME_ERROR_PREFIX,
    AccountDoesNotExist,
    ACMEProblem,
    ACMETimeout,
    BadNonce,
    ConfigurationError,
    IssuanceFailed,
    ProtocolError,
    ServerInternal,
    UnsupportedKeyType,
)
from txacme.issuing.policy import (
    ARI_DEFAULT_REFRESH,
    ARI_MAX_REFRESH,
    ARI_MIN_REFRESH,
    ari_cert_id,
)
from txacme.names import is_ip_address

log = Logger()

T = TypeVar("T")

DEFAULT_USER_AGENT = f"txacme/{__version__}"
"""The ``User-Agent`` sent when none is given."""

JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
PROBLEM_JSON = "application/problem+json"

DEFAULT_TIMEOUT = 30.0
DEFAULT_POLL_TIMEOUT = 300.0
DEFAULT_POLL_INITIAL = 0.005
DEFAULT_POLL_MAX = 2.0
# A CA rejecting half of all good nonces (Pebble's PEBBLE_WFE_NONCEREJECT=50) fails a
# request after 10 attempts once in 1024, which breaks about one run of 100
# certificates in two; after 20 attempts once in a million.
DEFAULT_MAX_NONCE_ATTEMPTS = 20
DEFAULT_PERSISTENT_CONNECTIONS = 16
DEFAULT_ARI_RETRY_AFTER = ARI_DEFAULT_REFRESH.total_seconds()
ARI_RETRY_AFTER_BOUNDS = (ARI_MIN_REFRESH.total_seconds(), ARI_MAX_REFRESH.total_seconds())

_NONCE_POOL_SIZE = 256
_B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")
_AUTHZ_TERMINAL = frozenset(
    {
        messages.STATUS_VALID,
        messages.STATUS_INVALID,
        messages.STATUS_DEACTIVATED,
        messages.STATUS_REVOKED,
        # acme knows no "expired" status; register it so such authorizations parse.
        messages.Status.POSSIBLE_NAMES.get("expired") or messages.Status("expired"),
    }
)


# ---------------------------------------------------------------------------
# Small helpers


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    text = text.strip()
    if not _B64URL.match(text.rstrip("=")):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))


def parse_retry_after(value: str | bytes | None, now: float) -> float | None:
    """
    Parse a ``Retry-After`` header value into seconds from ``now``.

    Accepts delay-seconds (``"120"``) or an HTTP-date; a date in the past gives
    ``0.0``. Returns ``None`` for a missing or unparseable value.

    :param now: the current POSIX time (``reactor.seconds()``).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None  # pragma: no cover - older Pythons returned None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def _unwrap_key(jwk: JWK) -> object:
    inner = jwk.key
    return getattr(inner, "_wrapped", inner)


def jws_algorithm_for(key: JWK) -> JWASignature:
    """
    The JWS algorithm for an account (or certificate) key.

    ES256 for P-256, ES384 for P-384, ES512 for P-521, RS256 for RSA.

    :raises txacme.errors.UnsupportedKeyType: for any other key.
    """
    raw = _unwrap_key(key)
    if isinstance(raw, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": ES256, "secp384r1": ES384, "secp521r1": ES512}
        alg = algs.get(raw.curve.name)
        if alg is None:
            raise UnsupportedKeyType(
                f"unsupported elliptic curve {raw.curve.name} for an ACME key; "
                "use P-256, P-384 or P-521"
            )
        return alg
    if isinstance(raw, rsa.RSAPrivateKey):
        return RS256
    raise UnsupportedKeyType(
        f"unsupported ACME key {type(raw).__name__}: need an EC or RSA private key"
    )


def _as_jwk(key: object) -> JWK:
    if isinstance(key, JWK):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key)
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key)
    raise UnsupportedKeyType(f"unsupported key {type(key).__name__}: need an EC or RSA private key")


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


def _header(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    return values[-1].decode("latin-1")


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^,;]*)*)")
_LINK_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


def _links(headers: Headers, rel: str, base: str) -> list[str]:
    """URLs of the ``Link`` headers with relation ``rel``, resolved against ``base``."""
    found: list[str] = []
    for raw in headers.getRawHeaders(b"link") or []:
        for match in _LINK.finditer(raw.decode("latin-1")):
            params = match.group(2)
            for rel_match in _LINK_REL.finditer(params):
                rels = (rel_match.group(1) or rel_match.group(2) or "").split()
                if rel in rels:
                    url = urljoin(base, match.group(1).strip())
                    if url not in found:
                        found.append(url)
    return found


# ---------------------------------------------------------------------------
# Public value types


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
        if isinstance(hmac_key, str):
            try:
                raw = _b64decode(hmac_key)
            except (ValueError, binascii.Error):
                raise ConfigurationError(f"EAB MAC key for {kid!r} is not valid base64url")
        elif isinstance(hmac_key, bytes):
            raw = hmac_key
        else:
            raise ConfigurationError(f"EAB MAC key for {kid!r} must be bytes or a base64url str")
        if not raw:
            raise ConfigurationError(f"EAB MAC key for {kid!r} is empty")
        if alg not in ("HS256", "HS384", "HS512"):
            raise ConfigurationError(
                f"unsupported EAB MAC algorithm {alg!r}; use HS256, HS384 or HS512"
            )
        self.__attrs_init__(kid, raw, alg)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"EAB(kid={self.kid!r}, hmac_key=<hidden>, alg={self.alg!r})"

    __str__ = __repr__

    def binding(self, account_key: JWK, url: str) -> dict[str, Any]:
        """
        The ``externalAccountBinding`` JWS: the account's public JWK signed with
        the MAC key, protected header ``alg``, ``kid`` and ``url`` (``newAccount``).
        """
        payload = json.dumps(account_key.public_key().to_partial_json()).encode()
        alg = {"HS256": HS256, "HS384": HS384, "HS512": HS512}[self.alg]
        signed = acme_jws.JWS.sign(
            payload, key=JWKOct(key=self.hmac_key), alg=alg, nonce=None, url=url,
            kid=self.kid,
        )
        return signed.to_partial_json()  # type: ignore[no-any-return]


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


@attrs.frozen
class Exchange:
    """
    One HTTP exchange with the CA, as reported to a :class:`Client`'s
    ``on_exchange`` callback (once per request sent, ``badNonce`` retries and
    re-sends included).

    :ivar endpoint: the ACME resource: ``directory``, ``newNonce``,
        ``newAccount``, ``account``, ``newOrder``, ``order``,
        ``authorization``, ``challenge``, ``finalize``, ``certificate``,
        ``revokeCert``, ``keyChange`` or ``renewalInfo``.
    :ivar method: the HTTP method (``GET``, ``HEAD``, ``POST``).
    :ivar url: the URL requested.
    :ivar status: the HTTP status, or ``None`` when no answer came (timeout,
        connection error).
    :ivar seconds: how long the exchange took, by the client's reactor.
    :ivar problem: the ACME problem type (``urn:ietf:params:acme:error:...``)
        when the answer was a problem document, else ``None``.
    """

    endpoint: str
    method: str
    url: str
    status: int | None
    seconds: float
    problem: str | None = None


@attrs.frozen
class _Reply:
    """One HTTP response, fully read."""

    method: str
    url: str
    code: int
    headers: Headers
    body: bytes = attrs.field(repr=False)
    retry_after: float | None


class TreqLike(Protocol):
    """
    What the client needs of its HTTP layer: ``treq.client.HTTPClient`` or
    ``treq.testing.StubTreq``.
    """

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Send a request; fire with a response that ``treq.content`` can read."""


# ---------------------------------------------------------------------------
# HTTPS trust and the transport


@implementer(IBodyProducer)
class _BytesProducer:
    """Writes a request body at once, with no trip through a cooperator."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _body_producer(data: object) -> IBodyProducer:
    if isinstance(data, bytes):
        return _BytesProducer(data)
    if isinstance(data, str):
        return _BytesProducer(data.encode("utf-8"))
    return IBodyProducer(data)


def load_trust_root(ca_file: str) -> Any:
    """
    A Twisted trust root made of every certificate in the PEM file ``ca_file``.

    :raises txacme.errors.ConfigurationError: naming the file when it cannot be
        read or holds no certificate.
    """
    try:
        with open(ca_file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigurationError(f"cannot read CA file {ca_file!r}: {e.strerror or e}")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigurationError(f"CA file {ca_file!r} holds no PEM certificate")
    return trustRootFromCertificates(  # type: ignore[no-untyped-call]
        [Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certs]
    )


@implementer(IPolicyForHTTPS)
class _VerifyingPolicy:
    """
    Verify the CA's certificate (chain and host name) against one trust root,
    the platform's when none is given. The TLS context is built once per host,
    not once per connection.
    """

    def __init__(self, trust_root: Any = None) -> None:
        self._trust_root = trust_root
        self._creators: dict[tuple[bytes, int], IOpenSSLClientConnectionCreator] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        key = (hostname, port)
        creator = self._creators.get(key)
        if creator is None:
            name = hostname.decode("ascii")
            if name.startswith("[") and name.endswith("]"):
                name = name[1:-1]
            if self._trust_root is None:
                creator = optionsForClientTLS(name)
            else:
                creator = optionsForClientTLS(name, trustRoot=self._trust_root)
            self._creators[key] = creator
        return creator


def make_http_client(
    reactor: IReactorTime,
    *,
    ca_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    persistent_connections: int = DEFAULT_PERSISTENT_CONNECTIONS,
) -> tuple[treq.client.HTTPClient, web_client.HTTPConnectionPool]:
    """
    The treq client (and its connection pool) :meth:`Client.from_url` uses.

    :param ca_file: trust only the certificates in this PEM file; ``None`` for
        the system trust store.
    :param persistent_connections: idle connections kept open per CA host.
    """
    policy = _VerifyingPolicy(load_trust_root(ca_file) if ca_file is not None else None)
    pool = web_client.HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = persistent_connections
    pool.retryAutomatically = False
    agent = web_client.Agent(  # type: ignore[no-untyped-call]
        reactor, contextFactory=policy, pool=pool, connectTimeout=timeout
    )
    return treq.client.HTTPClient(agent, data_to_body_producer=_body_producer), pool


# ---------------------------------------------------------------------------
# The client


class Client:
    """
    An ACME client for one directory and one account key.

    Build it with :meth:`from_url`. ``account`` holds the account once
    :meth:`start` (or :meth:`new_account` / :meth:`lookup_account`) succeeded.

    :param reactor: provides ``IReactorTime``; every wait goes through it.
    :param directory: the CA's directory.
    :param key: the account key (EC P-256/P-384/P-521 or RSA, private).
    :param http: a treq-like object (:class:`TreqLike`).
    :param pool: the connection pool behind ``http``, closed by :meth:`close`.
    :param alg: the JWS algorithm; chosen from the key when ``None``.
    :param timeout: seconds allowed for each HTTP request.
    :param poll_timeout: seconds allowed for an authorization or order to
        reach a final state.
    :param poll_initial: the first polling delay (seconds).
    :param poll_max: the ceiling of the doubling polling delay (seconds).
    :param max_nonce_attempts: how many times one request is sent when the CA
        keeps answering ``badNonce``.
    :param on_exchange: called with an :class:`Exchange` after every HTTP
        exchange with the CA (e.g. :meth:`txacme.reporting.metrics.Metrics.observe_exchange`);
        its exceptions are logged and ignored.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        directory: messages.Directory,
        key: JWK,
        *,
        http: TreqLike,
        pool: web_client.HTTPConnectionPool | None = None,
        alg: JWASignature | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        poll_initial: float = DEFAULT_POLL_INITIAL,
        poll_max: float = DEFAULT_POLL_MAX,
        max_nonce_attempts: int = DEFAULT_MAX_NONCE_ATTEMPTS,
        user_agent: str = DEFAULT_USER_AGENT,
        directory_url: str | None = None,
        on_exchange: Callable[[Exchange], object] | None = None,
    ) -> None:
        if not isinstance(key, JWK):
            raise ConfigurationError(f"the account key must be a josepy JWK, not {type(key)}")
        if timeout <= 0 or poll_timeout <= 0 or poll_initial <= 0 or poll_max < poll_initial:
            raise ConfigurationError(
                f"bad timing: timeout={timeout!r}, poll_timeout={poll_timeout!r}, "
                f"poll_initial={poll_initial!r}, poll_max={poll_max!r}"
            )
        if max_nonce_attempts < 1:
            raise ConfigurationError(f"max_nonce_attempts must be >= 1, not {max_nonce_attempts}")
        self._reactor: Any = reactor
        self._directory = directory
        self._key = key
        self._alg = alg if alg is not None else jws_algorithm_for(key)
        self._http = http
        self._pool = pool
        self._timeout = float(timeout)
        self._poll_timeout = float(poll_timeout)
        self._poll_initial = float(poll_initial)
        self._poll_max = float(poll_max)
        self._max_nonce_attempts = max_nonce_attempts
        self._user_agent = user_agent
        self._nonces: deque[str] = deque(maxlen=_NONCE_POOL_SIZE)
        self.directory_url = directory_url
        self._on_exchange = on_exchange
        self.account: messages.RegistrationResource | None = None

    def __repr__(self) -> str:
        account = self.account.uri if self.account is not None else None
        return f"<Client directory={self.directory_url!r} account={account!r}>"

    # -- construction and teardown -------------------------------------------------

    @classmethod
    def from_url(
        cls,
        reactor: IReactorTime,
        url: str,
        key: JWK,
        *,
        alg: JWASignature | None = None,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = DEFAULT_USER_AGENT,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        persistent_connections: int = DEFAULT_PERSISTENT_CONNECTIONS,
        http: TreqLike | None = None,
        **options: Any,
    ) -> Deferred[Client]:
        """
        Fetch the directory at ``url`` and return a client for it.

        :param ca_file: a PEM file: trust only its certificates for the CA's
            HTTPS (host names are still verified). ``None``: system trust.
        :param http: a treq-like object to use instead of a real HTTPS client
            (tests); no pool is created then.
        :param options: further keyword arguments of :class:`Client` (such as
            ``on_exchange``, which also sees the directory request).
        :raises txacme.errors.ConfigurationError: for a bad ``ca_file``.
        """
        pool: web_client.HTTPConnectionPool | None = None
        transport: Any = http
        try:
            jwk = key if isinstance(key, JWK) else None
            if jwk is None:
                raise ConfigurationError(f"the account key must be a josepy JWK, not {type(key)}")
            if transport is None:
                transport, pool = make_http_client(
                    reactor, ca_file=ca_file, timeout=timeout,
                    persistent_connections=persistent_connections,
                )
        except Exception:
            return defer.fail()

        async def build() -> Client:
            client = cls(
                reactor, messages.Directory({}), jwk, http=transport, pool=pool, alg=alg,
                timeout=timeout, poll_timeout=poll_timeout, user_agent=user_agent,
                directory_url=url, **options,
            )
            try:
                await client._load_directory(url)
            except BaseException:
                await client.close()
                raise
            return client

        return Deferred.fromCoroutine(build())

    async def _load_directory(self, url: str) -> None:
        reply = await self._send("GET", url, endpoint="directory")
        self._raise_for_problem(reply)
        jobj = self._json(reply)
        try:
            self._directory = messages.Directory.from_json(dict(jobj))
        except (DeserializationError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed ACME directory at {url}: {e}")
        for needed in ("newNonce", "newAccount", "newOrder"):
            if not isinstance(jobj.get(needed), str):
                raise ProtocolError(f"ACME directory at {url} has no {needed!r} URL")

    def close(self) -> Deferred[None]:
        """Close the cached connections to the CA; fires when they are closed."""
        if self._pool is None:
            return defer.succeed(None)
        pool, self._pool = self._pool, None
        d: Deferred[Any] = pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return d.addCallback(lambda _: None)

    # -- directory and key -------------------------------------------------------------

    @property
    def directory(self) -> messages.Directory:
        """The CA's directory (:class:`acme.messages.Directory`)."""
        return self._directory

    def _directory_entry(self, name: str) -> Any:
        try:
            return self._directory[name]
        except KeyError:
            return None

    @property
    def _meta(self) -> messages.Directory.Meta | None:
        meta = self._directory_entry("meta")
        return meta if isinstance(meta, messages.Directory.Meta) else None

    @property
    def terms_of_service(self) -> str | None:
        """The URL of the CA's terms of service, if it has one."""
        meta = self._meta
        return meta.terms_of_service if meta is not None else None

    @property
    def profiles(self) -> dict[str, str]:
        """The certificate profiles the CA advertises (name to description); ``{}`` if none."""
        meta = self._meta
        if meta is None or not isinstance(meta.profiles, Mapping):
            return {}
        return {str(k): str(v) for k, v in meta.profiles.items()}

    @property
    def external_account_required(self) -> bool:
        """Whether the CA requires external account binding for new accounts."""
        meta = self._meta
        return bool(meta is not None and meta.external_account_required)

    @property
    def supports_ari(self) -> bool:
        """Whether the CA offers ACME Renewal Information (``renewalInfo``)."""
        return isinstance(self._directory_entry("renewalInfo"), str)

    @property
    def key(self) -> JWK:
        """The account key in use (changes after :meth:`change_key`)."""
        return self._key

    @property
    def alg(self) -> JWASignature:
        """The JWS algorithm used with the account key."""
        return self._alg

    def _url(self, name: str) -> str:
        url = self._directory_entry(name)
        if not isinstance(url, str):
            raise ConfigurationError(f"the CA's directory has no {name!r} endpoint")
        return url

    def _account_url(self) -> str:
        if self.account is None:
            raise ConfigurationError("no ACME account yet: call start() or new_account() first")
        return self.account.uri

    # -- HTTP ----------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> _Reply:
        """
        One HTTP exchange, body read in full, with the request timeout;
        reported to ``on_exchange`` as a request to ``endpoint``.
        """
        _check_url(url)
        headers = {b"User-Agent": [self._user_agent.encode("ascii", "replace")]}
        if content_type is not None:
            headers[b"Content-Type"] = [content_type.encode("ascii")]
        if accept is not None:
            headers[b"Accept"] = [accept.encode("ascii")]

        def read(response: Any) -> Deferred[tuple[Any, bytes]]:
            return treq.content(response).addCallback(lambda body: (response, body))

        d = self._http.request(
            method, url, headers=headers, data=body, allow_redirects=False
        ).addCallback(read)
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        started = self._reactor.seconds()
        timer = self._reactor.callLater(self._timeout, time_out)
        try:
            response, content = await d
        except Exception as e:
            self._report(endpoint, method, url, None, started)
            # Cancelling surfaces as CancelledError, ResponseNeverReceived or a
            # connect error depending on the stage: the flag tells it was us.
            if timed_out or isinstance(e, error.TimeoutError):
                log.debug("ACME {method} {url} timed out", method=method, url=url)
                raise ACMETimeout(f"{method} {url}: no answer within {self._timeout:g} s")
            raise
        finally:
            if timer.active():
                timer.cancel()
        headers_ = response.headers
        for nonce in headers_.getRawHeaders(b"replay-nonce") or []:
            self._add_nonce(nonce.decode("latin-1").strip())
        reply = _Reply(
            method=method,
            url=url,
            code=int(response.code),
            headers=headers_,
            body=content,
            retry_after=parse_retry_after(
                _header(headers_, b"retry-after"), self._reactor.seconds()
            ),
        )
        log.debug(
            "ACME {method} {url} -> {status}", method=method, url=url, status=reply.code
        )
        self._report(endpoint, method, url, reply.code, started, _problem_type(reply))
        return reply

    def _report(
        self,
        endpoint: str,
        method: str,
        url: str,
        status: int | None,
        started: float,
        problem: str | None = None,
    ) -> None:
        """Give one exchange to ``on_exchange``; its failures are only logged."""
        if self._on_exchange is None:
            return
        exchange = Exchange(
            endpoint=endpoint,
            method=method,
            url=url,
            status=status,
            seconds=max(self._reactor.seconds() - started, 0.0),
            problem=problem,
        )
        try:
            self._on_exchange(exchange)
        except Exception:
            log.failure(
                "on_exchange callback failed for {method} {url}", method=method, url=url
            )

    def _add_nonce(self, nonce: str) -> None:
        # Unpadded base64url is never 1 more than a multiple of 4 characters long.
        if _B64URL.match(nonce) and len(nonce) % 4 != 1:
            self._nonces.append(nonce)

    async def _nonce(self) -> str:
        if not self._nonces:
            url = self._url("newNonce")
            reply = await self._send("HEAD", url, endpoint="newNonce")
            if reply.code >= 400:
                self._raise_for_problem(reply)
            if not self._nonces:
                raise ProtocolError(f"newNonce at {url} answered no usable Replay-Nonce")
        return self._nonces.pop()

    def _sign(
        self, url: str, payload: bytes, nonce: str, key: JWK | None, use_jwk: bool
    ) -> bytes:
        signing_key = self._key if key is None else key
        alg = self._alg if key is None else jws_algorithm_for(key)
        kid = None if use_jwk else self._account_url()
        signed = acme_jws.JWS.sign(
            payload, key=signing_key, alg=alg, nonce=b64decode(nonce), url=url, kid=kid
        )
        return signed.json_dumps().encode("utf-8")  # type: ignore[no-any-return]

    async def _post(
        self,
        url: str,
        payload: Mapping[str, Any] | bytes | None,
        *,
        endpoint: str,
        key: JWK | None = None,
        use_jwk: bool = False,
        accept: str | None = None,
    ) -> _Reply:
        """
        A signed POST (``payload=None``: POST-as-GET) to the ACME resource
        ``endpoint``. Retries on ``badNonce`` up to the bound and once when the
        request never reached the server; raises the problem of any error answer.
        """
        _check_url(url)
        if payload is None:
            data = b""
        elif isinstance(payload, bytes):
            data = payload
        else:
            data = json.dumps(payload).encode("utf-8")
        resent = False
        attempt = 0
        while True:
            attempt += 1
            nonce = await self._nonce()
            body = self._sign(url, data, nonce, key, use_jwk)
            try:
                reply = await self._send(
                    "POST", url, endpoint=endpoint, body=body, content_type=JOSE_JSON,
                    accept=accept,
                )
            except (RequestNotSent, web_client.RequestTransmissionFailed) as e:
                if resent:
                    raise
                resent = True
                log.debug("ACME POST {url} not sent ({error}); resending", url=url, error=e)
                continue
            except web_client.ResponseNeverReceived:
                if resent or payload is not None:
                    raise
                resent = True  # POST-as-GET is safe to repeat
                continue
            try:
                self._raise_for_problem(reply)
            except ACMEProblem as problem:
                if isinstance(problem, BadNonce) and attempt < self._max_nonce_attempts:
                    log.debug(
                        "ACME badNonce for {url} (attempt {attempt}); retrying",
                        url=url, attempt=attempt,
                    )
                    continue
                raise
            return reply

    def _raise_for_problem(self, reply: _Reply) -> None:
        content_type = (_header(reply.headers, b"content-type") or "").split(";")[0].strip()
        if 200 <= reply.code < 300 and content_type.lower() != PROBLEM_JSON:
            return
        try:
            document: Any = json.loads(reply.body)
        except ValueError:
            document = None
        if document is not None:
            problem = ACMEProblem.from_json(
                document, status=reply.code, retry_after=reply.retry_after, url=reply.url
            )
        else:
            text = reply.body[:200].decode("utf-8", "replace").strip()
            detail = f"HTTP {reply.code} from {reply.method} {reply.url}"
            if text:
                detail += f": {text}"
            problem = ServerInternal(
                ACME_ERROR_PREFIX + "serverInternal", detail, status=reply.code,
                retry_after=reply.retry_after, url=reply.url,
            )
        log.debug(
            "ACME {method} {url} -> {status} {problem}",
            method=reply.method, url=reply.url, status=reply.code, problem=problem.code,
        )
        raise problem

    def _json(self, reply: _Reply) -> dict[str, Any]:
        try:
            document = json.loads(reply.body)
        except ValueError:
            raise ProtocolError(f"{reply.method} {reply.url} answered malformed JSON")
        if not isinstance(document, dict):
            raise ProtocolError(f"{reply.method} {reply.url} answered JSON that is not an object")
        return document

    def _decode(self, cls: type[T], reply: _Reply) -> tuple[T, dict[str, Any]]:
        jobj = self._json(reply)
        try:
            decoded = cls.from_json(jobj)  # type: ignore[attr-defined]
        except (DeserializationError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise ProtocolError(
                f"{reply.method} {reply.url} answered a malformed {cls.__name__}: {e}"
            )
        missing = _missing_parts(decoded)
        if missing:
            raise ProtocolError(
                f"{reply.method} {reply.url} answered a malformed {cls.__name__}: {missing}"
            )
        return decoded, jobj

    def _location(self, reply: _Reply) -> str:
        location = _header(reply.headers, b"location")
        if not location:
            raise ProtocolError(f"{reply.method} {reply.url} answered no Location header")
        return urljoin(reply.url, location)

    async def _poll(
        self,
        url: str,
        fetch: Callable[[], Awaitable[tuple[T, _Reply]]],
        done: Callable[[T], bool],
        describe: Callable[[T], str],
        first: tuple[T, _Reply] | None = None,
    ) -> T:
        """
        Fetch until ``done``: waits start at ``poll_initial`` and double up to
        ``poll_max``, never shorter than ``Retry-After``, all before the deadline.
        """
        deadline = self._reactor.seconds() + self._poll_timeout
        delay = self._poll_initial
        current = first if first is not None else await fetch()
        while True:
            item, reply = current
            if done(item):
                return item
            wait = max(delay, reply.retry_after or 0.0)
            if self._reactor.seconds() + wait > deadline:
                raise ACMETimeout(
                    f"{url} is still {describe(item)} after {self._poll_timeout:g} s"
                )
            await task.deferLater(self._reactor, wait)
            delay = min(delay * 2, self._poll_max)
            current = await fetch()

    # -- accounts ------------------------------------------------------------------------

    def new_account(
        self, email: str | None = None, *, eab: EAB | None = None, terms_agreed: bool = True
    ) -> Deferred[messages.RegistrationResource]:
        """
        Create an account for the key (``newAccount``); sets :attr:`account`.

        :param email: a contact address (``mailto:``), or ``None``.
        :param eab: external account binding credentials (required by some CAs).
        :param terms_agreed: whether the operator agrees to the CA's terms of service.
        :raises txacme.errors.ConfigurationError: when the CA requires external
            account binding and ``eab`` is ``None`` (before any request).
        """
        return Deferred.fromCoroutine(self._new_account(email, eab, terms_agreed))

    async def _new_account(
        self, email: str | None, eab: EAB | None, terms_agreed: bool
    ) -> messages.RegistrationResource:
        if eab is None and self.external_account_required:
            raise ConfigurationError(
                f"the CA at {self.directory_url or 'this directory'} requires external account "
                "binding: give EAB credentials (key identifier and MAC key)"
            )
        if eab is not None and not isinstance(eab, EAB):
            raise ConfigurationError(f"eab must be an EAB, not {type(eab).__name__}")
        url = self._url("newAccount")
        payload: dict[str, Any] = {"termsOfServiceAgreed": bool(terms_agreed)}
        contact = _contact(email)
        if contact:
            payload["contact"] = contact
        if eab is not None:
            payload["externalAccountBinding"] = eab.binding(self._key, url)
        reply = await self._post(url, payload, endpoint="newAccount", use_jwk=True)
        body, _ = self._decode(messages.Registration, reply)
        self.account = messages.RegistrationResource(
            uri=self._location(reply), body=body, terms_of_service=self.terms_of_service
        )
        log.info("ACME account {account} ready", account=self.account.uri)
        return self.account

    def lookup_account(self) -> Deferred[messages.RegistrationResource]:
        """
        Find the existing account of the key (``onlyReturnExisting``); sets :attr:`account`.

        :raises txacme.errors.AccountDoesNotExist: when the CA knows no account for it.
        """
        return Deferred.fromCoroutine(self._lookup_account())

    async def _lookup_account(self) -> messages.RegistrationResource:
        url = self._url("newAccount")
        reply = await self._post(
            url, {"onlyReturnExisting": True}, endpoint="newAccount", use_jwk=True
        )
        body, _ = self._decode(messages.Registration, reply)
        self.account = messages.RegistrationResource(
            uri=self._location(reply), body=body, terms_of_service=self.terms_of_service
        )
        return self.account

    def start(
        self, email: str | None = None, eab: EAB | None = None
    ) -> Deferred[messages.RegistrationResource]:
        """
        Make sure the key has an account: look it up, else create it.

        An existing account whose contacts lack ``email`` is updated to it.
        External account binding is needed only when an account is created.
        """
        return Deferred.fromCoroutine(self._start(email, eab))

    async def _start(
        self, email: str | None, eab: EAB | None
    ) -> messages.RegistrationResource:
        try:
            account = await self._lookup_account()
        except AccountDoesNotExist:
            return await self._new_account(email, eab, True)
        wanted = _contact(email)
        if wanted and not set(wanted) <= set(account.body.contact):
            account = await self._update_account(email)
        return account

    def update_account(self, email: str | None = None) -> Deferred[messages.RegistrationResource]:
        """Replace the account's contacts with ``email`` (``None`` removes them)."""
        return Deferred.fromCoroutine(self._update_account(email))

    async def _update_account(self, email: str | None) -> messages.RegistrationResource:
        url = self._account_url()
        reply = await self._post(url, {"contact": _contact(email)}, endpoint="account")
        body, _ = self._decode(messages.Registration, reply)
        self.account = messages.RegistrationResource(
            uri=url, body=body, terms_of_service=self.terms_of_service
        )
        return self.account

    def deactivate_account(self) -> Deferred[messages.RegistrationResource]:
        """Deactivate the account for good (RFC 8555 section 7.3.6)."""
        return Deferred.fromCoroutine(self._deactivate_account())

    async def _deactivate_account(self) -> messages.RegistrationResource:
        url = self._account_url()
        reply = await self._post(url, {"status": "deactivated"}, endpoint="account")
        body, _ = self._decode(messages.Registration, reply)
        self.account = messages.RegistrationResource(
            uri=url, body=body, terms_of_service=self.terms_of_service
        )
        log.info("ACME account {account} deactivated", account=url)
        return self.account

    def change_key(self, new_key: JWK) -> Deferred[None]:
        """
        Roll the account over to ``new_key`` (RFC 8555 section 7.3.5); afterwards
        every request is signed with it.
        """
        return Deferred.fromCoroutine(self._change_key(new_key))

    async def _change_key(self, new_key: JWK) -> None:
        if not isinstance(new_key, JWK):
            raise ConfigurationError(
                f"the new account key must be a josepy JWK, not {type(new_key)}"
            )
        new_alg = jws_algorithm_for(new_key)
        url = self._url("keyChange")
        account_url = self._account_url()
        inner_payload = json.dumps(
            {"account": account_url, "oldKey": self._key.public_key().to_partial_json()}
        ).encode("utf-8")
        inner = acme_jws.JWS.sign(
            inner_payload, key=new_key, alg=new_alg, nonce=None, url=url, kid=None
        )
        await self._post(url, inner.json_dumps().encode("utf-8"), endpoint="keyChange")
        self._key = new_key
        self._alg = new_alg
        log.info("ACME account {account} key changed", account=account_url)

    # -- orders --------------------------------------------------------------------------

    def new_order(
        self,
        identifiers: Sequence[str],
        *,
        profile: str | None = None,
        replaces: str | None = None,
    ) -> Deferred[messages.OrderResource]:
        """
        Ask for a certificate for ``identifiers`` (DNS names, ``*.`` wildcards, IP
        addresses).

        :param profile: a profile the directory advertises (see :attr:`profiles`).
        :param replaces: the ARI identifier (:func:`ari_cert_id`) of the
            certificate this one replaces.
        :raises txacme.errors.ConfigurationError: for no identifiers or a profile
            the CA does not advertise (before anything is sent).
        """
        return Deferred.fromCoroutine(self._new_order(identifiers, profile, replaces))

    async def _new_order(
        self, identifiers: Sequence[str], profile: str | None, replaces: str | None
    ) -> messages.OrderResource:
        if isinstance(identifiers, str):
            raise ConfigurationError(
                f"identifiers must be a sequence of names, not the string {identifiers!r}"
            )
        idents = [identifier_for(name) for name in identifiers]
        if not idents:
            raise ConfigurationError("an order needs at least one identifier")
        payload: dict[str, Any] = {"identifiers": idents}
        if profile is not None:
            advertised = self.profiles
            if profile not in advertised:
                listing = ", ".join(sorted(advertised)) if advertised else "none"
                raise ConfigurationError(
                    f"unknown ACME profile {profile!r}; the CA advertises: {listing}"
                )
            payload["profile"] = profile
        if replaces is not None:
            if not isinstance(replaces, str) or "." not in replaces:
                raise ConfigurationError(
                    f"replaces must be an ARI certificate id, not {replaces!r}"
                )
            payload["replaces"] = replaces
        reply = await self._post(self._url("newOrder"), payload, endpoint="newOrder")
        body, _ = self._decode(messages.Order, reply)
        order = messages.OrderResource(uri=self._location(reply), body=body)
        log.debug(
            "ACME order {order} for {names} is {status}",
            order=order.uri, names=[i["value"] for i in idents], status=body.status.name,
        )
        return order

    def fetch_authorization(self, url: str) -> Deferred[messages.AuthorizationResource]:
        """Fetch an authorization (POST-as-GET)."""
        return Deferred.fromCoroutine(self._fetch_authorization(url))

    async def _fetch_authorization_reply(
        self, url: str
    ) -> tuple[messages.AuthorizationResource, _Reply]:
        reply = await self._post(url, None, endpoint="authorization")
        body, _ = self._decode(messages.Authorization, reply)
        return messages.AuthorizationResource(uri=url, body=body), reply

    async def _fetch_authorization(self, url: str) -> messages.AuthorizationResource:
        return (await self._fetch_authorization_reply(url))[0]

    def answer_challenge(
        self,
        challenge_body: messages.ChallengeBody,
        response: challenges.ChallengeResponse | None = None,
    ) -> Deferred[messages.ChallengeBody]:
        """
        Tell the CA the challenge is ready to be validated; fires with the
        challenge as the CA then reports it.
        """
        return Deferred.fromCoroutine(self._answer_challenge(challenge_body, response))

    async def _answer_challenge(
        self,
        challenge_body: messages.ChallengeBody,
        response: challenges.ChallengeResponse | None,
    ) -> messages.ChallengeBody:
        url = challenge_body.uri
        if not url:
            raise ProtocolError("the challenge has no URL to answer")
        payload: dict[str, Any] = {}
        if response is not None and not isinstance(
            response, challenges.KeyAuthorizationChallengeResponse
        ):
            payload = response.to_partial_json()
        reply = await self._post(url, payload, endpoint="challenge")
        body, _ = self._decode(messages.ChallengeBody, reply)
        return body

    def poll_authorization(
        self, authz: messages.AuthorizationResource | str
    ) -> Deferred[messages.AuthorizationResource]:
        """
        Poll an authorization until it is final.

        Fires with the authorization once ``valid``.

        :raises txacme.errors.IssuanceFailed: when it ends ``invalid``,
            ``deactivated``, ``expired`` or ``revoked``; ``problem`` is the
            failing challenge's error.
        :raises txacme.errors.ACMETimeout: past ``poll_timeout``.
        """
        url = authz if isinstance(authz, str) else authz.uri
        return Deferred.fromCoroutine(self._poll_authorization(url))

    async def _poll_authorization(self, url: str) -> messages.AuthorizationResource:
        authz = await self._poll(
            url,
            lambda: self._fetch_authorization_reply(url),
            lambda a: a.body.status in _AUTHZ_TERMINAL,
            lambda a: a.body.status.name,
        )
        if authz.body.status != messages.STATUS_VALID:
            problem = None
            for challb in authz.body.challenges or ():
                if challb.error is not None:
                    problem = _problem_from(challb.error, url)
                    break
            name = authz.body.identifier.value if authz.body.identifier else url
            text = f"authorization for {name} is {authz.body.status.name}"
            if problem is not None:
                text += f": {problem}"
            raise IssuanceFailed(text, problem)
        return authz

    def poll_order(self, order: messages.OrderResource) -> Deferred[messages.OrderResource]:
        """
        Poll an order until it is no longer ``pending`` or ``processing``.

        :raises txacme.errors.IssuanceFailed: when it is ``invalid``.
        """
        return Deferred.fromCoroutine(
            self._poll_order(order, (messages.STATUS_PENDING, messages.STATUS_PROCESSING))
        )

    async def _fetch_order_reply(
        self, order: messages.OrderResource
    ) -> tuple[messages.OrderResource, _Reply]:
        reply = await self._post(order.uri, None, endpoint="order")
        body, _ = self._decode(messages.Order, reply)
        return order.update(body=body), reply

    async def _poll_order(
        self,
        order: messages.OrderResource,
        waiting: Sequence[messages.Status],
        first: tuple[messages.OrderResource, _Reply] | None = None,
    ) -> messages.OrderResource:
        result = await self._poll(
            order.uri,
            lambda: self._fetch_order_reply(order),
            lambda o: o.body.status not in waiting,
            lambda o: o.body.status.name,
            first,
        )
        if result.body.status == messages.STATUS_INVALID:
            problem = _problem_from(result.body.error, order.uri) if result.body.error else None
            text = f"order {order.uri} is invalid"
            if problem is not None:
                text += f": {problem}"
            raise IssuanceFailed(text, problem)
        return result

    def finalize(
        self, order: messages.OrderResource, csr: x509.CertificateSigningRequest | bytes
    ) -> Deferred[messages.OrderResource]:
        """
        Send the CSR (a cryptography CSR, or PEM/DER bytes), then poll the order
        through ``processing`` until it is ``valid``.

        :raises txacme.errors.IssuanceFailed: when the order ends ``invalid``.
        """
        return Deferred.fromCoroutine(self._finalize(order, csr))

    async def _finalize(
        self, order: messages.OrderResource, csr: x509.CertificateSigningRequest | bytes
    ) -> messages.OrderResource:
        if isinstance(csr, bytes):
            try:
                csr = (
                    x509.load_pem_x509_csr(csr)
                    if csr.lstrip().startswith(b"-----")
                    else x509.load_der_x509_csr(csr)
                )
            except ValueError:
                raise ConfigurationError("the CSR given to finalize is neither PEM nor DER")
        der = csr.public_bytes(serialization.Encoding.DER)
        url = order.body.finalize
        if not url:
            raise ProtocolError(f"order {order.uri} has no finalize URL")
        reply = await self._post(url, {"csr": _b64(der)}, endpoint="finalize")
        body, _ = self._decode(messages.Order, reply)
        first = (order.update(body=body), reply)
        result = await self._poll_order(
            order,
            (messages.STATUS_PENDING, messages.STATUS_PROCESSING, messages.STATUS_READY),
            first,
        )
        if result.body.status != messages.STATUS_VALID:
            raise IssuanceFailed(f"order {order.uri} is {result.body.status.name} after finalize")
        return result

    # -- certificates --------------------------------------------------------------------

    def fetch_certificate(
        self, order: messages.OrderResource, *, preferred_chain: str | None = None
    ) -> Deferred[CertificateChain]:
        """
        Download the certificate chain of a valid order.

        :param preferred_chain: an issuer common name. Among the default and
            alternate chains, the first whose topmost certificate is issued by
            that name wins; failing that, the first with any certificate issued
            by it; failing that, the default chain.
        """
        return Deferred.fromCoroutine(self._fetch_certificate(order, preferred_chain))

    def fetch_chain(self, url: str) -> Deferred[CertificateChain]:
        """Download one certificate chain by URL (e.g. an alternate)."""
        return Deferred.fromCoroutine(self._fetch_chain(url))

    async def _fetch_chain(self, url: str) -> CertificateChain:
        reply = await self._post(url, None, endpoint="certificate", accept=PEM_CHAIN)
        return CertificateChain.from_pem(url, reply.body, _links(reply.headers, "alternate", url))

    async def _fetch_certificate(
        self, order: messages.OrderResource, preferred_chain: str | None
    ) -> CertificateChain:
        url = order.body.certificate
        if not url:
            raise ProtocolError(f"order {order.uri} has no certificate URL (is it valid?)")
        default = await self._fetch_chain(url)
        if preferred_chain is None or not default.alternates:
            return default
        if _issuer_cn(default.certificates[-1]) == preferred_chain:
            return default
        try:
            alternates = await defer.gatherResults(
                [Deferred.fromCoroutine(self._fetch_chain(u)) for u in default.alternates],
                consumeErrors=True,
            )
        except defer.FirstError as e:
            e.subFailure.raiseException()
        chains = [default, *alternates]
        for chain in chains:
            if _issuer_cn(chain.certificates[-1]) == preferred_chain:
                return chain
        for chain in chains:
            if preferred_chain in chain.issuer_names():
                return chain
        return default

    def revoke(
        self, cert: x509.Certificate, reason: int = 0, *, key: object | None = None
    ) -> Deferred[None]:
        """
        Revoke ``cert``: signed by the account key, or, when ``key`` (the
        certificate's private key, cryptography or JWK) is given, by that key.

        :param reason: an RFC 5280 CRLReason code.
        """
        return Deferred.fromCoroutine(self._revoke(cert, reason, key))

    async def _revoke(self, cert: x509.Certificate, reason: int, key: object | None) -> None:
        if not isinstance(reason, int) or isinstance(reason, bool) or not 0 <= reason <= 10:
            raise ConfigurationError(f"bad revocation reason {reason!r}: need an RFC 5280 code")
        payload = {
            "certificate": _b64(cert.public_bytes(serialization.Encoding.DER)),
            "reason": reason,
        }
        url = self._url("revokeCert")
        if key is None:
            await self._post(url, payload, endpoint="revokeCert")
        else:
            await self._post(
                url, payload, endpoint="revokeCert", key=_as_jwk(key), use_jwk=True
            )
        log.info("ACME certificate {serial} revoked", serial=f"{cert.serial_number:x}")

    def renewal_info(self, cert: x509.Certificate) -> Deferred[RenewalInfo]:
        """
        Ask the CA's suggested renewal window for ``cert`` (RFC 9773).

        :raises txacme.errors.ConfigurationError: when the CA has no ARI.
        """
        return Deferred.fromCoroutine(self._renewal_info(cert))

    async def _renewal_info(self, cert: x509.Certificate) -> RenewalInfo:
        if not self.supports_ari:
            raise ConfigurationError(
                f"the CA at {self.directory_url or 'this directory'} does not offer renewal "
                "information (no renewalInfo in its directory)"
            )
        url = self._url("renewalInfo").rstrip("/") + "/" + ari_cert_id(cert)
        reply = await self._send("GET", url, endpoint="renewalInfo")
        self._raise_for_problem(reply)
        jobj = self._json(reply)
        try:
            info = messages.RenewalInfo.from_json(jobj)
            start, end = info.suggested_window.start, info.suggested_window.end
        except (DeserializationError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise ProtocolError(f"malformed renewal information from {url}: {e}")
        if start is None or end is None or end < start:
            raise ProtocolError(f"renewal information from {url} has no usable window")
        explanation = jobj.get("explanationURL")
        retry_after = reply.retry_after
        low, high = ARI_RETRY_AFTER_BOUNDS
        retry_after = DEFAULT_ARI_RETRY_AFTER if retry_after is None else retry_after
        return RenewalInfo(
            start=start,
            end=end,
            explanation_url=explanation if isinstance(explanation, str) else None,
            retry_after=min(max(retry_after, low), high),
        )


def _contact(email: str | None) -> list[str]:
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


def _check_url(url: object) -> None:
    """Refuse a URL the CA gave that is not an http(s) URL (before it reaches the JWS)."""
    if not (isinstance(url, str) and url.lower().startswith(("https://", "http://"))):
        raise ProtocolError(f"the CA gave an unusable URL: {url!r:.200}")


def _missing_parts(decoded: object) -> str | None:
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


def _problem_type(reply: _Reply) -> str | None:
    """The ``type`` of the problem document ``reply`` carries, if it is one."""
    content_type = (_header(reply.headers, b"content-type") or "").split(";")[0].strip()
    if content_type.lower() != PROBLEM_JSON and reply.code < 400:
        return None
    try:
        document: Any = json.loads(reply.body)
    except ValueError:
        return None
    ptype = document.get("type") if isinstance(document, dict) else None
    return ptype if isinstance(ptype, str) and ptype else None


def _problem_from(err: messages.Error, url: str) -> ACMEProblem:
    return ACMEProblem.from_json(err.to_json(), url=url)


__all__ = [
    "Client",
    "CertificateChain",
    "DEFAULT_USER_AGENT",
    "EAB",
    "Exchange",
    "RenewalInfo",
    "TreqLike",
    "ari_cert_id",
    "identifier_for",
    "jws_algorithm_for",
    "load_trust_root",
    "make_http_client",
    "parse_retry_after",
]
