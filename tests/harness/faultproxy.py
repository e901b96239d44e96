"""
A fault-injecting HTTPS reverse proxy to put between txacme's client and Pebble.

It terminates TLS with its own throw-away CA (:func:`tests.harness.pebble.make_tls_ca`;
clients trust :attr:`FaultProxy.ca_file`) and forwards every request to the
upstream CA over HTTPS. The ``Host`` header is passed through unchanged, so
Pebble builds every URL it returns (directory, ``Location``, ``Link``) on the
proxy's address and checks the JWS ``url`` against it: the client never learns
the upstream address, and the upstream can be replaced while the client keeps
talking to the same proxy (:meth:`FaultProxy.set_upstream`, e.g. a restarted
Pebble).

Faults are scripted per request with :meth:`FaultProxy.inject`: the first
matching rule is applied (and used up, unless ``times=None``). A fault is one of

* :func:`respond` / :func:`problem`: answer without asking the upstream (500,
  503, a ``rateLimited`` problem with ``Retry-After``...);
* :data:`RESET`: abort the TCP connection (the client sees a reset);
* :data:`STALL`: never answer (until the client gives up or the proxy stops);
* :class:`Rewrite`: forward, then change the upstream's answer.

Hooks given to :meth:`FaultProxy.after` run after the upstream answered and
before the answer is sent on (e.g. to stop Pebble right after it created an
order). When the upstream cannot be reached the proxy answers ``502`` with an
HTML page, as a real reverse proxy does.

Every request is recorded in :attr:`FaultProxy.seen` with the (reactor) time
it arrived, its decoded JWS payload and the fault applied, so tests can check
what the client sent and when.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.ssl import Certificate, PrivateCertificate, trustRootFromCertificates
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.harness.pebble import make_tls_ca
from txacme.protocol.transport import _BytesProducer

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
    }
)


@attrs.frozen
class Respond:
    """Answer with this status, headers and body instead of forwarding."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    name: str = "respond"


@attrs.frozen
class _Special:
    name: str


RESET = _Special("reset")
"""Abort the client's connection without an answer."""

STALL = _Special("stall")
"""Never answer."""


@attrs.frozen
class Rewrite:
    """Forward, then replace the upstream's body with ``change(seen, body)``."""

    change: Callable[[Seen, bytes], bytes]
    name: str = "rewrite"


def respond(
    status: int,
    body: bytes = b"",
    content_type: bytes = b"text/html",
    retry_after: int | str | None = None,
) -> Respond:
    """A plain answer, e.g. ``respond(503, b"<html>maintenance</html>")``."""
    headers = [(b"content-type", content_type)]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return Respond(status, body, tuple(headers), name=f"http {status}")


def problem(
    status: int, code: str, detail: str = "", retry_after: int | str | None = None
) -> Respond:
    """An ACME problem document (``application/problem+json``) with an optional ``Retry-After``."""
    body = json.dumps(
        {"type": "urn:ietf:params:acme:error:" + code, "detail": detail, "status": status}
    ).encode()
    headers = [(b"content-type", b"application/problem+json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return Respond(status, body, tuple(headers), name=f"{code} {status}")


Fault = Respond | Rewrite | _Special
"""Anything :meth:`FaultProxy.inject` takes."""


@attrs.define
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    time: float
    payload: Any = None
    fault: str | None = None
    status: int | None = None

    def identifiers(self) -> list[str]:
        """The identifier values of a ``newOrder`` payload (else ``[]``)."""
        if not isinstance(self.payload, dict):
            return []
        idents = self.payload.get("identifiers")
        if not isinstance(idents, list):
            return []
        return [i.get("value") for i in idents if isinstance(i, dict)]


@attrs.define
class _Rule:
    fault: Fault
    method: str | None
    path: re.Pattern[str] | None
    when: Callable[[Seen], bool] | None
    times: int | None

    def matches(self, seen: Seen) -> bool:
        if self.method is not None and seen.method != self.method:
            return False
        if self.path is not None and not self.path.search(seen.path):
            return False
        return self.when is None or bool(self.when(seen))


def _decode_payload(body: bytes) -> Any:
    try:
        jws = json.loads(body)
        raw = jws["payload"]
        if not raw:
            return {}
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except Exception:
        return None


def _trust(ca_file: str) -> BrowserLikePolicyForHTTPS:
    with open(ca_file, "rb") as f:
        root = Certificate.loadPEM(f.read())
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates([root]))


class _Forward(Resource):
    isLeaf = True

    def __init__(self, proxy: FaultProxy) -> None:
        Resource.__init__(self)
        self.proxy = proxy

    def render(self, request: Any) -> Any:
        return self.proxy._handle(request)


class FaultProxy:
    """
    The proxy. ``FaultProxy(upstream_base, upstream_ca_file)`` listens at once
    on a free 127.0.0.1 port; call :meth:`stop` (returns a ``Deferred``) in
    cleanup.

    :ivar base_url: ``https://127.0.0.1:<port>``.
    :ivar ca_file: the PEM CA clients must trust for the proxy.
    :ivar seen: every request received, in order.
    """

    def __init__(self, upstream_base: str, upstream_ca_file: str, reactor: Any = None) -> None:
        self.reactor = reactor if reactor is not None else global_reactor
        self.workdir = Path(tempfile.mkdtemp(prefix="txacme-faultproxy-"))
        ca_path, cert_path, key_path = make_tls_ca(self.workdir)
        self.ca_file = str(ca_path)
        self.seen: list[Seen] = []
        self._rules: list[_Rule] = []
        self._hooks: list[Callable[[Seen], object]] = []
        self._stalled: set[Any] = set()
        self._protocols: dict[Any, Deferred[None]] = {}
        self._pool: HTTPConnectionPool | None = None
        self._agent: Agent | None = None
        self.set_upstream(upstream_base, upstream_ca_file)
        site = Site(_Forward(self))
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        build = site.buildProtocol

        def build_tracked(addr: Any) -> Any:
            protocol = build(addr)
            gone: Deferred[None] = Deferred()
            self._protocols[protocol] = gone
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> Any:
                self._protocols.pop(protocol, None)
                try:
                    return lost(reason)
                finally:
                    gone.callback(None)

            protocol.connectionLost = connection_lost
            return protocol

        site.buildProtocol = build_tracked  # type: ignore[method-assign]
        certificate = PrivateCertificate.loadPEM(cert_path.read_bytes() + key_path.read_bytes())
        self._port = self.reactor.listenSSL(
            0, site, certificate.options(), interface="127.0.0.1", backlog=128
        )
        self.port = self._port.getHost().port
        self.base_url = f"https://127.0.0.1:{self.port}"

    # -- configuration ----------------------------------------------------------

    @property
    def directory_url(self) -> str:
        """The upstream's directory, reached through the proxy."""
        return self.base_url + self.upstream_directory_path

    def set_upstream(self, upstream_base: str, upstream_ca_file: str) -> None:
        """
        Forward to another CA from now on (``upstream_base`` is
        ``https://host:port`` or a full directory URL, whose path is kept).
        """
        match = re.match(r"(https://[^/]+)(/.*)?\Z", upstream_base)
        if match is None:
            raise ValueError(f"not an https URL: {upstream_base!r}")
        self.upstream_base = match.group(1)
        self.upstream_directory_path = match.group(2) or "/dir"
        old = self._pool
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.retryAutomatically = False
        self._agent = Agent(
            self.reactor,
            contextFactory=_trust(upstream_ca_file),
            pool=self._pool,
            connectTimeout=5,
        )
        if old is not None:
            old.closeCachedConnections()

    def inject(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str | None = None,
        when: Callable[[Seen], bool] | None = None,
        times: int | None = 1,
    ) -> None:
        """
        Apply ``fault`` to the next ``times`` requests (``None``: all of them)
        matching ``method``, the regular expression ``path`` and ``when(seen)``.
        """
        self._rules.append(_Rule(fault, method, re.compile(path) if path else None, when, times))

    def clear(self) -> None:
        """Remove every fault rule not yet used up; stalled requests stay stalled."""
        self._rules = []

    def after(self, hook: Callable[[Seen], object]) -> None:
        """Call ``hook(seen)`` after the upstream answered (``seen.status`` set)."""
        self._hooks.append(hook)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """The requests seen, optionally only those matching ``method`` and ``path``."""
        pattern = re.compile(path) if path else None
        return [
            s
            for s in self.seen
            if (method is None or s.method == method)
            and (pattern is None or pattern.search(s.path))
        ]

    # -- serving ----------------------------------------------------------------

    def _fault_for(self, seen: Seen) -> Fault | None:
        for rule in self._rules:
            if rule.matches(seen):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                return rule.fault
        return None

    def _handle(self, request: Any) -> Any:
        body = request.content.read()
        seen = Seen(
            method=request.method.decode("ascii"),
            path=request.uri.decode("latin-1"),
            time=self.reactor.seconds(),
            payload=_decode_payload(body) if request.method == b"POST" else None,
        )
        self.seen.append(seen)
        fault = self._fault_for(seen)
        if fault is not None:
            seen.fault = fault.name
        if fault is RESET:
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if fault is STALL:
            self._stalled.add(request)
            request.notifyFinish().addBoth(lambda _: self._stalled.discard(request))
            return NOT_DONE_YET
        if isinstance(fault, Respond):
            seen.status = fault.status
            request.setResponseCode(fault.status)
            for name, value in fault.headers:
                request.setHeader(name, value)
            return fault.body
        self._forward(request, seen, body, fault if isinstance(fault, Rewrite) else None)
        return NOT_DONE_YET

    def _forward(self, request: Any, seen: Seen, body: bytes, rewrite: Rewrite | None) -> None:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        producer = None
        if request.method in (b"POST", b"PUT"):
            producer = _BytesProducer(body)
        assert self._agent is not None
        d = self._agent.request(
            request.method, (self.upstream_base + seen.path).encode("latin-1"), headers, producer
        )

        def got(response: Any) -> Deferred[None]:
            return readBody(response).addCallback(lambda data: answer(response, data))

        def answer(response: Any, data: bytes) -> None:
            seen.status = response.code
            if rewrite is not None:
                data = rewrite.change(seen, data)
            for hook in list(self._hooks):
                hook(seen)
            if request.finished or request._disconnected:
                return
            request.setResponseCode(response.code)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in HOP_BY_HOP:
                    request.responseHeaders.setRawHeaders(name, values)
            request.write(data)
            request.finish()

        def bad_gateway(failure: Any) -> None:
            seen.status = 502
            if request.finished or request._disconnected:
                return
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/html")
            request.write(b"<html><body><h1>502 Bad Gateway</h1></body></html>")
            request.finish()

        d.addCallback(got).addErrback(bad_gateway)

    # -- teardown -----------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Stop listening, drop every connection (stalled ones too), remove the files."""
        waits: list[Deferred[Any]] = []
        port = getattr(self, "_port", None)
        if port is not None:
            self._port = None
            waits.append(port.stopListening() or succeed(None))
        for protocol, gone in list(self._protocols.items()):
            waits.append(gone)
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
        if self._pool is not None:
            waits.append(self._pool.closeCachedConnections())
            self._pool = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)


__all__ = [
    "RESET",
    "STALL",
    "Fault",
    "FaultProxy",
    "Respond",
    "Rewrite",
    "Seen",
    "problem",
    "respond",
]
