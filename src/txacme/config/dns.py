"""
The ``dns=...`` options of an endpoint string (and of ``txacme --dns``): checked,
then turned into a :class:`~txacme.challenges.dns01.DNS01Responder` with its
provider.

Configuration layer: may import anything below it. The providers' optional
packages (dnspython, dns-lexicon) are imported when the provider is built.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime

from txacme.challenges.dns01 import (
    DEFAULT_PROPAGATION_TIMEOUT,
    DEFAULT_TTL,
    DNS01Responder,
    DNSPythonLookup,
)
from txacme.challenges.dnspersist01 import DNSPersist01Responder
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
#: Options of ``challenge=dns-persist-01`` (with or without ``dns=``).
PERSIST_OPTIONS = frozenset({"dns_persist_issuer", "dns_persist_wildcard", "dns_persist_until"})
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
    options: Mapping[str, str],
    *,
    clock: IReactorTime,
    responder_class: type[DNS01Responder] = DNS01Responder,
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
    :param responder_class: :class:`~txacme.challenges.dns01.DNS01Responder` or
        a subclass (``DNSAccount01Responder`` for ``dns-account-01``).
    :raises txacme.errors.ConfigurationError: naming the bad or unknown option;
        secrets never appear in the message.
    """
    options = {k: v for k, v in options.items() if k not in PERSIST_OPTIONS}
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
    return responder_class(
        provider, lookup=lookup, zone=zone, propagation_timeout=timeout, clock=clock
    )


def parse_persist_until(text: str, option: str = "dns_persist_until") -> int:
    """
    A ``persistUntil`` time: UNIX seconds, a date (``2027-12-31``, the end of
    that day in UTC) or an ISO 8601 time with a zone (``2027-12-31T12:00Z``).

    :raises txacme.errors.ConfigurationError: naming ``option``.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        if len(text) == 10:
            day = datetime.date.fromisoformat(text)
            end = datetime.datetime.combine(day, datetime.time(23, 59, 59), datetime.timezone.utc)
            return int(end.timestamp())
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigurationError(
            f"{option}={text!r}: expected UNIX seconds, a date (2027-12-31) or an "
            "ISO 8601 time with a zone (2027-12-31T12:00Z)"
        )
    return int(when.timestamp())


def dns_persist01_responder_from_options(
    options: Mapping[str, str], *, clock: IReactorTime
) -> DNSPersist01Responder:
    """
    Build a :class:`~txacme.challenges.dnspersist01.DNSPersist01Responder`.

    With ``dns=rfc2136`` or ``dns=lexicon`` (and that provider's options, as for
    ``dns-01``) a missing record is published once; without ``dns=`` the
    responder only checks, and names the record to create. Also:

    ``dns_persist_issuer``
        The issuer domain name to publish when the CA offers it (default: the
        CA's first).
    ``dns_persist_wildcard``
        ``yes``: publish ``policy=wildcard`` for every name (default ``no``:
        only for wildcards).
    ``dns_persist_until``
        ``persistUntil`` of published records (UNIX seconds, ``2027-12-31``
        or an ISO 8601 time with a zone).
    ``dns_zone``, ``dns_resolvers``, ``propagation_timeout``
        As for ``dns-01``.
    """
    persist = {k: v for k, v in options.items() if k in PERSIST_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in PERSIST_OPTIONS}
    provider: IDNSProvider | None = None
    if rest.get("dns"):
        built = dns01_responder_from_options(rest, clock=clock)
        provider, lookup, zone = built.provider, built.lookup, built.zone
        timeout = built.propagation_timeout
    else:
        allowed = {"dns", "dns_zone", "dns_resolvers", "propagation_timeout"}
        unknown = sorted(set(rest) - allowed)
        if unknown:
            raise ConfigurationError(
                f"{', '.join(unknown)}: not an option of dns-persist-01 without dns="
            )
        resolvers = None
        if rest.get("dns_resolvers"):
            resolvers = [
                parse_nameserver(part, "dns_resolvers")
                for part in rest["dns_resolvers"].split(",")
                if part.strip()
            ]
        lookup = DNSPythonLookup(resolvers, check_servers=resolvers)
        zone = _zone(rest)
        timeout = _number(rest, "propagation_timeout", DEFAULT_PROPAGATION_TIMEOUT)
    wildcard_text = persist.get("dns_persist_wildcard", "no").strip().lower()
    if wildcard_text not in ("yes", "no", "true", "false", "1", "0"):
        raise ConfigurationError(f"dns_persist_wildcard={wildcard_text!r}: expected yes or no")
    until = persist.get("dns_persist_until")
    issuer = persist.get("dns_persist_issuer") or None
    if issuer is not None:
        issuer = issuer.strip().lower().rstrip(".")
        if not _ZONE.fullmatch(issuer):
            raise ConfigurationError(f"dns_persist_issuer={issuer!r} is not a DNS name")
    return DNSPersist01Responder(
        provider,
        lookup=lookup,
        zone=zone,
        issuer_domain_name=issuer,
        wildcard_policy=wildcard_text in ("yes", "true", "1"),
        persist_until=parse_persist_until(until) if until else None,
        propagation_timeout=timeout,
        clock=clock,
    )


__all__ = [
    "COMMON_OPTIONS",
    "LEXICON_PREFIX",
    "PERSIST_OPTIONS",
    "RFC2136_OPTIONS",
    "dns01_responder_from_options",
    "dns_persist01_responder_from_options",
    "parse_persist_until",
]
