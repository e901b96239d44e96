"""
Private keys: generation, PEM, CSRs, JWKs and the ACME account key file.

Key types are named by short strings: ``"ec256"`` (ECDSA P-256, the default),
``"ec384"`` (ECDSA P-384), ``"rsa2048"``, ``"rsa3072"`` and ``"rsa4096"`` (RSA
with public exponent 65537). Anything else raises
:class:`~txacme.errors.UnsupportedKeyType`.

The account key file (``client.key``) is created atomically with mode 0600: the
key is written to a temporary file in the same directory (opened with
``O_CREAT | O_EXCL`` and mode 0600), flushed to disk, then linked into place, so
a reader sees no file or the whole key. An existing file is never overwritten:
if it cannot be read or is not a usable private key, a
:class:`~txacme.errors.ConfigurationError` naming the path is raised and the
file is left alone (losing an account key loses the account). If two processes
create the key at the same moment, the one that loses the race uses the key the
other one wrote. The parent directory must already exist.

Keys are never logged or included in exception messages.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256, ES384, ES512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA
from twisted.python.filepath import FilePath

from txacme._files import NotOwnFile, fsync_directory, read_own_file, write_synced
from txacme.errors import ConfigurationError, UnsupportedKeyType
from txacme.logs import Logger
from txacme.names import is_ip_address, normalize_server_names

log = Logger()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""The private key types txacme handles."""

DEFAULT_KEY_TYPE = "ec256"
"""The key type used when none is given: ECDSA on the P-256 curve."""

_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ec256": ec.SECP256R1,
    "ec384": ec.SECP384R1,
}
_RSA_SIZES: dict[str, int] = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}

KEY_TYPES: tuple[str, ...] = (*_EC_CURVES, *_RSA_SIZES)
"""Every key type :func:`generate_private_key` accepts, default first."""

RSA_PUBLIC_EXPONENT = 65537
MAX_CN_LENGTH = 64


def _unsupported(value: object) -> UnsupportedKeyType:
    return UnsupportedKeyType(f"unsupported key type {value!r}; use one of: {', '.join(KEY_TYPES)}")


def generate_private_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """
    Generate a new private key of the given type.

    :raises txacme.errors.UnsupportedKeyType: for a type not in :data:`KEY_TYPES`.
    """
    if not isinstance(key_type, str):
        raise _unsupported(key_type)
    curve = _EC_CURVES.get(key_type)
    if curve is not None:
        return ec.generate_private_key(curve())
    size = _RSA_SIZES.get(key_type)
    if size is not None:
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=size)
    raise _unsupported(key_type)


def key_type_of(key: object) -> str:
    """
    The key type name (e.g. ``"ec256"``) of a private or public key.

    :raises txacme.errors.UnsupportedKeyType: for a key of another kind or size.
    """
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        for name, curve in _EC_CURVES.items():
            if isinstance(key.curve, curve):
                return name
        raise UnsupportedKeyType(
            f"unsupported elliptic curve {key.curve.name}; use one of: {', '.join(KEY_TYPES)}"
        )
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        for name, size in _RSA_SIZES.items():
            if key.key_size == size:
                return name
        raise UnsupportedKeyType(
            f"unsupported RSA key size {key.key_size}; use one of: {', '.join(KEY_TYPES)}"
        )
    raise UnsupportedKeyType(
        f"unsupported key of type {type(key).__name__}; use one of: {', '.join(KEY_TYPES)}"
    )


def private_key_pem(key: PrivateKey) -> bytes:
    """
    Serialize a private key as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes, source: str) -> PrivateKey:
    """
    Load an unencrypted RSA or EC private key from PEM (PKCS#8 or traditional).

    :param source: where the data came from (e.g. a file name), used in errors.
    :raises txacme.errors.ConfigurationError: naming ``source`` when the data is
        not an unencrypted PEM private key.
    :raises txacme.errors.UnsupportedKeyType: for a key that is neither RSA nor EC.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(f"{source}: the private key is encrypted; txacme needs it plain")
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{source}: not a PEM private key (unreadable or corrupt)")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise UnsupportedKeyType(
            f"{source}: unsupported private key type {type(key).__name__}; use an RSA or EC key"
        )
    return key


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def make_csr(key: PrivateKey, names: Sequence[str]) -> x509.CertificateSigningRequest:
    """
    Build a CSR for ``names`` signed by ``key``.

    Every name is normalized (:func:`~txacme.names.normalize_server_name`);
    duplicates are dropped, order is kept. DNS names (wildcards included) become
    ``dNSName`` and IP addresses ``iPAddress`` subject alternative names. The
    first DNS name is also the subject common name when it is at most 64
    characters; otherwise, or with IP addresses only, the subject is empty.

    :raises txacme.errors.ConfigurationError: for no names or an invalid name.
    """
    canonical = normalize_server_names(names, "make_csr")
    sans: list[x509.GeneralName] = []
    for name in canonical:
        if is_ip_address(name):
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        else:
            sans.append(x509.DNSName(name))
    dns_names = [name for name in canonical if not is_ip_address(name)]
    subject: list[x509.NameAttribute[str]] = []
    if dns_names and len(dns_names[0]) <= MAX_CN_LENGTH:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return builder.sign(key, _signature_hash(key))


def jwk_for(key: PrivateKey) -> JWK:
    """
    Wrap a private key as a josepy JWK (``JWKEC`` or ``JWKRSA``).
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key)
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key)
    raise UnsupportedKeyType(f"unsupported key of type {type(key).__name__} for a JWK")


def unwrap_jwk(jwk: JWK) -> object:
    """The cryptography key inside a josepy JWK (josepy wraps it to make it comparable)."""
    inner = jwk.key
    return getattr(inner, "_wrapped", inner)


_JWS_CURVES: dict[str, JWASignature] = {"secp256r1": ES256, "secp384r1": ES384, "secp521r1": ES512}


def jws_algorithm(key: PrivateKey | JWK) -> JWASignature:
    """
    The JWS signature algorithm for an account (or certificate) key: ES256 for
    P-256, ES384 for P-384, ES512 for P-521, RS256 for RSA.

    :raises txacme.errors.UnsupportedKeyType: for any other key (another curve, a
        public key, a MAC key).
    """
    raw = unwrap_jwk(key) if isinstance(key, JWK) else key
    if isinstance(raw, ec.EllipticCurvePrivateKey):
        alg = _JWS_CURVES.get(raw.curve.name)
        if alg is None:
            raise UnsupportedKeyType(
                f"unsupported elliptic curve {raw.curve.name} for an ACME key; "
                "use P-256, P-384 or P-521"
            )
        return alg
    if isinstance(raw, rsa.RSAPrivateKey):
        return RS256
    raise UnsupportedKeyType(
        f"unsupported ACME key {type(raw).__name__}: need an EC or RSA private key"
    )


def _as_path(path: str | os.PathLike[str] | FilePath[str]) -> str:
    if isinstance(path, FilePath):
        return str(path.path)
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    raise ConfigurationError(f"not a file path: {path!r}")


def _read_existing_key(path: str) -> PrivateKey:
    try:
        data, info = read_own_file(path)
        mode = info.st_mode
    except NotOwnFile as e:
        raise ConfigurationError(f"refused the account key: {e.strerror}")
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read the account key ({e.strerror})")
    key = load_private_key_pem(data, path)
    if stat.S_IMODE(mode) & 0o077:
        log.warn(
            "the account key {path} can be read by other users (mode {mode}); "
            "restrict it with chmod 600",
            path=path,
            mode=oct(stat.S_IMODE(mode)),
        )
    return key


def _write_new_key(path: str, key_type: str) -> PrivateKey | None:
    """
    Write a new key at ``path`` unless a file appears there first.

    :return: the new key, or ``None`` if another writer created ``path`` first.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigurationError(f"{path}: the directory {directory} does not exist")
    key = generate_private_key(key_type)
    data = private_key_pem(key)
    base = os.path.basename(path)
    for attempt in range(100):
        temp = os.path.join(directory, f".{base}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigurationError(f"{path}: cannot create the account key ({e.strerror})")
        break
    else:  # pragma: no cover - a hundred stale temporary files
        raise ConfigurationError(f"{path}: cannot create a temporary file in {directory}")
    try:
        write_synced(fd, data, 0o600)
        try:
            # link() refuses to replace an existing file, unlike rename().
            os.link(temp, path)
        except FileExistsError:
            return None
        except OSError:
            # Filesystems without hard links: rename, after a last check.
            if os.path.lexists(path):
                return None
            os.rename(temp, path)
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot write the account key ({e.strerror})")
    finally:
        try:
            os.unlink(temp)
        except OSError:
            pass
    fsync_directory(directory)
    log.info("created a new {key_type} account key in {path}", key_type=key_type, path=path)
    return key


def load_or_create_client_key(
    path: str | os.PathLike[str] | FilePath[str], key_type: str = DEFAULT_KEY_TYPE
) -> JWK:
    """
    Load the ACME account key from ``path``, creating it first if it is missing.

    :param path: the key file (``str``, path-like or Twisted ``FilePath``); its
        directory must exist.
    :param key_type: the type of a newly created key; an existing key of any
        RSA or EC type is used as it is.
    :return: the key as a JWK.
    :raises txacme.errors.ConfigurationError: naming ``path`` when the file
        exists but cannot be read or holds no usable key (it is never replaced),
        or when the file cannot be created.
    """
    filename = _as_path(path)
    if key_type not in KEY_TYPES:
        raise _unsupported(key_type)
    if not os.path.lexists(filename):
        created = _write_new_key(filename, key_type)
        if created is not None:
            return jwk_for(created)
    return jwk_for(_read_existing_key(filename))


__all__ = [
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "PrivateKey",
    "generate_private_key",
    "jwk_for",
    "jws_algorithm",
    "key_type_of",
    "load_or_create_client_key",
    "load_private_key_pem",
    "make_csr",
    "private_key_pem",
    "unwrap_jwk",
]
