"""
Endpoint strings: the ``le:``, ``lets:`` and ``acme:`` descriptions checked and
typed (:class:`EndpointConfig`), and the
:class:`~txacme.serving.endpoint.AutoTLSEndpoint` built from them.

Each keyword of the string has a small validator; :data:`_VALIDATORS` lists
them in the order their errors are reported.

Configuration layer: may import anything below it; imported by the endpoint
plugin only when an endpoint string is parsed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint

from txacme.certificates import check_ca_file
from txacme.config.hints import (
    check_cut_urls,
    check_misspelt_keywords,
    explain_endpoint_error,
)
from txacme.config.ondemand import OnDemandLimits, on_demand_keywords
from txacme.config.operations import operations
from txacme.config.persist import PERSIST, persist_on_demand_policy
from txacme.config.responders import challenge_responders
from txacme.config.startup import StartGuardedEndpoint
from txacme.errors import ConfigurationError
from txacme.formats import parse_flag, parse_number
from txacme.interfaces import ICertificateStore
from txacme.issuing.hooks import DEFAULT_HOOK_TIMEOUT, parse_hook_command
from txacme.issuing.ondemand import OnDemandPolicy, check_pattern
from txacme.keys import KEY_TYPES, load_or_create_client_key
from txacme.logs import Logger, parse_log_level, set_log_level
from txacme.protocol.client import Client
from txacme.protocol.resources import EAB
from txacme.protocol.transport import Exchange
from txacme.reporting.state import STATE_FILENAME
from txacme.serving.deadline import DEFAULT_HANDSHAKE_TIMEOUT
from txacme.serving.endpoint import AutoTLSEndpoint, ClientCreator
from txacme.serving.reuseport import reuse_port_endpoint, reuse_port_supported
from txacme.stores.directory import DirectoryStore
from txacme.stores.dirlocks import CoordinatingDirectoryStore
from txacme.stores.url import store_from_url

log = Logger()

CHALLENGE_TYPES = ("tls-alpn-01", "http-01", "dns-01", "dns-account-01", "dns-persist-01")
"""The challenge types ``challenge=`` may name."""
DEFAULT_TIMEOUT = 30.0
"""Seconds allowed for one request to the CA (``timeout=``)."""
DEFAULT_CHECK_INTERVAL = 12 * 3600.0
"""Seconds between full checks of the store (``check_interval=``)."""
DEFAULT_WATCH_INTERVAL = 60.0
"""Seconds between reloads of the store into the TLS index (``watch_interval=``)."""
DEFAULT_ON_DEMAND_RATE = 10
"""Kept for compatibility: a bare ``on_demand_rate=N`` counts issuances a minute; the default
is now :data:`txacme.issuing.ondemand.DEFAULT_RATE` (``50/h``)."""

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
        "watch_interval",
        "watch",
        "alpn",
        "metrics",
        "store",
        "on_demand",
        "on_demand_ask",
        "on_demand_rate",
        "on_demand_domain_rate",
        "on_demand_max",
        "on_demand_idle",
        "on_demand_ask_rate",
        "on_demand_ask_concurrency",
        "reuse_port",
        "deploy_hook",
        "deploy_hook_timeout",
        "http01_redirect",
        "preferred_chain",
        "log_level",
        "handshake_timeout",
    }
)
#: Keyword prefix of the options of ``store=`` (``store_key_file=``...).
STORE_KEYWORD_PREFIX = "store_"
#: Keyword prefixes handed to the dns-01 provider factory.
DNS_KEYWORD_PREFIXES = ("dns", "tsig_", "propagation_")
#: Keywords whose values are secrets: never shown by ``repr()`` or in errors.
SECRET_KEYWORDS = frozenset({"eab_hmac", "tsig_secret"})


def _quote(value: str) -> str:
    """Escape a value for re-use inside an endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _is_secret(keyword: str) -> bool:
    # Provider options of the lexicon bridge are API tokens and passwords.
    return keyword in SECRET_KEYWORDS or keyword.startswith("dns_lexicon_")


def _redacted(options: Mapping[str, str]) -> str:
    return repr({k: ("<redacted>" if _is_secret(k) else v) for k, v in options.items()})


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
    check_interval: float = DEFAULT_CHECK_INTERVAL
    watch_interval: float = DEFAULT_WATCH_INTERVAL
    watch: str = "auto"
    alpn: tuple[bytes, ...] = (b"http/1.1",)
    metrics: str | None = None
    store: str | None = attrs.field(default=None, repr=False)  # a URL may hold a password
    store_options: Mapping[str, str] = attrs.field(factory=dict)
    on_demand: tuple[str, ...] = ()
    on_demand_ask: str | None = None
    on_demand_rate: int = DEFAULT_ON_DEMAND_RATE
    reuse_port: bool = False
    deploy_hook: tuple[str, ...] | None = None
    deploy_hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    http01_redirect: int | None = None
    preferred_chain: str | None = None
    #: The limits of on-demand issuance (:func:`txacme.config.ondemand.on_demand_keywords`).
    on_demand_limits: OnDemandLimits = attrs.field(factory=OnDemandLimits)
    log_level: str | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


# ---------------------------------------------------------------------------
# Splitting the string
# ---------------------------------------------------------------------------


@attrs.frozen
class _Parts:
    """An endpoint string split between txacme, the DNS provider, the store and
    the sub-endpoint."""

    prefix: str
    cert_dir: str
    sub_endpoint: str
    own: Mapping[str, str]
    dns_options: Mapping[str, str]
    store_options: Mapping[str, str]


def _split(prefix: str, args: Sequence[str], kwargs: Mapping[str, str]) -> _Parts:
    if not args or not args[0]:
        raise ConfigurationError(
            f"{prefix}: needs a certificate directory, e.g. '{prefix}:/srv/www/certs:tcp:443'"
        )
    cert_dir = args[0]
    sub_args = list(args[1:])
    if not sub_args:
        raise ConfigurationError(
            f"{prefix}:{cert_dir}: needs a sub-endpoint to listen on after the "
            f"certificate directory, e.g. '{prefix}:{cert_dir}:tcp:443'"
        )
    own = {k: v for k, v in kwargs.items() if k in OWN_KEYWORDS}
    store_options = {
        k[len(STORE_KEYWORD_PREFIX) :]: v
        for k, v in kwargs.items()
        if k.startswith(STORE_KEYWORD_PREFIX) and k not in own
    }
    rest = {k: v for k, v in kwargs.items() if not k.startswith(STORE_KEYWORD_PREFIX)}
    dns_options = {
        k: v for k, v in rest.items() if k not in own and k.startswith(DNS_KEYWORD_PREFIXES)
    }
    sub_kwargs = {k: v for k, v in rest.items() if k not in own and k not in dns_options}
    sub_endpoint = ":".join(
        [_quote(a) for a in sub_args] + [f"{_quote(k)}={_quote(v)}" for k, v in sub_kwargs.items()]
    )
    return _Parts(prefix, cert_dir, sub_endpoint, own, dns_options, store_options)


def _sub_keywords(kwargs: Mapping[str, str]) -> list[str]:
    """The keywords left to the sub-endpoint (not txacme's, the store's or the DNS provider's)."""
    return [
        k
        for k in kwargs
        if k not in OWN_KEYWORDS
        and not k.startswith(STORE_KEYWORD_PREFIX)
        and not k.startswith(DNS_KEYWORD_PREFIXES)
    ]


def _directory_url(prefix: str, directory_url: str | None, own: Mapping[str, str]) -> str:
    directory = own.get("directory")
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
    return directory_url


# ---------------------------------------------------------------------------
# The keyword validators
# ---------------------------------------------------------------------------


class _Fields(TypedDict, total=False):
    """The :class:`EndpointConfig` fields the keyword validators fill in."""

    email: str | None
    key_type: str
    profile: str | None
    eab_kid: str | None
    eab_hmac: str | None
    ca_file: str | None
    timeout: float
    challenges: tuple[str, ...]
    http01_endpoint: str | None
    dns_options: Mapping[str, str]
    check_interval: float
    watch_interval: float
    watch: str
    alpn: tuple[bytes, ...]
    metrics: str | None
    store: str | None
    store_options: Mapping[str, str]
    on_demand: tuple[str, ...]
    on_demand_ask: str | None
    on_demand_rate: int
    on_demand_limits: OnDemandLimits
    reuse_port: bool
    deploy_hook: tuple[str, ...] | None
    deploy_hook_timeout: float
    http01_redirect: int | None
    preferred_chain: str | None
    log_level: str | None
    handshake_timeout: float


def _key(parts: _Parts) -> _Fields:
    key_type = parts.own.get("key", "ec256").lower()
    if key_type not in KEY_TYPES:
        raise ConfigurationError(
            f"key={parts.own['key']!r} is not a supported key type; "
            f"use one of {', '.join(KEY_TYPES)}"
        )
    return {"key_type": key_type}


def _email(parts: _Parts) -> _Fields:
    email = parts.own.get("email") or None
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise ConfigurationError(f"email={email!r} is not an e-mail address")
    return {"email": email}


def _profile(parts: _Parts) -> _Fields:
    return {"profile": parts.own.get("profile") or None}


def _read_eab_hmac_file(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError) as e:  # ValueError: not ASCII, or a NUL in the name
        raise ConfigurationError(
            f"eab_hmac_file={path!r} cannot be read: {getattr(e, 'strerror', e)}"
        )


def _eab(parts: _Parts) -> _Fields:
    eab_kid = parts.own.get("eab_kid") or None
    eab_hmac = parts.own.get("eab_hmac") or None
    eab_hmac_file = parts.own.get("eab_hmac_file") or None
    if eab_hmac and eab_hmac_file:
        raise ConfigurationError("give either eab_hmac= or eab_hmac_file=, not both")
    if eab_hmac_file:
        eab_hmac = _read_eab_hmac_file(eab_hmac_file)
    if bool(eab_kid) != bool(eab_hmac):
        raise ConfigurationError(
            "external account binding needs both eab_kid= and eab_hmac= (or eab_hmac_file=)"
        )
    return {"eab_kid": eab_kid, "eab_hmac": eab_hmac}


def _ca_file(parts: _Parts) -> _Fields:
    ca_file = parts.own.get("ca_file") or None
    if ca_file is not None:
        check_ca_file(ca_file, "ca_file=")
    return {"ca_file": ca_file}


def _seconds(parts: _Parts, name: str, default: float) -> float:
    """A positive number of seconds, or ``default`` when the keyword is absent."""
    if name not in parts.own:
        return default
    return parse_number(name, parts.own[name], minimum=0.0)


def _intervals(parts: _Parts) -> _Fields:
    return {
        "timeout": _seconds(parts, "timeout", DEFAULT_TIMEOUT),
        "check_interval": _seconds(parts, "check_interval", DEFAULT_CHECK_INTERVAL),
        "watch_interval": _seconds(parts, "watch_interval", DEFAULT_WATCH_INTERVAL),
        "handshake_timeout": _seconds(parts, "handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT),
    }


WATCH_MODES = ("auto", "inotify", "scan")
"""How a certificate directory is watched (``watch=``): ``auto`` is inotify on Linux and a stat scan
elsewhere; ``scan`` is for file systems inotify cannot see (NFS, SMB, FUSE)."""


def _watch(parts: _Parts) -> _Fields:
    mode = parts.own.get("watch", "auto")
    if mode not in WATCH_MODES:
        raise ConfigurationError(f"watch={mode!r} must be one of {', '.join(WATCH_MODES)}")
    return {"watch": mode}


def _challenges(parts: _Parts) -> _Fields:
    own = parts.own
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
    for kind in ("dns-01", "dns-account-01"):
        if kind in challenges and not parts.dns_options.get("dns"):
            raise ConfigurationError(f"challenge={kind} needs dns=<provider>, e.g. dns=rfc2136")
    dns_kinds = {"dns-01", "dns-account-01", "dns-persist-01"}
    if parts.dns_options and not dns_kinds & set(challenges):
        raise ConfigurationError(
            f"{', '.join(sorted(parts.dns_options))}: DNS options given without challenge=dns-01"
        )
    return {
        "challenges": challenges,
        "http01_endpoint": http01_endpoint,
        "dns_options": parts.dns_options,
    }


def _alpn(parts: _Parts) -> _Fields:
    own = parts.own
    try:
        alpn = tuple(
            p.strip().encode("ascii") for p in own.get("alpn", "http/1.1").split(",") if p.strip()
        )
    except UnicodeEncodeError:
        raise ConfigurationError(f"alpn={own['alpn']!r}: ALPN protocol names must be ASCII")
    if b"acme-tls/1" in alpn:
        raise ConfigurationError("alpn= must not list acme-tls/1; txacme negotiates it itself")
    return {"alpn": alpn}


def _metrics(parts: _Parts) -> _Fields:
    metrics = parts.own.get("metrics") or None
    if metrics is not None and importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError(
            "metrics= needs the prometheus-client package: pip install 'txacme[metrics]'"
        )
    return {"metrics": metrics}


def _store(parts: _Parts) -> _Fields:
    store = parts.own.get("store") or None
    if parts.store_options and not store:
        raise ConfigurationError(
            f"{', '.join(STORE_KEYWORD_PREFIX + k for k in sorted(parts.store_options))}: "
            "store options given without store="
        )
    return {"store": store, "store_options": parts.store_options}


def _on_demand(parts: _Parts) -> _Fields:
    own = parts.own
    limits = on_demand_keywords(own)
    on_demand = tuple(p.strip() for p in own.get("on_demand", "").split(",") if p.strip())
    for pattern in on_demand:
        if pattern != PERSIST:
            check_pattern(pattern)  # a one-line error now, not when the endpoint starts
    return {
        "on_demand": on_demand,
        "on_demand_ask": own.get("on_demand_ask") or None,
        "on_demand_rate": limits.rate[0],
        "on_demand_limits": limits,
    }


def _reuse_port(parts: _Parts) -> _Fields:
    reuse_port = parse_flag("reuse_port", parts.own.get("reuse_port", "no"))
    if reuse_port:
        why = reuse_port_supported()
        if why is not None:
            raise ConfigurationError(why)
    return {"reuse_port": reuse_port}


def _operations(parts: _Parts) -> _Fields:
    """``deploy_hook=``, ``deploy_hook_timeout=``, ``http01_redirect=``, ``preferred_chain=``."""
    own = parts.own
    hook = parse_hook_command(own["deploy_hook"]) if own.get("deploy_hook") else None
    timeout = _seconds(parts, "deploy_hook_timeout", DEFAULT_HOOK_TIMEOUT)
    if "deploy_hook_timeout" in own and hook is None:
        raise ConfigurationError("deploy_hook_timeout= given without deploy_hook=")
    if not timeout > 0:
        raise ConfigurationError(
            f"deploy_hook_timeout={own['deploy_hook_timeout']!r} must be positive"
        )
    redirect: int | None = None
    text = own.get("http01_redirect", "no").strip()
    if text.isdigit() and text not in ("0", "1"):
        redirect = int(text)
        if not 1 <= redirect <= 65535:
            raise ConfigurationError(
                f"http01_redirect={text!r}: give yes, no or the HTTPS port (1-65535)"
            )
    elif parse_flag("http01_redirect", text):
        redirect = 443
    if redirect is not None and not own.get("http01"):
        raise ConfigurationError("http01_redirect= needs the http01=<endpoint> listener")
    return {
        "deploy_hook": hook,
        "deploy_hook_timeout": timeout,
        "http01_redirect": redirect,
        "preferred_chain": own.get("preferred_chain") or None,
    }


def _log_level(parts: _Parts) -> _Fields:
    text = parts.own.get("log_level")
    if text is None:
        return {"log_level": None}
    return {"log_level": parse_log_level(text).name}


_VALIDATORS: tuple[Callable[[_Parts], _Fields], ...] = (
    _key,
    _email,
    _eab,
    _ca_file,
    _intervals,
    _watch,
    _challenges,
    _alpn,
    _metrics,
    _store,
    _on_demand,
    _profile,
    _reuse_port,
    _operations,
    _log_level,
)
"""The keyword validators, in the order their errors are reported."""


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
    check_cut_urls(prefix, args, kwargs)
    parts = _split(prefix, args, kwargs)
    check_misspelt_keywords(prefix, _sub_keywords(kwargs), OWN_KEYWORDS)
    directory = _directory_url(prefix, directory_url, parts.own)
    fields: _Fields = {}
    for validate in _VALIDATORS:
        fields.update(validate(parts))
    return EndpointConfig(
        prefix=prefix,
        cert_dir=parts.cert_dir,
        sub_endpoint=parts.sub_endpoint,
        directory_url=directory,
        **fields,
    )


# ---------------------------------------------------------------------------
# Building the endpoint
# ---------------------------------------------------------------------------


def _server_endpoint(reactor: IReactorTime, description: str, what: str) -> IStreamServerEndpoint:
    """``serverFromString``, with Twisted's errors turned into a ConfigurationError."""
    try:
        endpoint: IStreamServerEndpoint = serverFromString(  # type: ignore[no-untyped-call]
            reactor, description
        )
    except Exception as e:
        raise ConfigurationError(explain_endpoint_error(what, description, e, OWN_KEYWORDS)) from e
    return endpoint


def _listening_endpoint(
    reactor: IReactorTime, config: EndpointConfig, description: str, what: str
) -> IStreamServerEndpoint:
    """The endpoint for ``description``; shared with other processes under ``reuse_port=yes``."""
    endpoint = _server_endpoint(reactor, description, what)
    if config.reuse_port:
        return reuse_port_endpoint(reactor, endpoint, what)
    return endpoint


def endpoint_from_string_parts(
    reactor: IReactorTime,
    prefix: str,
    directory_url: str | None,
    args: Sequence[str],
    kwargs: Mapping[str, str],
) -> AutoTLSEndpoint:
    """The function behind the ``le:``, ``lets:`` and ``acme:`` parsers."""
    config = parse_endpoint_string_parts(prefix, directory_url, args, kwargs)
    return endpoint_from_config(reactor, config)


def _store_for(reactor: IReactorTime, config: EndpointConfig) -> ICertificateStore:
    if config.store:
        store: ICertificateStore = store_from_url(
            config.store, reactor=reactor, **config.store_options
        )
        return store
    if config.reuse_port:
        # Several processes share this directory: one order per name at a time.
        return CoordinatingDirectoryStore(config.cert_dir, clock=reactor)
    return DirectoryStore(config.cert_dir)


def _on_demand_policy(reactor: IReactorTime, config: EndpointConfig) -> OnDemandPolicy | None:
    allow = tuple(p for p in config.on_demand if p != PERSIST)
    base = None
    if allow or config.on_demand_ask:
        base = OnDemandPolicy(
            allow=allow,
            ask=config.on_demand_ask,
            ca_file=config.ca_file,
            clock=reactor,
            **config.on_demand_limits.policy_options(),
        )
    if PERSIST not in config.on_demand:
        return base
    # The persist policy answers decide() like OnDemandPolicy (see txacme.config.persist).
    policy: Any = persist_on_demand_policy(
        reactor,
        challenges=config.challenges,
        dns_options=config.dns_options,
        client_creator=_client_creator(reactor, config),
        base=base,
        limits=config.on_demand_limits.policy_options(),
    )
    return cast(OnDemandPolicy, policy)


def _client_creator(reactor: IReactorTime, config: EndpointConfig) -> ClientCreator:
    """
    Makes the ACME client, with the external account binding when one is
    given; ``client.key`` (the account key) is created in the certificate
    directory, mode 0600, when absent.
    """
    key = load_or_create_client_key(os.path.join(config.cert_dir, "client.key"))
    eab = (
        EAB(config.eab_kid, config.eab_hmac)  # type: ignore[arg-type]  # EAB takes a base64url str
        if config.eab_kid and config.eab_hmac
        else None
    )

    def client_creator(
        on_exchange: Callable[[Exchange], object] | None = None,
    ) -> Deferred[Client]:
        return Client.from_url(
            reactor,
            config.directory_url,
            key,
            ca_file=config.ca_file,
            timeout=config.timeout,
            on_exchange=on_exchange,
            eab=eab,
        )

    return client_creator


def endpoint_from_config(reactor: IReactorTime, config: EndpointConfig) -> AutoTLSEndpoint:
    """
    Build an :class:`~txacme.serving.endpoint.AutoTLSEndpoint` from a checked
    :class:`EndpointConfig`.

    The certificate directory must exist; ``client.key`` (the ACME account key)
    is created in it, mode 0600, when absent.
    """
    if config.log_level is not None:
        set_log_level(config.log_level)  # for the whole process: twistd filters nothing
    store = _store_for(reactor, config)
    on_demand = _on_demand_policy(reactor, config)
    client_creator = _client_creator(reactor, config)
    responders = challenge_responders(
        config.challenges, dns_options=config.dns_options, clock=reactor
    )
    sub_endpoint = _listening_endpoint(
        reactor, config, config.sub_endpoint, f"{config.prefix}: sub-endpoint"
    )
    http01_endpoint = None
    if config.http01_endpoint is not None:
        http01_endpoint = _listening_endpoint(reactor, config, config.http01_endpoint, "http01=")
    service_options, subscribers = operations(reactor, config, store)
    if config.metrics is not None:
        _server_endpoint(reactor, config.metrics, "metrics=")  # a bad description fails here
    endpoint = StartGuardedEndpoint(
        reactor,
        sub_endpoint,
        store,
        client_creator,
        email=config.email,
        key_type=config.key_type,
        profile=config.profile,
        check_interval=config.check_interval,
        watch_interval=config.watch_interval,
        watch_mode=config.watch,
        tls_alpn=responders.tls_alpn01 or False,
        http01_endpoint=http01_endpoint if responders.http01 is not None else None,
        http01_responder=responders.http01,
        http01_redirect=config.http01_redirect,
        service_options=service_options,
        subscribers=subscribers,
        responders=responders.dns_responders(),
        acceptable_protocols=config.alpn,
        state_file=os.path.join(config.cert_dir, STATE_FILENAME),
        metrics=config.metrics,
        on_demand=on_demand,
        on_demand_options=config.on_demand_limits.issuer_options(),
        handshake_timeout=config.handshake_timeout,
        close_store=bool(config.store) or isinstance(store, CoordinatingDirectoryStore),
    )
    endpoint.label = f"{config.prefix}:{config.cert_dir}"
    return endpoint


__all__ = [
    "CHALLENGE_TYPES",
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_ON_DEMAND_RATE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WATCH_INTERVAL",
    "DNS_KEYWORD_PREFIXES",
    "OWN_KEYWORDS",
    "SECRET_KEYWORDS",
    "STORE_KEYWORD_PREFIX",
    "EndpointConfig",
    "endpoint_from_config",
    "endpoint_from_string_parts",
    "parse_endpoint_string_parts",
]
