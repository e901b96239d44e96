"""The seed's import path for the ACME client; the code lives in :mod:`txacme.protocol`."""

from txacme.protocol.client import Client
from txacme.protocol.resources import EAB, CertificateChain, RenewalInfo
from txacme.protocol.transport import Exchange

__all__ = ["EAB", "CertificateChain", "Client", "Exchange", "RenewalInfo"]
