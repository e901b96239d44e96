"""
AutoTLSEndpoint: a server endpoint that serves the right certificate by SNI and
obtains missing ones, and the typed function behind ``le:``, ``lets:`` and ``acme:``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txacme.errors import ConfigurationError

if TYPE_CHECKING:
    from txacme.protocol.client import Exchange
    from txacme.reporting.metrics import Metrics

log = Logger()

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
        "watch_interval",
        "alpn",
        "metrics",
        "store",
        "on_demand",
        "on_demand_ask",
        "on_demand_rate",
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
    check_interval: float = 12 * 3600.0
    watch_interval: float = 60.0
    alpn: tuple[bytes, ...] = (b"http/1.1",)
    metrics: str | None = None
    store: str | None = attrs.field(default=None, repr=False)  # a URL may hold a password
    store_options: Mapping[str, str] = attrs.field(factory=dict)
    on_demand: tuple[str, ...] = ()
    on_demand_ask: str | None = None
    on_demand_rate: int = 10


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
    store_options = {
        k[len(STORE_KEYWORD_PREFIX) :]: v
        for k, v in kwargs.items()
        if k.startswith(STORE_KEYWORD_PREFIX) and k not in own
    }
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith(STORE_KEYWORD_PREFIX)}
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
        except (OSError, ValueError) as e:  # ValueError: not ASCII, or a NUL in the name
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
    watch_interval = (
        _positive_float("watch_interval", own["watch_interval"])
        if "watch_interval" in own
        else 60.0
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

    try:
        alpn = tuple(
            p.strip().encode("ascii") for p in own.get("alpn", "http/1.1").split(",") if p.strip()
        )
    except UnicodeEncodeError:
        raise ConfigurationError(f"alpn={own['alpn']!r}: ALPN protocol names must be ASCII")
    if b"acme-tls/1" in alpn:
        raise ConfigurationError("alpn= must not list acme-tls/1; txacme negotiates it itself")

    metrics = own.get("metrics") or None
    if metrics is not None:
        import importlib.util

        if importlib.util.find_spec("prometheus_client") is None:
            raise ConfigurationError(
                "metrics= needs the prometheus-client package: pip install 'txacme[metrics]'"
            )

    if store_options and not own.get("store"):
        raise ConfigurationError(
            f"{', '.join(STORE_KEYWORD_PREFIX + k for k in sorted(store_options))}: "
            "store options given without store="
        )
    on_demand = tuple(p.strip() for p in own.get("on_demand", "").split(",") if p.strip())
    on_demand_rate = 10
    if "on_demand_rate" in own:
        try:
            on_demand_rate = int(own["on_demand_rate"])
        except ValueError:
            on_demand_rate = 0
        if on_demand_rate < 1:
            raise ConfigurationError(
                f"on_demand_rate={own['on_demand_rate']!r} must be a positive integer "
                "(issuances per minute)"
            )

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
        watch_interval=watch_interval,
        alpn=alpn,
        metrics=metrics,
        store=own.get("store") or None,
        store_options=store_options,
        on_demand=on_demand,
        on_demand_ask=own.get("on_demand_ask") or None,
        on_demand_rate=on_demand_rate,
    )


def _server_endpoint(reactor: Any, description: str, what: str) -> Any:
    """``serverFromString``, with Twisted's errors turned into a ConfigurationError."""
    try:
        return serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    except Exception as e:
        raise ConfigurationError(f"{what} {description!r} is not a usable endpoint: {e}") from e


def endpoint_from_string_parts(
    reactor: IReactorCore,
    prefix: str,
    directory_url: str | None,
    args: Sequence[str],
    kwargs: Mapping[str, str],
) -> AutoTLSEndpoint:
    """The function behind the ``le:``, ``lets:`` and ``acme:`` parsers."""
    config = parse_endpoint_string_parts(prefix, directory_url, args, kwargs)
    return endpoint_from_config(reactor, config)


def endpoint_from_config(reactor: Any, config: EndpointConfig) -> AutoTLSEndpoint:
    """
    Build an :class:`AutoTLSEndpoint` from a checked :class:`EndpointConfig`.

    The certificate directory must exist; ``client.key`` (the ACME account key)
    is created in it, mode 0600, when absent.
    """
    from txacme.keys import load_or_create_client_key
    from txacme.protocol.client import EAB, Client
    from txacme.reporting.state import STATE_FILENAME
    from txacme.stores.directory import DirectoryStore

    store: Any
    if config.store:
        from txacme.stores.url import store_from_url

        store = store_from_url(config.store, reactor=reactor, **config.store_options)
    else:
        store = DirectoryStore(config.cert_dir)
    on_demand = None
    if config.on_demand or config.on_demand_ask:
        from txacme.issuing.ondemand import OnDemandPolicy

        on_demand = OnDemandPolicy(
            allow=config.on_demand, ask=config.on_demand_ask, ca_file=config.ca_file
        )
    key = load_or_create_client_key(os.path.join(config.cert_dir, "client.key"))
    eab = (
        EAB(config.eab_kid, config.eab_hmac)  # type: ignore[arg-type]
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
        )

    responders: list[Any] = []
    if "dns-01" in config.challenges:
        from txacme.challenges.dnsproviders import dns01_responder_from_options

        responders.append(dns01_responder_from_options(config.dns_options))
    sub_endpoint = _server_endpoint(reactor, config.sub_endpoint, f"{config.prefix}: sub-endpoint")
    http01_endpoint = None
    if config.http01_endpoint is not None:
        http01_endpoint = _server_endpoint(reactor, config.http01_endpoint, "http01=")
    return AutoTLSEndpoint(
        reactor,
        sub_endpoint,
        store,
        client_creator,
        email=config.email,
        eab=eab,
        key_type=config.key_type,
        profile=config.profile,
        check_interval=config.check_interval,
        watch_interval=config.watch_interval,
        tls_alpn=("tls-alpn-01" in config.challenges),
        http01_endpoint=http01_endpoint if "http-01" in config.challenges else None,
        responders=responders,
        acceptable_protocols=config.alpn,
        state_file=os.path.join(config.cert_dir, STATE_FILENAME),
        metrics=config.metrics,
        on_demand=on_demand,
        on_demand_rate=config.on_demand_rate,
        close_store=bool(config.store),
    )


@implementer(IListeningPort)
class AutoTLSPort:
    """
    The listening port of an :class:`AutoTLSEndpoint`.

    ``stopListening()`` stops the issuing service, the store watcher and any
    ``http-01`` listener too.
    """

    def __init__(
        self,
        port: IListeningPort,
        service: Any,
        stoppers: Sequence[Callable[[], object]],
        after: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.port = port
        self.service = service
        self._stoppers = list(stoppers)
        self._after = list(after)

    def startListening(self) -> None:  # noqa: N802
        """Start listening again (delegates to the wrapped port)."""
        self.port.startListening()

    def stopListening(self) -> Deferred[None]:  # noqa: N802
        """Stop the service and every listener; fire when all have stopped."""
        waits = [maybeDeferred(stop) for stop in self._stoppers]
        waits.append(maybeDeferred(self.port.stopListening))

        def then(_: object) -> Deferred[Any]:
            # What everything else used (a store the endpoint made) goes last.
            later = [maybeDeferred(close) for close in self._after]
            return DeferredList(later, consumeErrors=True)

        d = DeferredList(waits, consumeErrors=True).addCallback(then)
        return d.addCallback(lambda _: None)

    def getHost(self) -> Any:  # noqa: N802
        """The address the wrapped port listens on."""
        return self.port.getHost()


@implementer(IStreamServerEndpoint)
class AutoTLSEndpoint:
    """
    A server endpoint that serves TLS with certificates that obtain and renew
    themselves.

    Wraps any stream server endpoint (``tcp:443``, ``unix:...``, systemd
    sockets...). On :meth:`listen` it loads every certificate of ``cert_store``
    into memory, listens on ``sub_endpoint`` with TLS chosen by SNI, starts an
    :class:`~txacme.issuing.service.AcmeIssuingService` that answers ``tls-alpn-01`` on
    that same port, and fires once the names that had no certificate have had
    their first attempt.

    :param reactor: the reactor.
    :param sub_endpoint: the endpoint to listen on (the CA reaches it on port 443
        for ``tls-alpn-01``).
    :param cert_store: an :class:`~txacme.interfaces.ICertificateStore`.
    :param client_creator: returns a ``Deferred`` of a ``txacme.protocol.client.Client``.
        When ``metrics`` is set and it accepts an ``on_exchange`` keyword
        argument (as :meth:`txacme.protocol.client.Client.from_url` does), it is called
        with the callback that counts the client's requests to the CA
        (``txacme_acme_requests_total``); pass it on to the client.
    :param email: the ACME account's contact address.
    :param eab: a ``txacme.protocol.client.EAB`` for CAs that require external account
        binding.
    :param key_type: the type of certificate keys (``ec256``, ``rsa2048``...).
    :param profile: the ACME profile to request, if any.
    :param check_interval: seconds between full checks of the store.
    :param watch_interval: seconds between reloads of the store into the TLS
        index, which serves certificates another process wrote and issues names
        whose (empty) entry appeared; ``None`` to not watch.
    :param tls_alpn: answer ``tls-alpn-01`` on ``sub_endpoint`` (default).
    :param http01_endpoint: also listen here (port 80) and answer ``http-01``.
    :param responders: further responders (``dns-01``).
    :param acceptable_protocols: ALPN protocols of the application, most
        preferred first (the factory's own, if it declares them, come first).
    :param panic: ``panic(failure, server_name)`` when renewal fails close to
        expiry (the default logs at CRITICAL).
    :param service_options: further keyword arguments of
        :class:`~txacme.issuing.service.AcmeIssuingService`.
    :param subscribers: callbacks given every event of the service
        (:meth:`~txacme.issuing.service.AcmeIssuingService.subscribe`), from the first.
    :param state_file: where to keep the per-name report read by ``txacme
        status`` (:mod:`txacme.reporting.state`), or ``None``.
    :param metrics: an endpoint description on which to serve Prometheus
        metrics (:func:`txacme.reporting.metrics.serve_metrics`), or ``None``.
    :param on_demand: a :class:`txacme.issuing.ondemand.OnDemandPolicy`: a handshake for
        an unknown name it allows is held while the name is issued.
    :param on_demand_rate: at most this many on-demand issuances a minute.
    :param hello_timeout: seconds a handshake is held for on-demand issuance
        (or a cluster's challenge look-up) before it falls back.
    :param close_store: call ``cert_store.close()`` when the port stops (for a
        store the endpoint made, such as one from ``store=``).

    With a store that provides
    :class:`~txacme.stores.coordination.ICoordinatingStore` (such as
    :class:`~txacme.stores.postgres.PostgresStore`) the endpoint is one node of a
    cluster: names are ordered under the store's lock, challenges started by
    any node are answered here, and changes are notified instead of polled.
    """

    def __init__(
        self,
        reactor: Any,
        sub_endpoint: IStreamServerEndpoint,
        cert_store: Any,
        client_creator: Callable[..., Any],
        *,
        email: str | None = None,
        eab: Any = None,
        key_type: str = "ec256",
        profile: str | None = None,
        check_interval: float | timedelta = timedelta(hours=12),
        watch_interval: float | None = 60.0,
        tls_alpn: bool = True,
        http01_endpoint: IStreamServerEndpoint | None = None,
        responders: Sequence[Any] = (),
        acceptable_protocols: Sequence[bytes] = (),
        panic: Callable[[Failure, str], object] | None = None,
        service_options: Mapping[str, Any] | None = None,
        subscribers: Sequence[Callable[[Any], object]] = (),
        state_file: str | None = None,
        metrics: str | None = None,
        on_demand: Any = None,
        on_demand_rate: int = 10,
        hello_timeout: float = 10.0,
        close_store: bool = False,
    ) -> None:
        if not (tls_alpn or http01_endpoint is not None or responders):
            raise ConfigurationError(
                "AutoTLSEndpoint needs a way to answer challenges: tls_alpn=True, "
                "an http01_endpoint, or responders"
            )
        if watch_interval is not None and not watch_interval > 0:
            raise ConfigurationError(f"watch_interval={watch_interval!r} must be positive")
        self.reactor = reactor
        self.sub_endpoint = sub_endpoint
        self.cert_store = cert_store
        self.client_creator = client_creator
        self.email = email
        self.eab = eab
        self.key_type = key_type
        self.profile = profile
        self.check_interval = check_interval
        self.watch_interval = watch_interval
        self.tls_alpn = tls_alpn
        self.http01_endpoint = http01_endpoint
        self.responders = list(responders)
        self.acceptable_protocols = tuple(acceptable_protocols)
        self.panic = panic
        self.service_options = dict(service_options or {})
        self.subscribers = list(subscribers)
        self.state_file = state_file
        self.metrics = metrics
        self.metrics_port: Any = None
        self.on_demand = on_demand
        self.on_demand_rate = on_demand_rate
        self.hello_timeout = hello_timeout
        self.close_store = close_store
        self.service: Any = None
        self.index: Any = None
        self._on_exchange: Callable[[Exchange], object] | None = None

    def _client_creator(self) -> Deferred[Any]:
        d: Deferred[Any]
        if self._on_exchange is not None and _accepts_keyword(
            self.client_creator, "on_exchange"
        ):
            d = maybeDeferred(self.client_creator, on_exchange=self._on_exchange)
        else:
            d = maybeDeferred(self.client_creator)
        if self.eab is None:
            return d

        def with_eab(client: Any) -> Any:
            # The service calls client.start(email=...); bind the account here.
            original_start = client.start

            def start(email: str | None = None, eab: Any = None) -> Any:
                return original_start(email=email, eab=eab or self.eab)

            client.start = start
            return client

        return d.addCallback(with_eab)

    async def _listen(self, factory: IProtocolFactory) -> AutoTLSPort:
        from txacme.challenges.http01 import HTTP01Responder, http01_root
        from txacme.challenges.tlsalpn01 import TLSALPN01Responder
        from txacme.issuing.service import AcmeIssuingService
        from txacme.serving.tls import (
            CertificateIndex,
            SNIConnectionCreator,
            StoreWatcher,
            tls_server_factory,
        )
        from txacme.stores.coordination import ClusterNode, provides_coordination

        index = CertificateIndex()
        loaded = await index.load_from(self.cert_store)
        self.index = index
        responders = list(self.responders)
        registry = None
        if self.tls_alpn:
            tls_responder = TLSALPN01Responder()
            registry = tls_responder.registry
            responders.append(tls_responder)
        http_responder = HTTP01Responder() if self.http01_endpoint is not None else None
        if http_responder is not None:
            responders.append(http_responder)
        creator = SNIConnectionCreator(
            index, challenges=registry, acceptable_protocols=self.acceptable_protocols
        )
        stoppers: list[Callable[[], object]] = []
        def unwind() -> None:
            for stop in stoppers:
                stop()

        metrics: Metrics | None = None
        if self.metrics is not None:
            from txacme.reporting.metrics import Metrics

            # Made before the service, whose client reports its requests to it.
            metrics = Metrics(clock=self.reactor)
            self._on_exchange = metrics.observe_exchange
        # The service exists before the port listens, so that a handshake
        # arriving at once (on-demand, a cluster's wanted name) can issue; it is
        # started only once the CA can reach the port.
        service: Any = None

        def issue_cert(name: str) -> Deferred[Any]:
            return service.issue_cert(name)  # type: ignore[no-any-return]

        cluster = None
        if provides_coordination(self.cert_store):
            cluster = ClusterNode(
                self.cert_store,
                index,
                tls_alpn=registry,
                http01=http_responder,
                on_wanted=lambda name: issue_cert(name).addErrback(lambda _: None),
                clock=self.reactor,
            )
            responders = cluster.responders(responders)
        service = AcmeIssuingService(
            self.cert_store,
            self._client_creator,
            self.reactor,
            responders,
            email=self.email,
            key_type=self.key_type,
            profile=self.profile,
            check_interval=self.check_interval,
            panic=self.panic,
            on_stored=index.update,
            **self.service_options,
        )
        self.service = service
        for subscriber in self.subscribers:
            service.subscribe(subscriber)
        if self.state_file is not None:
            from txacme.reporting.state import StateFile, StateRecorder

            recorder = StateRecorder(StateFile(self.state_file), self.reactor)
            stoppers.append(recorder.attach(service))

        hooks = []
        if cluster is not None:
            cluster.start()
            stoppers.append(cluster.stop)
            hooks.append(cluster.hello_hook)
        if self.on_demand is not None:
            from txacme.issuing.ondemand import OnDemandIssuer

            on_demand = OnDemandIssuer(
                self.on_demand,
                issue_cert,
                index,
                rate=self.on_demand_rate,
                per=60.0,
                clock=self.reactor,
            )
            hooks.append(on_demand.hello_hook)
        tls_factory: Any
        if hooks:
            from txacme.issuing.ondemand import HelloHookFactory, combine_hooks

            tls_factory = HelloHookFactory(
                creator,
                factory,
                combine_hooks(*hooks),
                timeout=self.hello_timeout,
                clock=self.reactor,
            )
        else:
            tls_factory = tls_server_factory(creator, factory)

        try:
            if http_responder is not None:
                from twisted.web.server import Site

                assert self.http01_endpoint is not None
                root = http01_root(cluster.http01 if cluster is not None else http_responder)
                http_port = await self.http01_endpoint.listen(
                    Site(root)  # type: ignore[no-untyped-call]
                )
                stoppers.append(http_port.stopListening)
            port = await self.sub_endpoint.listen(tls_factory)
        except BaseException:
            unwind()
            raise
        if self.metrics is not None:
            from txacme.reporting.metrics import serve_metrics

            try:
                self.metrics_port = await serve_metrics(
                    self.reactor, self.metrics, service, metrics=metrics, store=self.cert_store
                )
            except BaseException:
                unwind()
                await maybeDeferred(port.stopListening)
                raise
            stoppers.append(self.metrics_port.stopListening)
        service.startService()
        stoppers.insert(0, service.stopService)
        # A coordinating store notifies changes; others are polled.
        if self.watch_interval is not None and cluster is None:
            watcher = StoreWatcher(
                index,
                self.cert_store,
                self.watch_interval,
                self.reactor,
                on_loaded=_issue_new_empty_entries(set(loaded), service),
            )
            watcher.startService()
            stoppers.insert(0, watcher.stopService)
        await service.when_certs_valid()
        close = getattr(self.cert_store, "close", None) if self.close_store else None
        return AutoTLSPort(port, service, stoppers, after=[close] if close else [])

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """
        Listen with automatic TLS; fires with the port once the names without a
        certificate have had a first attempt at issuance.
        """
        return Deferred.fromCoroutine(self._listen(protocolFactory))


def _accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` can be called with the keyword argument ``name``."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == name
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        for p in parameters
    )


def _issue_new_empty_entries(
    known: set[str], service: Any
) -> Callable[[dict[str, list[Any]]], None]:
    """
    The store watcher's ``on_loaded``: an entry that appeared empty since the
    last read (a new ``<name>.pem``) is issued at once.
    """

    def on_loaded(entries: dict[str, list[Any]]) -> None:
        for name in sorted(entries.keys() - known):
            if not entries[name]:
                log.info("new empty entry {name}: issuing", name=name)
                service.issue_cert(name).addErrback(lambda _: None)
        known.clear()
        known.update(entries)

    return on_loaded


__all__ = [
    "AutoTLSEndpoint",
    "AutoTLSPort",
    "EndpointConfig",
    "endpoint_from_config",
    "endpoint_from_string_parts",
    "parse_endpoint_string_parts",
]
