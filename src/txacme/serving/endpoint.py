"""
:class:`AutoTLSEndpoint`: a server endpoint that serves the right certificate by
SNI and obtains missing ones, and its listening port :class:`AutoTLSPort`.

The endpoint strings (``le:``, ``lets:``, ``acme:``) that build one are read by
:mod:`txacme.config.endpoint`.

Serving layer: may import the core modules, protocol, challenges, stores,
issuing, reporting and the rest of :mod:`txacme.serving`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from txacme.challenges.http01 import HTTP01Responder, HTTP01Site, http01_root
from txacme.challenges.tlsalpn01 import TLSALPN01Registry, TLSALPN01Responder
from txacme.errors import ConfigurationError
from txacme.interfaces import ClosableStore, ICertificateStore, IResponder
from txacme.issuing.events import ServiceEvent
from txacme.issuing.ondemand import OnDemandPolicy
from txacme.issuing.refusals import RefusalLog
from txacme.issuing.service import AcmeIssuingService
from txacme.logs import Logger
from txacme.protocol.client import Client
from txacme.protocol.resources import EAB
from txacme.protocol.transport import Exchange
from txacme.reporting.metrics import Metrics, serve_metrics
from txacme.reporting.state import StateFile, StateRecorder
from txacme.serving.cluster import ClusterNode
from txacme.serving.deadline import DEFAULT_HANDSHAKE_TIMEOUT, check_handshake_timeout
from txacme.serving.hello import HelloHook, HelloHookFactory, combine_hooks, defer_accept
from txacme.serving.index import CertificateIndex, StoreEntries
from txacme.serving.loader import StoreLoader
from txacme.serving.ondemand import make_on_demand_issuer
from txacme.serving.tls import SNIConnectionCreator, tls_server_factory
from txacme.serving.watcher import StoreWatcher
from txacme.stores.coordination import provides_coordination
from txacme.stores.directory import DirectoryStore

log = Logger()

ClientCreator = Callable[..., "Deferred[Client]"]
"""Makes the ACME client: returns a ``Deferred`` of a :class:`~txacme.protocol.client.Client`."""


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
        service: AcmeIssuingService,
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

        def then(_: object) -> Deferred[list[tuple[bool, object]]]:
            # What everything else used (a store the endpoint made) goes last.
            later = [maybeDeferred(close) for close in self._after]
            return DeferredList(later, consumeErrors=True)

        d = DeferredList(waits, consumeErrors=True).addCallback(then)
        return d.addCallback(lambda _: None)

    def getHost(self) -> IAddress:  # noqa: N802
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

    :param reactor: the reactor (its time, its listeners and connections).
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
    :param watch_interval: for a directory store, seconds between the
        safety-net stat scans behind the change notifications (inotify, or a
        stat scan every second where there is none): a changed file is read
        again, alone, off the reactor thread, and a new empty entry is issued
        at once. For other stores, seconds between full reloads into the TLS
        index. Either way certificates another process wrote are served and
        names whose (empty) entry appeared are issued; ``None`` to not watch.
    :param watch_mode: how a directory store is watched: ``"auto"`` (inotify
        on Linux, else stat scans), ``"inotify"`` or ``"scan"`` (for NFS and
        other file systems inotify cannot see).
    :param tls_alpn: answer ``tls-alpn-01`` on ``sub_endpoint`` (default), or
        the :class:`~txacme.challenges.tlsalpn01.TLSALPN01Responder` that does.
    :param http01_endpoint: also listen here (port 80) and answer ``http-01``.
    :param http01_responder: the
        :class:`~txacme.challenges.http01.HTTP01Responder` to serve on
        ``http01_endpoint`` (default: a new one).
    :param http01_redirect: redirect every other request on ``http01_endpoint``
        to HTTPS on this port (:class:`~txacme.challenges.http01.HTTP01Site`),
        or ``None`` to answer them ``404``.
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
    :param on_demand_rate: at most this many on-demand issuances a minute
        (default: :data:`txacme.issuing.ondemand.DEFAULT_RATE`, 50 an hour).
    :param on_demand_options: further keyword arguments of
        :class:`~txacme.issuing.ondemand.OnDemandIssuer` (``rate`` and
        ``per``, ``max_names``, ``idle``, ``domain_rate``...; see
        :doc:`ondemand`).
    :param hello_timeout: seconds a handshake is held for on-demand issuance
        (or a cluster's challenge look-up) before it falls back.
    :param handshake_timeout: seconds a connection has to complete its TLS
        handshake (the time it is held for ``hello_timeout`` not counted)
        before it is aborted, or ``None`` for no deadline
        (:mod:`txacme.serving.deadline`).
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
        reactor: IReactorTime,
        sub_endpoint: IStreamServerEndpoint,
        cert_store: ICertificateStore,
        client_creator: ClientCreator,
        *,
        email: str | None = None,
        eab: EAB | None = None,
        key_type: str = "ec256",
        profile: str | None = None,
        check_interval: float | timedelta = timedelta(hours=12),
        watch_interval: float | None = 60.0,
        watch_mode: str = "auto",
        tls_alpn: bool | TLSALPN01Responder = True,
        http01_endpoint: IStreamServerEndpoint | None = None,
        http01_responder: HTTP01Responder | None = None,
        http01_redirect: int | None = None,
        responders: Sequence[IResponder] = (),
        acceptable_protocols: Sequence[bytes] = (),
        panic: Callable[[Failure, str], object] | None = None,
        service_options: Mapping[str, Any] | None = None,
        subscribers: Sequence[Callable[[ServiceEvent], object]] = (),
        state_file: str | None = None,
        metrics: str | None = None,
        on_demand: OnDemandPolicy | None = None,
        on_demand_rate: int | None = None,
        on_demand_options: Mapping[str, Any] | None = None,
        hello_timeout: float = 10.0,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
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
        self.watch_mode = watch_mode
        self.tls_alpn = tls_alpn
        self.http01_endpoint = http01_endpoint
        self.http01_responder = http01_responder
        self.http01_redirect = http01_redirect
        self.responders = list(responders)
        self.acceptable_protocols = tuple(acceptable_protocols)
        self.panic = panic
        self.service_options = dict(service_options or {})
        self.subscribers = list(subscribers)
        self.state_file = state_file
        self.metrics = metrics
        self.metrics_port: IListeningPort | None = None
        self.on_demand = on_demand
        self.on_demand_rate = on_demand_rate
        self.on_demand_options = dict(on_demand_options or {})
        self.refusals = RefusalLog(reactor)
        self._state_recorder: StateRecorder | None = None
        self.hello_timeout = hello_timeout
        self.handshake_timeout = check_handshake_timeout(handshake_timeout)
        self.close_store = close_store
        self.service: AcmeIssuingService | None = None
        self.index: CertificateIndex | None = None
        self.loader: StoreLoader | None = None
        self._on_exchange: Callable[[Exchange], object] | None = None

    def _client_creator(self) -> Deferred[Client]:
        d: Deferred[Client]
        if self._on_exchange is not None and _accepts_keyword(self.client_creator, "on_exchange"):
            d = maybeDeferred(self.client_creator, on_exchange=self._on_exchange)
        else:
            d = maybeDeferred(self.client_creator)
        if self.eab is None:
            return d
        eab = self.eab

        def with_eab(client: Client) -> Client:
            # The service calls client.start(email=...): the client binds the
            # account it creates with its eab.
            client.eab = eab
            return client

        return d.addCallback(with_eab)

    # -- the steps of listen() -------------------------------------------------

    def _challenge_responders(
        self,
    ) -> tuple[list[IResponder], TLSALPN01Registry | None, HTTP01Responder | None]:
        """The responders, and what of them the listeners serve."""
        responders = list(self.responders)
        registry = None
        if self.tls_alpn:
            tls_responder = (
                self.tls_alpn
                if isinstance(self.tls_alpn, TLSALPN01Responder)
                else TLSALPN01Responder()
            )
            registry = tls_responder.registry
            responders.append(tls_responder)
        http_responder = None
        if self.http01_endpoint is not None:
            http_responder = self.http01_responder or HTTP01Responder()
            responders.append(http_responder)
        return responders, registry, http_responder

    def _make_metrics(self) -> Metrics | None:
        """Made before the service, whose client reports its requests to it."""
        if self.metrics is None:
            return None
        metrics = Metrics(clock=self.reactor)
        self._on_exchange = metrics.observe_exchange
        return metrics

    def _make_service(
        self,
        index: CertificateIndex,
        responders: list[IResponder],
        registry: TLSALPN01Registry | None,
        http_responder: HTTP01Responder | None,
    ) -> tuple[AcmeIssuingService, ClusterNode | None]:
        """
        The issuing service (not started), and the cluster node when the store
        coordinates several processes.

        The service exists before the port listens, so that a handshake arriving
        at once (on-demand, a cluster's wanted name) can issue; it is started only
        once the CA can reach the port.
        """
        service: AcmeIssuingService | None = None

        def on_wanted(name: str) -> Deferred[object]:
            assert service is not None  # a cluster calls back only once it is started
            return service.issue_cert(name).addErrback(lambda _: None)

        cluster = None
        if provides_coordination(self.cert_store):
            cluster = ClusterNode(
                self.cert_store,
                index,
                tls_alpn=registry,
                http01=http_responder,
                on_wanted=on_wanted,
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
            entry_source=self.loader.batches if self.loader is not None else None,
            **self.service_options,
        )
        self.service = service
        for subscriber in self.subscribers:
            service.subscribe(subscriber)
        return service, cluster

    def _record_state(self, service: AcmeIssuingService, started: _Started) -> None:
        if self.state_file is not None:
            recorder = StateRecorder(StateFile(self.state_file), self.reactor)
            self._state_recorder = recorder
            started.stoppers.append(recorder.attach(service))

    def _hello_hooks(
        self,
        index: CertificateIndex,
        service: AcmeIssuingService,
        cluster: ClusterNode | None,
        metrics: Metrics | None,
        started: _Started,
    ) -> list[HelloHook]:
        """Starts the cluster node; what looks at each ClientHello before OpenSSL."""
        hooks: list[HelloHook] = []
        if cluster is not None:
            cluster.start()
            started.stoppers.append(cluster.stop)
            hooks.append(cluster.hello_hook)
        if self.on_demand is not None:
            options = dict(self.on_demand_options)
            if self.on_demand_rate is not None:
                options.setdefault("rate", self.on_demand_rate)
                options.setdefault("per", 60.0)
            on_demand = make_on_demand_issuer(
                self.on_demand,
                service.issue_cert,
                index,
                self.cert_store,
                options=options,
                refusals=self.refusals,
                metrics=metrics,
                state=self._state_recorder,
                clock=self.reactor,
            )
            on_demand.start()
            started.stoppers.append(on_demand.stop)
            hooks.append(on_demand.hello_hook)
            if metrics is not None:
                started.stoppers.append(metrics.observe_on_demand(on_demand))
        return hooks

    def _tls_factory(
        self, creator: SNIConnectionCreator, factory: IProtocolFactory, hooks: list[HelloHook]
    ) -> IProtocolFactory:
        deadline = self.handshake_timeout
        if not hooks:
            return tls_server_factory(creator, factory, handshake_timeout=deadline)
        return HelloHookFactory(
            creator,
            factory,
            combine_hooks(*hooks),
            timeout=self.hello_timeout,
            clock=self.reactor,
            handshake_timeout=deadline,
        )

    async def _listen_http01(
        self,
        http_responder: HTTP01Responder | None,
        cluster: ClusterNode | None,
        started: _Started,
    ) -> None:
        if http_responder is None or self.http01_endpoint is None:
            return
        # A cluster node answers for the challenges any node started.
        shared = cluster.http01 if cluster is not None else None
        root = http01_root(shared or http_responder)
        site = HTTP01Site(root, redirect=self.http01_redirect)
        http_port = await self.http01_endpoint.listen(site)
        started.stoppers.append(http_port.stopListening)

    async def _serve_metrics(
        self, service: AcmeIssuingService, metrics: Metrics | None, started: _Started
    ) -> None:
        if self.metrics is None:
            return
        state = StateFile(self.state_file) if self.state_file is not None else None
        self.metrics_port = await serve_metrics(
            self.reactor, self.metrics, service, metrics=metrics, store=self.cert_store, state=state
        )
        started.stoppers.append(self.metrics_port.stopListening)

    def _watch_store(
        self,
        index: CertificateIndex,
        loaded: StoreEntries,
        service: AcmeIssuingService,
        cluster: ClusterNode | None,
        started: _Started,
    ) -> None:
        """
        A coordinating store notifies changes; a directory store is followed by
        its loader; others are polled.
        """
        if self.loader is not None:
            return
        if self.watch_interval is None or cluster is not None:
            return
        watcher = StoreWatcher(
            index,
            self.cert_store,
            self.watch_interval,
            self.reactor,
            on_loaded=_issue_new_empty_entries(set(loaded), service),
        )
        watcher.startService()
        started.stoppers.insert(0, watcher.stopService)

    async def _start(
        self,
        factory: IProtocolFactory,
        index: CertificateIndex,
        loaded: StoreEntries,
        started: _Started,
    ) -> AutoTLSPort:
        """Everything :meth:`listen` does once the index is loaded, step by step."""
        responders, registry, http_responder = self._challenge_responders()
        creator = SNIConnectionCreator(
            index, challenges=registry, acceptable_protocols=self.acceptable_protocols
        )
        creator.refusals = self.refusals
        self.refusals.start()
        started.stoppers.append(self.refusals.stop)
        metrics = self._make_metrics()
        if metrics is not None:
            started.stoppers.append(metrics.observe_refusals(self.refusals))
        service, cluster = self._make_service(index, responders, registry, http_responder)
        self._record_state(service, started)
        tls_factory = self._tls_factory(
            creator, factory, self._hello_hooks(index, service, cluster, metrics, started)
        )
        await self._listen_http01(http_responder, cluster, started)
        started.port = await self.sub_endpoint.listen(tls_factory)
        defer_accept(started.port)
        await self._serve_metrics(service, metrics, started)
        service.startService()
        started.stoppers.insert(0, service.stopService)
        self._watch_store(index, loaded, service, cluster, started)
        await service.when_certs_valid()
        after: list[Callable[[], object]] = []
        if self.close_store and isinstance(self.cert_store, ClosableStore):
            after.append(self.cert_store.close)
        return AutoTLSPort(started.port, service, started.stoppers, after=after)

    def _make_loader(self, index: CertificateIndex) -> StoreLoader | None:
        """A directory store (not coordinating) is loaded lazily and followed by hints."""
        store = self.cert_store
        if not isinstance(store, DirectoryStore) or provides_coordination(store):
            return None
        if not (IReactorThreads.providedBy(self.reactor) and IReactorCore.providedBy(self.reactor)):
            return None  # a test clock: read the store in full, on the spot
        return StoreLoader(
            index,
            store,
            self.reactor,
            watch=self.watch_mode if self.watch_interval is not None else None,
            rescan_interval=self.watch_interval or 60.0,
            feed_batches=True,
            on_change=self._store_changed,
        )

    def _store_changed(self, name: str, objects: list[Any] | None) -> None:
        """
        The loader's ``on_change``: an entry found empty after a change (a new
        ``<name>.pem``, or one emptied) is issued at once.
        """
        if objects == [] and self.service is not None:
            log.debug("new empty entry {name}: issuing", name=name)
            self.service.issue_cert(name).addErrback(lambda _: None)

    async def _listen(self, factory: IProtocolFactory) -> AutoTLSPort:
        index = CertificateIndex()
        loader = self.loader = self._make_loader(index)
        loaded: StoreEntries = {}
        if loader is None:
            loaded = await index.load_from(self.cert_store)
        else:
            loader.start()
        self.index = index
        started = _Started()
        if loader is not None:
            started.stoppers.append(loader.stop)
        try:
            return await self._start(factory, index, loaded, started)
        except BaseException:
            await started.unwind()
            raise

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """
        Listen with automatic TLS; fires with the port once the names without a
        certificate have had a first attempt at issuance.
        """
        return Deferred.fromCoroutine(self._listen(protocolFactory))


class _Started:
    """
    What :meth:`AutoTLSEndpoint.listen` started so far: how to stop each part,
    in the order :class:`AutoTLSPort` stops them, and the main port.
    """

    def __init__(self) -> None:
        self.stoppers: list[Callable[[], object]] = []
        self.port: IListeningPort | None = None

    async def unwind(self) -> None:
        """Stop everything started (a step failed); wait until it has stopped."""
        stops = [maybeDeferred(stop) for stop in self.stoppers]
        if self.port is not None:
            stops.append(maybeDeferred(self.port.stopListening))
        await DeferredList(stops, consumeErrors=True)


def _accepts_keyword(func: Callable[..., object], name: str) -> bool:
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
    known: set[str], service: AcmeIssuingService
) -> Callable[[StoreEntries], None]:
    """
    The store watcher's ``on_loaded``: an entry that appeared empty since the
    last read (a new ``<name>.pem``) is issued at once.
    """

    def on_loaded(entries: StoreEntries) -> None:
        for name in sorted(entries.keys() - known):
            if not entries[name]:
                log.debug("new empty entry {name}: issuing", name=name)
                service.issue_cert(name).addErrback(lambda _: None)
        known.clear()
        known.update(entries)

    return on_loaded


__all__ = [
    "AutoTLSEndpoint",
    "AutoTLSPort",
    "ClientCreator",
]
