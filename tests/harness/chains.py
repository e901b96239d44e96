"""
Chain verification for the tests: one function that checks a certificate chain
as a TLS client would (cryptography's X.509 verifier: path to a root, server
auth, the name), and one that checks a stored entry (key, leaf, chain).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

import pem
from cryptography import x509
from cryptography.x509 import verification

from txacme.certificates import certificate_names


def _subject(name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[bytes | x509.Certificate],
    name: str,
    when: datetime.datetime | None = None,
) -> list[x509.Certificate]:
    """
    Verify ``leaf`` for ``name`` through ``intermediates`` up to one of
    ``roots`` (PEM or parsed) at ``when`` (default: now).

    :return: the verified path, leaf first, root last.
    :raises cryptography.x509.verification.VerificationError: if it does not verify.
    """
    anchors = [
        r if isinstance(r, x509.Certificate) else x509.load_pem_x509_certificate(r) for r in roots
    ]
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .time(when or datetime.datetime.now(datetime.timezone.utc))
        .build_server_verifier(_subject(name))
    )
    return verifier.verify(leaf, list(intermediates))


def verify_pem_chain(
    chain_pem: bytes,
    roots: Sequence[bytes | x509.Certificate],
    name: str,
    when: datetime.datetime | None = None,
) -> list[x509.Certificate]:
    """:func:`verify_chain` for a PEM chain, leaf first."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    return verify_chain(certs[0], certs[1:], roots, name, when)


def verify_entry(
    pem_objects: Sequence[pem.AbstractPEMObject] | str,
    roots: Sequence[bytes | x509.Certificate],
    names: Sequence[str],
) -> x509.Certificate:
    """
    A stored entry (objects, or the path of its file) is key + leaf + chain,
    the chain verifies to one of ``roots`` for each of ``names``, and the leaf
    holds exactly ``names``.

    :return: the leaf.
    """
    objects = pem.parse_file(pem_objects) if isinstance(pem_objects, str) else pem_objects
    assert isinstance(objects[0], pem.PrivateKey), objects
    certs = [x509.load_pem_x509_certificate(o.as_bytes()) for o in objects[1:]]
    for name in names:
        verify_chain(certs[0], certs[1:], roots, name)
    assert sorted(certificate_names(certs[0])) == sorted(names), certificate_names(certs[0])
    return certs[0]
