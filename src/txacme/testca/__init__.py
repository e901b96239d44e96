"""
An RFC 8555 test CA that runs inside the test process.

:class:`TestCA` serves the ACME protocol over HTTPS on a loopback port with
``twisted.web``: directory, nonces, accounts (optionally with external account
binding), orders, authorizations, http-01 / tls-alpn-01 / dns-01 validation done
for real over loopback, asynchronous finalization, certificate chains from its
own root, revocation and ARI (RFC 9773) renewal windows. Tests control its
clock, move renewal windows and inject faults.

:class:`TestDNSServer` answers the TXT queries of dns-01 validation.
:class:`TestCAProcess` runs a :class:`TestCA` in a child process for tests that
do not run a reactor (plain pytest functions, other languages' clients);
:func:`pytest_fixture` wraps it as a pytest fixture.

See ``docs/testing.rst``.
"""

from __future__ import annotations

from txacme.testca._dns import TestDNSServer
from txacme.testca._model import (
    DEFAULT_PROFILES,
    CertificateRecord,
    Profile,
    RequestRecord,
    cert_id,
    free_port,
)
from txacme.testca._process import TestCAProcess, pytest_fixture
from txacme.testca._server import TestCA
from txacme.testca._validation import dns01_txt_value

__all__ = [
    "DEFAULT_PROFILES",
    "CertificateRecord",
    "Profile",
    "RequestRecord",
    "TestCA",
    "TestCAProcess",
    "TestDNSServer",
    "cert_id",
    "dns01_txt_value",
    "free_port",
    "pytest_fixture",
]
