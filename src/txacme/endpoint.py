"""
AutoTLSEndpoint: a server endpoint that serves the right certificate by SNI and
obtains missing ones, and the typed function behind ``le:``, ``lets:`` and ``acme:``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from txacme.errors import ConfigurationError

KEY_TYPES = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096")
CHALLENGE_TYPES = ("tls-alpn-01", "http-01", "dns-01")
DEFAULT_TIMEOUT = 30.0

#: Keywords the endpoint string gives to txacme; every other keyword belongs to
#: the sub-endpoint (``interface=``, ``backlog=``...).
OWN_KEYWORDS = frozenset(
    {
        "directory",
        "email",
        "key",
        "profile",
        "eab_kid",
        "eab_hmac",
        "eab_hmac_file",
        "ca_file",
        "timeout",
        "challenge",
        "http01",
        "check_interval",
        "alpn",
    }
)
#: Keyword prefixes handed to the dns-01 provider factory.
DNS_KEYWORD_PREFIXES = ("dns", "tsig_", "propagation_")
#: Keywords whose values are secrets: never shown by ``repr()`` or in errors.
SECRET_KEYWORDS = frozenset({"eab_hmac", "tsig_secret"})


def _quote(value: str) -> str:
    """Escape a value for re-use inside an endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _redacted(options: Mapping[str, str]) -> str:
    return repr({k: ("<redacted>" if k in SECRET_KEYWORDS else v) for k, v in options.items()})


@attrs.frozen
class EndpointConfig:
    """
    What an ``le:`` / ``lets:`` / ``acme:`` endpoint string says, checked and typed.

    Secrets (``eab_hmac``, TSIG secrets) are kept out of ``repr()``.
    """

    prefix: str
    cert_dir: str
    sub_endpoint: str
    directory_url: str
    email: str | None = None
    key_type: str = "ec256"
    profile: str | None = None
    eab_kid: str | None = None
    eab_hmac: str | None = attrs.field(default=None, repr=False)
    ca_file: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    challenges: tuple[str, ...] = ("tls-alpn-01",)
    http01_endpoint: str | None = None
    dns_options: Mapping[str, str] = attrs.field(factory=dict, repr=_redacted)
    check_interval: float = 12 * 3600.0
    alpn: tuple[bytes, ...] = (b"http/1.1",)


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number")
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigurationError(f"{name}={value!r} must be a positive number of seconds")
    return number


def parse_endpoint_string_parts(
    prefix: str,
    directory_url: str | None,
    args: Sequence[str],
    kwargs: Mapping[str, str],
) -> EndpointConfig:
    """
    Check and type the parts of an endpoint string as Twisted's parser split them.

    ``args`` are the positional parts after the prefix: the certificate directory
    then the sub-endpoint description (``tcp``, ``443``...). ``kwargs`` mixes our
    keywords with the sub-endpoint's; ours are taken out, the others go back into
    the sub-endpoint description.

    :raises ConfigurationError: naming the part of the string that is wrong.
    """
    if not args or not args[0]:
        raise ConfigurationError(
            f"{prefix}: needs a certificate directory, e.g. "
            f"'{prefix}:/srv/www/certs:tcp:443'"
        )
    cert_dir = args[0]
    sub_args = list(args[1:])
    if not sub_args:
        raise ConfigurationError(
            f"{prefix}:{cert_dir}: needs a sub-endpoint to listen on after the "
            f"certificate directory, e.g. '{prefix}:{cert_dir}:tcp:443'"
        )
    own = {k: v for k, v in kwargs.items() if k in OWN_KEYWORDS}
    dns_options = {
        k: v for k, v in kwargs.items() if k not in own and k.startswith(DNS_KEYWORD_PREFIXES)
    }
    sub_kwargs = {k: v for k, v in kwargs.items() if k not in own and k not in dns_options}
    sub_endpoint = ":".join(
        [_quote(a) for a in sub_args] + [f"{_quote(k)}={_quote(v)}" for k, v in sub_kwargs.items()]
    )

    directory = own.pop("directory", None)
    if directory_url is None:
        if not directory:
            raise ConfigurationError(
                f"{prefix}: needs directory=<ACME directory URL> (escape its colons: "
                f"directory=https\\://ca.example/directory)"
            )
        directory_url = directory
    elif directory is not None:
        raise ConfigurationError(
            f"{prefix}: takes no directory= (it always uses {directory_url}); use acme: "
            f"for another CA"
        )
    if not directory_url.startswith("https://"):
        raise ConfigurationError(
            f"directory={directory_url!r}: an ACME directory URL must start with https://"
        )

    key_type = own.get("key", "ec256").lower()
    if key_type not in KEY_TYPES:
        raise ConfigurationError(
            f"key={own['key']!r} is not a supported key type; use one of {', '.join(KEY_TYPES)}"
        )

    email = own.get("email") or None
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise ConfigurationError(f"email={email!r} is not an e-mail address")

    eab_kid = own.get("eab_kid") or None
    eab_hmac = own.get("eab_hmac") or None
    eab_hmac_file = own.get("eab_hmac_file") or None
    if eab_hmac and eab_hmac_file:
        raise ConfigurationError("give either eab_hmac= or eab_hmac_file=, not both")
    if eab_hmac_file:
        try:
            with open(eab_hmac_file, encoding="ascii") as f:
                eab_hmac = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigurationError(
                f"eab_hmac_file={eab_hmac_file!r} cannot be read: {getattr(e, 'strerror', e)}"
            )
    if bool(eab_kid) != bool(eab_hmac):
        raise ConfigurationError(
            "external account binding needs both eab_kid= and eab_hmac= (or eab_hmac_file=)"
        )

    ca_file = own.get("ca_file") or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigurationError(f"ca_file={ca_file!r} is not a readable file")

    timeout = _positive_float("timeout", own["timeout"]) if "timeout" in own else DEFAULT_TIMEOUT
    check_interval = (
        _positive_float("check_interval", own["check_interval"])
        if "check_interval" in own
        else 12 * 3600.0
    )

    challenges = tuple(
        c.strip().lower() for c in own.get("challenge", "tls-alpn-01").split(",") if c.strip()
    )
    for c in challenges:
        if c not in CHALLENGE_TYPES:
            raise ConfigurationError(
                f"challenge={own['challenge']!r}: {c!r} is not one of {', '.join(CHALLENGE_TYPES)}"
            )
    if not challenges:
        raise ConfigurationError("challenge= names no challenge type")
    http01_endpoint = own.get("http01") or None
    if "http-01" in challenges and http01_endpoint is None:
        raise ConfigurationError(
            "challenge=http-01 needs http01=<endpoint for port 80>, e.g. http01=tcp\\:80"
        )
    if "dns-01" in challenges and not dns_options.get("dns"):
        raise ConfigurationError("challenge=dns-01 needs dns=<provider>, e.g. dns=rfc2136")
    if dns_options and "dns-01" not in challenges:
        raise ConfigurationError(
            f"{', '.join(sorted(dns_options))}: DNS options given without challenge=dns-01"
        )

    alpn = tuple(
        p.strip().encode("ascii") for p in own.get("alpn", "http/1.1").split(",") if p.strip()
    )
    if b"acme-tls/1" in alpn:
        raise ConfigurationError("alpn= must not list acme-tls/1; txacme negotiates it itself")

    return EndpointConfig(
        prefix=prefix,
        cert_dir=cert_dir,
        sub_endpoint=sub_endpoint,
        directory_url=directory_url,
        email=email,
        key_type=key_type,
        profile=own.get("profile") or None,
        eab_kid=eab_kid,
        eab_hmac=eab_hmac,
        ca_file=ca_file,
        timeout=timeout,
        challenges=challenges,
        http01_endpoint=http01_endpoint,
        dns_options=dns_options,
        check_interval=check_interval,
        alpn=alpn,
    )


def endpoint_from_string_parts(
    reactor: Any,
    prefix: str,
    directory_url: str | None,
    args: Sequence[str],
    kwargs: Mapping[str, str],
) -> Any:
    """The function behind the ``le:``, ``lets:`` and ``acme:`` parsers."""
    config = parse_endpoint_string_parts(prefix, directory_url, args, kwargs)
    return endpoint_from_config(reactor, config)


def endpoint_from_config(reactor: Any, config: EndpointConfig) -> Any:
    """Build an :class:`AutoTLSEndpoint` from a checked :class:`EndpointConfig`."""
    raise NotImplementedError
