"""
The ``dns=...`` options of an endpoint string (and of ``txacme --dns``): checked,
then turned into a :class:`~txacme.challenges.dns01.DNS01Responder` with its
provider.

Configuration layer: may import anything below it. The providers' optional
packages (dnspython, dns-lexicon) are imported when the provider is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime

from txacme.challenges.dns01 import (
    DEFAULT_PROPAGATION_TIMEOUT,
    DEFAULT_TTL,
    DNS01Responder,
    DNSPythonLookup,
)
from txacme.challenges.dnsproviders import IDNSProvider, parse_nameserver
from txacme.errors import ConfigurationError
from txacme.formats import parse_number
from txacme.logs import Logger

log = Logger()

#: Options every ``dns=`` provider takes.
COMMON_OPTIONS = frozenset({"dns", "dns_zone", "dns_resolvers", "dns_ttl", "propagation_timeout"})
#: Options of ``dns=rfc2136``.
RFC2136_OPTIONS = frozenset(
    {"dns_server", "tsig_key_name", "tsig_algorithm", "tsig_secret_file", "tsig_secret"}
)
#: ``dns=lexicon`` takes ``dns_lexicon_provider`` and ``dns_lexicon_<option>``.
LEXICON_PREFIX = "dns_lexicon_"

_ZONE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def _number(
    options: Mapping[str, str],
    name: str,
    default: float,
    *,
    integer: bool = False,
    maximum: float | None = None,
) -> float:
    """The positive number option ``name`` gives, or ``default`` when it is absent."""
    text = options.get(name)
    if text is None:
        return default
    return parse_number(name, text, integer=integer, minimum=0.0, maximum=maximum)


def _rfc2136_provider(options: Mapping[str, str], ttl: int) -> IDNSProvider:
    from txacme.challenges.dnsproviders.rfc2136 import (
        RFC2136Provider,
        TSIGKey,
        read_tsig_key_file,
    )

    server_text = options.get("dns_server")
    if not server_text:
        raise ConfigurationError(
            "dns=rfc2136 needs dns_server=<primary server address[:port]>, "
            "e.g. dns_server=192.0.2.53 or dns_server=127.0.0.1\\:5353"
        )
    server = parse_nameserver(server_text, "dns_server")
    key_name = options.get("tsig_key_name") or None
    algorithm = options.get("tsig_algorithm") or None
    secret_file = options.get("tsig_secret_file")
    if "tsig_secret" in options and secret_file is not None:
        raise ConfigurationError("give tsig_secret_file= or tsig_secret=, not both")
    if secret_file is not None:
        key = read_tsig_key_file(secret_file, key_name, algorithm)
    elif "tsig_secret" in options:
        if key_name is None:
            raise ConfigurationError("tsig_secret= needs tsig_key_name= too")
        log.warn(
            "tsig_secret= puts the TSIG secret in the endpoint string (visible in process "
            "lists and shell history); prefer tsig_secret_file="
        )
        key = TSIGKey(key_name, options["tsig_secret"], algorithm or "hmac-sha256")
    else:
        raise ConfigurationError(
            "dns=rfc2136 needs a TSIG key: tsig_secret_file=<key file> "
            "(and tsig_key_name= when the file holds a bare secret)"
        )
    return RFC2136Provider(server, key, ttl=ttl)


def _lexicon_provider(options: Mapping[str, str], ttl: int) -> IDNSProvider:
    from txacme.challenges.dnsproviders.lexicon import LexiconProvider

    name = options.get("dns_lexicon_provider")
    if not name:
        raise ConfigurationError(
            "dns=lexicon needs dns_lexicon_provider=<lexicon provider>, "
            "e.g. dns_lexicon_provider=cloudflare"
        )
    provider_options = {
        key[len(LEXICON_PREFIX) :]: value
        for key, value in options.items()
        if key.startswith(LEXICON_PREFIX) and key != "dns_lexicon_provider"
    }
    return LexiconProvider(name, provider_options, ttl=ttl)


def _check_known_options(kind: str, options: Mapping[str, str]) -> None:
    allowed = COMMON_OPTIONS | (RFC2136_OPTIONS if kind == "rfc2136" else frozenset())
    unknown = sorted(
        k
        for k in options
        if k not in allowed and not (kind == "lexicon" and k.startswith(LEXICON_PREFIX))
    )
    if unknown:
        raise ConfigurationError(f"{', '.join(unknown)}: not an option of dns={kind}")


def _zone(options: Mapping[str, str]) -> str | None:
    zone = options.get("dns_zone") or None
    if zone is None:
        return None
    zone = zone.rstrip(".").lower()
    if not _ZONE.fullmatch(zone):
        raise ConfigurationError(f"dns_zone={options['dns_zone']!r} is not a DNS name")
    return zone


def dns01_responder_from_options(
    options: Mapping[str, str], *, clock: IReactorTime
) -> DNS01Responder:
    """
    Build a :class:`~txacme.challenges.dns01.DNS01Responder` from endpoint-string
    options.

    Options (all strings):

    ``dns``
        ``rfc2136`` or ``lexicon``.
    ``dns_server`` (rfc2136)
        The server that takes updates: ``address`` or ``address:port``
        (``[v6 address]:port``); escape ``:`` as ``\\:`` in an endpoint string.
    ``tsig_key_name``, ``tsig_algorithm``, ``tsig_secret_file`` (rfc2136)
        The TSIG key; the file is a ``tsig-keygen`` / ``keymgr`` key file or a bare
        base64 secret. ``tsig_algorithm`` defaults to the file's, else ``hmac-sha256``.
        ``tsig_secret`` (inline) works but is discouraged.
    ``dns_lexicon_provider``, ``dns_lexicon_<option>`` (lexicon)
        The lexicon provider and its options (``dns_lexicon_auth_token=...``);
        ``LEXICON_<PROVIDER>_<OPTION>`` environment variables also work.
    ``dns_zone``
        The zone to write in, instead of finding it by SOA queries.
    ``dns_resolvers``
        Comma-separated ``address[:port]`` servers to ask for every lookup and for
        the propagation check, instead of the system resolvers and the zone's
        NS records.
    ``dns_ttl``
        The TTL of the TXT records (default 60).
    ``propagation_timeout``
        Seconds to wait for the records at every name server (default 120).

    :param clock: the reactor's time, for the propagation checks.
    :raises txacme.errors.ConfigurationError: naming the bad or unknown option;
        secrets never appear in the message.
    """
    options = dict(options)
    kind = options.get("dns")
    if kind not in ("rfc2136", "lexicon"):
        raise ConfigurationError(
            f"dns={kind!r}: unknown DNS provider; use dns=rfc2136 or dns=lexicon"
        )
    _check_known_options(kind, options)
    ttl = int(_number(options, "dns_ttl", DEFAULT_TTL, integer=True, maximum=86400))
    timeout = _number(options, "propagation_timeout", DEFAULT_PROPAGATION_TIMEOUT)
    resolvers = None
    if options.get("dns_resolvers"):
        resolvers = [
            parse_nameserver(part, "dns_resolvers")
            for part in options["dns_resolvers"].split(",")
            if part.strip()
        ]
    zone = _zone(options)
    provider = (
        _rfc2136_provider(options, ttl) if kind == "rfc2136" else _lexicon_provider(options, ttl)
    )
    lookup = DNSPythonLookup(resolvers, check_servers=resolvers)
    return DNS01Responder(
        provider, lookup=lookup, zone=zone, propagation_timeout=timeout, clock=clock
    )


__all__ = [
    "COMMON_OPTIONS",
    "LEXICON_PREFIX",
    "RFC2136_OPTIONS",
    "dns01_responder_from_options",
]
