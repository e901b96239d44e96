"""
Challenge responders, one per file: :class:`HTTP01Responder` (``http-01``),
``TLSALPN01Responder`` (``tls-alpn-01``) and ``DNS01Responder`` (``dns-01``).

The last two are imported on first use, so importing this package (for
example for ``http-01`` only) does not pull in the TLS layer or DNS code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from txacme.challenges.http01 import HTTP01Responder, http01_root

_LAZY = {
    "TLSALPN01Responder": "txacme.challenges.tlsalpn01",
    "DNS01Responder": "txacme.challenges.dns01",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["DNS01Responder", "HTTP01Responder", "TLSALPN01Responder", "http01_root"]
