"""
Server names: the one place where a name is checked and put in canonical form.

Every server name that reaches a store, a CSR, a file name or an ACME order goes
through :func:`normalize_server_name` first, so hostile values (an SNI name such
as ``../../etc/passwd``, a NUL byte, a 300-byte label) are refused before they
can be turned into a path.

Decisions:

* Only ``str`` is accepted; ``bytes`` (e.g. a raw SNI value) must be decoded by
  the caller, which makes the encoding an explicit choice.
* The only change made silently is lower-casing (and the canonical spelling of
  IP addresses). Nothing is stripped: surrounding spaces, a trailing dot or an
  empty label are refused, not repaired.
* Internationalised names must be given in their ASCII (punycode, ``xn--``) form.
  A name with non-ASCII characters is refused, and the message suggests the
  punycode spelling when the ``idna`` package (IDNA 2008 with UTS 46 mapping)
  can produce one.
  Converting silently would make the file name, the CSR and the order disagree
  with what the operator typed.
* Labels are 1 to 63 characters of ``a-z``, ``0-9`` and ``-``, not starting or
  ending with ``-``; an ``xn--`` label must be a valid, canonical IDNA 2008
  A-label. The whole name
  is at most 253 characters. Underscores are refused (public CAs refuse them).
* Single-label names such as ``localhost`` are accepted: this module checks the
  syntax, and whether a name is acceptable is the CA's policy (a private CA may
  well issue for one). The last label may not be all digits, so that
  ``1.2.3.999`` is never mistaken for a DNS name.
* A wildcard is accepted only as the whole leftmost label (``*.example.com``),
  followed by at least one label.
* IPv4 and IPv6 addresses are accepted and returned in their compressed
  canonical form (``::1``, ``2001:db8::1``); zone identifiers (``fe80::1%eth0``)
  and brackets are refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import idna

from txacme.errors import ConfigurationError, InvalidServerName

MAX_NAME_LENGTH = 253
"""The longest DNS name accepted, in characters (RFC 1035, without the final dot)."""

MAX_LABEL_LENGTH = 63
"""The longest label (the part between dots) accepted, in characters."""

_PATH_CHARACTERS = frozenset("/\\\x00")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in name:
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_ip_address(name: object) -> bool:
    """
    Tell whether ``name`` is an IPv4 or IPv6 address (without a zone identifier).
    """
    return isinstance(name, str) and _ip(name) is not None


def _punycode_hint(name: str) -> str:
    try:
        ascii_form = idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return "non-ASCII names must be given in their ASCII (punycode) form"
    return f"non-ASCII names must be given in their ASCII (punycode) form, e.g. {ascii_form!r}"


def _check_label(name: str, label: str) -> None:
    if not label:
        raise InvalidServerName(name, "empty label")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidServerName(name, f"label longer than {MAX_LABEL_LENGTH} characters")
    if label.startswith("-") or label.endswith("-"):
        raise InvalidServerName(name, f"label {label!r} starts or ends with '-'")
    if _LABEL.match(label) is None:
        raise InvalidServerName(name, f"label {label!r} has characters other than a-z, 0-9 and '-'")
    if label.startswith("xn--"):
        try:
            canonical = idna.encode(idna.decode(label)).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise InvalidServerName(name, f"label {label!r} is not valid punycode (IDNA 2008)")
        if canonical != label:
            raise InvalidServerName(name, f"label {label!r} is not canonical punycode")


def normalize_server_name(name: str) -> str:
    """
    Check ``name`` and return its canonical form.

    :param name: a DNS name, a ``*.``-prefixed wildcard DNS name, or an IPv4 or
        IPv6 address.
    :return: the name lower-cased, or the address in canonical compressed form.
    :raises txacme.errors.InvalidServerName: for anything else.
    """
    if not isinstance(name, str):
        raise InvalidServerName(name, "a server name must be a str")
    if not name:
        raise InvalidServerName(name, "empty name")
    if not name.isascii():
        raise InvalidServerName(name, _punycode_hint(name))
    bad = set(name) & _PATH_CHARACTERS
    if bad:
        raise InvalidServerName(name, f"contains {', '.join(repr(c) for c in sorted(bad))}")
    address = _ip(name)
    if address is not None:
        return address.compressed
    lowered = name.lower()
    if len(lowered) > MAX_NAME_LENGTH:
        raise InvalidServerName(name, f"longer than {MAX_NAME_LENGTH} characters")
    if lowered.endswith("."):
        raise InvalidServerName(name, "trailing dot")
    labels = lowered.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            raise InvalidServerName(name, "a wildcard needs a name after '*.'")
    for label in labels:
        if label == "*" or "*" in label:
            raise InvalidServerName(name, "'*' is allowed only as the whole leftmost label")
        _check_label(name, label)
    if labels[-1].isdigit():
        raise InvalidServerName(name, "the last label is all digits (not an IP address either)")
    return lowered


def is_wildcard(name: str) -> bool:
    """
    Tell whether a (normalized) name is a ``*.`` wildcard.
    """
    return name.startswith("*.")


def wildcard_for(name: str) -> str | None:
    """
    The wildcard name that would cover the (normalized) DNS name ``name``.

    ``www.example.com`` gives ``*.example.com``; a single-label name, a wildcard
    or an IP address gives ``None``.
    """
    if is_ip_address(name) or is_wildcard(name):
        return None
    _, dot, parent = name.partition(".")
    if not dot or not parent:
        return None
    return "*." + parent


def normalize_server_names(names: Sequence[str], what: str = "a certificate") -> list[str]:
    """
    Normalize every name of ``names`` (:func:`normalize_server_name`), dropping
    duplicates and keeping the order.

    :param what: what the names are for, named in errors.
    :raises txacme.errors.ConfigurationError: for a bare string (a common slip
        for a one-name list) or no names at all.
    :raises txacme.errors.InvalidServerName: for an invalid name.
    """
    if isinstance(names, str):
        raise ConfigurationError(f"{what} needs a sequence of names, not the string {names!r}")
    canonical: list[str] = []
    for name in names:
        normalized = normalize_server_name(name)
        if normalized not in canonical:
            canonical.append(normalized)
    if not canonical:
        raise ConfigurationError(f"{what} needs at least one name")
    return canonical


__all__ = [
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "is_ip_address",
    "is_wildcard",
    "normalize_server_name",
    "normalize_server_names",
    "wildcard_for",
]
