"""
A blocking TLS client for tests: connect to a loopback port with an SNI name,
optionally send a request and read the whole answer, and look at the
certificate served.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from cryptography import x509

#: A bare HTTP/1.0 request for ``/`` without a ``Host`` header.
BARE_GET = b"GET / HTTP/1.0\r\n\r\n"


def http_get(host: str) -> bytes:
    """An HTTP/1.0 request for ``/`` with a ``Host: host`` header."""
    return f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


@dataclass(frozen=True)
class TLSExchange:
    """What :func:`tls_exchange` saw."""

    #: Everything the server sent after the request (``b""`` when none was sent).
    data: bytes
    #: The DER of the certificate served, if any.
    der: bytes | None
    #: The ALPN protocol negotiated, if any.
    alpn: str | None

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate served (there must be one)."""
        assert self.der is not None
        return x509.load_der_x509_certificate(self.der)


def client_context(cafile: str | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    """
    A client context verifying against ``cafile``, or verifying nothing when it
    is ``None``; offering the ``alpn`` protocols when given.
    """
    if cafile is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=cafile)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_exchange(
    port: int,
    name: str,
    cafile: str | None = None,
    *,
    alpn: list[str] | None = None,
    request: bytes | None = None,
) -> TLSExchange:
    """
    Blocking: connect to ``127.0.0.1:port`` with SNI ``name`` (see
    :func:`client_context` for ``cafile`` and ``alpn``); when ``request`` is
    given, send it and read until the server closes.
    """
    context = client_context(cafile, alpn)
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            if request is not None:
                tls.sendall(request)
                while chunk := tls.recv(65536):
                    data += chunk
            der = tls.getpeercert(binary_form=True)
            negotiated = tls.selected_alpn_protocol()
    return TLSExchange(data, der, negotiated)
