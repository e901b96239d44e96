"""
The server side of Twisted's TLS protocol as txacme uses it: a leaner
connection set-up (:class:`ServerTLSProtocol`, :class:`ServerTLSFactory`), and
holding a TLS handshake until its ClientHello has been judged (the ClientHello
parser and the connection factory that shows each ClientHello to a hook).

``ServerTLSProtocol`` is Twisted's ``BufferingTLSTransport`` with the Python
and system work of a connection cut down; where an application could tell the
difference, it is said:

* the OpenSSL connection (an ``SSL`` object of about 17 KB, and OpenSSL's
  buffers once it has read something: about 50 KB in all) is made when the
  first TLS record from the client is complete, not when the connection is
  accepted, so a connection that sends nothing, or part of a ClientHello,
  holds about 3 KB;
* what the client has already sent is read when the connection is accepted
  (with ``TCP_DEFER_ACCEPT``, :func:`defer_accept`, the ClientHello is always
  there by then), which saves a turn of the reactor;
* the interfaces of the transport are declared once per transport class
  (Twisted re-declares them one by one, about ten times per connection; the
  resulting declaration is the same);
* OpenSSL's output is read without allocating 32 KiB and raising
  ``WantReadError`` when there is none, and a handshake flight is sent at once
  when the socket takes it; when the connection is pyOpenSSL's own, the
  handshake step and the reads of application data call OpenSSL directly,
  so that "the client has not sent more yet" is a return value instead of an
  exception (the outcome, including exceptions kept by pyOpenSSL's callbacks,
  is the same), and so is the end of a stream without ``close_notify``
  (reported to the application as Twisted does, as a lost connection);
* the two session tickets OpenSSL writes when a TLS 1.3 handshake completes
  are held until there is something else to send (with txacme's default
  contexts they resume nothing: no session cache): they leave with the
  application's first bytes or the close alert, one ``send`` instead of two,
  ahead of those bytes, so a context that resumes sessions still hands them
  to every client that gets an answer; the client's
  Finished is then acknowledged at once (``TCP_QUICKACK``) when no request
  came with it, so that a client with Nagle's algorithm on is not kept
  waiting for a delayed ACK;
* the application's protocol is made when the client's first application
  bytes arrive, for factories that speak only after the client
  (``twisted.web``'s ``Site`` and other ``HTTPFactory``): a connection that
  fails its handshake, or completes it and closes without a request, never
  makes an ``HTTPChannel``; a client that sends nothing after its handshake
  is closed after the factory's ``timeOut``, as ``twisted.web`` would. Other
  factories get their protocol when the connection is accepted, as with
  Twisted;
* Twisted's TCP transport does not call ``shutdown()`` before ``close()``
  (by Twisted's own comment, not needed for its close-on-exec sockets).

OpenSSL asks for a certificate in callbacks that must answer at once (the SNI
callback; the certificate callback ``SSL_CTX_set_cert_cb`` can pause a
handshake, but pyOpenSSL does not expose it and Twisted's TLS protocol does not
resume one). So txacme waits *before* OpenSSL: :class:`HelloHookFactory` wraps
connections like ``TLSMemoryBIOFactory`` (it is one) and keeps the bytes
received from the client until the whole ClientHello has arrived. It reads the
server name and ALPN list from it (:func:`parse_client_hello`), asks a hook, and
feeds the bytes to OpenSSL when the hook's ``Deferred`` fires, or after
``timeout`` seconds, whichever is first. Nothing was sent to the client
meanwhile, so the handshake then proceeds as if the ClientHello had just
arrived: with the new certificate when it was obtained in time, otherwise with
the default certificate, or a ``handshake_failure`` alert when there is none;
the next handshake gets the certificate. Works with TLS 1.2 and 1.3 and needs
no private OpenSSL bindings.

A hook that returns ``None`` costs one parse of the ClientHello (a few
microseconds), so known names are not slowed down. Bytes that are not a TLS
ClientHello are handed to OpenSSL at once.

The hooks are :meth:`txacme.issuing.ondemand.OnDemandIssuer.hello_hook` (on-demand
issuance) and :meth:`txacme.serving.cluster.ClusterNode.hello_hook` (a cluster's
challenge look-up).

Both factories give every connection a handshake deadline
(:mod:`txacme.serving.deadline`, ``handshake_timeout``, 10 s by default): one
that has not completed its handshake by then, whether it sent nothing, part of
a ClientHello or stalled in the handshake, is aborted.

May import the core modules and :mod:`txacme.serving.deadline`.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    ILoggingContext,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy
from zope.interface.declarations import Provides

from txacme.errors import ConfigurationError
from txacme.logs import Logger
from txacme.serving.deadline import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    HandshakeDeadlines,
    check_handshake_timeout,
)

log = Logger()

MAX_HELLO_BYTES = 65536
"""Bytes kept while waiting for a whole ClientHello; more is not TLS we wait for."""

DEFAULT_HELLO_TIMEOUT = 10.0
"""Seconds a handshake is held by default."""


# ---------------------------------------------------------------------------
# ClientHello
# ---------------------------------------------------------------------------


class ClientHello:
    """
    What the server needs from a TLS ClientHello before answering it.

    :ivar server_name: the SNI host name, lower case, without a trailing dot;
        ``None`` when absent or not ASCII.
    :ivar alpn_protocols: the ALPN protocols offered, in the client's order.
    """

    __slots__ = ("server_name", "alpn_protocols")

    def __init__(self, server_name: str | None, alpn_protocols: tuple[bytes, ...] = ()) -> None:
        self.server_name = server_name
        self.alpn_protocols = alpn_protocols

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientHello):
            return NotImplemented
        return (self.server_name, self.alpn_protocols) == (
            other.server_name,
            other.alpn_protocols,
        )

    def __hash__(self) -> int:
        return hash((self.server_name, self.alpn_protocols))

    def __repr__(self) -> str:
        return f"ClientHello({self.server_name!r}, {self.alpn_protocols!r})"


class _NeedMore(enum.Enum):
    NEED_MORE = "NEED_MORE"

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore.NEED_MORE
"""Returned by :func:`parse_client_hello` when the ClientHello is incomplete."""


def parse_client_hello(data: bytes) -> ClientHello | _NeedMore | None:
    """
    Parse the ClientHello at the start of ``data`` (TLS records as received).

    :return: a :class:`ClientHello`; :data:`NEED_MORE` when more bytes are
        needed; ``None`` when ``data`` does not start with a ClientHello (then
        OpenSSL should see the bytes and fail the handshake itself).
    """
    size = len(data)
    if size < 5:
        return NEED_MORE if not size or data[0] == 22 else None
    if data[0] != 22 or data[1] != 3:
        return None
    record_length = (data[3] << 8) | data[4]
    if size >= 9 and record_length >= 4 and data[5] == 1:
        end = 9 + ((data[6] << 16) | (data[7] << 8) | data[8])
        if end <= 5 + record_length:
            # The usual case: the whole ClientHello in the first record.
            if size < end:
                return NEED_MORE
            try:
                return _parse_hello_body(data, 9, end)
            except (IndexError, ValueError):
                return None
    return _parse_fragmented(data)


def _parse_fragmented(data: bytes) -> ClientHello | _NeedMore | None:
    """A ClientHello spread over several records: reassemble, then parse."""
    body = bytearray()
    offset = 0
    needed: int | None = None
    while needed is None or len(body) < needed:
        if len(data) < offset + 5:
            return NEED_MORE if len(data) < MAX_HELLO_BYTES else None
        content_type, major = data[offset], data[offset + 1]
        length = (data[offset + 3] << 8) | data[offset + 4]
        if content_type != 22 or major != 3 or length == 0 or length > 16384 + 2048:
            return None
        if len(data) < offset + 5 + length:
            return NEED_MORE if len(data) < MAX_HELLO_BYTES else None
        body += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if needed is None and len(body) >= 4:
            if body[0] != 1:  # not a ClientHello
                return None
            needed = 4 + int.from_bytes(body[1:4], "big")
            if needed > MAX_HELLO_BYTES:
                return None
    try:
        return _parse_hello_body(bytes(body), 4, needed)
    except (IndexError, ValueError):
        return None


def _parse_hello_body(data: bytes, pos: int, end: int) -> ClientHello:
    """
    Parse the ClientHello body in ``data[pos:end]``: offsets, no copies, one
    function (this runs for every handshake; it is written for speed).

    :raises IndexError, ValueError: for a malformed ClientHello.
    """
    pos += 34  # legacy_version, random
    pos += 1 + data[pos]  # session id
    pos += 2 + ((data[pos] << 8) | data[pos + 1])  # cipher suites
    pos += 1 + data[pos]  # compression methods
    if pos >= end:
        return ClientHello(None, ())
    extensions_end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if extensions_end > end:
        raise ValueError("extensions overrun the ClientHello")
    pos += 2
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    wanted = 2  # server_name and ALPN: stop looking once both were seen
    while pos + 4 <= extensions_end:
        ext_end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
        if ext_end > extensions_end:
            raise ValueError("an extension overruns the ClientHello")
        if data[pos] == 0:
            ext_type = data[pos + 1]
            if ext_type == 0:  # server_name: list length, type 0 (host_name), length, name
                wanted -= 1
                length = (data[pos + 7] << 8) | data[pos + 8]
                if data[pos + 6] == 0 and 0 < length <= 255 and pos + 9 + length <= ext_end:
                    raw = data[pos + 9 : pos + 9 + length]
                    if raw.isascii():
                        server_name = raw.decode("ascii").lower()
                        if server_name.endswith("."):
                            server_name = server_name[:-1] or None
            elif ext_type == 16:  # ALPN: list length, then length-prefixed names
                wanted -= 1
                protocols = []
                item = pos + 6
                while item < ext_end:
                    length = data[item]
                    protocols.append(bytes(data[item + 1 : item + 1 + length]))
                    item += 1 + length
                if item != ext_end:
                    raise ValueError("malformed ALPN extension")
                alpn = tuple(protocols)
            if not wanted:
                break
        pos = ext_end
    return ClientHello(server_name, alpn)


HelloHook = Callable[[ClientHello], "Deferred[Any] | None"]
"""Sees each ClientHello; a ``Deferred`` it returns holds the handshake until it fires."""


def combine_hooks(*hooks: HelloHook | None) -> HelloHook:
    """One hook calling each of ``hooks``; the handshake waits for all of them."""
    active = [h for h in hooks if h is not None]

    def hook(hello: ClientHello) -> Deferred[Any] | None:
        waits: list[Deferred[Any]] = []
        for each in active:
            try:
                result = each(hello)
            except Exception:
                log.failure("ClientHello hook {hook!r} failed", hook=each)
                continue
            if result is not None:
                waits.append(result)
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return DeferredList(waits, consumeErrors=True)

    return hook


def _first_record_incomplete(data: bytes) -> bool:
    """Whether ``data`` is the start of a TLS handshake record, not yet all there."""
    size = len(data)
    if not size or data[0] != 22:
        return False
    if size < 5:
        return True
    length = (data[3] << 8) | data[4]
    return length <= 16384 + 2048 and size < 5 + length


class _NotStarted:
    """
    Stands for the OpenSSL connection of a :class:`ServerTLSProtocol` until the
    client's first TLS record is complete (an ``SSL`` object costs about 17 KB,
    most of what a connection that sends nothing would hold): behaves as a
    server connection that has received nothing, keeps a partial first record
    itself, and makes the real connection when there is something for OpenSSL
    to read (a whole record, or bytes that are not a TLS handshake record).
    """

    __slots__ = ("_protocol", "_eof", "_buffer")

    def __init__(self, protocol: ServerTLSProtocol) -> None:
        self._protocol = protocol
        self._eof = False
        self._buffer = b""

    def bio_write(self, data: bytes) -> int:
        buffered = self._buffer + data if self._buffer else data
        if _first_record_incomplete(buffered):
            # Nothing OpenSSL could act on yet: keep what was sent, not 17 KB.
            self._buffer = buffered
            return len(data)
        self._buffer = b""
        protocol = self._protocol
        connection = protocol.factory._creatorCallable(protocol)
        protocol._tlsConnection = connection
        connection.bio_write(buffered)
        return len(data)

    def do_handshake(self) -> None:
        raise SSL.WantReadError()

    def bio_read(self, bufsiz: int) -> bytes:
        raise SSL.WantReadError()

    def send(self, buf: bytes, flags: int = 0) -> int:
        raise SSL.WantReadError()

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        if self._eof:
            # What OpenSSL says of a peer gone before its ClientHello.
            raise SSL.SysCallError(-1, "Unexpected EOF")
        raise SSL.WantReadError()

    def bio_shutdown(self) -> None:
        self._eof = True

    def shutdown(self) -> bool:
        return False  # as OpenSSL during a handshake: nothing to send

    def get_alpn_proto_negotiated(self) -> bytes:
        return b""

    def get_peer_certificate(self, *, as_cryptography: bool = False) -> None:
        return None

    def get_servername(self) -> None:
        return None


try:  # pyOpenSSL's own bindings, for a send-BIO read without an exception when empty
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _BIO_read: Any = _lib.BIO_read
    _SSL_do_handshake: Any = _lib.SSL_do_handshake
    _SSL_read: Any = _lib.SSL_read
    _SSL_get_error: Any = _lib.SSL_get_error
    _SSL_version: Any = _lib.SSL_version
    _SSL_ERROR_SSL: int = _lib.SSL_ERROR_SSL
    _ERR_peek_error: Any = _lib.ERR_peek_error
    _ERR_GET_REASON: Any = _lib.ERR_GET_REASON
    _ERR_clear_error: Any = _lib.ERR_clear_error
    _UNEXPECTED_EOF: int = _lib.SSL_R_UNEXPECTED_EOF_WHILE_READING
    _TLS1_3: int = 0x0304
    _WANT_READ: int = _lib.SSL_ERROR_WANT_READ
    _SEND_SIZE = 2**15
    _send_buffer: Any = _ffi.new("char[]", _SEND_SIZE)  # one per process: the reactor's thread
    _recv_buffer: Any = _ffi.new("char[]", _SEND_SIZE)
except Exception:  # pragma: no cover - another pyOpenSSL: use the public API
    _BIO_read = None
    _SSL_version = None


def _unexpected_eof() -> bool:
    """Whether OpenSSL's error queue says "unexpected EOF" (or, as OpenSSL 4 may, nothing)."""
    error: int = _ERR_peek_error()
    return error == 0 or bool(_ERR_GET_REASON(error) == _UNEXPECTED_EOF)


_plain: set[Any] = set()
"""
Connection classes whose ``do_handshake`` and ``recv`` are pyOpenSSL's own, so
that :class:`ServerTLSProtocol` may call OpenSSL directly and skip raising
``WantReadError`` (the usual outcome: two or three times a handshake).
"""
_not_plain: set[type] = set()


def _is_plain(connection: object) -> bool:
    kind: Any = type(connection)
    if kind in _not_plain:
        return False
    if (
        _BIO_read is not None
        and isinstance(connection, SSL.Connection)
        and kind.do_handshake is SSL.Connection.do_handshake
        and kind.recv is SSL.Connection.recv
        and kind._raise_ssl_error is SSL.Connection._raise_ssl_error
    ):
        _plain.add(kind)
        return True
    _not_plain.add(kind)
    return False


def _no_callback_problem(connection: Any) -> bool:
    """
    Whether no pyOpenSSL callback of the connection's context kept an
    exception (pyOpenSSL checks these before looking at OpenSSL's result).
    """
    context = connection._context
    alpn = context._alpn_select_helper
    return (
        (alpn is None or not alpn._problems)
        and context._verify_helper is None
        and context._ocsp_helper is None
    )


_direct: dict[type, bool] = {}
"""
Transport classes that are posix reactors' sockets, which :func:`_send` writes
to and ``ServerTLSProtocol._read_at_once`` reads from directly.
"""


def _is_socket(transport: object) -> bool:
    """Whether ``transport`` is a socket of a posix reactor (remembered per class)."""
    kind = type(transport)
    direct = _direct.get(kind)
    if direct is None:
        direct = _direct[kind] = isinstance(transport, FileDescriptor) and hasattr(
            transport, "socket"
        )
    return direct


def _send(transport: Any, data: bytes) -> None:
    """
    ``transport.write(data)``, but sent at once when the transport is a socket
    with nothing buffered: a handshake flight then costs one ``send`` instead of
    two ``epoll`` changes and a turn of the reactor. Whatever is not sent at
    once (a full socket buffer, an error) goes through ``transport.write``,
    which keeps the order and reports errors as usual.
    """
    if (
        _is_socket(transport)
        and transport.connected
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _speaks_after_client(factory: object) -> bool:
    """
    Whether ``factory``'s protocols send nothing before the client has sent
    something: ``twisted.web``'s HTTP factories (``Site``), whose HTTP/1.1 and
    HTTP/2 connections start with the client's request or preface.
    """
    # By name: importing twisted.web here would slow down every import of txacme.serving.
    return any(
        kind.__name__ == "HTTPFactory" and kind.__module__ == "twisted.web.http"
        for kind in type(factory).__mro__
    )


@implementer(ILoggingContext)
class _PendingApplication:
    """
    Stands for the application's protocol of a :class:`ServerTLSProtocol`
    whose factory speaks after the client (:func:`_speaks_after_client`) until
    the client's first application bytes: a connection that fails its
    handshake, or completes it and closes without a request (health checks,
    scanners, certificate monitors), never makes one. The first bytes make
    it, connect it (``connectionMade``, then ``handshakeCompleted``) and
    deliver the bytes, in the order Twisted's TLS transport calls them.
    """

    __slots__ = ("_tls", "_address")

    def __init__(self, tls: ServerTLSProtocol, address: Any) -> None:
        self._tls = tls
        self._address = address

    def makeConnection(self, transport: object) -> None:  # noqa: N802
        pass

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        protocol = self._tls._connect_application(self._address)
        if protocol is not None:
            protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        pass

    def logPrefix(self) -> str:  # noqa: N802
        # What Twisted's log lines of the connection show, e.g.
        # "HTTPChannel (ServerTLSProtocol),12,127.0.0.1".
        return "HTTPChannel"


def defer_accept(port: object, seconds: int = 1) -> bool:
    """
    Ask the kernel to hand over connections of ``port`` (a listening TCP port
    of the reactor) once the client has sent something (Linux's
    ``TCP_DEFER_ACCEPT``, nginx's ``deferred``): a TLS client always speaks
    first, so its ClientHello is there when the connection is accepted and is
    read at once (:meth:`ServerTLSProtocol.makeConnection`). A client that
    has sent nothing after ``seconds`` (rounded by the kernel to its SYN-ACK
    retransmission times: one second by default) is accepted as before and
    its handshake deadline runs, so the deadline a silent client sees grows
    by about that much. Does nothing, and returns ``False``, on other
    platforms or ports.
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    handle = getattr(port, "socket", None)
    if option is None or not isinstance(handle, socket.socket):
        return False
    if handle.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        handle.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds)))
    except OSError:
        return False
    return True


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _acknowledge_now(transport: object) -> None:
    """
    Acknowledge what the client sent without TCP's delayed ACK (Linux's
    ``TCP_QUICKACK``), when the server holds its session tickets and has
    nothing else to send: a client with Nagle's algorithm on (no
    ``TCP_NODELAY``) that wrote its Finished and its request separately
    sends the request only once its Finished is acknowledged, which a delayed
    ACK would put off by up to 40 ms. Elsewhere (or for another transport),
    nothing.
    """
    handle = getattr(transport, "socket", None)
    if _QUICKACK is not None and isinstance(handle, socket.socket):
        try:
            handle.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


_provides: dict[tuple[type, object], Any] = {}
"""Interface declarations by (protocol class, transport's declaration)."""


class ServerTLSProtocol(BufferingTLSTransport):
    """
    A server TLS connection, as ``BufferingTLSTransport``, set up with less
    work per connection (see the module documentation).
    """

    factory: ServerTLSFactory

    _tickets_held = False
    """
    Whether OpenSSL's output is kept in the send BIO until the application
    writes or the connection closes: the session tickets OpenSSL sends when
    a TLS 1.3 handshake completes (see :meth:`_handshake_completed`).
    """

    _acknowledged = False
    """
    Whether :func:`_acknowledge_now` was called, or need not be: the client
    sent application bytes, which the application's answer acknowledges.
    """

    def makeConnection(self, transport: ITransport) -> None:  # noqa: N802
        """Connect the application's protocol; the TLS connection comes with the first bytes."""
        self._tlsConnection: Any = _NotStarted(self)
        self._appSendBuffer: list[bytes] = []
        # What Twisted's directlyProvides(self, providedBy(transport)) leaves.
        declared = providedBy(transport)
        key = (type(self), declared)
        spec = _provides.get(key)
        if spec is None:
            spec = _provides[key] = Provides(type(self), declared)
        self.__provides__ = spec
        if getattr(transport, "_shouldShutdown", None) is True:
            # Twisted's TCP transport calls shutdown() before close(), "not
            # really necessary" by its own comment (its sockets are
            # close-on-exec): one system call less per connection.
            cast(Any, transport)._shouldShutdown = False
        Protocol.makeConnection(self, transport)  # type: ignore[no-untyped-call]
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        deadlines = self.factory.deadlines
        if deadlines is not None:
            deadlines.add(self)
        if self._connectWrapped:
            self.wrappedProtocol.makeConnection(self)
        if self.disconnecting:
            # The application closed at once: let Twisted handle it as usual.
            self._checkHandshakeStatus()
        else:
            self._read_at_once(transport)

    def _read_at_once(self, transport: Any) -> None:
        """
        Read what the client has already sent, now: the ClientHello usually
        arrives with (or, with ``TCP_DEFER_ACCEPT``, before) the connection,
        and reading it here saves a turn of the reactor. Nothing there yet,
        an end of stream or an error: left to the reactor, as before.
        """
        if not _is_socket(transport):
            return
        try:
            data = transport.socket.recv(transport.bufferSize)
        except OSError:
            return
        if data:
            self.dataReceived(data)  # type: ignore[no-untyped-call]

    def _checkHandshakeStatus(self) -> None:  # noqa: N802
        # Twisted's, calling OpenSSL directly for a plain pyOpenSSL connection:
        # the same outcome, without raising WantReadError while the handshake
        # waits for the client.
        connection = self._tlsConnection
        if connection.__class__ not in _plain and not _is_plain(connection):
            super()._checkHandshakeStatus()  # type: ignore[no-untyped-call]
            if self._handshakeDone:
                self._handshake_completed(connection)
        elif self._aborted:
            return
        else:
            ssl = connection._ssl
            result = _SSL_do_handshake(ssl)
            if result != 1 or not _no_callback_problem(connection):
                if _SSL_get_error(ssl, result) == _WANT_READ and _no_callback_problem(connection):
                    self._flushSendBIO()
                    return
                try:
                    connection._raise_ssl_error(ssl, result)
                except SSL.WantReadError:
                    self._flushSendBIO()
                    return
                except SSL.Error:
                    self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
                    return
            self._handshakeDone = True
            self._handshake_completed(connection)
            if IHandshakeListener.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.handshakeCompleted()
        if self._handshakeDone:
            deadlines = self.factory.deadlines
            if deadlines is not None:
                deadlines.discard(self)
            idle = self.factory.idle
            if (
                idle is not None
                and cast(Any, self.wrappedProtocol).__class__ is _PendingApplication
            ):
                idle.add(self)

    def _flushReceiveBIO(self) -> None:  # noqa: N802
        # Twisted's, calling OpenSSL directly for a plain pyOpenSSL connection:
        # no 32 KiB allocation per read, and no WantReadError once the
        # received bytes are consumed (every time data arrives).
        # A client gone without a close_notify alert (the usual way) is told to
        # the application as Twisted does, as a lost connection, without
        # raising and capturing OpenSSL's "unexpected EOF" error first.
        connection = self._tlsConnection
        if connection.__class__ is _NotStarted:
            if connection._eof and not self._lostTLSConnection:
                self._lost_at_eof()
            return
        if connection.__class__ not in _plain and not _is_plain(connection):
            super()._flushReceiveBIO()  # type: ignore[no-untyped-call]
            return
        ssl = connection._ssl
        while not self._lostTLSConnection:
            result = _SSL_read(ssl, _recv_buffer, _SEND_SIZE)
            if result <= 0 and _no_callback_problem(connection):
                error = _SSL_get_error(ssl, result)
                if error == _WANT_READ:
                    break
                if error == _SSL_ERROR_SSL and _unexpected_eof():
                    _ERR_clear_error()
                    self._lost_at_eof()
                    break
            try:
                connection._raise_ssl_error(ssl, result)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
            else:
                if not self._aborted:
                    data = _ffi.buffer(_recv_buffer, result)[:]
                    # The application's answer will carry the ACK (see _acknowledge_now).
                    self._acknowledged = True
                    ProtocolWrapper.dataReceived(self, data)  # type: ignore[no-untyped-call]
        self._flushSendBIO()

    def _lost_at_eof(self) -> None:
        # Twisted's _tlsShutdownFinished for an EOF without close_notify.
        if self._reason is None:
            self._reason = Failure(CONNECTION_LOST)  # type: ignore[no-untyped-call]
        self._lostTLSConnection = True
        transport: Any = self.transport
        if getattr(transport, "connected", True):  # else (the usual case) nothing can be sent
            self._tickets_held = False
            self._flushSendBIO()
        transport.loseConnection()

    def _handshake_completed(self, connection: Any) -> None:
        """
        A TLS 1.3 handshake completed: hold the session tickets OpenSSL has
        just written until there is something else to send. Held, they leave
        with the application's first bytes or the close alert (one ``send``
        instead of two), and a client that closes without sending anything
        costs no ``send`` at all. With txacme's default contexts they resume
        nothing (no session cache); with a context that resumes sessions,
        every client that gets an answer still gets them first. A TLS 1.2
        handshake ends with the server's Finished, which is never held.
        """
        ssl = getattr(connection, "_ssl", None)
        if ssl is not None and _SSL_version is not None and _SSL_version(ssl) >= _TLS1_3:
            self._tickets_held = True

    def _write(self, data: bytes) -> None:
        self._tickets_held = False
        super()._write(data)  # type: ignore[no-untyped-call]

    def _shutdownTLS(self) -> None:  # noqa: N802
        self._tickets_held = False
        super()._shutdownTLS()  # type: ignore[no-untyped-call]

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:  # noqa: N802
        self._tickets_held = False
        super()._tlsShutdownFinished(reason)  # type: ignore[no-untyped-call]

    def _flushSendBIO(self) -> None:  # noqa: N802
        # Twisted's, without allocating 32 KiB and raising WantReadError when
        # the send BIO is empty (about half of the 4 calls of a handshake).
        if self._tickets_held:
            if not self._acknowledged:
                self._acknowledged = True
                _acknowledge_now(self.transport)
            return
        connection: Any = self._tlsConnection
        if connection.__class__ in _plain:
            bio = connection._from_ssl
        else:
            bio = getattr(connection, "_from_ssl", None)
            if bio is None or _BIO_read is None:
                super()._flushSendBIO()  # type: ignore[no-untyped-call]
                return
        size = _BIO_read(bio, _send_buffer, _SEND_SIZE)
        if size > 0:
            _send(self.transport, _ffi.buffer(_send_buffer, size)[:])

    def _connect_application(self, address: Any) -> Any:
        """
        Make and connect the application's protocol, put off until now (see
        :class:`_PendingApplication`); ``None`` when its factory refuses the
        connection (then it is closed) or the connection is closing.
        """
        idle = self.factory.idle
        if idle is not None:
            idle.discard(self)
        if self.disconnecting or not self.connected:
            return None
        protocol = self.factory.wrappedFactory.buildProtocol(address)
        if protocol is None:
            self.loseConnection()
            return None
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if IHandshakeListener.providedBy(protocol):
            protocol.handshakeCompleted()
        return protocol

    def handshake_expired(self) -> None:
        """
        A deadline passed: abort a connection still in its handshake; close
        one that has sent nothing since (as the application's idle timeout
        would have).
        """
        if not self.connected:
            return
        if not self._handshakeDone:
            self.abortConnection()  # type: ignore[no-untyped-call]
        elif cast(Any, self.wrappedProtocol).__class__ is _PendingApplication:
            # close_notify, then close without waiting for the client's own.
            self.loseConnection()
            cast(Any, self.transport).loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Forget the deadlines and close as usual."""
        factory = self.factory
        if factory.deadlines is not None:
            factory.deadlines.discard(self)
        if factory.idle is not None:
            factory.idle.discard(self)
        if cast(Any, self.wrappedProtocol).__class__ is _PendingApplication:
            # No application to tell how TLS ended, nothing left to send:
            # skip reading OpenSSL's verdict on the end of the stream.
            self._lostTLSConnection = True
        super().connectionLost(reason)


class ServerTLSFactory(TLSMemoryBIOFactory):
    """
    ``TLSMemoryBIOFactory`` for server connections, with :class:`ServerTLSProtocol`.

    :param handshake_timeout: seconds a connection has to complete its
        handshake before it is aborted, or ``None`` for no deadline.
    """

    protocol = ServerTLSProtocol

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        wrapped_factory: IProtocolFactory,
        *,
        clock: IReactorTime | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        timeout = check_handshake_timeout(handshake_timeout)
        super().__init__(creator, False, wrapped_factory, clock=clock)
        self.deadlines: HandshakeDeadlines | None = None
        if timeout is not None:
            self.deadlines = HandshakeDeadlines(self._clock, timeout)
        self._lazy = _speaks_after_client(wrapped_factory)
        self.idle: HandshakeDeadlines | None = None
        """
        Connections whose handshake completed and whose client has sent
        nothing since, with the application's protocol put off (see
        :meth:`buildProtocol`), closed after the application factory's
        ``timeOut`` (as it was when this factory was made; none without one).
        """
        timeout = getattr(wrapped_factory, "timeOut", None)
        if (
            self._lazy
            and isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and timeout > 0
        ):
            self.idle = HandshakeDeadlines(
                self._clock,
                timeout,
                "closed {count} connection(s) that sent nothing within {timeout} s "
                "of completing the TLS handshake ({total} so far)",
            )

    def buildProtocol(self, addr: IAddress | None) -> ServerTLSProtocol:  # noqa: N802
        """
        A TLS connection. Its application protocol is made now, except for a
        factory that speaks after the client (``twisted.web``'s ``Site`` and
        other HTTP factories): then when the client's first application bytes
        arrive, and a client sending none is closed after the factory's idle
        timeout (``timeOut``) as ``twisted.web`` would.
        """
        if not self._lazy:
            return cast(ServerTLSProtocol, super().buildProtocol(addr))
        protocol: Any = self.protocol(self, cast(Any, None))
        protocol.wrappedProtocol = _PendingApplication(protocol, addr)
        return cast(ServerTLSProtocol, protocol)

    def startFactory(self) -> None:  # noqa: N802
        """A port listens with this factory (again)."""
        for deadlines in (self.deadlines, self.idle):
            if deadlines is not None:
                deadlines.start()
        super().startFactory()  # type: ignore[no-untyped-call]

    def stopFactory(self) -> None:  # noqa: N802
        """The last port stopped: leave no deadline timer once none is pending."""
        for deadlines in (self.deadlines, self.idle):
            if deadlines is not None:
                deadlines.stop()
        super().stopFactory()  # type: ignore[no-untyped-call]


class HelloHookProtocol(ServerTLSProtocol):
    """
    A server TLS connection that shows the ClientHello to its factory's hook
    before OpenSSL sees it (see the module documentation).
    """

    factory: HelloHookFactory

    def makeConnection(self, transport: ITransport) -> None:  # noqa: N802
        """Start holding received bytes until the ClientHello has been judged."""
        self._hello_buffer = b""
        self._hello_pending = True
        self._hello_waiting: Deferred[Any] | None = None
        self._hello_timer: IDelayedCall | None = None
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Feed OpenSSL, unless the ClientHello is still being read or judged."""
        if not self._hello_pending:
            super().dataReceived(data)  # type: ignore[no-untyped-call]
            return
        self._hello_buffer += data
        if self._hello_waiting is not None:
            if len(self._hello_buffer) > MAX_HELLO_BYTES:
                self._release()
            return
        hello = parse_client_hello(self._hello_buffer)
        if hello is NEED_MORE:
            return
        if hello is None:
            self._release()
            return
        try:
            waiting = self.factory.hook(hello)
        except Exception:
            log.failure("ClientHello hook failed")
            waiting = None
        if waiting is None or waiting.called:
            if waiting is not None:
                waiting.addErrback(lambda f: None)
            self._release()
            return
        self._hello_waiting = waiting
        deadlines = self.factory.deadlines
        if deadlines is not None:
            deadlines.discard(self)  # txacme's wait, not the client's: paused
        self._hello_timer = self.factory.clock.callLater(
            self.factory.timeout, self._timed_out, hello
        )

        def done(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("waiting for the ClientHello hook", result)
            self._release()

        waiting.addBoth(done)

    def _timed_out(self, hello: ClientHello) -> None:
        self._hello_timer = None
        log.info(
            "handshake for {server_name} held {timeout} s; going on without waiting more",
            server_name=hello.server_name,
            timeout=self.factory.timeout,
        )
        self._release()

    def _release(self) -> None:
        if not self._hello_pending:
            return
        self._hello_pending = False
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        data, self._hello_buffer = self._hello_buffer, b""
        if self._lostTLSConnection or self._tlsConnection is None or not self.connected:
            return
        deadlines = self.factory.deadlines
        if self._hello_waiting is not None and deadlines is not None:
            deadlines.add(self)  # the rest of the handshake gets a full deadline
        if data:
            super().dataReceived(data)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Stop waiting (the hook's work goes on) and close as usual."""
        if self._hello_pending:
            self._hello_pending = False
            if self._hello_timer is not None and self._hello_timer.active():
                self._hello_timer.cancel()
            self._hello_timer = None
            self._hello_buffer = b""
        super().connectionLost(reason)


class HelloHookFactory(ServerTLSFactory):
    """
    ``TLSMemoryBIOFactory(creator, False, factory)`` whose connections are held
    while ``hook(client_hello)`` works (at most ``timeout`` seconds).

    :param creator: the server connection creator (e.g.
        :class:`txacme.serving.tls.SNIConnectionCreator`).
    :param wrapped_factory: the application's factory.
    :param hook: a :data:`HelloHook` (see :func:`combine_hooks`).
    :param timeout: the longest a handshake is held, in seconds.
    :param clock: the reactor's time.
    :param handshake_timeout: as for :class:`ServerTLSFactory`; the time a
        handshake is held for ``hook`` does not count.
    """

    protocol = HelloHookProtocol

    def __init__(
        self,
        creator: IOpenSSLServerConnectionCreator,
        wrapped_factory: IProtocolFactory,
        hook: HelloHook,
        *,
        timeout: float = DEFAULT_HELLO_TIMEOUT,
        clock: IReactorTime,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"hello timeout={timeout!r} must be positive")
        super().__init__(creator, wrapped_factory, clock=clock, handshake_timeout=handshake_timeout)
        self.hook = hook
        self.timeout = float(timeout)
        self.clock: IReactorTime = clock


__all__ = [
    "DEFAULT_HELLO_TIMEOUT",
    "MAX_HELLO_BYTES",
    "NEED_MORE",
    "ClientHello",
    "HelloHook",
    "HelloHookFactory",
    "HelloHookProtocol",
    "ServerTLSFactory",
    "ServerTLSProtocol",
    "combine_hooks",
    "defer_accept",
    "parse_client_hello",
]
