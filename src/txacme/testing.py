"""
Fakes for testing code that uses txacme.

:class:`MemoryStore` is an :class:`~txacme.interfaces.ICertificateStore` kept in
memory, with the same rules as :class:`~txacme.stores.directory.DirectoryStore`: names are
normalized (an invalid name fails the ``Deferred`` with
:class:`~txacme.errors.InvalidServerName`), an empty list means "wanted", a
missing name is a ``KeyError``, and :meth:`MemoryStore.store` accepts only one
private key with at least one certificate, the key matching the first one. It
lives in :mod:`txacme.stores.memory` (the ``memory:`` store URL uses it too) and
is imported from here.
"""

from __future__ import annotations

from typing import Any

import pem
from twisted.internet.defer import Deferred, fail, succeed

from txacme.issuing.order import IssuedCertificate
from txacme.stores.memory import MemoryStore

__all__ = ["MemoryStore"]


# ---------------------------------------------------------------------------
# Certificates, a fake issuer and a fake ACME client for the issuing service
# (this section is maintained by the "service" helper).
# ---------------------------------------------------------------------------

import ipaddress as _ipaddress  # noqa: E402
import itertools as _itertools  # noqa: E402
from collections.abc import Callable as _Callable  # noqa: E402
from collections.abc import Sequence as _Sequence  # noqa: E402
from datetime import datetime as _datetime  # noqa: E402
from datetime import timedelta as _timedelta  # noqa: E402
from datetime import timezone as _timezone  # noqa: E402

import attrs as _attrs  # noqa: E402
from cryptography import x509 as _x509  # noqa: E402
from cryptography.hazmat.primitives import hashes as _hashes  # noqa: E402
from cryptography.hazmat.primitives import serialization as _serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec as _ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa as _rsa  # noqa: E402
from cryptography.x509.oid import NameOID as _NameOID  # noqa: E402

_DEFAULT_AKI = b"txacme-test-authority-key"


def _general_name(name: str) -> _x509.GeneralName:
    try:
        return _x509.IPAddress(_ipaddress.ip_address(name))
    except ValueError:
        return _x509.DNSName(name)


def make_certificate(
    names: _Sequence[str],
    not_before: _datetime | None = None,
    not_after: _datetime | None = None,
    *,
    key: _rsa.RSAPrivateKey | _ec.EllipticCurvePrivateKey | None = None,
    serial: int | None = None,
    authority_key_id: bytes | None = _DEFAULT_AKI,
    issuer: tuple[_rsa.RSAPrivateKey | _ec.EllipticCurvePrivateKey, _x509.Certificate]
    | None = None,
    ca: bool = False,
    common_name: str | None = None,
) -> _x509.Certificate:
    """
    A certificate for ``names`` (DNS names or IP addresses; none for a CA)
    valid from ``not_before`` (default: an hour ago) to ``not_after`` (default:
    90 days after ``not_before``): the one certificate builder of txacme's tests,
    and of yours.

    :param key: the certificate's key (default: a new P-256 key).
    :param serial: the serial number (default: random).
    :param authority_key_id: the authority key identifier extension, which ARI
        needs, or ``None`` for a certificate without one. With ``issuer`` and
        the default, it names the issuer's key.
    :param issuer: the key and certificate of the CA that signs it (default:
        self-signed).
    :param ca: make it a CA certificate (basic constraints ``ca=True``).
    :param common_name: the subject's common name (default: the first name, or
        ``txacme test CA``).
    """
    if key is None:
        key = _ec.generate_private_key(_ec.SECP256R1())
    if not_before is None:
        not_before = _datetime.now(_timezone.utc) - _timedelta(hours=1)
    if not_after is None:
        not_after = not_before + _timedelta(days=90)
    if common_name is None:
        common_name = names[0][:64] if names else "txacme test CA"
    subject = _x509.Name([_x509.NameAttribute(_NameOID.COMMON_NAME, common_name)])
    signer = key if issuer is None else issuer[0]
    builder = (
        _x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer[1].subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else _x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if names:
        builder = builder.add_extension(
            _x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    if ca:
        builder = builder.add_extension(
            _x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if issuer is not None and authority_key_id is _DEFAULT_AKI:
        builder = builder.add_extension(
            _x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    elif authority_key_id is not None:
        builder = builder.add_extension(
            _x509.AuthorityKeyIdentifier(authority_key_id, None, None), critical=False
        )
    return builder.sign(signer, _hashes.SHA256())


def make_pem_objects(
    names: _Sequence[str],
    not_before: _datetime | None = None,
    not_after: _datetime | None = None,
    **kwargs: Any,
) -> list[pem.AbstractPEMObject]:
    """
    A store entry (private key, then certificate) from :func:`make_certificate`;
    ``kwargs`` are its keyword arguments other than ``key``.
    """
    key = _ec.generate_private_key(_ec.SECP256R1())
    cert = make_certificate(names, not_before, not_after, key=key, **kwargs)
    key_pem = key.private_bytes(
        _serialization.Encoding.PEM,
        _serialization.PrivateFormat.PKCS8,
        _serialization.NoEncryption(),
    )
    return [*pem.parse(key_pem), *pem.parse(cert.public_bytes(_serialization.Encoding.PEM))]


FakeIssued = IssuedCertificate
"""What :class:`FakeIssuer` gives: an :class:`~txacme.issuing.order.IssuedCertificate`."""


@_attrs.define(eq=False)
class FakeIssueCall:
    """
    One call made to a :class:`FakeIssuer`: its arguments and the ``Deferred``
    it returned, which the test fires with :meth:`succeed` or :meth:`fail`.
    """

    issuer: FakeIssuer = _attrs.field(repr=False)
    client: object
    names: list[str]
    responders: object
    kwargs: dict[str, Any]
    deferred: Deferred[FakeIssued] = _attrs.field(repr=False)
    cancelled: bool = False

    def succeed(self, lifetime: _timedelta = _timedelta(days=90)) -> FakeIssued:
        """Fire with a certificate for the requested names, valid from now."""
        now = _datetime.fromtimestamp(self.issuer.seconds(), tz=_timezone.utc)
        issued = self.issuer.make_issued(self.names, now, now + lifetime)
        self.deferred.callback(issued)
        return issued

    def fail(self, error: BaseException) -> None:
        """Fire with ``error``."""
        self.deferred.errback(error)


class FakeIssuer:
    """
    A stand-in for ``txacme.issuing.order.obtain_certificate`` that records its calls.

    Each call returns a ``Deferred`` that the test fires through ``calls``
    (``issuer.calls[0].succeed()``), or that fires at once when ``auto``
    is ``"succeed"`` or an exception to fail with. Cancelling the ``Deferred``
    marks the call ``cancelled`` (and fails it with ``CancelledError``).

    :param seconds: gives "now" for issued certificates, e.g. ``Clock().seconds``.
    """

    def __init__(self, seconds: _Callable[[], float], auto: object = None) -> None:
        self.seconds = seconds
        self.auto = auto
        self.calls: list[FakeIssueCall] = []
        self._serials = _itertools.count(1000)

    def make_issued(
        self, names: _Sequence[str], not_before: _datetime, not_after: _datetime
    ) -> FakeIssued:
        """A :class:`FakeIssued` for ``names`` with the given validity."""
        objects = make_pem_objects(names, not_before, not_after, serial=next(self._serials))
        return IssuedCertificate.from_pem_objects(objects, names=list(names))

    def __call__(
        self, client: object, names: _Sequence[str], responders: object, **kwargs: Any
    ) -> Deferred[FakeIssued]:
        """Record a call; the arguments of ``obtain_certificate``."""
        call: FakeIssueCall | None = None

        def cancel(d: Deferred[FakeIssued]) -> None:
            if call is not None:
                call.cancelled = True

        d: Deferred[FakeIssued] = Deferred(cancel)
        call = FakeIssueCall(self, client, list(names), responders, dict(kwargs), d)
        self.calls.append(call)
        if self.auto == "succeed":
            call.succeed()
        elif isinstance(self.auto, BaseException):
            call.fail(self.auto)
        return d


@_attrs.frozen
class FakeRenewalInfo:
    """ARI renewal information as :class:`FakeClient` returns it (like ``RenewalInfo``)."""

    start: _datetime
    end: _datetime
    retry_after: float | None = None


class FakeClient:
    """
    A stand-in for ``txacme.protocol.client.Client`` with what the issuing service uses.

    :ivar started: the ``email`` of every :meth:`start` call.
    :ivar renewal_infos: what :meth:`renewal_info` answers, by serial number:
        a :class:`FakeRenewalInfo` or an exception to fail with. Unknown
        certificates fail with ``KeyError``.
    :ivar renewal_info_calls: the serial numbers asked about, in order.
    :ivar closed: how many times :meth:`close` was called.
    """

    def __init__(self, *, supports_ari: bool = False) -> None:
        self.supports_ari = supports_ari
        self.closed = 0
        self.started: list[str | None] = []
        self.renewal_infos: dict[int, FakeRenewalInfo | BaseException] = {}
        self.renewal_info_calls: list[int] = []

    def start(self, email: str | None = None) -> Deferred[None]:
        """Record the account registration."""
        self.started.append(email)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Record the close."""
        self.closed += 1
        return succeed(None)

    def renewal_info(self, certificate: _x509.Certificate) -> Deferred[FakeRenewalInfo]:
        """Answer from ``renewal_infos``."""
        self.renewal_info_calls.append(certificate.serial_number)
        answer = self.renewal_infos.get(
            certificate.serial_number, KeyError(certificate.serial_number)
        )
        if isinstance(answer, BaseException):
            return fail(answer)
        return succeed(answer)


__all__ += [
    "FakeClient",
    "FakeIssueCall",
    "FakeIssued",
    "FakeIssuer",
    "FakeRenewalInfo",
    "make_certificate",
    "make_pem_objects",
]


# ---------------------------------------------------------------------------
# The in-process test CA (txacme.testca), imported on first use: it brings in
# twisted.web and the CA's own PKI, which users of the fakes above do not need.
# ---------------------------------------------------------------------------

_TESTCA_NAMES = frozenset(
    {"TestCA", "TestCAProcess", "TestDNSServer", "Profile", "pytest_fixture", "free_port"}
)


def __getattr__(name: str) -> Any:
    if name in _TESTCA_NAMES:
        from txacme import testca

        return getattr(testca, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += sorted(_TESTCA_NAMES)
