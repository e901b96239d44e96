"""
The ``http-01`` challenge responder (RFC 8555 section 8.3).

:class:`HTTP01Responder` keeps the key authorizations of the challenges being
answered and serves them from ``HTTP01Responder.resource``, a
``twisted.web`` resource to mount at ``/.well-known/acme-challenge/`` (its
children are the tokens). :func:`http01_root` builds a whole site root with it
mounted, optionally in front of an existing resource tree, which suits a port-80
listener.

Behaviour:

* ``GET`` or ``HEAD /.well-known/acme-challenge/<token>`` answers ``200`` with
  the key authorization as ASCII ``text/plain`` only while that challenge is
  being answered. Unknown or stopped tokens, tokens with characters outside
  the base64url alphabet, extra path segments and the bare directory (no
  listing) answer ``404``. Other methods answer ``405``.
* The token is ``challenge.encode("token")`` of the ``acme.challenges.HTTP01``
  challenge; the body is ``response.key_authorization``.
* ``start_responding`` and ``stop_responding`` take effect at once and return
  ``None``; stopping a challenge that is not active does nothing.

:class:`HTTP01Site` is the ``twisted.web`` site of the endpoints' ``http01=``
listener. On top of the resources it:

* answers every method but ``GET`` and ``HEAD`` with ``405`` and
  ``Allow: GET, HEAD`` (never Twisted's ``501``);
* refuses a request body over :data:`MAX_BODY` bytes with ``413`` as soon as
  its ``Content-Length`` (or the chunks received) say so, without buffering
  it, and closes the connection;
* answers ``HEAD`` without a body and without a warning in the log;
* with ``redirect`` set (``http01_redirect=``), answers every request outside
  ``/.well-known/acme-challenge/`` with a permanent redirect to the same host
  and request target over HTTPS: ``301`` for ``GET`` and ``HEAD``, ``308``
  (which keeps the method and body) for the others. Any port in the ``Host``
  header is dropped; ``redirect`` is the HTTPS port to name in the location
  (443 is left out). A request without a usable ``Host`` answers ``400``.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from txacme.errors import ConfigurationError, ProtocolError
from txacme.formats import is_token
from txacme.interfaces import IResponder
from txacme.logs import Logger

log = Logger()

WELL_KNOWN = b".well-known"
ACME_CHALLENGE = b"acme-challenge"


class _NotFound(Resource):
    """A plain-text 404 for every method and every path below it."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=us-ascii")
        return _body(request, b"not found\n")


def _body(request: Any, body: bytes) -> bytes:
    """``body``, or for ``HEAD`` its length only (twisted.web warns about a HEAD body)."""
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
    return body


_NOT_FOUND = _NotFound()


class _KeyAuthorization(Resource):
    """Serves one key authorization."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._body = body

    def render_GET(self, request: Any) -> bytes:
        if request.postpath:
            return _NOT_FOUND.render(request)
        request.setHeader(b"content-type", b"text/plain; charset=us-ascii")
        request.setHeader(b"cache-control", b"no-store")
        return _body(request, self._body)


class _ChallengeDirectory(Resource):
    """The ``/.well-known/acme-challenge/`` directory: its children are tokens."""

    def __init__(self, tokens: dict[str, bytes]) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._tokens = tokens

    def getChild(self, path: bytes, request: Any) -> Resource:
        try:
            token = path.decode("ascii")
        except UnicodeDecodeError:
            return _NOT_FOUND
        if not is_token(token):
            return _NOT_FOUND
        body = self._tokens.get(token)
        if body is None:
            return _NOT_FOUND
        return _KeyAuthorization(body)

    def render(self, request: Any) -> bytes:
        return _NOT_FOUND.render(request)


@implementer(IResponder)
class HTTP01Responder:
    """
    Answers ``http-01`` challenges from a ``twisted.web`` resource.

    :ivar resource: the resource to mount at ``/.well-known/acme-challenge/``.
    """

    challenge_type = "http-01"

    def __init__(self) -> None:
        self._tokens: dict[str, bytes] = {}
        self.resource: IResource = _ChallengeDirectory(self._tokens)

    @staticmethod
    def _token(challenge: Any) -> str:
        token = challenge.encode("token")
        if not (isinstance(token, str) and is_token(token)):
            raise ProtocolError(f"http-01 token {token!r} is not base64url")
        return token

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """
        Serve ``response.key_authorization`` at the challenge's token.

        :raises txacme.errors.ProtocolError: for a token that is not base64url.
        :raises txacme.errors.ConfigurationError: for a key authorization that is
            not ASCII or does not belong to the token.
        """
        token = self._token(challenge)
        key_authorization = response.key_authorization
        if not isinstance(key_authorization, str) or not key_authorization.isascii():
            raise ConfigurationError("http-01 key authorization must be an ASCII string")
        if not key_authorization.startswith(token + "."):
            raise ConfigurationError(f"http-01 key authorization is not for token {token!r}")
        self._tokens[token] = key_authorization.encode("ascii")
        log.debug("answering http-01 for {server_name}", server_name=server_name)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """
        Stop serving the challenge's token (no-op if it is not served).
        """
        self._tokens.pop(self._token(challenge), None)
        log.debug("stopped answering http-01 for {server_name}", server_name=server_name)

    def active_tokens(self) -> frozenset[str]:
        """The tokens being answered now."""
        return frozenset(self._tokens)


class _Overlay(Resource):
    """
    Serves its own children, and sends every other path (and itself) to
    ``fallback`` when there is one, else 404.

    A leaf ``fallback`` was mounted ``rewind`` segments above this node: the
    segments consumed since then are handed back to it, so it sees the path as
    if this node did not exist.
    """

    def __init__(self, overlay: dict[bytes, Any], fallback: Any, rewind: int = 0) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._overlay = overlay
        self._fallback = fallback
        self._rewind = rewind

    def _give_back(self, request: Any, count: int) -> None:
        for _ in range(count):
            request.postpath.insert(0, request.prepath.pop())

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        make = self._overlay.get(path)
        fallback = self._fallback
        if make is not None:
            if fallback is None:
                return make(None, 0)
            if fallback.isLeaf:
                return make(fallback, self._rewind + 1)
            return make(fallback.getChildWithDefault(path, request), 0)
        if fallback is None:
            return _NOT_FOUND
        if fallback.isLeaf:
            self._give_back(request, self._rewind + 1)
            return fallback
        return fallback.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        if self._fallback is None:
            return _NOT_FOUND.render(request)
        if self._fallback.isLeaf:
            self._give_back(request, self._rewind)
        return self._fallback.render(request)


def http01_root(responder: HTTP01Responder, fallback: IResource | None = None) -> IResource:
    """
    A site root serving ``responder`` at ``/.well-known/acme-challenge/``.

    :param fallback: a resource tree (any ``IResource``) for every other path,
        including other ``/.well-known/`` paths; without one they answer ``404``.
    """
    challenges = responder.resource

    def well_known(below: Any, rewind: int) -> IResource:
        return _Overlay({ACME_CHALLENGE: lambda _below, _rewind: challenges}, below, rewind)

    return _Overlay({WELL_KNOWN: well_known}, fallback)


MAX_BODY = 64 * 1024
"""The largest request body :class:`HTTP01Site` accepts (no challenge request has one)."""

_CHALLENGE_PREFIX = b"/" + WELL_KNOWN + b"/" + ACME_CHALLENGE + b"/"
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]*)?")
_READ_METHODS = (b"GET", b"HEAD")


class _HTTP01Request(Request):
    """A request of :class:`HTTP01Site`: methods, body size and redirects first."""

    _refused = False
    _received = 0

    def _site(self) -> HTTP01Site:
        channel: Any = self.channel
        site: HTTP01Site = channel.site
        return site

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        if length is not None and length > self._site().max_body:
            self._refuse_body()
            return
        Request.gotLength(self, length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._site().max_body:
            self._refuse_body()
            return
        Request.handleContentChunk(self, data)  # type: ignore[no-untyped-call]

    def _refuse_body(self) -> None:
        """Answer 413 now and close: the body is never read."""
        if self._refused:
            return
        self._refused = True
        # No "100 Continue" after the refusal (twisted.web sends one after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        body = b"request body too large\n"
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        transport.loseConnection()

    def process(self) -> None:
        if self._refused:
            return
        site = self._site()
        path = self.path
        if site.redirect is not None and not path.startswith(_CHALLENGE_PREFIX):
            self._redirect(site.redirect)
            return
        if self.method not in _READ_METHODS:
            self._answer(405, b"method not allowed\n", (b"allow", b"GET, HEAD"))
            return
        Request.process(self)  # type: ignore[no-untyped-call]

    def _answer(self, code: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
        request: Any = self  # twisted.web's Request is untyped
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=us-ascii")
        for key, value in headers:
            request.setHeader(key, value)
        request.setHeader(b"content-length", b"%d" % len(body))
        if self.method != b"HEAD":
            request.write(body)
        request.finish()

    def _redirect(self, port: int) -> None:
        host = self.getHeader(b"host")
        match = _HOST.fullmatch(host or b"")
        if match is None:
            self._answer(400, b"a redirect to HTTPS needs a valid Host header\n")
            return
        target = self.uri
        if not target.startswith(b"/"):  # absolute-form: keep the path and query only
            rest = target.split(b"://", 1)[-1]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        authority = match.group(1).lower()
        if port != 443:
            authority += b":%d" % port
        location = b"https://" + authority + target
        code = 301 if self.method in _READ_METHODS else 308
        self._answer(code, b"moved to " + location + b"\n", (b"location", location))


class HTTP01Site(Site):
    """
    The site of an ``http-01`` listener (see the module docs).

    :param root: the resource tree, usually :func:`http01_root`.
    :param redirect: redirect non-challenge requests to HTTPS on this port,
        or ``None`` to answer them from ``root``.
    :param max_body: the largest request body accepted, in bytes.
    """

    requestFactory = _HTTP01Request

    def __init__(
        self, root: IResource, *, redirect: int | None = None, max_body: int = MAX_BODY
    ) -> None:
        Site.__init__(self, root)  # type: ignore[no-untyped-call]
        self.redirect = redirect
        self.max_body = max_body


__all__ = ["MAX_BODY", "HTTP01Responder", "HTTP01Site", "http01_root"]
