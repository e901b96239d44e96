"""
Text forms shared across the library: base64url, ACME tokens, ISO 8601 times and the
numbers and flags of options.

Core: imports only :mod:`txacme.errors`.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone

from txacme.errors import ConfigurationError

__all__ = [
    "b64url",
    "b64url_decode",
    "format_time",
    "is_token",
    "parse_flag",
    "parse_number",
    "parse_time",
]

_B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")


def b64url(data: bytes) -> str:
    """``data`` as unpadded base64url (RFC 4648 section 5), the form ACME and JOSE use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """
    Decode base64url with or without padding.

    :raises ValueError: when ``text`` is empty or holds anything but base64url
        characters.
    """
    bare = text.strip().rstrip("=")
    if not _B64URL.match(bare):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def is_token(value: object) -> bool:
    """
    Whether ``value`` is a usable ACME challenge token: a non-empty string of
    base64url characters only (RFC 8555 section 8.3), so it is safe in a URL path
    or a file name.
    """
    return isinstance(value, str) and _B64URL.match(value) is not None


def format_time(moment: datetime | None) -> str | None:
    """
    ``moment`` in UTC as ISO 8601 with a ``Z`` (``2026-01-02T03:04:05Z``), or
    ``None``. A naive time is taken to be UTC.
    """
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> datetime | None:
    """
    The aware time written by :func:`format_time` (or any ISO 8601 text), or
    ``None`` for anything unreadable. A time without a zone is taken as UTC.
    """
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def parse_number(
    name: str,
    value: object,
    *,
    integer: bool = False,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    what: str = "",
) -> float:
    """
    The number an option names: an ``int`` or ``float`` as given, or its text
    parsed.

    :param name: the option's name, for the error.
    :param integer: whole numbers only (the result is then an ``int``).
    :param minimum: the result must be above this (``None``: no bound).
    :param maximum: the result must be at most this (``None``: no bound).
    :param what: a prefix for the error (``"store option "``).
    :raises txacme.errors.ConfigurationError: ``name=value`` and what is wrong.
    """
    shown = f"{what}{name}={value!r}"
    if isinstance(value, bool):
        raise ConfigurationError(f"{shown} is not a number")
    try:
        number: float = int(str(value)) if integer else float(str(value))
    except ValueError:
        raise ConfigurationError(f"{shown} is not a{'n integer' if integer else ' number'}")
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigurationError(f"{shown} is not a finite number")
    if minimum is not None and not number > minimum:
        raise ConfigurationError(f"{shown} must be above {minimum:g}")
    if maximum is not None and number > maximum:
        raise ConfigurationError(f"{shown} must be at most {maximum:g}")
    return number


def parse_flag(name: str, value: object, *, what: str = "") -> bool:
    """
    A yes/no option: ``True``/``False`` as given, or ``yes``, ``true``, ``on``,
    ``1`` and ``no``, ``false``, ``off``, ``0`` in any case.

    :raises txacme.errors.ConfigurationError: ``name=value`` for anything else.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ConfigurationError(f"{what}{name}={value!r} must be yes or no")
