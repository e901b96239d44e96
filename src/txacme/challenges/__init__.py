"""
Challenge responders, one per file: :class:`HTTP01Responder` (``http-01``),
``TLSALPN01Responder`` (``tls-alpn-01``), ``DNS01Responder`` (``dns-01``),
``DNSPersist01Responder`` (``dns-persist-01``) and ``DNSAccount01Responder``
(``dns-account-01``).

The others are imported on first use, so importing this package (for
example for ``http-01`` only) does not pull in the TLS layer or DNS code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from txacme.challenges.http01 import HTTP01Responder, http01_root

_LAZY = {
    "TLSALPN01Responder": "txacme.challenges.tlsalpn01",
    "DNS01Responder": "txacme.challenges.dns01",
    "DNSAccount01Responder": "txacme.challenges.dnsaccount01",
    "DNSPersist01Responder": "txacme.challenges.dnspersist01",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "DNS01Responder",
    "DNSAccount01Responder",
    "DNSPersist01Responder",
    "HTTP01Responder",
    "TLSALPN01Responder",
    "http01_root",
]
