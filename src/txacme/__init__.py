"""
txacme: certificates that obtain and renew themselves over ACME for Twisted.

The names most programs need, importable from here::

    from txacme import AutoTLSEndpoint, AcmeIssuingService, DirectoryStore, Client

Each is imported from its home on first use, so ``import txacme`` (and the
``le:``/``lets:``/``acme:`` endpoint plugin) stays cheap. The packages below
hold the rest; ``docs/design.rst`` maps them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "1.0.0.dev0"

if TYPE_CHECKING:
    from txacme.challenges.dns01 import DNS01Responder
    from txacme.challenges.http01 import HTTP01Responder
    from txacme.challenges.tlsalpn01 import TLSALPN01Responder
    from txacme.errors import (
        ACMEProblem,
        CAUnreachable,
        CAUntrusted,
        ConfigurationError,
        IssuanceFailed,
        ProtocolError,
        TxACMEError,
    )
    from txacme.interfaces import ICertificateStore, IResponder
    from txacme.issuing.service import AcmeIssuingService
    from txacme.protocol.client import Client
    from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY
    from txacme.serving.endpoint import AutoTLSEndpoint
    from txacme.stores.directory import DirectoryStore

_HOMES = {
    "AutoTLSEndpoint": "txacme.serving.endpoint",
    "AcmeIssuingService": "txacme.issuing.service",
    "DirectoryStore": "txacme.stores.directory",
    "Client": "txacme.protocol.client",
    "HTTP01Responder": "txacme.challenges.http01",
    "TLSALPN01Responder": "txacme.challenges.tlsalpn01",
    "DNS01Responder": "txacme.challenges.dns01",
    "ICertificateStore": "txacme.interfaces",
    "IResponder": "txacme.interfaces",
    "TxACMEError": "txacme.errors",
    "ConfigurationError": "txacme.errors",
    "ProtocolError": "txacme.errors",
    "IssuanceFailed": "txacme.errors",
    "ACMEProblem": "txacme.errors",
    "CAUnreachable": "txacme.errors",
    "CAUntrusted": "txacme.errors",
    "LETSENCRYPT_DIRECTORY": "txacme.protocol.urls",
    "LETSENCRYPT_STAGING_DIRECTORY": "txacme.protocol.urls",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'txacme' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "ACMEProblem",
    "AcmeIssuingService",
    "AutoTLSEndpoint",
    "CAUnreachable",
    "CAUntrusted",
    "Client",
    "ConfigurationError",
    "DNS01Responder",
    "DirectoryStore",
    "HTTP01Responder",
    "ICertificateStore",
    "IResponder",
    "IssuanceFailed",
    "LETSENCRYPT_DIRECTORY",
    "LETSENCRYPT_STAGING_DIRECTORY",
    "ProtocolError",
    "TLSALPN01Responder",
    "TxACMEError",
]
