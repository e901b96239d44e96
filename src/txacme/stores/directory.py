"""
Certificate stores: :class:`DirectoryStore`, one PEM file per server name.

Layout (the one ``txsni:`` endpoints read, so another process can serve the
same directory):

* ``<server name>.pem`` holds the private key, the certificate, then the chain,
  all PEM. The server name is in canonical form
  (:func:`~txacme.names.normalize_server_name`): lower case, IPv6 addresses
  compressed (``::1.pem``).
* An empty ``<server name>.pem`` means "issue a certificate for this name".
* A wildcard entry is ``*.example.com.pem``: ``*`` is an ordinary character in a
  POSIX file name. ``txsni`` looks files up by the exact SNI name, so it never
  serves a wildcard file; txacme's own TLS layer does.
* ``DEFAULT.pem`` is what ``txsni`` serves to clients that send no SNI. It is
  not a server name: :meth:`DirectoryStore.as_dict` leaves it out, and
  :meth:`DirectoryStore.get_default` reads it.
* ``client.key`` (the ACME account key), hidden files, temporary files
  (``.<name>.pem.<random>.tmp``) and files whose stem is not a canonical server
  name are ignored.
* A writer killed in the middle of a write leaves its temporary file behind
  (mode 0600, holding a private key). :meth:`DirectoryStore.as_dict` removes
  such files once they are older than :data:`STALE_TEMP_AGE` seconds, logging
  each one; a younger one may belong to a write still in progress in another
  process and is left alone.

Writes are atomic: the objects go to a temporary file in the same directory
(mode 0600), which is flushed, synced and renamed over the old file, then the
directory is synced. A reader sees the old entry or the new one, never a mix.
If ``<server name>.pem`` is a symbolic link, the link itself is replaced by the
new file (its target is left alone).

Validation: :meth:`DirectoryStore.store` accepts only exactly one private key
plus at least one certificate, the key matching the first certificate, and
nothing else (no CSRs, public keys, parameters), as
:func:`txacme.certificates.validate_pem_objects` checks. The objects are written in the
order given. Reading a non-empty file applies the same checks: ``get``
fails with :class:`~txacme.errors.ConfigurationError` naming the file, and
``as_dict`` logs the file and leaves it out, so one damaged file never hides
the others. A file that becomes damaged after this store read or wrote a good
version of it (a botched manual edit, a non-atomic copy by another tool) is
logged each time it is read, and the last good version is returned instead, so
the name keeps being served and renewed (renewal rewrites the file).

Errors: a failed write (disk full, read-only file system) raises ``OSError``
naming the entry's file and leaves the old file and no temporary file. A
non-empty entry that other users can read (it holds a private key) is warned
about once per file and mode.

File I/O is blocking; the files are small and it all happens in
:func:`load_entry` and :func:`write_entry`. :meth:`DirectoryStore.scan` reads the
whole directory for tools that report on it, damaged files included.

May import the core modules only.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Sequence

import pem
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.filepath import FilePath
from zope.interface import implementer

from txacme._files import NotOwnFile, fsync_directory, read_own_file, write_synced
from txacme.certificates import validate_pem_objects
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import ICertificateStore
from txacme.logs import Logger
from txacme.names import normalize_server_name

log = Logger()

DEFAULT_NAME = "DEFAULT"
"""Stem of the file ``txsni`` serves to clients without SNI (``DEFAULT.pem``)."""

PEM_SUFFIX = ".pem"
FILE_MODE = 0o600

STALE_TEMP_AGE = 600.0
"""Seconds after which :meth:`DirectoryStore.as_dict` removes a left-over temporary file."""

# The temporary files _write_atomically makes for entries: .<name>.pem.<16 hex digits>.tmp
_TEMP_FILE = re.compile(r"\..+\.pem\.[0-9a-f]{16}\.tmp")


def load_entry(path: str | FilePath[str]) -> list[pem.AbstractPEMObject]:
    """
    Read one ``.pem`` entry synchronously.

    :return: ``[]`` for an empty (or whitespace-only) file, else the validated
        PEM objects.
    :raises FileNotFoundError: if the file does not exist.
    :raises txacme.errors.ConfigurationError: naming the file when it cannot be
        read or is not a valid entry.
    """
    filename = path.path if isinstance(path, FilePath) else path
    return _parse_entry(_read_file(filename), filename)


def _read_file(filename: str) -> bytes:
    try:
        return read_own_file(filename)[0]
    except FileNotFoundError:
        raise
    except NotOwnFile as e:
        raise ConfigurationError(f"refused: {e.strerror}")
    except OSError as e:
        raise ConfigurationError(f"{filename}: cannot read ({e.strerror})")


def _parse_entry(data: bytes, filename: str) -> list[pem.AbstractPEMObject]:
    if not data.strip():
        return []
    objects = pem.parse(data)
    if not objects:
        raise ConfigurationError(f"{filename}: no PEM objects in a non-empty file")
    return validate_pem_objects(objects, filename)


def write_entry(path: str | FilePath[str], data: bytes) -> None:
    """
    Replace the file ``path`` with ``data`` atomically (mode 0600).

    The data is written to a temporary file in the same directory, synced and
    renamed over ``path``; on any error the temporary file is removed and the
    old file is untouched.

    :raises OSError: (of the subclass matching its ``errno``) naming ``path``,
        e.g. ``[Errno 28] No space left on device: '/srv/certs/a.example.pem'``.
    """
    filename = path.path if isinstance(path, FilePath) else path
    try:
        _write_atomically(filename, data)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), filename) from e


def _write_atomically(filename: str, data: bytes) -> None:
    directory, base = os.path.split(filename)
    directory = directory or "."
    temp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        write_synced(fd, data, FILE_MODE)
        os.rename(temp, filename)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def _serialize(objects: Sequence[pem.AbstractPEMObject]) -> bytes:
    parts = []
    for obj in objects:
        data = obj.as_bytes()
        if not data.endswith(b"\n"):
            data += b"\n"
        parts.append(data)
    return b"".join(parts)


@implementer(ICertificateStore)
class DirectoryStore:
    """
    A certificate store in a directory, one ``<server name>.pem`` per name.

    :ivar path: the directory, as a ``FilePath``.
    """

    def __init__(self, path: str | os.PathLike[str] | FilePath[str]) -> None:
        """
        :param path: an existing directory.
        :raises txacme.errors.ConfigurationError: if it is not a directory.
        """
        if isinstance(path, FilePath):
            self.path: FilePath[str] = path
        elif isinstance(path, (str, os.PathLike)):
            self.path = FilePath(os.fspath(path))
        else:
            raise ConfigurationError(f"not a directory path: {path!r}")
        if not self.path.isdir():
            raise ConfigurationError(f"{self.path.path}: not an existing directory")

        self._last_good: dict[str, list[pem.AbstractPEMObject]] = {}
        self._warned_modes: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"DirectoryStore({self.path.path!r})"

    def _read(self, name: str, filename: str) -> list[pem.AbstractPEMObject]:
        """
        Read the entry of ``name``; when the file is damaged, fall back to the
        last good version this store read or wrote (logged), else raise.
        """
        try:
            data = _read_file(filename)
        except FileNotFoundError:
            self._last_good.pop(name, None)
            raise
        try:
            objects = _parse_entry(data, filename)
        except ConfigurationError as e:
            previous = self._last_good.get(name)
            if previous is None:
                raise
            log.error(
                "damaged certificate file {file}: {reason}; still using its last good version",
                file=filename,
                reason=str(e),
            )
            return list(previous)
        self._last_good[name] = objects
        if objects:
            self._check_mode(filename)
        return list(objects)

    def _check_mode(self, filename: str) -> None:
        """Warn (once per file and mode) about an entry other users can read."""
        try:
            mode = stat.S_IMODE(os.stat(filename).st_mode)
        except OSError:
            return
        if mode & 0o077 and (filename, mode) not in self._warned_modes:
            self._warned_modes.add((filename, mode))
            log.warn(
                "{file} holds a private key and other users can read it (mode {mode}); "
                "restrict it with chmod 600",
                file=filename,
                mode=oct(mode),
            )

    def _file_for(self, server_name: str) -> str:
        name = normalize_server_name(server_name)
        return os.path.join(self.path.path, name + PEM_SUFFIX)

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """
        Fetch the entry of ``server_name``: ``[]`` for an empty file.

        Fails with ``KeyError`` for a missing file,
        :class:`~txacme.errors.InvalidServerName` for an invalid name and
        :class:`~txacme.errors.ConfigurationError` for a damaged file (unless
        this store saw a good version of it: that one is returned, logged).
        """
        try:
            filename = self._file_for(server_name)
            return succeed(self._read(normalize_server_name(server_name), filename))
        except FileNotFoundError:
            return fail(KeyError(server_name))
        except Exception:
            return fail()

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """
        Validate and atomically write the entry of ``server_name``.

        Fails with :class:`~txacme.errors.ConfigurationError` (the old file left
        untouched) when the objects are not a key with its certificate and
        chain, or when the entry is a symbolic link.
        """
        try:
            filename = self._file_for(server_name)
            objects = validate_pem_objects(pem_objects, server_name)
            if os.path.islink(filename):
                # Someone else's link: left for the operator, never replaced.
                raise ConfigurationError(
                    f"refused: {filename} is a symbolic link; txacme does not replace it"
                )
            write_entry(filename, _serialize(objects))
        except Exception:
            return fail()
        self._last_good[normalize_server_name(server_name)] = list(objects)
        log.debug(
            "stored the certificate of {server_name} in {file}",
            server_name=server_name,
            file=filename,
        )
        return succeed(None)

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """
        Fetch every entry, keyed by server name.

        Files that are not entries are ignored; damaged entries are logged and
        left out. Temporary files left by interrupted writes are removed once
        they are older than :data:`STALE_TEMP_AGE` seconds.
        """
        try:
            return succeed(self._as_dict())
        except Exception:
            return fail()

    def _as_dict(self) -> dict[str, list[pem.AbstractPEMObject]]:
        result: dict[str, list[pem.AbstractPEMObject]] = {}
        self.remove_stale_temporary_files()
        for stem, full in self._entry_files(log_ignored=True):
            try:
                result[stem] = self._read(stem, full)
            except FileNotFoundError:
                continue
            except ConfigurationError as e:
                log.error(
                    "skipping damaged certificate file {file}: {reason}", file=full, reason=str(e)
                )
        return result

    def scan(self) -> dict[str, list[pem.AbstractPEMObject] | ConfigurationError]:
        """
        Read every entry file afresh, synchronously, for tools that report on
        the directory (``txacme status``): by server name, the entry's PEM
        objects, or the :class:`~txacme.errors.ConfigurationError` naming a
        damaged file, where ``as_dict`` logs it and leaves it out (or keeps
        its last good version). Stale temporary files are removed first, as by
        ``as_dict``; files that are not entries are skipped without a word.
        """
        result: dict[str, list[pem.AbstractPEMObject] | ConfigurationError] = {}
        self.remove_stale_temporary_files()
        for stem, full in self._entry_files(log_ignored=False):
            try:
                result[stem] = load_entry(full)
            except FileNotFoundError:
                continue
            except ConfigurationError as e:
                result[stem] = e
        return result

    def _entry_files(self, *, log_ignored: bool) -> Iterator[tuple[str, str]]:
        """
        The server name and path of every entry file, by name: ``DEFAULT.pem``,
        hidden files and files whose stem is not a canonical server name are
        skipped (logged when ``log_ignored``).
        """
        for filename in sorted(os.listdir(self.path.path)):
            if not filename.endswith(PEM_SUFFIX) or filename.startswith("."):
                continue
            stem = filename[: -len(PEM_SUFFIX)]
            if stem == DEFAULT_NAME:
                continue
            try:
                canonical = normalize_server_name(stem)
            except InvalidServerName:
                if log_ignored:
                    log.debug("ignoring {file}: not a server name", file=filename)
                continue
            if canonical != stem:
                if log_ignored:
                    log.warn(
                        "ignoring {file}: rename it to {canonical}{suffix}",
                        file=filename,
                        canonical=canonical,
                        suffix=PEM_SUFFIX,
                    )
                continue
            full = os.path.join(self.path.path, filename)
            # A symbolic link is listed (never followed): reading it fails, logged.
            if os.path.isfile(full) or os.path.islink(full):
                yield stem, full

    def remove_stale_temporary_files(self) -> list[str]:
        """
        Remove the temporary files (``.<name>.pem.<random>.tmp``) that
        interrupted writes left more than :data:`STALE_TEMP_AGE` seconds ago,
        logging each; ``as_dict`` calls this.

        :return: the paths removed.
        """
        removed = []
        for filename in sorted(os.listdir(self.path.path)):
            if _TEMP_FILE.fullmatch(filename) and self._remove_if_stale(filename):
                removed.append(os.path.join(self.path.path, filename))
        return removed

    def _remove_if_stale(self, filename: str) -> bool:
        """Remove the temporary file ``filename`` if a crashed writer left it long ago."""
        full = os.path.join(self.path.path, filename)
        try:
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                return False
            age = time.time() - info.st_mtime
            if age < STALE_TEMP_AGE:
                return False
            os.unlink(full)
        except FileNotFoundError:
            return False  # renamed into place or removed meanwhile
        except OSError as e:
            log.warn(
                "cannot remove the stale temporary file {file}: {reason}",
                file=full,
                reason=e.strerror or str(e),
            )
            return False
        log.warn(
            "removed {file}, a temporary file an interrupted write left {age:.0f} s ago",
            file=full,
            age=age,
        )
        return True

    def get_default(self) -> Deferred[list[pem.AbstractPEMObject]]:
        """
        Fetch ``DEFAULT.pem`` (the certificate for clients without SNI).

        Fails with ``KeyError`` when there is none.
        """
        filename = os.path.join(self.path.path, DEFAULT_NAME + PEM_SUFFIX)
        try:
            return succeed(load_entry(filename))
        except FileNotFoundError:
            return fail(KeyError(DEFAULT_NAME))
        except Exception:
            return fail()

    def store_default(self, pem_objects: object) -> Deferred[None]:
        """
        Validate and atomically write ``DEFAULT.pem``.
        """
        filename = os.path.join(self.path.path, DEFAULT_NAME + PEM_SUFFIX)
        try:
            objects = validate_pem_objects(pem_objects, filename)
            write_entry(filename, _serialize(objects))
        except Exception:
            return fail()
        return succeed(None)

    def mark_wanted(self, server_name: str) -> Deferred[bool]:
        """
        Create an empty entry for ``server_name`` (asking for a certificate)
        unless a file already exists; never truncates an existing entry.

        :return: ``Deferred`` firing with ``True`` if the file was created.
        """
        try:
            filename = self._file_for(server_name)
            try:
                fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                return succeed(False)
            os.close(fd)
            fsync_directory(self.path.path)
        except Exception:
            return fail()
        return succeed(True)


__all__ = [
    "DEFAULT_NAME",
    "STALE_TEMP_AGE",
    "DirectoryStore",
    "load_entry",
    "write_entry",
]
