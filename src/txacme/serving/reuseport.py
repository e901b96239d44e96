"""
Several processes listening on one TCP port: :class:`ReusePortEndpoint`, a
server endpoint whose socket has ``SO_REUSEPORT`` set before it is bound, then
is adopted by the reactor.

On Linux the kernel then spreads new connections over every process bound to
the port with the same user id, and a process that dies simply stops getting
connections. Other platforms either lack ``SO_REUSEPORT`` or do not balance
with it (macOS and the BSDs give every connection to the last process bound),
so the endpoint refuses them with a :class:`~txacme.errors.ConfigurationError`.

Serving layer: may import the core modules only.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from txacme.errors import ConfigurationError
from txacme.logs import Logger

log = Logger()


def reuse_port_supported() -> str | None:
    """``None`` when this platform balances connections with ``SO_REUSEPORT``, else why not."""
    if not sys.platform.startswith("linux"):
        return f"reuse_port=yes needs Linux (SO_REUSEPORT does not balance on {sys.platform})"
    if not hasattr(socket, "SO_REUSEPORT"):
        return "reuse_port=yes needs SO_REUSEPORT, which this Python lacks"
    return None


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    Listen on ``interface:port`` with ``SO_REUSEPORT`` (and ``SO_REUSEADDR``).

    :param reactor: a reactor providing ``IReactorSocket`` (adopts the socket).
    :param port: the TCP port (0 picks a free one, shared with nobody).
    :param interface: the address to bind ("" for all).
    :param backlog: the listen queue length.
    :param family: ``socket.AF_INET`` or ``socket.AF_INET6``.
    :raises txacme.errors.ConfigurationError: on a platform or reactor that
        cannot share a port.
    """

    def __init__(
        self,
        reactor: object,
        port: int,
        *,
        interface: str = "",
        backlog: int = 50,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> None:
        why = reuse_port_supported()
        if why is not None:
            raise ConfigurationError(why)
        if not IReactorSocket.providedBy(reactor):
            raise ConfigurationError("reuse_port=yes needs a reactor that can adopt sockets")
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.family = family

    def __repr__(self) -> str:
        return f"ReusePortEndpoint({self.interface!r}, {self.port})"

    def _bound_socket(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """Bind a shared socket and hand it to the reactor."""
        try:
            sock = self._bound_socket()
        except OSError as e:
            return fail(CannotListenError(self.interface, self.port, e))  # type: ignore[no-untyped-call]
        try:
            reactor: Any = self._reactor
            port: IListeningPort = reactor.adoptStreamPort(
                sock.fileno(), self.family, protocolFactory
            )
        except Exception:
            return fail()
        finally:
            sock.close()  # the reactor holds its own duplicate
        log.info(
            "listening on {interface}:{port} shared with other processes (SO_REUSEPORT)",
            interface=self.interface or "*",
            port=self.port,
        )
        return succeed(port)


def reuse_port_endpoint(
    reactor: object, endpoint: IStreamServerEndpoint, what: str
) -> ReusePortEndpoint:
    """
    The :class:`ReusePortEndpoint` listening where a ``tcp:`` / ``tcp6:``
    endpoint (as ``serverFromString`` made it) would.

    :raises txacme.errors.ConfigurationError: for any other kind of endpoint, or
        a platform that cannot share ports.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    if isinstance(endpoint, TCP6ServerEndpoint):
        family = socket.AF_INET6
    elif isinstance(endpoint, TCP4ServerEndpoint):
        family = socket.AF_INET
    else:
        raise ConfigurationError(
            f"reuse_port=yes needs a tcp: or tcp6: {what}, not {type(endpoint).__name__}"
        )
    return ReusePortEndpoint(
        reactor,
        endpoint._port,
        interface=endpoint._interface,
        backlog=endpoint._backlog,
        family=family,
    )


__all__ = ["ReusePortEndpoint", "reuse_port_endpoint", "reuse_port_supported"]
