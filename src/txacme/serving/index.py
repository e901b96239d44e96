"""
The in-memory certificate index: every certificate of a store, parsed and
checked, by server name, for the TLS layer to look up at each handshake.

:class:`CertificateIndex` is filled by :meth:`~CertificateIndex.update` (the
issuing service calls it after storing a certificate),
:meth:`~CertificateIndex.load_from` (a full rebuild from a store, which a
:class:`~txacme.serving.watcher.StoreWatcher` repeats for a store another
process writes to), or lazily: names known only from
file names (:meth:`~CertificateIndex.add_unloaded`) are parsed by a loader
(:class:`txacme.serving.loader.StoreLoader`) in the background and installed
with :meth:`~CertificateIndex.put`; a handshake for one of them before that
parses it on the spot. A malformed entry is logged with its name and not
served; a name keeps its previous good entry.

May import the core modules and :mod:`txacme.challenges.tlsalpn01` (key kinds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import cast

import pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.internet.defer import Deferred, maybeDeferred

from txacme.certificates import covers, validate_pem_objects
from txacme.challenges.tlsalpn01 import KeyKind, key_kind
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import DefaultCertificateStore, ICertificateStore
from txacme.logs import Logger
from txacme.names import normalize_server_name

log = Logger()

DEFAULT_ENTRY_NAME = "DEFAULT"
"""The name :attr:`CertificateIndex.default` entries carry (``DEFAULT.pem``)."""

_DER = serialization.Encoding.DER

PEMObjects = Sequence[pem.AbstractPEMObject]
"""One store entry: the private key, the certificate, then the chain."""

StoreEntries = dict[str, list[pem.AbstractPEMObject]]
"""What ``ICertificateStore.as_dict()`` fires with."""


class CertificateEntry:
    """
    One usable certificate: its private key, certificate and chain.

    The key and the certificate are kept as DER (about 1 KB for an ECDSA
    certificate, against 5 KB for the parsed objects) and parsed again only
    when an OpenSSL context is built for them. Entries are compared by
    identity; a new certificate for a name is a new entry.

    :param key: the private key, or its DER encoding (PKCS #8 or the
        traditional form), which must match ``certificate``.
    :ivar name: the server name it is stored under (or ``"DEFAULT"``).
    :ivar chain: the certificates sent after the leaf (shared between entries).
    :ivar kind: :func:`~txacme.challenges.tlsalpn01.key_kind` of the key.
    :ivar serial_number: the leaf certificate's serial number.
    :ivar fingerprint: SHA-256 of the PEM objects it was made from.
    """

    __slots__ = (
        "name",
        "_key_der",
        "_certificate_der",
        "chain",
        "kind",
        "serial_number",
        "fingerprint",
    )

    def __init__(
        self,
        name: str,
        key: PrivateKeyTypes | bytes,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        fingerprint: bytes,
    ) -> None:
        self.name = name
        if isinstance(key, bytes):
            # Checked to match the certificate: the same kind as its public key.
            self._key_der = key
            self.kind: KeyKind = key_kind(certificate.public_key())
        else:
            self._key_der = key.private_bytes(
                _DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            self.kind = key_kind(key)
        self._certificate_der = certificate.public_bytes(_DER)
        self.chain = chain
        self.serial_number = certificate.serial_number
        self.fingerprint = fingerprint

    @property
    def key(self) -> PrivateKeyTypes:
        """The private key (parsed anew at each access; never log it)."""
        return serialization.load_der_private_key(self._key_der, password=None)

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate (parsed anew at each access)."""
        return x509.load_der_x509_certificate(self._certificate_der)

    def __repr__(self) -> str:
        return f"<CertificateEntry {self.name!r} serial={self.serial_number:x}>"


def _fingerprint(pem_objects: Sequence[object]) -> bytes:
    digest = hashlib.sha256()
    for obj in pem_objects:
        data = obj.as_bytes() if isinstance(obj, pem.AbstractPEMObject) else repr(obj).encode()
        digest.update(data)
        digest.update(b"\0")
    return digest.digest()


class CertificateIndex:
    """
    Every certificate of a store, in memory, by server name.

    :meth:`lookup` looks a name up: the exact name, then the wildcard one label
    up, then the :attr:`default` entry. Entries are added by :meth:`update` (the
    issuing service calls it after storing a certificate), :meth:`load_from`
    (a full rebuild from an ``ICertificateStore``, repeated by a
    :class:`~txacme.serving.watcher.StoreWatcher` for a store that another
    process writes to).

    A malformed entry (not exactly one readable private key, no readable
    certificate, or a key that does not match the first certificate) is logged
    with its name and not served; if the name had a good entry before, that one
    stays. A certificate that does not name its server name is served, with a
    warning.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CertificateEntry] = {}
        self._default: CertificateEntry | None = None
        self._chain_certificates: dict[bytes, x509.Certificate] = {}
        self._listeners: list[Callable[[CertificateEntry], object]] = []
        self._rejected: dict[str, bytes] = {}
        self._unloaded: set[str] = set()
        self._load: Callable[[str], CertificateEntry | None] | None = None

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries) + len(self._unloaded)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._unloaded

    def names(self) -> Iterator[str]:
        """The server names that have (or may have, not parsed yet) a certificate."""
        return iter(list(self._entries) + sorted(self._unloaded))

    @property
    def unloaded(self) -> frozenset[str]:
        """The names known from their file name only (not parsed yet)."""
        return frozenset(self._unloaded)

    def is_unloaded(self, name: str) -> bool:
        """Whether ``name`` is known from its file name only (not parsed yet)."""
        return name in self._unloaded

    @property
    def default(self) -> CertificateEntry | None:
        """The entry served when no name matches (``DEFAULT.pem``), if any."""
        return self._default

    def get(self, name: str) -> CertificateEntry | None:
        """The entry stored under exactly ``name`` (canonical form), if any."""
        return self._entries.get(name)

    def find(self, name: str) -> CertificateEntry | None:
        """
        The entry for ``name``: stored under the name itself, else under the
        wildcard one label up. ``name`` must already be lower case. Never
        raises, whatever the string.
        """
        entries = self._entries
        entry = entries.get(name)
        if entry is None:
            _, dot, parent = name.partition(".")
            wildcard = "*." + parent if dot and parent else None
            if wildcard is not None:
                entry = entries.get(wildcard)
            if entry is None and self._unloaded:
                entry = self._load_now(name, wildcard)
        return entry

    def _load_now(self, name: str, wildcard: str | None) -> CertificateEntry | None:
        """A name not parsed yet is asked for: parse its entry now (one file)."""
        for candidate in (name, wildcard):
            if candidate is None or candidate not in self._unloaded or self._load is None:
                continue
            self._unloaded.discard(candidate)
            try:
                entry = self._load(candidate)
            except Exception:
                log.failure("loading the certificate of {server_name}", server_name=candidate)
                entry = None
            if entry is not None:
                self._entries.setdefault(candidate, entry)
                return self._entries[candidate]
        return None

    def lookup(self, name: str | None) -> CertificateEntry | None:
        """
        The entry to serve for ``name`` (any case, a trailing dot allowed):
        :meth:`find`, else :attr:`default`; ``None`` when there is neither.
        """
        if name:
            name = name.lower()
            if name.endswith("."):
                name = name[:-1]
            entry = self.find(name)
            if entry is not None:
                return entry
        return self._default

    # -- listening ----------------------------------------------------------

    def subscribe(self, forget: Callable[[CertificateEntry], object]) -> None:
        """
        Call ``forget(entry)`` whenever an entry stops being served (replaced or
        removed), so that caches built from it can be dropped.
        """
        self._listeners.append(forget)

    def _forget(self, entry: CertificateEntry | None) -> None:
        if entry is None:
            return
        for forget in list(self._listeners):
            try:
                forget(entry)
            except Exception:
                log.failure(
                    "dropping caches of the certificate of {server_name}", server_name=entry.name
                )

    # -- parsing ------------------------------------------------------------

    def _chain_certificate(self, obj: pem.AbstractPEMObject) -> x509.Certificate:
        data = obj.as_bytes()
        found = self._chain_certificates.get(data)
        if found is None:
            found = x509.load_pem_x509_certificate(data)
            self._chain_certificates[data] = found
        return found

    def parse(
        self,
        name: str,
        pem_objects: PEMObjects,
        fingerprint: bytes | None = None,
        *,
        validated: bool = False,
    ) -> CertificateEntry:
        """
        Check and parse one entry: one private key, the certificate, the chain
        (:func:`txacme.certificates.validate_pem_objects`, skipped when
        ``validated``: the objects come from a store that checked them).
        Safe to call from a thread.

        :raises txacme.errors.ConfigurationError: naming ``name`` and the problem.
        """
        try:
            objects = list(pem_objects) if validated else validate_pem_objects(pem_objects, name)
        except (ValueError, UnsupportedAlgorithm) as e:
            if isinstance(e, ConfigurationError):
                raise
            raise ConfigurationError(f"{name}: the private key does not match the certificate")
        # Checked above: exactly one key, certificates that parse, matching.
        key = next(o for o in objects if type(o) is not pem.Certificate)
        certificates = [o for o in objects if type(o) is pem.Certificate]
        leaf = x509.load_pem_x509_certificate(certificates[0].as_bytes())
        chain = tuple(self._chain_certificate(c) for c in certificates[1:])
        if fingerprint is None:
            fingerprint = _fingerprint(objects)
        return CertificateEntry(name, key.decoded_payload, leaf, chain, fingerprint)

    def _checked(
        self, name: str, pem_objects: PEMObjects, previous: CertificateEntry | None
    ) -> tuple[CertificateEntry | None, bool]:
        """
        Parse (reusing ``previous`` when nothing changed), or log why not.

        :return: the entry to serve (the new one, or ``previous`` when the new
            objects are malformed) and whether ``pem_objects`` were usable.
        """
        fingerprint = _fingerprint(pem_objects)
        if previous is not None and previous.fingerprint == fingerprint:
            return previous, True
        if self._rejected.get(name) == fingerprint:
            # Already logged; a store polled every minute should not repeat it.
            return previous, False
        try:
            entry = self.parse(name, pem_objects, fingerprint)
        except ConfigurationError as e:
            self._rejected[name] = fingerprint
            log.error(
                "not serving the certificate of {server_name}: {reason}{kept}",
                server_name=name,
                reason=str(e),
                kept="; still serving the previous one" if previous is not None else "",
            )
            return previous, False
        self._rejected.pop(name, None)
        if name != DEFAULT_ENTRY_NAME and not covers(entry.certificate, name):
            log.warn(
                "the certificate stored for {server_name} does not name it; serving it anyway",
                server_name=name,
            )
        return entry, True

    # -- writing ------------------------------------------------------------

    def set_loader(self, load: Callable[[str], CertificateEntry | None] | None) -> None:
        """
        ``load(name)`` reads and parses the entry of a name known only from its
        file name, synchronously (:meth:`find` calls it for such a name); it
        returns ``None`` when there is nothing to serve.
        """
        self._load = load

    def add_unloaded(self, names: Iterable[str]) -> None:
        """Names whose entries exist but are not parsed yet (see :meth:`set_loader`)."""
        self._unloaded.update(n for n in names if n not in self._entries)

    def put(self, name: str, entry: CertificateEntry | None) -> None:
        """
        Serve ``entry`` (already parsed, e.g. in a thread) for the canonical
        ``name``; ``None`` stops serving it.
        """
        self._unloaded.discard(name)
        previous = self._entries.get(name)
        if entry is previous:
            return
        if entry is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = entry
        self._forget(previous)

    def put_default(self, entry: CertificateEntry | None) -> None:
        """Serve ``entry`` (already parsed) when no name matches; ``None`` removes it."""
        previous, self._default = self._default, entry
        if entry is not previous:
            self._forget(previous)

    def update(self, name: str, pem_objects: PEMObjects) -> bool:
        """
        Serve ``pem_objects`` (key, certificate, chain) for ``name`` from the
        next handshake on. An empty list removes the name.

        :return: ``True`` if these objects are now served, ``False`` if they
            were malformed (logged; a previous entry stays) or empty.
        :raises txacme.errors.InvalidServerName: for a bad name.
        """
        canonical = normalize_server_name(name)
        self._unloaded.discard(canonical)
        objects = list(pem_objects)
        if not objects:
            self.remove(canonical)
            return False
        previous = self._entries.get(canonical)
        entry, usable = self._checked(canonical, objects, previous)
        if entry is not None and entry is not previous:
            self._entries[canonical] = entry
            self._forget(previous)
            log.debug("serving a new certificate for {server_name}", server_name=canonical)
        return usable

    def remove(self, name: str) -> None:
        """Stop serving ``name`` (no-op if it is not served)."""
        try:
            canonical = normalize_server_name(name)
        except InvalidServerName:
            return
        self._unloaded.discard(canonical)
        self._forget(self._entries.pop(canonical, None))

    def set_default(self, pem_objects: PEMObjects | None) -> bool:
        """
        Serve ``pem_objects`` when no name matches; ``None`` or ``[]`` removes
        the default.

        :return: ``True`` if these objects are now the default.
        """
        previous = self._default
        objects = list(pem_objects or ())
        if not objects:
            self._default = None
            self._forget(previous)
            return False
        entry, usable = self._checked(DEFAULT_ENTRY_NAME, objects, previous)
        if entry is not previous:
            self._default = entry
            self._forget(previous)
        return usable

    def replace_all(
        self,
        entries: Mapping[str, PEMObjects],
        default: PEMObjects | None = None,
    ) -> None:
        """
        Make the index hold exactly ``entries`` (and ``default``), reusing the
        parsed entries whose PEM objects did not change.
        """
        old = self._entries
        new: dict[str, CertificateEntry] = {}
        for name, objects in entries.items():
            try:
                canonical = normalize_server_name(name)
            except InvalidServerName as e:
                log.error(
                    "not serving a certificate stored under {name!r}: {reason}",
                    name=name,
                    reason=str(e),
                )
                continue
            objects = list(objects)
            if not objects:
                continue
            entry, _ = self._checked(canonical, objects, old.get(canonical))
            if entry is not None:
                new[canonical] = entry
        self._entries = new
        self._unloaded.clear()
        self._rejected = {
            name: fp
            for name, fp in self._rejected.items()
            if name in entries or name == DEFAULT_ENTRY_NAME
        }
        for name, entry in old.items():
            if new.get(name) is not entry:
                self._forget(entry)
        self.set_default(default)
        self._drop_unused_chain_certificates()

    def _drop_unused_chain_certificates(self) -> None:
        used = {id(c) for e in self._entries.values() for c in e.chain}
        if self._default is not None:
            used.update(id(c) for c in self._default.chain)
        self._chain_certificates = {
            data: c for data, c in self._chain_certificates.items() if id(c) in used
        }

    def load_from(self, store: ICertificateStore) -> Deferred[StoreEntries]:
        """
        Rebuild the index from every entry of ``store``, plus its ``DEFAULT.pem``
        when the store keeps a default certificate
        (:class:`~txacme.interfaces.DefaultCertificateStore`, as
        :class:`txacme.stores.directory.DirectoryStore` does).

        :return: a ``Deferred`` that fires, when the index holds the store's
            certificates, with the entries read (``as_dict()``'s result, empty
            entries included); it fails (leaving the index as it was) if the
            store cannot be read.
        """
        return Deferred.fromCoroutine(self._load_from(store))

    async def _load_from(self, store: ICertificateStore) -> StoreEntries:
        entries = await cast("Deferred[StoreEntries]", maybeDeferred(store.as_dict))
        default: PEMObjects | None = None
        if isinstance(store, DefaultCertificateStore):
            reading = maybeDeferred(store.get_default)
            try:
                default = await reading
            except KeyError:
                default = None
        self.replace_all(entries, default)
        log.debug("certificate index holds {count} names", count=len(self._entries))
        return entries


__all__ = [
    "DEFAULT_ENTRY_NAME",
    "CertificateEntry",
    "CertificateIndex",
]
