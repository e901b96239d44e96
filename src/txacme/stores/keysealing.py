"""
Private keys at rest: :class:`KeyEncryption` seals them with AES-256-GCM,
bound to their server name, for stores that keep keys outside the file system
(:class:`txacme.stores.postgres.PostgresStore`).

A sealed key is ``TXK1``, the 8-byte id of the sealing key, a 12-byte nonce,
then the ciphertext with its tag. The server name is authenticated data, so a
sealed key cannot be moved to another name. Several keys may be given: the
first seals, all unseal (rotation: put the new key first).

May import the core modules only.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from txacme.errors import ConfigurationError
from txacme.logs import Logger

log = Logger()

_SEAL_MAGIC = b"TXK1"
_SEAL_AAD = b"txacme private key\x00"


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"txacme key id\x00" + key).digest()[:8]


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigurationError(f"key_file={path!r} cannot be read: {e.strerror}")
    try:
        mode = os.stat(path).st_mode
        if mode & 0o077:
            log.warn("the key file {path} is readable by other users", path=path)
    except OSError:
        pass
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) == 32:
            return decoded
    except (ValueError, UnicodeDecodeError):
        pass
    raise ConfigurationError(
        f"key_file={path!r} must hold a 256-bit key: 32 raw bytes, 64 hex digits or base64"
    )


class KeyEncryption:
    """
    Seals private keys at rest with AES-256-GCM.

    :param keys: 32-byte keys; the first seals, every one unseals (rotation).
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if isinstance(keys, (bytes, bytearray)) or not keys:
            raise ConfigurationError("KeyEncryption needs a list of one or more 32-byte keys")
        self._keys: dict[bytes, AESGCM] = {}
        self._primary: bytes | None = None
        for key in keys:
            if not isinstance(key, bytes) or len(key) != 32:
                raise ConfigurationError("every key of KeyEncryption must be 32 bytes (AES-256)")
            kid = _key_id(key)
            self._keys[kid] = AESGCM(key)
            if self._primary is None:
                self._primary = kid

    @classmethod
    def from_files(cls, path: str, *old_paths: str) -> KeyEncryption:
        """
        Read the sealing key from ``path`` (32 raw bytes, 64 hex digits or
        base64) and older keys, still accepted for unsealing, from ``old_paths``.
        """
        return cls([_read_key_file(p) for p in (path, *old_paths)])

    @staticmethod
    def generate_key_file(path: str) -> None:
        """Write a new random key (base64) to ``path``, mode 0600; never overwrites."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")

    def __repr__(self) -> str:
        return f"<KeyEncryption with {len(self._keys)} key(s)>"

    @property
    def key_id(self) -> str:
        """The hex id of the sealing key (safe to log)."""
        assert self._primary is not None
        return self._primary.hex()

    def seal(self, name: str, data: bytes) -> bytes:
        """Encrypt ``data`` (a private key) bound to ``name``."""
        assert self._primary is not None
        nonce = os.urandom(12)
        sealed = self._keys[self._primary].encrypt(nonce, data, _SEAL_AAD + name.encode())
        return _SEAL_MAGIC + self._primary + nonce + sealed

    def unseal(self, name: str, blob: bytes) -> bytes:
        """
        Decrypt a value made by :meth:`seal` for ``name``.

        :raises txacme.errors.ConfigurationError: naming ``name`` when no key
            fits or the data was altered.
        """
        if len(blob) < 4 + 8 + 12 + 16 or not blob.startswith(_SEAL_MAGIC):
            raise ConfigurationError(f"{name}: the sealed private key is malformed")
        kid, nonce, sealed = blob[4:12], blob[12:24], blob[24:]
        aead = self._keys.get(kid)
        if aead is None:
            raise ConfigurationError(
                f"{name}: the private key is sealed with key {kid.hex()}, which was not given"
            )
        try:
            return aead.decrypt(nonce, sealed, _SEAL_AAD + name.encode())
        except InvalidTag:
            raise ConfigurationError(f"{name}: the sealed private key fails authentication")


__all__ = ["KeyEncryption"]
