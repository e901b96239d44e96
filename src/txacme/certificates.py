"""
Small X.509 and PEM helpers shared across the library: what a store entry must
hold, the names a certificate covers, the first certificate of an entry.

Core: imports only :mod:`txacme.errors`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from txacme.errors import ConfigurationError

__all__ = [
    "check_ca_file",
    "IGNORED_KEY_TYPES",
    "certificate_names",
    "covers",
    "first_certificate",
    "issuer_name",
    "public_key_der",
    "validate_pem_objects",
]

IGNORED_KEY_TYPES: tuple[type[pem.AbstractPEMObject], ...] = (
    pem.OpenSSHPrivateKey,
    pem.SSHCOMPrivateKey,
    pem.OpenPGPPrivateKey,
)
"""PEM private-key kinds that are not TLS keys (SSH, OpenPGP): never part of an entry."""

_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def public_key_der(key: Any) -> bytes:
    """
    The DER SubjectPublicKeyInfo of a certificate or a private key, for telling
    whether the two belong together.
    """
    data: bytes = key.public_key().public_bytes(_DER, _SPKI)
    return data


def validate_pem_objects(pem_objects: object, source: str) -> list[pem.AbstractPEMObject]:
    """
    Check that ``pem_objects`` is one usable entry: exactly one private key, at
    least one certificate, the key matching the first certificate, nothing else.

    :param source: what the objects are (a name or a file), used in errors.
    :return: the objects as a list, in the order given.
    :raises txacme.errors.ConfigurationError: naming ``source``.
    """
    if isinstance(pem_objects, (str, bytes, pem.AbstractPEMObject)) or not isinstance(
        pem_objects, Iterable
    ):
        raise ConfigurationError(f"{source}: expected a list of PEM objects")
    objects: list[pem.AbstractPEMObject] = list(pem_objects)
    keys: list[pem.AbstractPEMObject] = []
    certificates: list[pem.AbstractPEMObject] = []
    for obj in objects:
        if type(obj) is pem.Certificate:
            certificates.append(obj)
        elif isinstance(obj, pem.PrivateKey) and not isinstance(obj, IGNORED_KEY_TYPES):
            keys.append(obj)
        else:
            raise ConfigurationError(
                f"{source}: unexpected {type(obj).__name__} object; "
                "only a private key and certificates are allowed"
            )
    if len(keys) != 1:
        raise ConfigurationError(f"{source}: expected exactly one private key, found {len(keys)}")
    if not certificates:
        raise ConfigurationError(f"{source}: no certificate")
    try:
        key = serialization.load_pem_private_key(keys[0].as_bytes(), password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{source}: the private key is unreadable or encrypted")
    parsed = []
    for index, cert in enumerate(certificates):
        try:
            parsed.append(x509.load_pem_x509_certificate(cert.as_bytes()))
        except ValueError:
            raise ConfigurationError(f"{source}: certificate #{index + 1} is unreadable")
    if public_key_der(key) != public_key_der(parsed[0]):
        raise ConfigurationError(f"{source}: the private key does not match the first certificate")
    return objects


def first_certificate(pem_objects: Iterable[pem.AbstractPEMObject]) -> x509.Certificate | None:
    """
    The first certificate among ``pem_objects``, parsed, or ``None`` when there is none.

    :raises ValueError: when that certificate does not parse.
    """
    for obj in pem_objects:
        if isinstance(obj, pem.Certificate):
            return x509.load_pem_x509_certificate(obj.as_bytes())
    return None


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """
    The names in a certificate's subject alternative names, in order: DNS names
    lower-cased, then IP addresses in their compressed form. Empty when the
    certificate has no such extension.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    names += [ip.compressed for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def covers(certificate: x509.Certificate, name: str) -> bool:
    """
    Whether the certificate is valid for ``name``: an exact DNS name or IP
    address, or a wildcard one label up (``*.example.com`` covers
    ``www.example.com``, not ``example.com`` nor ``a.b.example.com``).
    """
    present = set(certificate_names(certificate))
    try:
        return ipaddress.ip_address(name).compressed in present
    except ValueError:
        pass
    if name in present:
        return True
    _, dot, parent = name.partition(".")
    return bool(dot and parent) and not name.startswith("*.") and "*." + parent in present


def check_ca_file(path: str, what: str = "ca_file=") -> str:
    """
    Check a file of trusted CA certificates (``ca_file=``, ``--ca-file``,
    ``$TXACME_CA_FILE``): a readable file holding at least one PEM certificate
    that parses. Returns ``path``.

    :raises ConfigurationError: one line naming ``what`` and ``path``.
    """
    label = f"{what}{path!r}" if what.endswith("=") else f"{what} {path!r}"
    try:
        with open(path, "rb") as f:
            data = f.read(16 * 1024 * 1024)
    except IsADirectoryError:
        raise ConfigurationError(f"{label} is a directory, not a file of PEM certificates")
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigurationError(f"{label} cannot be read: {reason}") from None
    found = [o for o in pem.parse(data) if isinstance(o, pem.Certificate)]
    if not found:
        raise ConfigurationError(f"{label} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    for obj in found:
        try:
            x509.load_pem_x509_certificate(obj.as_bytes())
        except ValueError:
            raise ConfigurationError(f"{label} holds a certificate that does not parse")
    return path


def issuer_name(certificate: x509.Certificate) -> str:
    """
    The issuer of a certificate as an operator reads it: its common name
    (``Pebble Intermediate CA 5c7d8e``, ``R11``), else its whole distinguished name.
    """
    names = certificate.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if names and isinstance(names[0].value, str):
        return names[0].value
    return certificate.issuer.rfc4514_string()
