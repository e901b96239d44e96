"""
Prometheus metrics for the issuing service (``pip install txacme[metrics]``).

:class:`Metrics` subscribes to an :class:`~txacme.issuing.service.AcmeIssuingService`
(:meth:`Metrics.attach`) and turns its events into metrics;
:meth:`Metrics.resource` serves them in the Prometheus text format from any
``twisted.web`` site, and :func:`serve_metrics` listens on an endpoint
description of its own (the ``metrics=`` keyword of the endpoint strings).

Metrics (every timestamp is in seconds since the Unix epoch):

``txacme_certificate_not_after_timestamp_seconds{name}``
    When the certificate of each store entry expires; ``0`` for an entry that
    has no certificate yet. Alert on ``... - time() < 7 * 86400``.
``txacme_certificate_renewal_timestamp_seconds{name}``
    When the service plans to renew it.
``txacme_certificate_renewal_reason{name, reason}``
    ``1`` for the reason of that plan (``ari``, ``lifetime``, ``missing``,
    ``names``, ``emergency``, ``expired``, ``ca_changed``).
``txacme_certificate_failures{name}``
    Consecutive failed attempts for the name (``0`` after a success).
``txacme_issuance_attempts_total{reason}``
    Issuance attempts started, by the reason they were started for.
``txacme_issuance_successes_total``
    Certificates obtained and stored.
``txacme_issuance_failures_total{problem}``
    Failed attempts, by ACME problem code (``connection``, ``rateLimited``...)
    or, for other errors, exception class name (``ACMETimeout``...).
``txacme_issuance_emergencies_total``
    Failures that left a name without a valid certificate or inside its
    emergency window.
``txacme_issuance_duration_seconds{outcome}``
    A histogram of how long attempts took, ``outcome`` being ``success`` or
    ``failure``.
``txacme_acme_requests_total{endpoint, method, status}``
    HTTP exchanges with the CA, by ACME resource (``newOrder``,
    ``authorization``, ``finalize``...) and HTTP status (``error`` when no
    answer came); fed by :meth:`Metrics.observe_exchange`.
``txacme_on_demand_requests_total{outcome}``
    Names asked for on demand (a handshake for a name without a certificate),
    by ``outcome``: ``issued``, ``refused`` by the policy, or ``limited`` by
    the rate limits; read from the issuers given to
    :meth:`Metrics.observe_on_demand`.

``txacme_handshakes_refused_total{reason}``
    Handshakes and on-demand requests refused, by ``reason``:
    ``unknown_name`` (no certificate, no default), ``on_demand_refused`` (the
    policy said no), ``on_demand_limited`` (a rate, the ask URL's limits, the
    cap on names, a CA back-off); read from the :class:`~txacme.issuing.refusals.RefusalLog`
    given to :meth:`Metrics.observe_refusals`. The names themselves are never
    labels.

Names are labels, so one series exists per store entry: fine for thousands of
names, not for millions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, cast

import pem
from cryptography import x509
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from txacme.certificates import first_certificate
from txacme.errors import ACME_ERROR_PREFIX, ConfigurationError
from txacme.interfaces import EntryStore, ICertificateStore
from txacme.issuing.events import (
    Emergency,
    EventSource,
    Failed,
    Obtained,
    Obtaining,
    RenewalScheduled,
    ServiceEvent,
)
from txacme.logs import Logger
from txacme.protocol.client import Exchange
from txacme.reporting.state import StateFile
from txacme.reporting.statuspage import LiveStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = Logger()

__all__ = [
    "DURATION_BUCKETS",
    "ON_DEMAND_OUTCOMES",
    "Metrics",
    "MetricsPort",
    "OnDemandCounts",
    "REFUSAL_REASONS",
    "RefusalCounts",
    "serve_metrics",
]

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Bucket bounds (seconds) of ``txacme_issuance_duration_seconds``."""


def _prometheus() -> ModuleType:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need the prometheus-client package: pip install 'txacme[metrics]'"
        )
    return prometheus_client


def _timestamp(moment: datetime | None) -> float:
    return 0.0 if moment is None else moment.timestamp()


def _problem_label(problem: str) -> str:
    if problem.startswith(ACME_ERROR_PREFIX):
        return problem[len(ACME_ERROR_PREFIX) :]
    return problem


def _readable_certificate(pem_objects: list[pem.AbstractPEMObject]) -> x509.Certificate | None:
    """The entry's certificate; ``None`` when there is none or it is unreadable."""
    try:
        return first_certificate(pem_objects)
    except ValueError:
        return None


class OnDemandCounts(Protocol):
    """What :meth:`Metrics.observe_on_demand` reads (an ``OnDemandIssuer``)."""

    issued: int
    refused: int
    limited: int


ON_DEMAND_OUTCOMES = ("issued", "refused", "limited")
"""The ``outcome`` labels of ``txacme_on_demand_requests_total``."""


class _OnDemandCollector:
    """Reads the counters of the on-demand issuers at each scrape."""

    def __init__(self) -> None:
        self.issuers: list[OnDemandCounts] = []

    def collect(self) -> list[object]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "txacme_on_demand_requests",
            "Names asked for on demand, by outcome (issued, refused, limited).",
            labels=["outcome"],
        )
        for outcome in ON_DEMAND_OUTCOMES:
            family.add_metric([outcome], sum(getattr(i, outcome) for i in self.issuers))
        return [family]


class RefusalCounts(Protocol):
    """What :meth:`Metrics.observe_refusals` reads (a ``RefusalLog``)."""

    @property
    def counts(self) -> Mapping[str, int]:
        """Refusals by reason."""


REFUSAL_REASONS = ("unknown_name", "on_demand_refused", "on_demand_limited")
"""The ``reason`` labels of ``txacme_handshakes_refused_total``."""


class _RefusalCollector:
    """Reads the refusal counts at each scrape."""

    def __init__(self) -> None:
        self.sources: list[RefusalCounts] = []

    def collect(self) -> list[object]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "txacme_handshakes_refused",
            "Handshakes and on-demand requests refused, by reason.",
            labels=["reason"],
        )
        for reason in REFUSAL_REASONS:
            family.add_metric([reason], sum(s.counts.get(reason, 0) for s in self.sources))
        return [family]


class _MetricsResource(Resource):
    """Renders a registry in the exposition format the scraper asks for."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(
            accept.decode("latin-1") if isinstance(accept, bytes) else (accept or "")
        )
        request.setHeader(  # type: ignore[no-untyped-call]
            b"content-type", content_type.encode("ascii")
        )
        return bytes(encoder(self.registry))


class _Root(Resource):
    """``/`` points to ``/metrics`` (and ``/status``, ``/status.json`` when served)."""

    def __init__(self, status: bool = False) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self.status = status

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        request.setHeader(  # type: ignore[no-untyped-call]
            b"content-type", b"text/plain; charset=utf-8"
        )
        if self.status:
            return b"txacme: /metrics, /status (a page), /status.json\n"
        return b"txacme metrics: /metrics\n"


class Metrics:
    """
    The txacme metrics, in a Prometheus registry.

    :param registry: the ``prometheus_client.CollectorRegistry`` to register
        in; a new one by default (pass ``prometheus_client.REGISTRY`` to add
        them to the process-wide registry you already expose).
    :param clock: the reactor's time, to time failed attempts (required).
    :raises txacme.errors.ConfigurationError: when ``prometheus-client`` is not
        installed, or without ``clock``.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, clock: IReactorTime | None = None
    ) -> None:
        prom = _prometheus()
        if clock is None:
            raise ConfigurationError("Metrics needs clock=: the reactor (or a task.Clock)")
        if registry is None:
            registry = prom.CollectorRegistry()
        self.registry: CollectorRegistry = registry
        self._clock: IReactorTime = clock
        self._started: dict[str, float] = {}
        self._reasons: dict[str, str] = {}
        self._names: set[str] = set()
        self.not_after = prom.Gauge(
            "txacme_certificate_not_after_timestamp_seconds",
            "When the certificate expires (0: no certificate yet).",
            ["name"],
            registry=registry,
        )
        self.renewal = prom.Gauge(
            "txacme_certificate_renewal_timestamp_seconds",
            "When the issuing service plans to renew the certificate.",
            ["name"],
            registry=registry,
        )
        self.renewal_reason = prom.Gauge(
            "txacme_certificate_renewal_reason",
            "1 for the reason of the planned renewal.",
            ["name", "reason"],
            registry=registry,
        )
        self.failing = prom.Gauge(
            "txacme_certificate_failures",
            "Consecutive failed issuance attempts for the name.",
            ["name"],
            registry=registry,
        )
        self.attempts = prom.Counter(
            "txacme_issuance_attempts",
            "Issuance attempts started, by reason.",
            ["reason"],
            registry=registry,
        )
        self.successes = prom.Counter(
            "txacme_issuance_successes",
            "Certificates obtained and stored.",
            registry=registry,
        )
        self.failures = prom.Counter(
            "txacme_issuance_failures",
            "Failed issuance attempts, by ACME problem code or exception class.",
            ["problem"],
            registry=registry,
        )
        self.emergencies = prom.Counter(
            "txacme_issuance_emergencies",
            "Failures for names without a valid certificate or in their emergency window.",
            registry=registry,
        )
        self.duration = prom.Histogram(
            "txacme_issuance_duration_seconds",
            "How long issuance attempts took.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.requests = prom.Counter(
            "txacme_acme_requests",
            "HTTP exchanges with the ACME server, by resource and status.",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self._on_demand = _OnDemandCollector()
        registry.register(self._on_demand)  # type: ignore[arg-type]
        self._refusals = _RefusalCollector()
        registry.register(self._refusals)  # type: ignore[arg-type]

    # -- feeding ---------------------------------------------------------------

    def attach(self, service: EventSource) -> Callable[[], None]:
        """
        Follow the events of ``service`` (an
        :class:`~txacme.issuing.service.AcmeIssuingService`); attach before starting it
        to see its first plans.

        :return: a function that stops following.
        """
        return service.subscribe(self.observe)

    def observe(self, event: ServiceEvent) -> None:
        """Update the metrics for one service event (the subscriber callback)."""
        self._names.add(event.name)

        if isinstance(event, RenewalScheduled):
            self._set_reason(event.name, event.reason)
            self.renewal.labels(event.name).set(_timestamp(event.due_at))
            if event.reason == "missing":
                self.not_after.labels(event.name).set(0.0)
            self.failing.labels(event.name)  # make the series exist (0)
        elif isinstance(event, Obtaining):
            self.attempts.labels(event.reason).inc()
            self._started[event.name] = self._clock.seconds()
        elif isinstance(event, Obtained):
            self._started.pop(event.name, None)
            self.successes.inc()
            self.duration.labels("success").observe(event.seconds)
            self.failing.labels(event.name).set(0)
            if event.not_after is not None:
                self.not_after.labels(event.name).set(event.not_after.timestamp())
        elif isinstance(event, Failed):
            self.failures.labels(_problem_label(event.problem)).inc()
            self.failing.labels(event.name).set(event.attempt)
            started = self._started.pop(event.name, None)
            if started is not None:
                self.duration.labels("failure").observe(max(self._clock.seconds() - started, 0.0))
        elif isinstance(event, Emergency):
            self.emergencies.inc()

    def _set_reason(self, name: str, reason: str) -> None:
        previous = self._reasons.get(name)
        if previous is not None and previous != reason:
            try:
                self.renewal_reason.remove(name, previous)
            except KeyError:
                pass
        self._reasons[name] = reason
        self.renewal_reason.labels(name, reason).set(1)

    def observe_certificate(self, name: str, certificate: x509.Certificate | None) -> None:
        """Set the expiry of ``name`` from its certificate (``None``: none yet)."""
        self._names.add(name)
        self.not_after.labels(name).set(
            0.0 if certificate is None else certificate.not_valid_after_utc.timestamp()
        )

    def observe_store(self, store: ICertificateStore) -> Deferred[None]:
        """
        Set the expiry of every entry of ``store`` and forget names the store
        no longer holds. The service's events keep them current afterwards.
        """

        def update(entries: dict[str, list[pem.AbstractPEMObject]]) -> None:
            for name, pem_objects in entries.items():
                self.observe_certificate(name, _readable_certificate(pem_objects or []))
            for name in self._names - set(entries):
                self.forget(name)

        return maybeDeferred(cast(EntryStore, store).as_dict).addCallback(update)

    def forget(self, name: str) -> None:
        """Remove every series of ``name`` (it left the store)."""
        self._names.discard(name)
        for gauge in (self.not_after, self.renewal, self.failing):
            try:
                gauge.remove(name)
            except KeyError:
                pass
        reason = self._reasons.pop(name, None)
        if reason is not None:
            try:
                self.renewal_reason.remove(name, reason)
            except KeyError:
                pass
        self._started.pop(name, None)

    def observe_exchange(self, exchange: Exchange) -> None:
        """
        Count one HTTP exchange with the CA.

        ``exchange`` has ``endpoint`` (the ACME resource: ``newOrder``,
        ``authorization``...), ``method`` and ``status`` (the HTTP status, or
        ``None`` when no answer came). This is the callback for the ACME
        client's exchange hook.
        """
        status = exchange.status
        self.requests.labels(
            str(exchange.endpoint),
            str(exchange.method),
            "error" if status is None else str(status),
        ).inc()

    def observe_on_demand(self, issuer: OnDemandCounts) -> Callable[[], None]:
        """
        Count the on-demand requests of ``issuer`` (a
        :class:`~txacme.issuing.ondemand.OnDemandIssuer`) in
        ``txacme_on_demand_requests_total``.

        :return: a function that stops counting it.
        """
        self._on_demand.issuers.append(issuer)
        return lambda: self._on_demand.issuers.remove(issuer)

    def observe_refusals(self, refusals: RefusalCounts) -> Callable[[], None]:
        """
        Count the refusals of ``refusals`` (a
        :class:`~txacme.issuing.refusals.RefusalLog`) in
        ``txacme_handshakes_refused_total``.

        :return: a function that stops counting them.
        """
        self._refusals.sources.append(refusals)
        return lambda: self._refusals.sources.remove(refusals)

    # -- serving -----------------------------------------------------------------

    def resource(self) -> Resource:
        """
        A ``twisted.web`` resource serving the metrics (text exposition format,
        or OpenMetrics when the scraper asks for it); mount it where you like,
        e.g. ``root.putChild(b"metrics", metrics.resource())``.
        """
        return _MetricsResource(self.registry)


@implementer(IListeningPort)
class MetricsPort:
    """
    The listening port of :func:`serve_metrics`; stopping it also stops
    following the service.

    :ivar metrics: the :class:`Metrics` served.
    """

    def __init__(self, port: IListeningPort, metrics: Metrics, detach: Callable[[], None]):
        self.port = port
        self.metrics = metrics
        self._detach = detach

    def startListening(self) -> None:  # noqa: N802
        """Start listening again."""
        self.port.startListening()

    def stopListening(self) -> Deferred[None]:  # noqa: N802
        """Stop following the service and stop listening."""
        self._detach()
        return maybeDeferred(self.port.stopListening).addCallback(lambda _: None)

    def getHost(self) -> IAddress:  # noqa: N802
        """The address listened on."""
        return self.port.getHost()


def serve_metrics(
    reactor: IReactorTime,
    description: str,
    service: EventSource,
    *,
    metrics: Metrics | None = None,
    store: ICertificateStore | None = None,
    state: StateFile | None = None,
) -> Deferred[MetricsPort]:
    """
    Listen on the endpoint ``description`` (e.g. ``tcp:9100:interface=127.0.0.1``)
    and serve the metrics of ``service`` at ``/metrics``; with ``store``, also
    the status page at ``/status`` and its JSON at ``/status.json``
    (:mod:`txacme.reporting.statuspage`).

    :param metrics: the :class:`Metrics` to feed and serve (default: a new one
        with its own registry).
    :param store: the service's certificate store, read once for the expiry of
        the certificates it already holds, and at each request for ``/status``.
    :param state: the state file the service's recorder keeps, for the
        status page's history; by default the events seen since listening.
    :return: a ``Deferred`` firing with the :class:`MetricsPort`.
    :raises txacme.errors.ConfigurationError: (in the ``Deferred``) for a bad
        description or a missing ``prometheus-client``, naming the input.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.web.server import Site

    async def listen() -> MetricsPort:
        try:
            endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigurationError(f"metrics={description!r} is not an endpoint: {e}")
        served = metrics if metrics is not None else Metrics(clock=reactor)
        detaches = [served.attach(service)]

        def detach() -> None:
            for undo in detaches:
                undo()

        try:
            root = _Root(status=store is not None)
            if store is not None:
                await served.observe_store(store)
                live = LiveStatus(store, reactor, state)
                detaches.append(live.attach(service))
                for path, child in live.resources().items():
                    root.putChild(path, child)
            root.putChild(b"metrics", served.resource())
            port = await endpoint.listen(Site(root))  # type: ignore[no-untyped-call]
        except BaseException:
            detach()
            raise
        host = port.getHost()
        where = f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}".rstrip(":")
        log.info("serving metrics on {where}", where=where, address=str(host))
        return MetricsPort(port, served, detach)

    return Deferred.fromCoroutine(listen())
