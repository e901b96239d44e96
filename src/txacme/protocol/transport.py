"""
How the client talks to a CA: HTTPS with verified trust, one request at a time with a timeout,
signed POSTs fed from a pool of nonces, ``badNonce`` and not-sent retries, error answers turned
into :class:`~txacme.errors.ACMEProblem` exceptions, and a report of every exchange.

Owns the wire; knows nothing of accounts or orders (:mod:`txacme.protocol.client` does). May
import the core modules and :mod:`txacme.protocol.resources`.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urljoin

import attrs
import treq
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy.errors import DeserializationError
from josepy.jwa import JWASignature
from josepy.jwk import JWK
from twisted.internet import defer, error, task
from twisted.internet import error as error_module
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.web import client as web_client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from txacme import __version__
from txacme.errors import (
    ACME_ERROR_PREFIX,
    ACMEProblem,
    ACMETimeout,
    BadNonce,
    CAUnreachable,
    CAUntrusted,
    ConfigurationError,
    ProtocolError,
    ServerInternal,
)
from txacme.formats import b64url_decode, is_token
from txacme.logs import Logger
from txacme.protocol.resources import missing_parts, problem_type

if TYPE_CHECKING:
    # The type optionsForClientTLS takes; Twisted defines it in a private module only.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

__all__ = [
    "DEFAULT_USER_AGENT",
    "Exchange",
    "TreqLike",
    "load_trust_root",
    "make_http_client",
    "parse_retry_after",
]

log = Logger()

T = TypeVar("T")

DEFAULT_USER_AGENT = f"txacme/{__version__}"
"""The ``User-Agent`` sent when none is given."""

JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
PROBLEM_JSON = "application/problem+json"

DEFAULT_TIMEOUT = 30.0
# A CA rejecting half of all good nonces (Pebble's PEBBLE_WFE_NONCEREJECT=50) fails a
# request after 10 attempts once in 1024, which breaks about one run of 100
# certificates in two; after 20 attempts once in a million.
DEFAULT_MAX_NONCE_ATTEMPTS = 20
DEFAULT_PERSISTENT_CONNECTIONS = 16

_NONCE_POOL_SIZE = 256


# ---------------------------------------------------------------------------
# Records


@attrs.frozen
class Exchange:
    """
    One HTTP exchange with the CA, as reported to a :class:`~txacme.protocol.client.Client`'s
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
class Reply:
    """One HTTP response, fully read."""

    method: str
    url: str
    code: int
    headers: Headers
    body: bytes = attrs.field(repr=False)
    retry_after: float | None

    def header(self, name: bytes) -> str | None:
        """The last value of the header ``name``, or ``None``."""
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        return values[-1].decode("latin-1")

    def content_type(self) -> str:
        """The media type of the body, lower-cased, without parameters."""
        return (self.header(b"content-type") or "").split(";")[0].strip().lower()

    def links(self, rel: str) -> list[str]:
        """URLs of the ``Link`` headers with relation ``rel``, resolved against the URL."""
        found: list[str] = []
        for raw in self.headers.getRawHeaders(b"link") or []:
            for match in _LINK.finditer(raw.decode("latin-1")):
                for rel_match in _LINK_REL.finditer(match.group(2)):
                    rels = (rel_match.group(1) or rel_match.group(2) or "").split()
                    if rel in rels:
                        url = urljoin(self.url, match.group(1).strip())
                        if url not in found:
                            found.append(url)
        return found

    def location(self) -> str:
        """
        The ``Location`` header, resolved against the URL.

        :raises txacme.errors.ProtocolError: when there is none.
        """
        location = self.header(b"location")
        if not location:
            raise ProtocolError(f"{self.method} {self.url} answered no Location header")
        return urljoin(self.url, location)

    def json(self) -> dict[str, object]:
        """
        The body as a JSON object.

        :raises txacme.errors.ProtocolError: when it is not one.
        """
        try:
            document = json.loads(self.body)
        except ValueError:
            raise ProtocolError(f"{self.method} {self.url} answered malformed JSON")
        if not isinstance(document, dict):
            raise ProtocolError(f"{self.method} {self.url} answered JSON that is not an object")
        return document

    def decode(self, cls: type[T]) -> T:
        """
        The body as an ``acme.messages`` resource of type ``cls``.

        :raises txacme.errors.ProtocolError: when it is malformed or lacks a part
            txacme relies on.
        """
        jobj = self.json()
        try:
            decoded: T = cls.from_json(jobj)  # type: ignore[attr-defined]
        except (DeserializationError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise ProtocolError(
                f"{self.method} {self.url} answered a malformed {cls.__name__}: {e}"
            )
        missing = missing_parts(decoded)
        if missing:
            raise ProtocolError(
                f"{self.method} {self.url} answered a malformed {cls.__name__}: {missing}"
            )
        return decoded

    def problem_type(self) -> str | None:
        """The ``type`` of the problem document this reply carries, if it is one."""
        if self.content_type() != PROBLEM_JSON and self.code < 400:
            return None
        return problem_type(self.body)

    def raise_for_problem(self) -> None:
        """
        Raise the :class:`~txacme.errors.ACMEProblem` of an error answer (or of a
        success carrying a problem document); a body that is not JSON becomes a
        ``ServerInternal`` naming the HTTP status.
        """
        if 200 <= self.code < 300 and self.content_type() != PROBLEM_JSON:
            return
        try:
            document: Any = json.loads(self.body)
        except ValueError:
            document = None
        if document is not None:
            problem = ACMEProblem.from_json(
                document, status=self.code, retry_after=self.retry_after, url=self.url
            )
        else:
            text = self.body[:200].decode("utf-8", "replace").strip()
            detail = f"HTTP {self.code} from {self.method} {self.url}"
            if text:
                detail += f": {text}"
            problem = ServerInternal(
                ACME_ERROR_PREFIX + "serverInternal",
                detail,
                status=self.code,
                retry_after=self.retry_after,
                url=self.url,
            )
        raise problem


_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^,;]*)*)")
_LINK_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)


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


def check_url(url: object) -> None:
    """Refuse a URL the CA gave that is not an http(s) URL (before it reaches the JWS)."""
    if not (isinstance(url, str) and url.lower().startswith(("https://", "http://"))):
        raise ProtocolError(f"the CA gave an unusable URL: {url!r:.200}")


def _tls_verification_failure(reasons: list[BaseException]) -> str | None:
    """What a TLS verification failure among ``reasons`` says, or ``None``."""
    for reason in reasons:
        text = str(reason)
        if "certificate verify failed" in text:
            return "certificate verify failed"
        if type(reason).__name__ == "VerificationError":  # service_identity: wrong host name
            return f"host name mismatch: {text}"
    return None


def network_error(error: BaseException, ca: str) -> CAUnreachable | CAUntrusted | None:
    """
    The :class:`~txacme.errors.CAUnreachable` or :class:`~txacme.errors.CAUntrusted`
    that ``error`` (raised by the HTTP client) means, naming ``ca``; ``None`` for
    any other error.
    """
    if isinstance(error, (web_client.ResponseNeverReceived, web_client.RequestTransmissionFailed)):
        reasons = [f.value for f in error.reasons if f.value is not None]
        verification = _tls_verification_failure(reasons)
        if verification is not None:
            return CAUntrusted(ca, verification)
        causes = "; ".join(str(r) or type(r).__name__ for r in reasons)
        return CAUnreachable(ca, f"the connection was lost before an answer ({causes})")
    if isinstance(error, error_module.DNSLookupError):
        return CAUnreachable(ca, f"DNS lookup failed ({error.args[0] if error.args else error})")
    if isinstance(error, error_module.ConnectionRefusedError):
        return CAUnreachable(ca, "connection refused")
    if isinstance(error, (error_module.ConnectError, error_module.ConnectionLost)):
        text = str(error).strip().rstrip(".")
        return CAUnreachable(ca, text or type(error).__name__)
    return None


# ---------------------------------------------------------------------------
# The HTTP client: trust and connections


class TreqLike(Protocol):
    """
    What the client needs of its HTTP layer: ``treq.client.HTTPClient`` or
    ``treq.testing.StubTreq``.
    """

    def request(
        self, method: str, url: str, *, headers: Headers, data: bytes | None, allow_redirects: bool
    ) -> Awaitable[IResponse]:
        """Send a request; its result is a response that ``treq.content`` can read."""


@implementer(IBodyProducer)
class _BytesProducer:
    """Writes a request body at once, with no trip through a cooperator."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
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


def load_trust_root(ca_file: str) -> IOpenSSLTrustRoot:
    """
    A Twisted trust root (as ``optionsForClientTLS`` takes it) made of every
    certificate in the PEM file ``ca_file``.

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
    root: IOpenSSLTrustRoot = trustRootFromCertificates(  # type: ignore[no-untyped-call]
        [Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certs]
    )
    return root


@implementer(IPolicyForHTTPS)
class _VerifyingPolicy:
    """
    Verify the CA's certificate (chain and host name) against one trust root,
    the platform's when none is given. The TLS context is built once per host,
    not once per connection.
    """

    def __init__(self, trust_root: IOpenSSLTrustRoot | None = None) -> None:
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


class _QuietClientFactory(web_client._HTTP11ClientFactory):
    """The pool's connection factory, without a "Starting factory" line per connection."""

    noisy = False


class _QuietConnectionPool(web_client.HTTPConnectionPool):
    """A connection pool whose connections log nothing when they open and close."""

    _factory = _QuietClientFactory


def make_http_client(
    reactor: IReactorTime,
    *,
    ca_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    persistent_connections: int = DEFAULT_PERSISTENT_CONNECTIONS,
) -> tuple[treq.client.HTTPClient, web_client.HTTPConnectionPool]:
    """
    The treq client (and its connection pool) :meth:`Client.from_url
    <txacme.protocol.client.Client.from_url>` uses.

    :param ca_file: trust only the certificates in this PEM file; ``None`` for
        the system trust store.
    :param persistent_connections: idle connections kept open per CA host.
    """
    policy = _VerifyingPolicy(load_trust_root(ca_file) if ca_file is not None else None)
    pool = _QuietConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = persistent_connections
    pool.retryAutomatically = False
    agent = web_client.Agent(  # type: ignore[no-untyped-call]
        reactor, contextFactory=policy, pool=pool, connectTimeout=timeout
    )
    return treq.client.HTTPClient(agent, data_to_body_producer=_body_producer), pool


# ---------------------------------------------------------------------------
# Signed exchanges


@attrs.frozen
class Signer:
    """
    The key a request is signed with: its JWS algorithm, and the account URL
    (``kid``) or, when ``kid`` is ``None``, the public key itself (``jwk``).
    """

    key: JWK
    alg: JWASignature
    kid: str | None = None

    def sign(self, url: str, payload: bytes, nonce: str | None) -> bytes:
        """The flattened JWS of ``payload`` for ``url``, serialized."""
        signed = acme_jws.JWS.sign(
            payload,
            key=self.key,
            alg=self.alg,
            nonce=None if nonce is None else b64url_decode(nonce),
            url=url,
            kid=self.kid,
        )
        return signed.json_dumps().encode("utf-8")  # type: ignore[no-any-return]


class Transport:
    """
    The exchanges of one client with its CA: each with the request timeout and
    reported to ``on_exchange``; POSTs signed with a nonce from the pool that
    every answer's ``Replay-Nonce`` refills (``newNonce`` is asked only when it
    is empty).

    :param new_nonce_url: gives the ``newNonce`` URL (looked up when needed).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        http: TreqLike,
        new_nonce_url: Callable[[], str],
        *,
        timeout: float,
        user_agent: str,
        max_nonce_attempts: int,
        on_exchange: Callable[[Exchange], object] | None,
    ) -> None:
        self._reactor = reactor
        self._http = http
        self._new_nonce_url = new_nonce_url
        self.timeout = timeout
        self._user_agent = user_agent
        self._max_nonce_attempts = max_nonce_attempts
        self._on_exchange = on_exchange
        self._nonces: deque[str] = deque(maxlen=_NONCE_POOL_SIZE)
        self.directory_url: str | None = None
        """The CA's directory URL, named by the errors of a CA that cannot be reached."""

    # -- one exchange ----------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> Reply:
        """
        One HTTP exchange, body read in full, with the request timeout;
        reported to ``on_exchange`` as a request to ``endpoint``.
        """
        check_url(url)
        d = Deferred.fromCoroutine(self._exchange(method, url, body, content_type, accept))
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        started = self._reactor.seconds()
        timer = self._reactor.callLater(self.timeout, time_out)
        try:
            response, content = await d
        except Exception as e:
            self._report(endpoint, method, url, None, started)
            # Cancelling surfaces as CancelledError, ResponseNeverReceived or a
            # connect error depending on the stage: the flag tells it was us.
            if timed_out or isinstance(e, error.TimeoutError):
                log.debug("ACME {method} {url} timed out", method=method, url=url)
                raise ACMETimeout(f"{method} {url}: no answer within {self.timeout:g} s")
            converted = network_error(e, self.directory_url or url)
            if converted is not None:
                log.debug("ACME {method} {url}: {error}", method=method, url=url, error=str(e))
                raise converted from e
            raise
        finally:
            if timer.active():
                timer.cancel()
        reply = self._reply(method, url, response, content)
        problem = reply.problem_type()
        log.debug(
            "ACME {method} {url} -> {status}{problem_text}",
            method=method,
            url=url,
            status=reply.code,
            problem=problem,
            problem_text=f" {problem.removeprefix(ACME_ERROR_PREFIX)}" if problem else "",
        )
        self._report(endpoint, method, url, reply.code, started, problem)
        return reply

    async def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None,
        content_type: str | None,
        accept: str | None,
    ) -> tuple[IResponse, bytes]:
        """The response to one request and its body; cancelling stops both."""
        headers = Headers({b"User-Agent": [self._user_agent.encode("ascii", "replace")]})
        if content_type is not None:
            headers.setRawHeaders(b"Content-Type", [content_type.encode("ascii")])
        if accept is not None:
            headers.setRawHeaders(b"Accept", [accept.encode("ascii")])
        response = await self._http.request(
            method, url, headers=headers, data=body, allow_redirects=False
        )
        return response, await treq.content(response)

    def _reply(self, method: str, url: str, response: IResponse, content: bytes) -> Reply:
        """The :class:`Reply` of a response; its ``Replay-Nonce`` goes to the pool."""
        headers = response.headers
        for nonce in headers.getRawHeaders(b"replay-nonce") or []:
            self._add_nonce(nonce.decode("latin-1").strip())
        retry_after = headers.getRawHeaders(b"retry-after")
        return Reply(
            method=method,
            url=url,
            code=int(response.code),
            headers=headers,
            body=content,
            retry_after=parse_retry_after(
                retry_after[-1] if retry_after else None, self._reactor.seconds()
            ),
        )

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
            log.failure("on_exchange callback failed for {method} {url}", method=method, url=url)

    # -- nonces ------------------------------------------------------------------------

    def _add_nonce(self, nonce: str) -> None:
        # Unpadded base64url is never 1 more than a multiple of 4 characters long.
        if is_token(nonce) and len(nonce) % 4 != 1:
            self._nonces.append(nonce)

    async def _nonce(self) -> str:
        if not self._nonces:
            url = self._new_nonce_url()
            reply = await self.send("HEAD", url, endpoint="newNonce")
            if reply.code >= 400:
                reply.raise_for_problem()
            if not self._nonces:
                raise ProtocolError(f"newNonce at {url} answered no usable Replay-Nonce")
        return self._nonces.pop()

    # -- signed requests -----------------------------------------------------------------

    async def post(
        self,
        url: str,
        payload: Mapping[str, object] | bytes | None,
        signer: Callable[[], Signer],
        *,
        endpoint: str,
        accept: str | None = None,
    ) -> Reply:
        """
        A POST (``payload=None``: POST-as-GET) to the ACME resource ``endpoint``,
        signed by the :class:`Signer` that ``signer`` gives at each attempt (after
        the nonce is taken). Retries on ``badNonce`` up to the bound and once when
        the request never reached the server; raises the problem of any error answer.
        """
        check_url(url)
        data = _payload_bytes(payload)
        resent = False
        attempt = 0
        while True:
            attempt += 1
            nonce = await self._nonce()
            body = signer().sign(url, data, nonce)
            try:
                reply = await self.send(
                    "POST",
                    url,
                    endpoint=endpoint,
                    body=body,
                    content_type=JOSE_JSON,
                    accept=accept,
                )
            except CAUnreachable as e:
                cause = e.__cause__
                if isinstance(cause, web_client.RequestTransmissionFailed):
                    # The request never reached the server. (Twisted's private RequestNotSent,
                    # for a connection that is not idle, cannot come: the pool hands out idle
                    # connections only and the request is written on one at once.)
                    if resent:
                        raise
                    resent = True
                    log.debug(
                        "ACME POST {url} not sent ({error}); resending", url=url, error=str(e)
                    )
                    continue
                if isinstance(cause, web_client.ResponseNeverReceived):
                    if resent or payload is not None:
                        raise
                    resent = True  # POST-as-GET is safe to repeat
                    continue
                raise
            if self._bad_nonce_to_retry(reply, attempt):
                continue
            return reply

    def _bad_nonce_to_retry(self, reply: Reply, attempt: int) -> bool:
        """
        Whether ``reply`` is a ``badNonce`` problem to retry (attempt number
        ``attempt`` of the bound); raises the problem of any other error answer.
        """
        try:
            reply.raise_for_problem()
        except ACMEProblem as problem:
            if isinstance(problem, BadNonce) and attempt < self._max_nonce_attempts:
                log.debug(
                    "ACME badNonce for {url} (attempt {attempt}); retrying",
                    url=reply.url,
                    attempt=attempt,
                )
                return True
            raise
        return False


@attrs.frozen
class Polling:
    """
    How a resource is polled until it is final: waits start at ``initial``
    seconds and double up to ``maximum``, never shorter than ``Retry-After``,
    all within ``timeout`` seconds.
    """

    timeout: float
    initial: float
    maximum: float

    async def until(
        self,
        reactor: IReactorTime,
        url: str,
        fetch: Callable[[], Awaitable[tuple[T, Reply]]],
        done: Callable[[T], bool],
        describe: Callable[[T], str],
        first: tuple[T, Reply] | None = None,
    ) -> T:
        """
        Fetch the resource at ``url`` until ``done`` (``first``: an answer already
        in hand).

        :raises txacme.errors.ACMETimeout: past the timeout, saying what
            ``describe`` says of the resource.
        """
        deadline = reactor.seconds() + self.timeout
        delay = self.initial
        current = first if first is not None else await fetch()
        while True:
            item, reply = current
            if done(item):
                return item
            wait = max(delay, reply.retry_after or 0.0)
            if reactor.seconds() + wait > deadline:
                raise ACMETimeout(f"{url} is still {describe(item)} after {self.timeout:g} s")
            await task.deferLater(reactor, wait)
            delay = min(delay * 2, self.maximum)
            current = await fetch()


def _payload_bytes(payload: Mapping[str, object] | bytes | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    return json.dumps(payload).encode("utf-8")
