"""
The issuing service: keeps every certificate of a store obtained and renewed.

:class:`AcmeIssuingService` is a Twisted ``Service``. When started it checks the
store at once and then every ``check_interval`` (12 hours by default). For each
store entry it computes a :class:`~txacme.issuing.policy.RenewalPlan` and sets a timer
for the due time; due names are issued through
:func:`txacme.issuing.order.obtain_certificate`, at most ``max_concurrent`` at a
time, and the result is written to the store and handed to ``on_stored``.

Decisions
---------

One issuance per name.
    Every request for a name (the schedule, :meth:`~AcmeIssuingService.issue_cert`
    callers) shares the one issuance in flight; each caller gets its own
    ``Deferred``, so cancelling one caller's ``Deferred`` leaves the others (and
    the issuance) alone.

Timers.
    Each name has at most one timer, firing at the earlier of its due time and
    the moment its ARI information should be fetched again. When it fires, the
    name's entry is read from the store again (another process may have renewed
    it) and planned afresh. The periodic check re-plans every name, picks up
    new entries and forgets removed ones. Planning is sequential within one
    check, so a check of many names makes one ARI request at a time.

ARI.
    When ``client.supports_ari`` is true, renewal information is fetched for a
    certificate when first seen and again when :func:`~txacme.issuing.policy.next_ari_check`
    says. If fetching fails the lifetime rule is used (the failure is logged)
    and ARI is tried again six hours later. An ``alreadyReplaced`` problem makes
    the next attempt for that certificate omit ``replaces``. ARI is not asked
    about expired certificates.

Failures.
    A failed attempt for a name is logged (event ``failed`` with the ACME
    problem type and detail) and the name backs off
    (:func:`~txacme.issuing.policy.backoff_delay`: about 1 min, 10 min, 100 min, then
    daily); a problem with ``retry_after`` (e.g. ``rateLimited``) is never
    retried before that delay, and while a ``rateLimited`` delay runs,
    :meth:`~AcmeIssuingService.issue_cert` fails at once with that problem. A
    failure for a name with no valid certificate (none stored, or expired) or
    inside its emergency window emits an ``emergency`` event, logged at
    CRITICAL, and calls ``panic(failure, server_name)``; an on-demand
    :meth:`~AcmeIssuingService.issue_cert` for a name the store does not hold
    is no emergency, and is not retried in the background. One name's failure
    never affects another name. An unexpected exception (not a
    :class:`~txacme.errors.TxACMEError`) is logged with its traceback.

The ACME client.
    ``client_creator()`` is called when a client is first needed (the first
    issuance, or the first check of a stored certificate, for ARI), then
    ``client.start(email=...)`` registers or finds the account; the client is
    kept. After a failure that is not an ACME problem about the
    order (network and protocol errors, timeouts, ``accountDoesNotExist``,
    ``badNonce``, ``unauthorized`` outside an order...) it is closed and a new
    one is created for the next attempt; it is also closed when the service
    stops. An attempt that fails with ``accountDoesNotExist`` (the CA lost
    the account) is made again at once, once, with a new client, which
    registers the account again. A client whose ``start`` fails is closed. A
    ``client`` given directly is never closed (its owner closes it);
    ``start`` is called on it again after such a failure.

``when_certs_valid``.
    Fires (with ``None``, never failing) once the first attempt has finished,
    successfully or not, for every name that had no valid certificate at the
    start-up check: no certificate, an expired one, one inside the emergency
    window, or one missing a configured name.

Several names on one certificate.
    A store entry is keyed by its primary name. ``names={"example.com":
    ["www.example.com"]}`` makes the order (and the check that the stored
    certificate covers them) use ``example.com`` and ``www.example.com``; the
    primary name always comes first. Entries not in the mapping get their own
    name only. The mapping does not create store entries.

Stopping.
    :meth:`~AcmeIssuingService.stopService` stops the periodic check, cancels
    every timer, the check or re-planning in progress, client creation and every
    issuance (issuance stops its responders when cancelled); it returns a
    ``Deferred`` that fires once they have all finished.

Events.
    Every step is an attrs event object (:mod:`txacme.issuing.events`:
    ``RenewalScheduled``, ``Obtaining``, ``Obtained``, ``Failed``, ``Emergency``)
    given to :meth:`~AcmeIssuingService.subscribe` callbacks and logged with a
    stable ``event`` field plus the event's fields (times as ISO 8601 text).
    ``RenewalScheduled`` is emitted when a name's due time or reason changes.

Settings.
    The settings of the orders and of the schedule are
    :class:`~txacme.issuing.settings.IssuingSettings` and
    :class:`~txacme.issuing.settings.SchedulingSettings` (``issuing=``,
    ``scheduling=``), or the same values as keywords. The per-name state and the
    shared client live in :mod:`txacme.issuing.tracking`.

May import the core modules, :mod:`txacme.protocol`, :mod:`txacme.stores` and
the other issuing modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

import attrs
import pem
from cryptography import x509
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txacme import errors
from txacme.certificates import first_certificate, issuer_name
from txacme.interfaces import EntryStore, ICertificateStore, IResponder
from txacme.issuing.events import (
    Emergency,
    Failed,
    Obtained,
    Obtaining,
    RenewalScheduled,
    ServiceEvent,
    log_fields,
)
from txacme.issuing.locked import coordinated_issue
from txacme.issuing.order import IssuedCertificate
from txacme.issuing.policy import RenewalPlan, backoff_delay, plan_renewal
from txacme.issuing.provenance import IssuerRecords
from txacme.issuing.settings import (
    ClientCreator,
    IssuingSettings,
    KeyGenerator,
    PanicCallback,
    RenewalAnswer,
    SchedulingSettings,
    ServiceClient,
    ServiceOptions,
    StoredCallback,
    resolve_settings,
)
from txacme.issuing.summary import log_startup_summary, store_label, summarize
from txacme.issuing.tracking import (
    ClientKeeper,
    Fanout,
    NameState,
    fetch_renewal_info,
    settle,
)
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.stores.coordination import LockLost, LockTimeout, provides_coordination

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AcmeIssuingService"]

log = Logger()

EntrySource = Callable[[], AsyncIterator[Mapping[str, Sequence[pem.AbstractPEMObject]]]]
"""What a check reads: every entry of the store, in batches (``entry_source=``)."""

#: Reasons that mean "this name has no certificate one can rely on".
_URGENT_REASONS = frozenset({"missing", "expired", "emergency", "names"})

#: Problems that say nothing about the client's health.
_CLIENT_BROKEN_PROBLEMS = (errors.AccountDoesNotExist, errors.BadNonce, errors.Unauthorized)


def _problem_of(error: BaseException) -> errors.ACMEProblem | None:
    if isinstance(error, errors.ACMEProblem):
        return error
    if isinstance(error, errors.IssuanceFailed):
        return error.problem
    return None


def _client_looks_broken(error: BaseException) -> bool:
    if isinstance(error, errors.IssuanceFailed):
        return False
    if isinstance(error, (LockLost, LockTimeout)):  # another process's work, not the client's
        return False
    if isinstance(error, errors.ACMEProblem):
        return isinstance(error, _CLIENT_BROKEN_PROBLEMS)
    return True


class AcmeIssuingService(Service):
    """
    Obtains and renews the certificates of a certificate store.

    :param cert_store: an :class:`~txacme.interfaces.ICertificateStore`; every
        entry is kept valid, an empty entry is issued at start-up.
    :param client_creator: a callable returning a ``Deferred`` (or a value) of
        a ``txacme.protocol.client.Client``; called when a client is first needed and
        again after failures that suggest a broken client. Give this or
        ``client``.
    :param clock: the reactor's time (required).
    :param responders: the :class:`~txacme.interfaces.IResponder` objects that
        answer challenges.
    :param email: the account's contact address, given to ``client.start``.
    :param check_interval: time between full checks of the store (a
        ``timedelta`` or seconds; default 12 hours).
    :param panic: ``panic(failure, server_name)``, called when renewal fails
        for a name without a valid certificate or inside its emergency window
        (in addition to the CRITICAL log).
    :param generate_key: a callable returning the private key for each new
        certificate; by default a fresh key of ``key_type`` is made.
    :param client: an already built client, instead of ``client_creator``.
    :param on_stored: ``on_stored(server_name, pem_objects)``, called (and
        waited for if it returns a ``Deferred``) after each certificate is
        stored, e.g. to update a TLS index at once.
    :param entry_source: what each check reads instead of
        ``cert_store.as_dict()``: a function returning an async iterator of
        batches ``{server_name: pem_objects}`` (empty lists for wanted names),
        which together hold every entry; names in no batch are forgotten. A
        serving endpoint passes its loader's, so a large directory is read off
        the reactor thread and once at start-up.
    :param issuing: the settings of the orders
        (:class:`~txacme.issuing.settings.IssuingSettings`), instead of the
        ``key_type``, ``profile``, ``names``, ``issue`` and ``generate_key``
        keywords.
    :param scheduling: the settings of the schedule
        (:class:`~txacme.issuing.settings.SchedulingSettings`), instead of the
        ``check_interval``, ``max_concurrent``, ``renewal_fraction``,
        ``emergency_fraction`` and ``rng`` keywords.
    :param issuer_records: where the issuing directory of each stored
        certificate is recorded (:class:`~txacme.issuing.provenance.IssuerRecords`);
        a certificate recorded from another directory is renewed at once.
    :param options: the settings as keywords
        (:class:`~txacme.issuing.settings.ServiceOptions`):

        ``key_type``: the type of new certificate keys (default ``"ec256"``);
        ignored when ``generate_key`` is given.
        ``profile``: the ACME profile to ask for, or ``None``.
        ``names``: extra names per store entry (see the module docs).
        ``issue``: the issuance function (default
        :func:`txacme.issuing.order.obtain_certificate`).
        ``max_concurrent``: how many issuances run at once (default 5).
        ``renewal_fraction``: renew when this fraction of the lifetime remains
        (for certificates living under 10 days, the larger of this and 1/2).
        ``emergency_fraction``: the emergency window, as the last fraction of
        the lifetime.
        ``rng``: randomness for backoff jitter (default: a new ``random.Random``).
    :raises txacme.errors.ConfigurationError: for a bad setting, without
        ``clock``, or unless exactly one of ``client_creator`` and ``client``
        is given.
    """

    def __init__(
        self,
        cert_store: ICertificateStore,
        client_creator: ClientCreator | None = None,
        clock: IReactorTime | None = None,
        responders: Sequence[IResponder] = (),
        *,
        email: str | None = None,
        check_interval: timedelta | float | None = None,
        panic: PanicCallback | None = None,
        generate_key: KeyGenerator | None = None,
        client: ServiceClient | None = None,
        on_stored: StoredCallback | None = None,
        issuing: IssuingSettings | None = None,
        scheduling: SchedulingSettings | None = None,
        entry_source: EntrySource | None = None,
        issuer_records: IssuerRecords | None = None,
        **options: Unpack[ServiceOptions],
    ) -> None:
        if (client_creator is None) == (client is None):
            raise errors.ConfigurationError("give exactly one of client_creator and client")
        self._issuing, self._scheduling = resolve_settings(
            issuing,
            scheduling,
            check_interval=check_interval,
            generate_key=generate_key,
            **options,
        )
        if clock is None:
            raise errors.ConfigurationError(
                "AcmeIssuingService needs the clock: the reactor (or a task.Clock)"
            )
        # ICertificateStore documents these result types; the interface cannot say them.
        self._cert_store = cast(EntryStore, cert_store)
        self._entry_source = entry_source or self._whole_store
        self._clients = ClientKeeper(client_creator, client, email)
        self._clock = clock
        self._responders = list(responders)
        self._panic = panic
        self._on_stored = on_stored
        self._issuer_records = issuer_records
        self._semaphore = DeferredSemaphore(self._scheduling.max_concurrent)
        self._states: dict[str, NameState] = {}
        self._subscribers: list[Callable[[ServiceEvent], object]] = []
        self._background: set[Deferred[None]] = set()
        self._loop: LoopingCall | None = None
        self._initial_done = False
        self._initial_waiters: list[Deferred[None]] = []
        self._stopping = False

    # -- events ------------------------------------------------------------

    def subscribe(self, callback: Callable[[ServiceEvent], object]) -> Callable[[], None]:
        """
        Call ``callback(event)`` for every event (see
        :data:`~txacme.issuing.events.ServiceEvent`).

        Exceptions raised by ``callback`` are logged and ignored.

        :return: a function that unsubscribes ``callback``.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: ServiceEvent) -> None:
        log.emit(event.level, event.format, event=event.event, **log_fields(event))
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.failure("event subscriber {callback!r} failed", callback=callback)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), tz=timezone.utc)

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        """Check the store now, then every ``check_interval``."""
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._periodic_check)
        self._loop.clock = self._clock
        self._loop.start(self._scheduling.check_interval, now=True).addErrback(
            lambda f: log.failure("the periodic check stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop checking, cancel every timer, check and issuance in progress.

        :return: a ``Deferred`` firing once everything has stopped.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        try:
            return self._cancel_everything()
        finally:
            self._stopping = False

    def _cancel_everything(self) -> Deferred[None]:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        waits: list[Deferred[Any]] = []
        for state in self._states.values():
            state.cancel_timer()
            if state.in_flight is not None:
                waits.append(state.in_flight.wait())
                state.cancelling = True
                state.in_flight.source.cancel()
        for d in list(self._background):
            waits.append(d)
            d.cancel()
        self._clients.cancel()
        self._finish_initial()
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: self._clients.drop())

    def when_certs_valid(self) -> Deferred[None]:
        """
        A ``Deferred`` firing (with ``None``) once the first attempt has ended,
        however it ended, for every name without a valid certificate at the
        start-up check.
        """
        if self._initial_done:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._initial_waiters.append(d)
        return d

    def _finish_initial(self) -> None:
        if self._initial_done:
            return
        self._initial_done = True
        waiters, self._initial_waiters = self._initial_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> Deferred[None]:
        """Run ``coroutine`` in the background: logged on error, cancelled on stop."""
        d = Deferred.fromCoroutine(coroutine)
        if d.called:
            d.addErrback(self._background_error)
            return d
        self._background.add(d)

        def done(result: object) -> object:
            self._background.discard(d)
            return result

        d.addBoth(done).addErrback(self._background_error)
        return d

    @staticmethod
    def _background_error(failure: Failure) -> None:
        if not isinstance(failure.value, CancelledError):
            log.failure("txacme issuing service: unexpected error", failure)

    # -- checks and planning ---------------------------------------------------

    def _periodic_check(self) -> Deferred[None]:
        return self._spawn(self._check())

    async def _whole_store(self) -> AsyncIterator[Mapping[str, Sequence[pem.AbstractPEMObject]]]:
        """The default entry source: the whole store, as one batch."""
        yield await self._cert_store.as_dict()

    async def _check(self) -> None:
        initial = not self._initial_done
        urgent: list[Deferred[IssuedCertificate]] = []
        seen: set[str] = set()
        client: ServiceClient | None = None
        asked = False
        try:
            try:
                async for entries in self._entry_source():
                    seen.update(entries)
                    if not asked and any(entries.values()):
                        client = await self._ari_client()
                        asked = True
                    for name, pem_objects in entries.items():
                        plan = await self._plan(name, pem_objects, client)
                        if plan is None:
                            continue
                        issuing = self._schedule(name, plan)
                        if initial and issuing is not None and plan.reason in _URGENT_REASONS:
                            urgent.append(issuing)
            except CancelledError:
                raise
            except Exception:
                log.failure("could not read the certificate store")
                return
            for gone in set(self._states) - seen:
                self._forget(gone)
            if initial:
                summary = summarize(self._states, self._now())
                log_startup_summary(summary, store_label(self._cert_store))
        finally:
            if initial:
                # Not awaited: the next periodic check need not wait for issuance.
                DeferredList(urgent, consumeErrors=True).addBoth(lambda _: self._finish_initial())

    def _forget(self, name: str) -> None:
        """Stop tracking a name that left the store (keeping a running rate limit)."""
        state = self._states.get(name)
        if state is None or state.in_flight is not None:
            return
        state.cancel_timer()
        if state.hold_until is None or state.hold_until <= self._now():
            del self._states[name]

    def _state(self, name: str) -> NameState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = NameState()
        return state

    async def _ari_client(self) -> ServiceClient | None:
        """The client when it offers ARI, else ``None`` (ARI is optional)."""
        try:
            client = await self._clients.get()
        except CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, errors.TxACMEError):
                log.failure(
                    "no ACME client for renewal information; using certificate lifetimes",
                    level=LogLevel.error,
                )
            else:
                log.warn(
                    "no ACME client for renewal information ({cause}); using certificate lifetimes",
                    cause=str(e),
                )
            return None
        return client if client.supports_ari else None

    @staticmethod
    def _certificate_in(
        name: str, pem_objects: Sequence[pem.AbstractPEMObject]
    ) -> x509.Certificate | None:
        try:
            return first_certificate(pem_objects)
        except ValueError:
            log.error("the stored certificate of {name} is unreadable", name=name)
            return None

    def _plan_now(
        self, name: str, certificate: x509.Certificate | None, ari: RenewalAnswer | None
    ) -> RenewalPlan:
        plan = plan_renewal(
            name,
            certificate,
            self._now(),
            ari,
            self._scheduling.renewal,
            names=self._issuing.identifiers(name),
        )
        if plan.replaces is not None and plan.replaces == self._state(name).skip_replaces:
            plan = attrs.evolve(plan, replaces=None)
        records = self._issuer_records
        if certificate is not None and records is not None and plan.reason not in _URGENT_REASONS:
            if records.stale(name, certificate) is not None:  # another CA: renew now
                plan = attrs.evolve(plan, due_at=self._now(), reason="ca_changed", replaces=None)
        return plan

    async def _plan(
        self,
        name: str,
        pem_objects: Sequence[pem.AbstractPEMObject],
        client: ServiceClient | None,
    ) -> RenewalPlan | None:
        """
        Plan ``name`` from its store entry, fetching ARI through ``client`` when
        it is not ``None``. ``None`` when the name is being issued (the issuance
        re-plans when it ends) or a newer certificate was stored meanwhile.
        """
        state = self._state(name)
        if state.in_flight is not None:
            return None
        generation = state.generation
        certificate = self._certificate_in(name, pem_objects)
        ari = None
        if certificate is not None and certificate.not_valid_after_utc > self._now():
            if client is not None:
                ari = await fetch_renewal_info(name, state, certificate, client, self._now)
            else:
                ari = state.cached_ari(certificate)  # no client now: the last answer holds
        if (
            self._states.get(name) is not state
            or state.in_flight is not None
            or state.generation != generation
        ):
            return None
        return self._plan_now(name, certificate, ari)

    def _schedule(self, name: str, plan: RenewalPlan) -> Deferred[IssuedCertificate] | None:
        """
        Set the timer of ``name`` for ``plan``, or start issuing when it is due.

        :return: a ``Deferred`` of the issuance when it was started, else ``None``.
        """
        if not self.running:
            return None
        state = self._state(name)
        state.cancel_timer()
        due = plan.due_at
        if state.retry_at is not None and state.retry_at > due:
            due = state.retry_at
        if state.scheduled != (due, plan.reason):
            state.scheduled = (due, plan.reason)
            self._emit(RenewalScheduled(name, due, plan.reason, plan.replaces))
        now = self._now()
        if due <= now:
            issuing = self._issue(name, plan)
            issuing.addErrback(lambda f: None)  # already logged as a Failed event
            return issuing
        wake = due
        if state.ari is not None and state.ari.next_fetch < wake:
            wake = state.ari.next_fetch
        state.timer = self._clock.callLater(
            max((wake - now).total_seconds(), 0.0), self._wake, name
        )
        return None

    def _wake(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None:
            state.timer = None
        self._spawn(self._refresh(name))

    async def _refresh(self, name: str, *, new_client: bool = True) -> None:
        """
        Read ``name`` from the store again, plan it and act on the plan.
        ``new_client=False`` (after a failed attempt) plans with the current
        client or none, so that no request reaches the CA before the backoff
        delay.
        """
        try:
            pem_objects = await self._cert_store.get(name)
        except KeyError:
            self._forget(name)
            return
        client = None
        if pem_objects and (new_client or self._clients.current is not None):
            # Only a stored certificate has renewal information to ask about.
            client = await self._ari_client()
        plan = await self._plan(name, pem_objects, client)
        if plan is not None:
            self._schedule(name, plan)

    # -- issuance ------------------------------------------------------------

    def issue_cert(self, server_name: str) -> Deferred[IssuedCertificate]:
        """
        Obtain a certificate for ``server_name`` now and store it, replacing
        any existing one; joins the issuance already in flight for that name.

        Works whether or not the service is running. While a ``rateLimited``
        delay of the name runs, fails at once with that problem.

        :return: a ``Deferred`` of the issued certificate (its ``pem_objects``
            are what was stored), failing if issuance fails.
        """
        try:
            name = normalize_server_name(server_name)
        except errors.InvalidServerName:
            return fail()
        state = self._state(name)
        if state.in_flight is not None:
            return state.in_flight.wait()
        if state.hold_failure is not None and state.hold_until is not None:
            if self._now() < state.hold_until:
                return fail(state.hold_failure)
        return Deferred.fromCoroutine(self._issue_on_demand(name))

    async def _issue_on_demand(self, name: str) -> IssuedCertificate:
        managed = True
        try:
            pem_objects = await self._cert_store.get(name)
        except KeyError:
            pem_objects, managed = [], False
        state = self._state(name)
        if state.in_flight is not None:  # started while we read the store
            return await state.in_flight.wait()
        certificate = self._certificate_in(name, pem_objects)
        ari = state.cached_ari(certificate) if certificate is not None else None
        plan = attrs.evolve(self._plan_now(name, certificate, ari), due_at=self._now())
        return await self._issue(name, plan, managed=managed)

    def _issue(
        self, name: str, plan: RenewalPlan, *, managed: bool = True
    ) -> Deferred[IssuedCertificate]:
        """
        Join or start the issuance of ``name``. ``managed`` is false for an
        on-demand name the store does not hold: its failures are no emergency.
        """
        state = self._state(name)
        fanout = state.in_flight
        if fanout is None:
            fanout = Fanout(self._semaphore.run(self._start_attempt, name, plan, managed))
            state.in_flight = fanout
            fanout.wait().addBoth(self._issue_done, name, fanout)
        return fanout.wait()

    def _start_attempt(
        self, name: str, plan: RenewalPlan, managed: bool
    ) -> Deferred[IssuedCertificate]:
        if self._stopping:  # the semaphore was released by a cancelled attempt
            return fail(CancelledError())
        return Deferred.fromCoroutine(self._attempt(name, plan, managed))

    def _issue_done(
        self, result: IssuedCertificate | Failure, name: str, fanout: Fanout[IssuedCertificate]
    ) -> None:
        state = self._state(name)
        if state.in_flight is fanout:
            state.in_flight = None
            state.cancelling = False
        if not self.running:
            return
        if not isinstance(result, Failure):
            self._spawn(self._replan_after_success(name, result))
        elif not isinstance(result.value, CancelledError):
            # Plan again from the store; the backoff delays the next attempt.
            self._spawn(self._refresh(name, new_client=False))

    async def _replan_after_success(self, name: str, issued: IssuedCertificate) -> None:
        client = await self._ari_client()
        plan = await self._plan(name, list(issued.pem_objects), client)
        if plan is not None:
            self._schedule(name, plan)

    async def _attempt(self, name: str, plan: RenewalPlan, managed: bool) -> IssuedCertificate:
        state = self._state(name)
        identifiers = self._issuing.identifiers(name)
        self._emit(Obtaining(name, identifiers, plan.reason, state.failures + 1, plan.replaces))
        started = self._clock.seconds()
        try:
            issued = await self._order_and_store(name, plan, identifiers)
            pem_objects = list(issued.pem_objects)
        except CancelledError:
            raise
        except Exception as e:
            if state.cancelling:
                # Cancelling may surface as another error (e.g. a request that
                # "never received a response"): it is no failure of the name.
                raise CancelledError() from e
            self._failed(name, plan, managed, Failure())  # type: ignore[no-untyped-call]
            raise
        state.succeeded()
        if self._issuer_records is not None:
            self._issuer_records.stored(name, pem_objects)
        if self._on_stored is not None:
            try:
                await maybeDeferred(self._on_stored, name, pem_objects)
            except CancelledError:
                raise
            except Exception:
                log.failure("on_stored callback failed for {name}", name=name)
        seconds = self._clock.seconds() - started
        issuer = issuer_name(issued.certificate)
        renewed = plan.not_after is not None
        self._emit(Obtained(name, identifiers, issued.not_after, seconds, issuer, renewed))
        return issued

    async def _order_and_store(
        self, name: str, plan: RenewalPlan, identifiers: tuple[str, ...]
    ) -> IssuedCertificate:
        """
        Order and store. With a store shared by several processes
        (``txacme.stores.coordination.ICoordinatingStore``), under the name's lock:
        the entry is read again first and not ordered when another process
        has just renewed it (see :func:`txacme.issuing.locked.coordinated_issue`).
        """
        store = self._cert_store
        if provides_coordination(store):
            return await coordinated_issue(
                store,
                name,
                lambda: self._order(plan, identifiers),
                lambda pem_objects: self._still_due(name, plan, pem_objects),
                clock=self._clock,
            )
        issued = await self._order(plan, identifiers)
        await store.store(name, list(issued.pem_objects))
        return issued

    def _still_due(
        self, name: str, plan: RenewalPlan, pem_objects: Sequence[pem.AbstractPEMObject]
    ) -> bool:
        """Whether the entry, read again under the lock, still needs the planned order."""
        certificate = self._certificate_in(name, pem_objects)
        if certificate is None:
            return True
        if plan.not_after is not None and certificate.not_valid_after_utc <= plan.not_after:
            return True  # still the certificate this attempt was planned from
        return self._plan_now(name, certificate, None).due_at <= self._now()

    async def _order(self, plan: RenewalPlan, identifiers: tuple[str, ...]) -> IssuedCertificate:
        issue = self._issuing.issue
        for again in (True, False):
            client = await self._clients.get()
            try:
                return await settle(
                    issue(
                        client,
                        list(identifiers),
                        self._responders,
                        **self._issuing.order_options(plan.replaces),
                    )
                )
            except errors.AccountDoesNotExist:
                if not again:
                    raise
                # The CA lost the account (e.g. a reset test CA): register
                # again with a new client and retry at once, once.
                log.warn("the CA no longer knows the ACME account; registering again")
                await self._clients.drop()
        raise AssertionError("unreachable")

    def _failed(self, name: str, plan: RenewalPlan, managed: bool, failure: Failure) -> None:
        state = self._state(name)
        error = failure.value
        assert error is not None
        state.failures += 1
        delay = backoff_delay(state.failures, self._scheduling.rng)
        problem = _problem_of(error)
        now = self._now()
        if problem is not None and problem.retry_after is not None:
            delay = max(delay, problem.retry_after)
            if isinstance(problem, errors.RateLimited):
                state.hold_until = now + timedelta(seconds=problem.retry_after)
                state.hold_failure = failure
        if isinstance(problem, errors.AlreadyReplaced) and plan.replaces is not None:
            state.skip_replaces = plan.replaces
        if _client_looks_broken(error):
            self._clients.drop()
        retry_at = now + timedelta(seconds=delay)
        state.retry_at = retry_at
        if problem is not None:
            kind, detail = problem.type, problem.detail or str(error)
        else:
            kind, detail = type(error).__name__, str(error)
        self._emit(Failed(name, kind, detail, state.failures, retry_at, failure))
        if managed and plan.is_emergency(now):
            self._emit(Emergency(name, plan.not_after, failure))
            if self._panic is not None:
                try:
                    self._panic(failure, name)
                except Exception:
                    log.failure("panic callback failed for {name}", name=name)
