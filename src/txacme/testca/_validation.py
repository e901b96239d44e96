"""
Challenge validation done for real over the network: http-01 (RFC 8555 section
8.3), tls-alpn-01 (RFC 8737), dns-01 (RFC 8555 section 8.4), dns-account-01 and
dns-persist-01 (see :mod:`txacme.testca._persist`).

The test CA never resolves the identifier: http-01 and tls-alpn-01 connect to a
configured address (127.0.0.1 and a port by default) and send the identifier as
the ``Host`` header or the TLS server name; dns-01 asks a configured DNS server.

http-01 follows up to :data:`MAX_HTTP01_REDIRECTS` redirects to ``http`` and
``https`` URLs. The test CA's stand-in for port 80 is its ``http01_port`` and for
port 443 its ``tlsalpn01_port`` (where tls-alpn-01, a port-443 method, already
connects): a redirect target on port 80 or 443 (explicit or by its scheme's
default) connects there, and so does one naming either configured port itself;
any other port is refused, as RFC 8555 section 10.2 advises. Redirect targets
connect to the same validation address; ``https`` targets are not verified
(the certificate may be self-signed or for another name).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any
from urllib.parse import urljoin, urlsplit

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError, TimeoutError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.names import client as dns_client
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from txacme.testca._jws import b64encode
from txacme.testca._persist import account_label, persist_record_matches
from txacme.testca._problems import Problem

ACME_TLS_1 = b"acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
MAX_HTTP01_BODY = 8192
#: The most redirects one http-01 validation follows.
MAX_HTTP01_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def dns01_txt_value(key_authorization: str) -> str:
    """The TXT record value a dns-01 challenge expects."""
    return b64encode(hashlib.sha256(key_authorization.encode("ascii")).digest())


def _endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    if ":" in host:
        return TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
            reactor, host, port, timeout=timeout
        )
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


@implementer(IAgentEndpointFactory)
class _FixedAddress:
    """Connect every request to one address, whatever the URL's host; TLS for ``https``."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        endpoint = _endpoint(self._reactor, self._host, self._port, self._timeout)
        if uri.scheme == b"https":
            name = uri.host.decode("ascii")
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return wrapClientTLS(_UnverifiedTLS(name.encode("ascii")), endpoint)
            return wrapClientTLS(_UnverifiedTLS(None), endpoint)
        return endpoint


class _LimitedBody(Protocol):
    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._data = b""
        self._too_big = False

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > self._limit and not self._too_big:
            self._too_big = True
            transport: Any = self.transport
            transport.stopProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        if self._too_big:
            self._finished.errback(
                Problem("unauthorized", f"http-01 response body is over {self._limit} bytes")
            )
        elif isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self._finished.callback(self._data)
        else:
            self._finished.errback(reason)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """A TLS client that verifies nothing, sends ``server_name`` and offers ``alpn``."""

    def __init__(self, server_name: bytes | None, alpn: list[bytes] | None = None) -> None:
        self._server_name = server_name
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE)
        if alpn:
            ctx.set_alpn_protos(alpn)
        self._ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._ctx, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IHandshakeListener)
class _ALPNProbe(Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[tuple[bytes | None, x509.Certificate | None]] = defer.Deferred()
        self._result: tuple[bytes | None, x509.Certificate | None] | None = None

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeerCertificate()
        cert = peer.to_cryptography() if peer is not None else None
        self._result = (transport.negotiatedProtocol, cert)
        transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._result is not None:
            self.done.callback(self._result)
        else:
            self.done.errback(reason if reason is not None else ConnectionDone())


def _resends(total: float) -> tuple[float, ...]:
    """
    When to send a DNS query again (Twisted's resolver ``timeout``), within
    ``total`` seconds: after 1 s, then twice as long each time, the last wait
    taking what is left. A query sent again keeps its id, so a late answer to
    an earlier one still counts; one UDP packet lost no longer fails a
    validation, as it did with a single try of ``total`` seconds.
    """
    waits: list[float] = []
    wait = min(1.0, total)
    while sum(waits) + wait * 2 <= total:
        waits.append(wait)
        wait *= 2
    waits.append(total - sum(waits))
    return tuple(waits)


def _connection_problem(failure: Failure, what: str) -> Problem:
    error = failure.value
    if isinstance(error, Problem):
        return error
    if isinstance(error, (defer.TimeoutError, TimeoutError, defer.CancelledError)):
        return Problem("connection", f"{what}: timed out")
    if isinstance(error, (ConnectError, DNSLookupError)):
        return Problem("connection", f"{what}: could not connect ({error})")
    if isinstance(error, SSL.Error):
        return Problem("tls", f"{what}: TLS error ({error})")
    return Problem("connection", f"{what}: {error or type(error).__name__}")


def _redirect_target(url: str, location: bytes, stand_in: dict[int, int]) -> tuple[str, int]:
    """The URL a redirect from ``url`` leads to, and the port to connect to for it."""
    try:
        target = urljoin(url, location.decode("ascii").strip())
        parts = urlsplit(target)
        url_port = parts.port
    except (UnicodeDecodeError, ValueError):
        raise Problem("connection", f"GET {url}: the redirect target {location!r} is not a URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Problem(
            "connection", f"GET {url}: redirects go to http or https URLs only, not {target}"
        )
    if url_port is None:
        url_port = 80 if parts.scheme == "http" else 443
    allowed = set(stand_in) | set(stand_in.values())
    if url_port not in allowed:
        listed = ", ".join(str(p) for p in sorted(allowed))
        raise Problem(
            "connection",
            f"GET {url}: redirected to {target}, but redirects may only go to ports {listed}",
        )
    return target, stand_in.get(url_port, url_port)


class Validator:
    """Runs challenge validations through ``reactor``."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self.timeout = timeout
        self._pool = HTTPConnectionPool(  # type: ignore[no-untyped-call]
            reactor, persistent=False
        )

    def _bounded(self, d: defer.Deferred[Any], what: str) -> defer.Deferred[None]:
        clock: IReactorTime = self._reactor
        d.addTimeout(self.timeout, clock)

        def fail(failure: Failure) -> None:
            raise _connection_problem(failure, what)

        d.addErrback(fail)
        return d

    def http01(
        self,
        value: str,
        token: str,
        key_authorization: str,
        host: str,
        port: int,
        https_port: int | None = None,
    ) -> defer.Deferred[None]:
        """
        Fetch ``http://<value>/.well-known/acme-challenge/<token>`` from
        ``host:port``, following redirects; ``https_port`` stands for port 443.
        """
        return self._bounded(
            defer.Deferred.fromCoroutine(
                self._http01(value, token, key_authorization, host, port, https_port)
            ),
            f"http-01 for {value} at {host}:{port}",
        )

    async def _http01(
        self,
        value: str,
        token: str,
        key_authorization: str,
        host: str,
        port: int,
        https_port: int | None,
    ) -> None:
        netloc = f"[{value}]" if ":" in value else value
        url = f"http://{netloc}/.well-known/acme-challenge/{token}"
        stand_in = {80: port, 443: port if https_port is None else https_port}
        connect_to = port
        for hop in range(MAX_HTTP01_REDIRECTS + 1):
            agent = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
                self._reactor,
                _FixedAddress(self._reactor, host, connect_to, self.timeout),
                pool=self._pool,
            )
            response: IResponse = await agent.request(
                b"GET", url.encode("ascii"), Headers({b"user-agent": [b"txacme-testca/1"]})
            )
            finished: defer.Deferred[bytes] = defer.Deferred()
            response.deliverBody(  # type: ignore[no-untyped-call]
                _LimitedBody(finished, MAX_HTTP01_BODY)
            )
            body = await finished
            if response.code not in _REDIRECTS:
                break
            if hop == MAX_HTTP01_REDIRECTS:
                raise Problem(
                    "connection", f"GET {url}: more than {MAX_HTTP01_REDIRECTS} redirects"
                )
            location = response.headers.getRawHeaders(b"location")
            if not location:
                raise Problem(
                    "connection", f"GET {url} answered HTTP {response.code} with no Location"
                )
            url, connect_to = _redirect_target(url, location[0], stand_in)
        if response.code != 200:
            raise Problem("unauthorized", f"GET {url} answered HTTP {response.code}")
        # RFC 8555 section 8.3: trailing whitespace is ignored.
        if body.rstrip(b" \t\r\n") != key_authorization.encode("ascii"):
            shown = body[:100].decode("utf-8", "replace")
            raise Problem(
                "incorrectResponse",
                f"GET {url}: the body is not the key authorization (it starts with {shown!r})",
            )

    def tlsalpn01(
        self, id_type: str, value: str, key_authorization: str, host: str, port: int
    ) -> defer.Deferred[None]:
        """Make a TLS handshake offering ``acme-tls/1`` and check the certificate."""
        return self._bounded(
            defer.Deferred.fromCoroutine(
                self._tlsalpn01(id_type, value, key_authorization, host, port)
            ),
            f"tls-alpn-01 for {value} at {host}:{port}",
        )

    async def _tlsalpn01(
        self, id_type: str, value: str, key_authorization: str, host: str, port: int
    ) -> None:
        if id_type == "ip":
            # RFC 8738 section 6: the SNI is the reverse-mapping name of the address.
            server_name = ipaddress.ip_address(value).reverse_pointer.encode("ascii")
        else:
            server_name = value.encode("ascii")
        endpoint = wrapClientTLS(
            _UnverifiedTLS(server_name, [ACME_TLS_1]),
            _endpoint(self._reactor, host, port, self.timeout),
        )
        probe = _ALPNProbe()
        await endpoint.connect(Factory.forProtocol(lambda: probe))
        negotiated, cert = await probe.done
        what = f"tls-alpn-01 for {value}"
        if negotiated != ACME_TLS_1:
            raise Problem("tls", f"{what}: the server did not negotiate acme-tls/1")
        if cert is None:
            raise Problem("tls", f"{what}: the server sent no certificate")
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise Problem("unauthorized", f"{what}: the certificate has no subjectAltName")
        expected: x509.GeneralName = (
            x509.IPAddress(ipaddress.ip_address(value)) if id_type == "ip" else x509.DNSName(value)
        )
        if list(sans) != [expected]:
            raise Problem(
                "unauthorized",
                f"{what}: the certificate's subjectAltName must be exactly {value}",
            )
        try:
            ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        except x509.ExtensionNotFound:
            raise Problem("unauthorized", f"{what}: no acmeIdentifier extension")
        if not ext.critical:
            raise Problem("unauthorized", f"{what}: the acmeIdentifier extension is not critical")
        digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
        if raw != b"\x04\x20" + digest:
            raise Problem("incorrectResponse", f"{what}: the acmeIdentifier digest does not match")

    def dns01(
        self, name: str, key_authorization: str, server: tuple[str, int]
    ) -> defer.Deferred[None]:
        """Look up ``_acme-challenge.<name>`` TXT at ``server`` (host, port)."""
        return self._bounded(
            defer.Deferred.fromCoroutine(
                self._dns01(f"_acme-challenge.{name}", key_authorization, server)
            ),
            f"dns-01 for {name}",
        )

    def dnsaccount01(
        self, name: str, key_authorization: str, account_url: str, server: tuple[str, int]
    ) -> defer.Deferred[None]:
        """Look up ``_<account label>._acme-challenge.<name>`` TXT at ``server``."""
        return self._bounded(
            defer.Deferred.fromCoroutine(
                self._dns01(
                    f"{account_label(account_url)}._acme-challenge.{name}",
                    key_authorization,
                    server,
                )
            ),
            f"dns-account-01 for {name}",
        )

    async def _txt(self, qname: str, server: tuple[str, int]) -> list[bytes]:
        resolver: Any = dns_client.Resolver(  # type: ignore[no-untyped-call]
            servers=[server], reactor=self._reactor
        )
        try:
            answers, _, _ = await resolver.lookupText(qname, timeout=_resends(self.timeout))
        except dns_error.DomainError:
            raise Problem("dns", f"no TXT record at {qname} (NXDOMAIN)")
        except dns_error.DNSQueryTimeoutError:
            raise Problem("dns", f"DNS query for {qname} TXT timed out")
        except dns_error.DNSServerError as e:
            raise Problem("dns", f"DNS query for {qname} TXT failed: {e}")
        return [
            b"".join(rr.payload.data)
            for rr in answers
            if rr.type == dns.TXT and isinstance(rr.payload, dns.Record_TXT)
        ]

    def dnspersist01(
        self,
        name: str,
        wildcard: bool,
        issuers: list[str],
        account_url: str,
        server: tuple[str, int],
        now: float,
    ) -> defer.Deferred[None]:
        """
        Look up ``_validation-persist.<name>`` TXT at ``server`` for a record
        naming one of ``issuers`` and ``account_url`` (``policy=wildcard`` for a
        wildcard, ``persistUntil`` not before ``now``); failing that, the
        record of each parent domain, which must have ``policy=wildcard``.
        """
        return self._bounded(
            defer.Deferred.fromCoroutine(
                self._dnspersist01(name, wildcard, issuers, account_url, server, now)
            ),
            f"dns-persist-01 for {name}",
        )

    async def _dnspersist01(
        self,
        name: str,
        wildcard: bool,
        issuers: list[str],
        account_url: str,
        server: tuple[str, int],
        now: float,
    ) -> None:
        labels = name.split(".")
        first_problem: Problem | None = None
        # The name itself, then (subdomain validation) its parents, down to two labels.
        for i in range(max(1, len(labels) - 1)):
            qname = "_validation-persist." + ".".join(labels[i:])
            need_wildcard = wildcard or i > 0
            try:
                found = await self._txt(qname, server)
            except Problem as e:
                if e.type.endswith(":dns") and "NXDOMAIN" in str(e):
                    first_problem = first_problem or e
                    continue
                raise
            for value in found:
                if persist_record_matches(
                    value.decode("utf-8", "replace"),
                    issuers,
                    account_url,
                    wildcard=need_wildcard,
                    now=now,
                ):
                    return
            first_problem = first_problem or Problem(
                "unauthorized",
                f"{qname} TXT has {len(found)} value(s), none names "
                f"{' or '.join(issuers)} and this account"
                + (" with policy=wildcard" if need_wildcard else "")
                + " (and persistUntil not past)",
            )
        assert first_problem is not None
        raise first_problem

    async def _dns01(self, qname: str, key_authorization: str, server: tuple[str, int]) -> None:
        expected = dns01_txt_value(key_authorization).encode("ascii")
        found = await self._txt(qname, server)
        if expected not in found:
            raise Problem(
                "unauthorized",
                f"{qname} TXT has {len(found)} value(s), none is the expected digest",
            )

    def close(self) -> defer.Deferred[None]:
        """Close idle connections."""
        d: defer.Deferred[None] = self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return d
