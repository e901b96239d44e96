"""
Endpoint-string mistakes explained in one line: a misspelt keyword (with the
nearest one suggested), a URL cut at its colons, a ``systemd:`` sub-endpoint
without inherited sockets, and the one-line exit of twistd on a bad string.

Configuration layer: imports only the core modules and Twisted.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence

from txacme.errors import ConfigurationError

__all__ = [
    "SUB_ENDPOINT_KEYWORDS",
    "check_cut_urls",
    "check_misspelt_keywords",
    "did_you_mean",
    "explain_endpoint_error",
    "running_under_twistd",
]

#: Keywords of Twisted's own server endpoints (``tcp:``, ``tcp6:``, ``ssl:``,
#: ``unix:``, ``systemd:``): never taken for a misspelling of ours.
SUB_ENDPOINT_KEYWORDS = frozenset(
    {
        "port",
        "interface",
        "backlog",
        "mode",
        "lockfile",
        "wantPID",
        "address",
        "domain",
        "index",
        "name",
        "privateKey",
        "certKey",
        "extraCertChain",
        "sslmethod",
        "dhParameters",
        "caCertsDir",
    }
)

_URL_SCHEMES = frozenset({"https", "http", "postgresql", "postgres", "file"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")


def did_you_mean(word: str, choices: Collection[str]) -> str | None:
    """The choice nearest to ``word`` when one is near enough to be a misspelling."""
    matches = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return matches[0] if matches else None


def _unknown(prefix: str, keyword: str, suggestion: str | None) -> ConfigurationError:
    text = f"{prefix}: unknown keyword {keyword!r} in the endpoint string"
    if suggestion is not None:
        return ConfigurationError(f"{text}: did you mean {suggestion!r}?")
    return ConfigurationError(text)


def check_misspelt_keywords(prefix: str, keywords: Collection[str], own: Collection[str]) -> None:
    """
    Refuse a keyword that is neither txacme's (``own``) nor a sub-endpoint's
    but is a near miss of one of txacme's (``emial`` for ``email``).

    :raises txacme.errors.ConfigurationError: naming it and the nearest keyword.
    """
    for keyword in keywords:
        if keyword in own or keyword in SUB_ENDPOINT_KEYWORDS:
            continue
        suggestion = did_you_mean(keyword, own)
        if suggestion is not None:
            raise _unknown(prefix, keyword, suggestion)


def check_cut_urls(prefix: str, args: Sequence[str], kwargs: Mapping[str, str]) -> None:
    """
    Spot a URL given without escaping its colons: Twisted splits
    ``directory=https://ca.example/dir`` into ``directory=https`` and a part
    ``//ca.example/dir``.

    :raises txacme.errors.ConfigurationError: naming the keyword and the escaped form.
    """
    rests = [a for a in args if a.startswith("//")]
    if not rests:
        return
    candidates = sorted(
        ((k, v) for k, v in kwargs.items() if _SCHEME.match(v)),
        key=lambda kv: kv[1].lower() not in _URL_SCHEMES,
    )
    if candidates:
        keyword, value = candidates[0]
        example = f"{keyword}={value}\\:{rests[0]}"
        raise ConfigurationError(
            f"{prefix}: {keyword}={value} looks like a URL cut at its first colon: "
            f"escape every colon of a value as \\: (e.g. {example}; in a shell, quote "
            f"the whole string)"
        )
    raise ConfigurationError(
        f"{prefix}: {rests[0]!r} looks like the rest of a URL cut at a colon: escape "
        "every colon of a value as \\:"
    )


def explain_endpoint_error(
    what: str, description: str, error: Exception, keywords: Collection[str]
) -> str:
    """
    One line saying why Twisted refused the sub-endpoint ``description``:
    an unknown keyword (with the nearest of ``keywords`` and the sub-endpoint's
    own), a ``systemd:`` endpoint without inherited sockets, or Twisted's words.
    """
    kind = description.split(":", 1)[0].lower()
    if kind == "systemd" and isinstance(error, (IndexError, KeyError)):
        fds = os.environ.get("LISTEN_FDS")
        given = f"LISTEN_FDS={fds}" if fds else "LISTEN_FDS is not set"
        return (
            f"{what} {description!r}: systemd passed this process no such listening socket "
            f"({given}); start it from a systemd socket unit (ListenStream=), or listen "
            f"with tcp:PORT instead"
        )
    match = _UNEXPECTED_KEYWORD.search(str(error))
    if isinstance(error, TypeError) and match:
        keyword = match.group(1)
        suggestion = did_you_mean(keyword, set(keywords) | SUB_ENDPOINT_KEYWORDS)
        text = f"{what} {description!r}: unknown keyword {keyword!r}"
        if suggestion is not None:
            return f"{text}: did you mean {suggestion!r}?"
        return f"{text} (neither txacme's nor the {kind}: endpoint's)"
    return f"{what} {description!r} is not a usable endpoint: {error}"


def running_under_twistd() -> bool:
    """
    Whether the endpoint string is being parsed by ``twistd`` or ``twist``
    building its service (their runner is on the call stack).
    """
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module in ("twisted.application.app", "twisted.application.twist._twist"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
