"""
Certificate stores named by URL, for endpoint strings and the command line.

======================================================  ==============================
URL                                                     store
======================================================  ==============================
``/srv/certs``, ``file:///srv/certs``                   :class:`.DirectoryStore`
``postgresql://user@host:5432/db`` (or ``postgres:``)   :class:`.PostgresStore`
``memory:``                                             :class:`.MemoryStore`
======================================================  ==============================

Options (keyword arguments of :func:`store_from_url`; strings are accepted, as
an endpoint string gives them) apply to the PostgreSQL store:

* ``key_file``: a file holding a 256-bit key; private keys are then sealed
  with AES-256-GCM. ``old_key_files``: comma-separated older key files, still
  accepted for reading (key rotation).
* ``schema``: the PostgreSQL schema of the tables.
* ``pool_size``, ``lease_ttl``, ``lock_timeout``, ``connect_timeout``:
  numbers; ``node_id``: this process's name; ``listen``: ``yes``/``no``.

Passwords in a URL are never logged nor put in error messages; prefer a
``~/.pgpass`` file or the ``PGPASSWORD`` environment variable anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from txacme.errors import ConfigurationError

POSTGRES_SCHEMES = ("postgresql", "postgres")

_POSTGRES_OPTIONS: dict[str, Callable[[str, Any], Any]] = {}


def _number(kind: type[int] | type[float]) -> Callable[[str, Any], Any]:
    def convert(name: str, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return kind(value)
        try:
            return kind(str(value))
        except ValueError:
            raise ConfigurationError(f"store option {name}={value!r} is not a number")

    return convert


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"store option {name}={value!r} must be a non-empty string")
    return value


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ConfigurationError(f"store option {name}={value!r} must be yes or no")


_POSTGRES_OPTIONS.update(
    {
        "schema": _text,
        "node_id": _text,
        "pool_size": _number(int),
        "lease_ttl": _number(float),
        "lock_timeout": _number(float),
        "connect_timeout": _number(float),
        "listen": _flag,
    }
)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def store_from_url(url: str, *, reactor: Any = None, **options: Any) -> Any:
    """
    The certificate store named by ``url`` (see the module documentation).

    :param reactor: the reactor, for stores that need one.
    :param options: store options; unknown ones are refused.
    :raises txacme.errors.ConfigurationError: naming the URL (without its
        password) or the option that is wrong.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError("store URL is empty")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in POSTGRES_SCHEMES:
        return _postgres(url, reactor, options)
    if scheme == "memory":
        _no_options(url, options)
        from txacme.testing import MemoryStore

        return MemoryStore()
    if scheme == "file" or (not scheme and url) or (len(scheme) == 1 and os.name == "nt"):
        _no_options(url, options)
        from txacme.stores.directory import DirectoryStore

        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigurationError(f"store={url!r}: file URLs must name a local path")
            path = unquote(parts.path)
        else:
            path = url
        return DirectoryStore(path)
    raise ConfigurationError(
        f"store={redact_url(url)!r}: unknown store type {scheme!r}; use a directory, "
        f"postgresql://... or memory:"
    )


def _no_options(url: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigurationError(
            f"store={redact_url(url)!r} takes no options ({', '.join(sorted(options))})"
        )


def _postgres(url: str, reactor: Any, options: dict[str, Any]) -> Any:
    from txacme.stores.postgres import KeyEncryption, PostgresStore

    kwargs: dict[str, Any] = {}
    key_file = options.pop("key_file", None)
    old_key_files = options.pop("old_key_files", None)
    for name, value in options.items():
        convert = _POSTGRES_OPTIONS.get(name)
        if convert is None:
            raise ConfigurationError(
                f"unknown PostgreSQL store option {name!r}; use key_file, old_key_files, "
                f"{', '.join(sorted(_POSTGRES_OPTIONS))}"
            )
        kwargs[name] = convert(name, value)
    if old_key_files and not key_file:
        raise ConfigurationError("old_key_files= needs key_file= (the current key)")
    if key_file:
        old = old_key_files.split(",") if isinstance(old_key_files, str) else old_key_files or []
        kwargs["key_encryption"] = KeyEncryption.from_files(
            _text("key_file", key_file), *[p.strip() for p in old if p.strip()]
        )
    return PostgresStore(url, reactor=reactor, **kwargs)


__all__ = ["POSTGRES_SCHEMES", "redact_url", "store_from_url"]
