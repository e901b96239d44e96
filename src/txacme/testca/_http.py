"""
The test CA's HTTPS plumbing, below the ACME protocol: the server TLS context
(TLS 1.2+ with the CA's own HTTPS identity, answering ALPN ``http/1.1``), a
connection-tracking factory so that stopping can close every connection and
wait for it, a ``Site`` that leaves request logging to the CA, and the single
leaf resource that hands every request to the CA's dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from txacme.testca._pki import HTTPSIdentity


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """TLS 1.2+ with the HTTPS identity; ALPN answers ``http/1.1`` when offered."""

    def __init__(self, identity: HTTPSIdentity) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(identity.certificate)
        ctx.use_privatekey(identity.key)
        ctx.check_privatekey()
        ctx.set_alpn_select_callback(self._select)
        self._ctx = ctx

    @staticmethod
    def _select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        # Clients such as requests and Go offer ALPN; leaving it unanswered
        # makes the handshake fail.
        return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._ctx, None)


class TrackedProtocol(ProtocolWrapper):
    """A connection whose :attr:`lost` fires once it is closed."""

    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure | None = None) -> None:
        wrapper: Any = super()
        wrapper.connectionLost(reason)
        self.lost.callback(None)


class TrackingFactory(WrappingFactory):
    """Wraps every connection in a :class:`TrackedProtocol` (see ``protocols``)."""

    protocol = TrackedProtocol
    noisy = False


class QuietSite(Site):
    """A ``Site`` that logs nothing itself."""

    noisy = False

    def log(self, request: Any) -> None:
        """Requests are logged by the CA at debug level instead."""


class RootResource(Resource):
    """The one resource: every request goes to ``render`` and is answered later."""

    isLeaf = True

    def __init__(self, render: Callable[[Request], None]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._render_request = render

    def render(self, request: Request) -> int:
        self._render_request(request)
        return NOT_DONE_YET
