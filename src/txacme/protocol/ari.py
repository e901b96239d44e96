"""
ACME Renewal Information (RFC 9773): the certificate identifier the CA is asked about and the
bounds on how often it is asked.

Owns what both the client (:mod:`txacme.protocol.client`) and the renewal policy
(:mod:`txacme.issuing.policy`) need of ARI. May import the core modules only
(:mod:`txacme.errors`, :mod:`txacme.formats`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from cryptography import x509

from txacme.errors import ConfigurationError
from txacme.formats import b64url

__all__ = [
    "ARI_DEFAULT_REFRESH",
    "ARI_MAX_REFRESH",
    "ARI_MIN_REFRESH",
    "ARI_RETRY_AFTER_BOUNDS",
    "DEFAULT_ARI_RETRY_AFTER",
    "ari_cert_id",
    "ari_certificate_id",
    "ari_retry_after",
]

#: Bounds and default for the delay before renewal information is fetched again.
ARI_MIN_REFRESH: Final = timedelta(minutes=1)
ARI_MAX_REFRESH: Final = timedelta(days=1)
"""The longest wait before renewal information is fetched again."""
ARI_DEFAULT_REFRESH: Final = timedelta(hours=6)
"""The wait before fetching renewal information again when the CA gave no Retry-After."""

DEFAULT_ARI_RETRY_AFTER: Final = ARI_DEFAULT_REFRESH.total_seconds()
""":data:`ARI_DEFAULT_REFRESH` in seconds."""
ARI_RETRY_AFTER_BOUNDS: Final = (ARI_MIN_REFRESH.total_seconds(), ARI_MAX_REFRESH.total_seconds())
"""The bounds, in seconds, a ``Retry-After`` of an ARI answer is clamped to."""


def ari_retry_after(retry_after: float | None) -> float:
    """
    Seconds until renewal information is asked again: the CA's ``Retry-After``
    clamped to :data:`ARI_RETRY_AFTER_BOUNDS`, :data:`DEFAULT_ARI_RETRY_AFTER` without one.
    """
    low, high = ARI_RETRY_AFTER_BOUNDS
    seconds = DEFAULT_ARI_RETRY_AFTER if retry_after is None else retry_after
    return min(max(seconds, low), high)


def ari_cert_id(cert: x509.Certificate) -> str:
    """
    The RFC 9773 (ARI) certificate identifier of ``cert``.

    It is the base64url (unpadded) Authority Key Identifier ``keyIdentifier``,
    a dot, and the base64url DER content octets of the serial number (so a
    serial whose high bit is set gets a leading zero byte).

    :raises txacme.errors.ConfigurationError: when ``cert`` has no Authority Key
        Identifier with a key identifier.
    """
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ConfigurationError(
            f"certificate with serial {cert.serial_number:#x} has no Authority Key Identifier; "
            "it has no ARI identifier"
        )
    if aki.key_identifier is None:
        raise ConfigurationError(
            f"certificate with serial {cert.serial_number:#x} has an Authority Key Identifier "
            "without keyIdentifier; it has no ARI identifier"
        )
    serial = cert.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{b64url(aki.key_identifier)}.{b64url(serial_bytes)}"


def ari_certificate_id(certificate: x509.Certificate) -> str | None:
    """
    The ARI certificate identifier (:func:`ari_cert_id`), or ``None`` when the
    certificate has no authority key identifier and so cannot be asked about.
    """
    try:
        return ari_cert_id(certificate)
    except ConfigurationError:
        return None
