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

May import the core modules and the rest of :mod:`txacme.stores` (the
PostgreSQL store only when a ``postgresql:`` URL asks for it: psycopg is an
optional extra).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict, cast
from urllib.parse import unquote, urlsplit

from twisted.internet.interfaces import IReactorTime

from txacme.errors import ConfigurationError
from txacme.formats import parse_flag, parse_number
from txacme.interfaces import ICertificateStore
from txacme.stores.directory import DirectoryStore
from txacme.stores.keysealing import KeyEncryption
from txacme.stores.memory import MemoryStore

POSTGRES_SCHEMES = ("postgresql", "postgres")

_WHAT = "store option "


def _integer(name: str, value: object) -> int:
    return int(parse_number(name, value, integer=True, minimum=None, what=_WHAT))


def _number(name: str, value: object) -> float:
    return parse_number(name, value, minimum=None, what=_WHAT)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{_WHAT}{name}={value!r} must be a non-empty string")
    return value


def _flag(name: str, value: object) -> bool:
    return parse_flag(name, value, what=_WHAT)


class _PostgresOptions(TypedDict, total=False):
    """The keyword arguments of ``PostgresStore`` that store options give."""

    schema: str
    node_id: str
    pool_size: int
    lease_ttl: float
    lock_timeout: float
    connect_timeout: float
    listen: bool
    key_encryption: KeyEncryption


# Each option's converter gives the type _PostgresOptions names for it.
_POSTGRES_OPTIONS: dict[str, Callable[[str, object], object]] = {
    "schema": _text,
    "node_id": _text,
    "pool_size": _integer,
    "lease_ttl": _number,
    "lock_timeout": _number,
    "connect_timeout": _number,
    "listen": _flag,
}


_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """
    ``url`` with every form of password replaced by ``***`` (for messages): the
    ``user:password@`` of a URL, a ``password=`` query parameter, and
    ``password=...`` in a ``key=value`` connection string.
    """
    text = _QUERY_PASSWORD.sub(r"\1***", url)
    if "://" not in text:
        return _CONNINFO_PASSWORD.sub(r"\1***", text)
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return text
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def store_from_url(
    url: str, *, reactor: IReactorTime | None = None, **options: object
) -> ICertificateStore:
    """
    The certificate store named by ``url`` (see the module documentation).

    :param reactor: the reactor; a PostgreSQL store needs it (see
        :class:`~txacme.stores.postgres.PostgresStore`).
    :param options: store options; unknown ones are refused.
    :raises txacme.errors.ConfigurationError: naming the URL (without its
        password) or the option that is wrong.
    :raises TypeError: for a PostgreSQL URL without a reactor.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError("store URL is empty")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in POSTGRES_SCHEMES:
        return _postgres(url, reactor, options)
    if scheme == "memory":
        _no_options(url, options)
        return MemoryStore()
    if scheme == "file" or (not scheme and url) or (len(scheme) == 1 and os.name == "nt"):
        _no_options(url, options)
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


def _no_options(url: str, options: Mapping[str, object]) -> None:
    if options:
        raise ConfigurationError(
            f"store={redact_url(url)!r} takes no options ({', '.join(sorted(options))})"
        )


def _postgres(
    url: str, reactor: IReactorTime | None, options: dict[str, object]
) -> ICertificateStore:
    from txacme.stores.postgres import PostgresStore  # only when asked for: psycopg

    converted: dict[str, object] = {}
    key_file = options.pop("key_file", None)
    old_key_files = options.pop("old_key_files", None)
    for name, value in options.items():
        convert = _POSTGRES_OPTIONS.get(name)
        if convert is None:
            raise ConfigurationError(
                f"unknown PostgreSQL store option {name!r}; use key_file, old_key_files, "
                f"{', '.join(sorted(_POSTGRES_OPTIONS))}"
            )
        converted[name] = convert(name, value)
    if old_key_files and not key_file:
        raise ConfigurationError("old_key_files= needs key_file= (the current key)")
    if key_file:
        converted["key_encryption"] = KeyEncryption.from_files(
            _text("key_file", key_file), *_old_key_files(old_key_files)
        )
    if reactor is None:
        raise TypeError(f"store={redact_url(url)!r}: a PostgreSQL store needs the reactor")
    return PostgresStore(url, reactor=reactor, **cast(_PostgresOptions, converted))


def _old_key_files(value: object) -> list[str]:
    """The paths of ``old_key_files=``: comma-separated text, or a list of paths."""
    if not value:
        return []
    if isinstance(value, str):
        paths = value.split(",")
    elif isinstance(value, Iterable):
        paths = [str(p) for p in value]
    else:
        raise ConfigurationError(f"{_WHAT}old_key_files={value!r} must name files")
    return [p.strip() for p in paths if p.strip()]


__all__ = ["POSTGRES_SCHEMES", "redact_url", "store_from_url"]
