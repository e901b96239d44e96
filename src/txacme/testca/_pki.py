"""
Keys and certificates of the test CA: its HTTPS identity, its issuing hierarchy,
and the end-entity certificates it signs.

Two separate hierarchies exist on purpose, as with a public CA: the one that
signs the ACME server's own HTTPS certificate (clients trust it to *talk* to the
CA) and the one that signs issued certificates (clients' peers trust it).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_ONE_DAY = datetime.timedelta(days=1)


def _serial() -> int:
    # 127 random bits: positive, at most 16 bytes of DER, never zero.
    return int.from_bytes(os.urandom(16), "big") >> 1 | 1


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txacme TestCA"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def pem(cert: x509.Certificate) -> bytes:
    """The PEM encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca_certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    path_length: int | None,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _root(
    common_name: str, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = _ca_certificate(
        name, key.public_key(), name, key, now - _ONE_DAY, now + 20 * 365 * _ONE_DAY, None
    )
    return key, cert


@attrs.define
class IssuingHierarchy:
    """
    A root, an intermediate signed by it, and optionally alternate roots that
    cross-sign the same intermediate (the way a CA offers alternate chains).
    """

    root_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    intermediate: x509.Certificate
    alternate_roots: list[x509.Certificate]
    alternate_intermediates: list[x509.Certificate]

    @classmethod
    def generate(cls, now: datetime.datetime, alternates: int = 0) -> IssuingHierarchy:
        """Create a fresh hierarchy whose validity starts a day before ``now``."""
        tag = os.urandom(3).hex()
        root_key, root = _root(f"txacme TestCA root {tag}", now)
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter_name = _name(f"txacme TestCA intermediate {tag}")
        not_after = now + 10 * 365 * _ONE_DAY
        intermediate = _ca_certificate(
            inter_name,
            inter_key.public_key(),
            root.subject,
            root_key,
            now - _ONE_DAY,
            not_after,
            0,
        )
        alt_roots: list[x509.Certificate] = []
        alt_inters: list[x509.Certificate] = []
        for index in range(alternates):
            alt_key, alt_root = _root(f"txacme TestCA alternate root {index + 1} {tag}", now)
            alt_roots.append(alt_root)
            alt_inters.append(
                _ca_certificate(
                    inter_name,
                    inter_key.public_key(),
                    alt_root.subject,
                    alt_key,
                    now - _ONE_DAY,
                    not_after,
                    0,
                )
            )
        return cls(root_key, root, inter_key, intermediate, alt_roots, alt_inters)

    def chains(self) -> list[list[x509.Certificate]]:
        """Every chain (intermediates only, no root), the default one first."""
        return [[self.intermediate]] + [[alt] for alt in self.alternate_intermediates]

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        dns_names: Sequence[str],
        ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> x509.Certificate:
        """Sign an end-entity TLS server certificate for the given identifiers."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(a) for a in ip_addresses]
        cn = next((n for n in dns_names if len(n) <= 64), None)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        signer: CertificateIssuerPrivateKeyTypes = self.intermediate_key
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.intermediate.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=cn is None)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .sign(signer, hashes.SHA256())
        )


@attrs.define
class HTTPSIdentity:
    """The ACME server's own TLS certificate and the CA clients trust for it."""

    ca: x509.Certificate
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)

    @classmethod
    def generate(cls, now: datetime.datetime) -> HTTPSIdentity:
        """A CA and a ``localhost`` / ``127.0.0.1`` / ``::1`` certificate, valid now."""
        ca_key, ca = _root(f"txacme TestCA HTTPS CA {os.urandom(3).hex()}", now)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + 365 * _ONE_DAY)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cls(ca, cert, key)
