"""
Which CA issued each certificate, so that a change of CA is noticed.

:class:`IssuerRecords` keeps ``.txacme-issuers.json`` beside the certificates
(the certificate directory of the endpoint or of ``txacme --cert-dir``): for
each name, the serial number of the certificate last stored by txacme and the
ACME directory URL it came from. The issuing service asks
:meth:`IssuerRecords.stale` when it plans a name: a certificate recorded as
issued by another directory than the configured one is renewed at once, with
one log line saying why (so moving from ``lets:`` to ``le:`` needs no manual
step).

Decisions
---------

The record is bound to the certificate.
    A record names the certificate's serial number; a certificate written by
    something else (another tool, another node of a cluster, a restored
    backup) has no record and is not judged by it.

Certificates with no record.
    Stores from before this file, or certificates written by other programs,
    are left to the ordinary schedule, with one exception: a certificate whose
    issuer names a staging CA (``STAGING`` or ``Fake LE`` in its issuer, as Let's
    Encrypt's staging hierarchy does) while the configured directory is not a
    staging one is renewed at once too.

Best effort.
    An unreadable or damaged file reads as empty (and is logged once); a
    failed write is logged. The file holds no secrets; it is written
    atomically with mode 0600 like every entry.

May import the core modules and :mod:`txacme.stores`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import pem
from cryptography import x509
from cryptography.x509.oid import NameOID

from txacme.certificates import first_certificate
from txacme.logs import Logger
from txacme.stores.directory import write_entry

__all__ = ["ISSUERS_FILENAME", "IssuerRecords", "is_staging_directory"]

log = Logger()

ISSUERS_FILENAME = ".txacme-issuers.json"
"""The file, in the certificate directory, that records the issuing CA of each name."""

_STAGING_MARKS = ("staging", "fake le")


def is_staging_directory(url: str) -> bool:
    """Whether ``url`` looks like a staging (untrusted, test) ACME directory."""
    return "staging" in url.lower()


def _issuer_text(certificate: x509.Certificate) -> str:
    parts = [
        str(attribute.value)
        for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)
        for attribute in certificate.issuer.get_attributes_for_oid(oid)
    ]
    return ", ".join(parts)


def _serial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


class IssuerRecords:
    """
    The issuing directory of each name's certificate, in ``path``.

    :param path: the JSON file (usually ``<cert dir>/.txacme-issuers.json``).
    :param directory_url: the configured ACME directory.
    """

    def __init__(self, path: str, directory_url: str) -> None:
        self.path = path
        self.directory_url = directory_url
        self._cache: dict[str, dict[str, str]] | None = None
        self._stamp: tuple[int, int] | None = None
        self._told: set[tuple[str, str]] = set()

    @classmethod
    def in_directory(cls, cert_dir: str, directory_url: str) -> IssuerRecords:
        """The records kept in ``cert_dir``."""
        return cls(os.path.join(cert_dir, ISSUERS_FILENAME), directory_url)

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = os.stat(self.path)
        except OSError:
            self._cache, self._stamp = {}, None
            return self._cache
        stamp = (st.st_mtime_ns, st.st_size)
        if self._cache is not None and stamp == self._stamp:
            return self._cache
        records: dict[str, dict[str, str]] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            for name, record in data.get("certificates", {}).items():
                if isinstance(record.get("serial"), str) and isinstance(
                    record.get("directory"), str
                ):
                    records[name] = {"serial": record["serial"], "directory": record["directory"]}
        except (OSError, ValueError, AttributeError) as e:
            log.warn("ignoring {path}: {error}", path=self.path, error=str(e))
        self._cache, self._stamp = records, stamp
        return records

    def directory_of(self, name: str, certificate: x509.Certificate) -> str | None:
        """The recorded directory of this very certificate, or ``None``."""
        record = self._load().get(name)
        if record is None or record["serial"] != _serial(certificate):
            return None
        return record["directory"]

    def stale(self, name: str, certificate: x509.Certificate) -> str | None:
        """
        Why ``certificate`` (of ``name``) comes from another CA than the
        configured one, or ``None`` when it does not (or cannot be told).
        Logs the reason once per certificate.
        """
        recorded = self.directory_of(name, certificate)
        why: str | None = None
        if recorded is not None:
            if recorded != self.directory_url:
                why = f"issued by {recorded}, not the configured {self.directory_url}"
        elif not is_staging_directory(self.directory_url):
            issuer = _issuer_text(certificate)
            if any(mark in issuer.lower() for mark in _STAGING_MARKS):
                why = f"issued by a staging CA ({issuer}), not the configured {self.directory_url}"
        if why is not None and (name, _serial(certificate)) not in self._told:
            self._told.add((name, _serial(certificate)))
            log.warn(
                "certificate for {name} was {why}: renewing it now",
                name=name,
                why=why,
                recorded_directory=recorded,
                directory=self.directory_url,
                event="ca_changed",
            )
        return why

    def stored(self, name: str, pem_objects: Sequence[pem.AbstractPEMObject]) -> None:
        """Record that the certificate in ``pem_objects`` came from the configured directory."""
        try:
            certificate = first_certificate(pem_objects)
        except ValueError:
            return
        if certificate is None:
            return
        records = dict(self._load())
        records[name] = {"serial": _serial(certificate), "directory": self.directory_url}
        data = json.dumps({"version": 1, "certificates": records}, indent=1, sort_keys=True)
        try:
            write_entry(self.path, data.encode("utf-8") + b"\n")
        except OSError as e:
            log.error("cannot record the issuer of {name}: {error}", name=name, error=str(e))
            return
        self._cache, self._stamp = None, None
