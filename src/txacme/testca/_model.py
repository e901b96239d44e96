"""
The test CA's records and state (accounts, orders, authorizations, challenges,
issued certificates) and the small helpers they need.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from cryptography import x509
from josepy.jwk import JWK

from txacme.errors import ConfigurationError
from txacme.testca import _jws
from txacme.testca._problems import Problem

UTC = datetime.timezone.utc
JSON = "application/json"
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


@attrs.frozen
class Profile:
    """A certificate profile the CA offers (``meta.profiles`` in the directory)."""

    #: Shown to clients in the directory.
    description: str
    #: Validity period of certificates issued under this profile.
    lifetime: datetime.timedelta


DEFAULT_PROFILES: Mapping[str, Profile] = {
    "classic": Profile("90-day certificates", datetime.timedelta(days=90)),
    "shortlived": Profile("160-hour certificates", datetime.timedelta(hours=160)),
}
"""The profiles a TestCA advertises unless told otherwise."""


@attrs.define
class RequestRecord:
    """One request the CA received, for tests that assert on client behaviour."""

    #: ``GET``, ``HEAD`` or ``POST``.
    method: str
    #: The request path.
    path: str
    #: The endpoint name (``newNonce``, ``newAccount``, ``newOrder``, ``order``,
    #: ``authz``, ``challenge``, ``finalize``, ``cert``, ``revokeCert``,
    #: ``keyChange``, ``renewalInfo``, ``account``, ``orders``, ``directory``),
    #: or ``unknown``.
    endpoint: str
    #: True for a POST-as-GET (empty JWS payload); ``None`` when not a JWS.
    post_as_get: bool | None = None
    #: The response status, once sent.
    status: int | None = None
    #: The problem type sent, if the response was a problem document.
    problem: str | None = None


@attrs.define(eq=False)
class CertificateRecord:
    """A certificate the CA issued, with its revocation and ARI state."""

    #: The end-entity certificate.
    certificate: x509.Certificate
    #: The PEM chains offered (leaf first, no root); the first is the default.
    chains: list[bytes]
    #: The ARI certificate identifier (RFC 9773 section 4.1).
    cert_id: str
    #: The URL the certificate is downloaded from.
    url: str
    #: The account that ordered it.
    account_url: str
    #: The order that produced it.
    order_url: str
    #: The RFC 5280 reason code when revoked, else ``None``.
    revocation_reason: int | None = None
    #: When it was revoked (CA clock), else ``None``.
    revoked_at: datetime.datetime | None = None
    #: A window set with :meth:`TestCA.set_renewal_window`, else ``None``.
    renewal_window: tuple[datetime.datetime, datetime.datetime] | None = None
    #: The ``explanationURL`` sent with the ARI window, if any.
    explanation_url: str | None = None
    #: URL of the order that declared ``replaces`` for this certificate.
    replaced_by: str | None = None

    @property
    def revoked(self) -> bool:
        """True once revoked."""
        return self.revocation_reason is not None


@attrs.define(eq=False)
class Account:
    id: str
    url: str
    jwk: JWK
    contact: list[str]
    tos_agreed: bool
    eab_kid: str | None
    status: str = "valid"
    orders: list[Order] = attrs.Factory(list)


@attrs.define(eq=False)
class Challenge:
    id: str
    url: str
    type: str
    token: str
    authz: Authz
    status: str = "pending"
    validated: datetime.datetime | None = None
    error: Problem | None = None


@attrs.define(eq=False)
class Authz:
    id: str
    url: str
    account: Account
    id_type: str
    value: str
    wildcard: bool
    expires: datetime.datetime
    status: str = "pending"
    challenges: list[Challenge] = attrs.Factory(list)


@attrs.define(eq=False)
class Order:
    id: str
    url: str
    account: Account
    identifiers: list[dict[str, str]]
    authzs: list[Authz]
    expires: datetime.datetime
    profile: str
    not_before: datetime.datetime | None
    not_after: datetime.datetime | None
    replaces: str | None
    status: str = "pending"
    error: Problem | None = None
    cert: CertificateRecord | None = None


@attrs.define
class Fault:
    endpoint: str | None
    count: int
    problem: Problem | None = None
    delay: float = 0.0


@attrs.define
class Verified:
    """A verified JWS request."""

    jws: _jws.FlattenedJWS
    jwk: JWK
    account: Account | None
    url: str

    def payload(self) -> dict[str, Any]:
        if self.jws.post_as_get:
            raise Problem("malformed", "this request needs a JSON payload, not POST-as-GET")
        return self.jws.payload_json()


@attrs.define
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = attrs.Factory(list)

    @classmethod
    def json(cls, status: int, doc: object, headers: Iterable[tuple[str, str]] = ()) -> Reply:
        return cls(status, json.dumps(doc, indent=1).encode("utf-8"), JSON, list(headers))


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port free on ``host`` right now, to give both a server under test and
    the CA (``http01_port`` / ``tlsalpn01_port``) before the server listens.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rfc3339(when: datetime.datetime) -> str:
    """Format a UTC time as RFC 3339 (``2025-01-01T00:00:00Z``)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, what: str) -> datetime.datetime:
    if not isinstance(value, str):
        raise Problem("malformed", f"{what} is not an RFC 3339 string")
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem("malformed", f"{what} is not an RFC 3339 time: {value!r}")
    if when.tzinfo is None:
        raise Problem("malformed", f"{what} has no time zone: {value!r}")
    return when.astimezone(UTC)


def cert_id(cert: x509.Certificate) -> str:
    """The ARI certificate identifier of ``cert`` (RFC 9773 section 4.1)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ConfigurationError("certificate has no authority key identifier")
    serial = cert.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_jws.b64encode(aki.key_identifier)}.{_jws.b64encode(serial_der)}"


def cert_id_of(cert: x509.Certificate | bytes | str) -> str:
    """
    The ARI identifier of ``cert``, given as an ``x509.Certificate``, its PEM
    (the first certificate counts) or the identifier itself.
    """
    if isinstance(cert, str):
        return cert
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    return cert_id(cert)


def identifier_problem(id_type: str, value: str, detail: str) -> Problem:
    return Problem(
        "rejectedIdentifier", f"{value!r}: {detail}", identifier={"type": id_type, "value": value}
    )


def check_dns_name(value: str) -> str:
    name = value.lower()
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name.removeprefix("*.").strip("[]"))
        raise identifier_problem(
            "dns", value, 'an IP address, not a DNS name (send it with type "ip")'
        )
    if len(name) > 253:
        raise identifier_problem("dns", value, "name is longer than 253 characters")
    base = name[2:] if name.startswith("*.") else name
    labels = base.split(".")
    if len(labels) < 2:
        raise identifier_problem("dns", value, "name needs at least two labels")
    for label in labels:
        if not _LABEL.match(label):
            raise identifier_problem("dns", value, f"label {label!r} is not a valid DNS label")
    if labels[-1].isdigit():
        raise identifier_problem("dns", value, "the last label is numeric")
    return name


def human_duration(delta: datetime.timedelta) -> str:
    """``delta`` in words: ``90 days``, ``160 hours``, ``1 hour 30 minutes``."""
    seconds = int(delta.total_seconds())
    if seconds and seconds % 86400 == 0:
        return _plural(seconds // 86400, "day")
    parts = []
    for size, unit in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            parts.append(_plural(seconds // size, unit))
            seconds %= size
    return " ".join(parts) or "0 seconds"


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def csr_names(csr: x509.CertificateSigningRequest) -> tuple[set[str], set[str]]:
    dns_names: set[str] = set()
    ips: set[str] = set()
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    for name in sans.get_values_for_type(x509.DNSName):
        dns_names.add(name.lower())
    for addr in sans.get_values_for_type(x509.IPAddress):
        ips.add(str(addr))
    for attr in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        cn = attr.value if isinstance(attr.value, str) else attr.value.decode("utf-8", "replace")
        try:
            ips.add(str(ipaddress.ip_address(cn)))
        except ValueError:
            dns_names.add(cn.lower())
    return dns_names, ips
