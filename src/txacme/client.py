"""The seed's import path for the ACME client; the code lives in :mod:`txacme.protocol`."""

from txacme.protocol.client import EAB, CertificateChain, Client, Exchange, RenewalInfo

__all__ = ["EAB", "CertificateChain", "Client", "Exchange", "RenewalInfo"]
