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
    Every step is an attrs event object (:class:`RenewalScheduled`,
    :class:`Obtaining`, :class:`Obtained`, :class:`Failed`, :class:`Emergency`)
    given to :meth:`~AcmeIssuingService.subscribe` callbacks and logged with a
    stable ``event`` field plus the event's fields (times as ISO 8601 text).
    ``RenewalScheduled`` is emitted when a name's due time or reason changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Generic, TypeVar

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
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from txacme import errors
from txacme.issuing.policy import (
    RenewalPlan,
    RenewalSettings,
    ari_certificate_id,
    backoff_delay,
    next_ari_check,
    plan_renewal,
)
from txacme.names import normalize_server_name

__all__ = [
    "AcmeIssuingService",
    "Emergency",
    "Failed",
    "Obtained",
    "Obtaining",
    "RenewalScheduled",
    "ServiceEvent",
]

log = Logger()

_T = TypeVar("_T")

#: Reasons that mean "this name has no certificate one can rely on".
_URGENT_REASONS = frozenset({"missing", "expired", "emergency", "names"})


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@attrs.frozen
class RenewalScheduled:
    """The next issuance of ``name`` is planned at ``due_at`` for ``reason``."""

    event: ClassVar[str] = "renewal_scheduled"
    level: ClassVar[LogLevel] = LogLevel.info
    format: ClassVar[str] = "certificate for {name} due at {due_at} ({reason})"

    name: str
    due_at: datetime
    reason: str
    replaces: str | None = None


@attrs.frozen
class Obtaining:
    """Issuance of ``names`` (store entry ``name``) starts; ``attempt`` counts from 1."""

    event: ClassVar[str] = "obtaining"
    level: ClassVar[LogLevel] = LogLevel.info
    format: ClassVar[str] = "obtaining a certificate for {names} ({reason}, attempt {attempt})"

    name: str
    names: tuple[str, ...]
    reason: str
    attempt: int
    replaces: str | None = None


@attrs.frozen
class Obtained:
    """A certificate for ``name`` was obtained and stored, in ``seconds``."""

    event: ClassVar[str] = "obtained"
    level: ClassVar[LogLevel] = LogLevel.info
    format: ClassVar[str] = (
        "obtained a certificate for {names}, valid until {not_after}, in {seconds:.3f} s"
    )

    name: str
    names: tuple[str, ...]
    not_after: datetime | None
    seconds: float


@attrs.frozen
class Failed:
    """
    An attempt for ``name`` failed; the next one is not before ``retry_at``.

    ``problem`` is the ACME problem type (a URN) or the exception class name;
    ``detail`` its text.
    """

    event: ClassVar[str] = "failed"
    level: ClassVar[LogLevel] = LogLevel.error
    format: ClassVar[str] = (
        "obtaining a certificate for {name} failed (attempt {attempt}): {problem}: {detail}; "
        "next attempt at {retry_at}"
    )

    name: str
    problem: str
    detail: str
    attempt: int
    retry_at: datetime
    failure: Failure = attrs.field(repr=False, eq=False)


@attrs.frozen
class Emergency:
    """
    Renewal of ``name`` failed while it has no valid certificate
    (``not_after`` is ``None`` or past) or is inside its emergency window.
    """

    event: ClassVar[str] = "emergency"
    level: ClassVar[LogLevel] = LogLevel.critical

    name: str
    not_after: datetime | None
    failure: Failure = attrs.field(repr=False, eq=False)

    @property
    def format(self) -> str:
        """The log message format."""
        if self.not_after is None:
            return "there is no certificate for {name} and obtaining one failed"
        return "certificate for {name} expires at {not_after} and renewal failed"


ServiceEvent = RenewalScheduled | Obtaining | Obtained | Failed | Emergency
"""Every event type :meth:`AcmeIssuingService.subscribe` callbacks receive."""


class _Fanout(Generic[_T]):
    """Gives each caller its own ``Deferred`` for the result of one ``Deferred``."""

    def __init__(self, source: Deferred[_T]) -> None:
        self.source = source
        self._waiters: list[Deferred[_T]] = []
        self._result: _T | Failure | None = None
        self.done = False
        source.addBoth(self._fire)

    def _fire(self, result: _T | Failure) -> None:
        self.done = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._give(waiter)

    def _give(self, waiter: Deferred[_T]) -> None:
        if waiter.called:  # cancelled by its caller
            return
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)  # type: ignore[arg-type]

    def wait(self) -> Deferred[_T]:
        """A new ``Deferred`` for the result; cancelling it affects nobody else."""
        waiter: Deferred[_T] = Deferred()
        if self.done:
            self._give(waiter)
        else:
            self._waiters.append(waiter)
        return waiter


@attrs.define
class _AriCache:
    cert_id: str
    info: Any
    next_fetch: datetime


@attrs.define
class _NameState:
    timer: IDelayedCall | None = None
    scheduled: tuple[datetime, str] | None = None
    failures: int = 0
    retry_at: datetime | None = None
    hold_until: datetime | None = None
    hold_failure: Failure | None = None
    skip_replaces: str | None = None
    in_flight: _Fanout[Any] | None = None
    cancelling: bool = False
    generation: int = 0
    ari: _AriCache | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def _first_certificate(pem_objects: Iterable[pem.AbstractPEMObject]) -> x509.Certificate | None:
    for obj in pem_objects:
        if isinstance(obj, pem.Certificate):
            return x509.load_pem_x509_certificate(obj.as_bytes())
    return None


def _problem_of(error: BaseException) -> errors.ACMEProblem | None:
    if isinstance(error, errors.ACMEProblem):
        return error
    if isinstance(error, errors.IssuanceFailed):
        return error.problem
    return None


#: Problems that say nothing about the client's health.
_CLIENT_BROKEN_PROBLEMS = (errors.AccountDoesNotExist, errors.BadNonce, errors.Unauthorized)


def _client_looks_broken(error: BaseException) -> bool:
    if isinstance(error, errors.IssuanceFailed):
        return False
    from txacme.stores.coordination import LockLost, LockTimeout

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
    :param clock: the reactor's time (default: the global reactor).
    :param responders: the :class:`~txacme.interfaces.IResponder` objects that
        answer challenges.
    :param client: an already built client, instead of ``client_creator``.
    :param email: the account's contact address, given to ``client.start``.
    :param check_interval: time between full checks of the store (a
        ``timedelta`` or seconds; default 12 hours).
    :param panic: ``panic(failure, server_name)``, called when renewal fails
        for a name without a valid certificate or inside its emergency window
        (in addition to the CRITICAL log).
    :param generate_key: a callable returning the private key for each new
        certificate; by default a fresh key of ``key_type`` is made.
    :param key_type: the type of new certificate keys (default ``"ec256"``);
        ignored when ``generate_key`` is given.
    :param profile: the ACME profile to ask for, or ``None``.
    :param max_concurrent: how many issuances run at once (default 5).
    :param renewal_fraction: renew when this fraction of the lifetime remains
        (for certificates living under 10 days, the larger of this and 1/2).
    :param emergency_fraction: the emergency window, as the last fraction of
        the lifetime.
    :param names: extra names per store entry (see the module docs).
    :param on_stored: ``on_stored(server_name, pem_objects)``, called (and
        waited for if it returns a ``Deferred``) after each certificate is
        stored, e.g. to update a TLS index at once.
    :param issue: the issuance function (default
        :func:`txacme.issuing.order.obtain_certificate`).
    :param rng: randomness for backoff jitter (default: a new ``random.Random``).
    """

    def __init__(
        self,
        cert_store: Any,
        client_creator: Callable[[], Any] | None = None,
        clock: IReactorTime | None = None,
        responders: Sequence[Any] = (),
        *,
        client: Any = None,
        email: str | None = None,
        check_interval: timedelta | float = timedelta(hours=12),
        panic: Callable[[Failure, str], object] | None = None,
        generate_key: Callable[[], Any] | None = None,
        key_type: str | None = None,
        profile: str | None = None,
        max_concurrent: int = 5,
        renewal_fraction: float = 1 / 3,
        emergency_fraction: float = 1 / 6,
        names: Mapping[str, Sequence[str]] | None = None,
        on_stored: Callable[[str, list[pem.AbstractPEMObject]], object] | None = None,
        issue: Callable[..., Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if (client_creator is None) == (client is None):
            raise errors.ConfigurationError("give exactly one of client_creator and client")
        if key_type is not None:
            from txacme.keys import KEY_TYPES

            if key_type not in KEY_TYPES:
                raise errors.UnsupportedKeyType(
                    f"unsupported key_type {key_type!r}; use one of: {', '.join(KEY_TYPES)}"
                )
        interval = (
            check_interval.total_seconds()
            if isinstance(check_interval, timedelta)
            else float(check_interval)
        )
        if not interval > 0:
            raise errors.ConfigurationError(
                f"check_interval must be positive, not {check_interval!r}"
            )
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise errors.ConfigurationError(
                f"max_concurrent must be a positive integer, not {max_concurrent!r}"
            )
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._settings = RenewalSettings(
            fraction=renewal_fraction,
            short_fraction=max(1 / 2, renewal_fraction),
            emergency_fraction=emergency_fraction,
        )
        self._cert_store = cert_store
        self._client_creator = client_creator
        self._given_client = client
        self._clock = clock
        self._responders = list(responders)
        self._email = email
        self._check_interval = interval
        self._panic = panic
        self._generate_key = generate_key
        self._key_type = key_type
        self._profile = profile
        self._names = self._normalize_names(names or {})
        self._on_stored = on_stored
        self._issue_fn = issue
        self._rng = rng if rng is not None else random.Random()
        self._semaphore = DeferredSemaphore(max_concurrent)
        self._states: dict[str, _NameState] = {}
        self._subscribers: list[Callable[[ServiceEvent], object]] = []
        self._client: Any = None
        self._client_fanout: _Fanout[Any] | None = None
        self._background: set[Deferred[Any]] = set()
        self._loop: LoopingCall | None = None
        self._initial_done = False
        self._initial_waiters: list[Deferred[None]] = []
        self._stopping = False

    # -- configuration -----------------------------------------------------

    @staticmethod
    def _normalize_names(names: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        result: dict[str, tuple[str, ...]] = {}
        for primary, extra in names.items():
            if isinstance(extra, str):
                raise errors.ConfigurationError(
                    f"names[{primary!r}] must be a list of names, not a string"
                )
            key = normalize_server_name(primary)
            ordered = [key]
            for name in extra:
                canonical = normalize_server_name(name)
                if canonical not in ordered:
                    ordered.append(canonical)
            result[key] = tuple(ordered)
        return result

    def _identifiers(self, name: str) -> tuple[str, ...]:
        return self._names.get(name, (name,))

    # -- events ------------------------------------------------------------

    def subscribe(self, callback: Callable[[ServiceEvent], object]) -> Callable[[], None]:
        """
        Call ``callback(event)`` for every event (see :data:`ServiceEvent`).

        Exceptions raised by ``callback`` are logged and ignored.

        :return: a function that unsubscribes ``callback``.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: ServiceEvent) -> None:
        fields: dict[str, Any] = {}
        for field in attrs.fields(type(event)):
            value = getattr(event, field.name)
            if isinstance(value, Failure):
                continue
            fields[field.name] = _iso(value) if isinstance(value, datetime) else value
        if isinstance(event, Failed) and not isinstance(event.failure.value, errors.TxACMEError):
            fields["log_failure"] = event.failure  # an unexpected error: keep its traceback
        if "names" in fields:
            fields["names"] = ", ".join(fields["names"])
        log.emit(event.level, event.format, event=event.event, **fields)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.failure("event subscriber {callback!r} failed", callback=callback)

    # -- time ----------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), tz=timezone.utc)

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        """Check the store now, then every ``check_interval``."""
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self._periodic_check)
        self._loop.clock = self._clock
        self._loop.start(self._check_interval, now=True).addErrback(
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
        if self._client_fanout is not None:
            self._client_fanout.source.cancel()
        self._finish_initial()
        return DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: self._drop_client()
        )

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

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
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

    def _periodic_check(self) -> Deferred[Any]:
        return self._spawn(self._check())

    async def _check(self) -> None:
        initial = not self._initial_done
        urgent: list[Deferred[Any]] = []
        try:
            try:
                entries = await self._cert_store.as_dict()
            except CancelledError:
                raise
            except Exception:
                log.failure("could not read the certificate store")
                return
            for gone in set(self._states) - set(entries):
                self._forget(gone)
            client = None
            if any(entries.values()):
                client = await self._ari_client()
            for name, pem_objects in entries.items():
                plan = await self._plan(name, pem_objects, client)
                if plan is None:
                    continue
                issuing = self._schedule(name, plan)
                if initial and issuing is not None and plan.reason in _URGENT_REASONS:
                    urgent.append(issuing)
        finally:
            if initial:
                # Not awaited: the next periodic check need not wait for issuance.
                DeferredList(urgent, consumeErrors=True).addBoth(
                    lambda _: self._finish_initial()
                )

    def _forget(self, name: str) -> None:
        """Stop tracking a name that left the store (keeping a running rate limit)."""
        state = self._states.get(name)
        if state is None or state.in_flight is not None:
            return
        state.cancel_timer()
        if state.hold_until is None or state.hold_until <= self._now():
            del self._states[name]

    def _state(self, name: str) -> _NameState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _NameState()
        return state

    async def _ari_client(self) -> Any:
        """The client when it offers ARI, else ``None`` (ARI is optional)."""
        try:
            client = await self._get_client()
        except CancelledError:
            raise
        except Exception:
            log.failure("no ACME client for renewal information; using certificate lifetimes")
            return None
        return client if getattr(client, "supports_ari", False) else None

    @staticmethod
    def _certificate_in(
        name: str, pem_objects: Sequence[pem.AbstractPEMObject]
    ) -> x509.Certificate | None:
        try:
            return _first_certificate(pem_objects)
        except ValueError:
            log.error("the stored certificate of {name} is unreadable", name=name)
            return None

    def _plan_now(self, name: str, certificate: x509.Certificate | None, ari: Any) -> RenewalPlan:
        plan = plan_renewal(
            name, certificate, self._now(), ari, self._settings, names=self._identifiers(name)
        )
        if plan.replaces is not None and plan.replaces == self._state(name).skip_replaces:
            plan = attrs.evolve(plan, replaces=None)
        return plan

    async def _plan(
        self, name: str, pem_objects: Sequence[pem.AbstractPEMObject], client: Any
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
                ari = await self._renewal_info(name, state, certificate, client)
            elif state.ari is not None and state.ari.cert_id == ari_certificate_id(certificate):
                ari = state.ari.info  # no client now: the last answer still holds
        if (
            self._states.get(name) is not state
            or state.in_flight is not None
            or state.generation != generation
        ):
            return None
        return self._plan_now(name, certificate, ari)

    async def _renewal_info(
        self, name: str, state: _NameState, certificate: x509.Certificate, client: Any
    ) -> Any:
        cert_id = ari_certificate_id(certificate)
        if cert_id is None:
            return None
        now = self._now()
        cache = state.ari
        if cache is not None and cache.cert_id == cert_id and now < cache.next_fetch:
            return cache.info
        try:
            info = await client.renewal_info(certificate)
        except CancelledError:
            raise
        except Exception as e:
            log.warn(
                "renewal information for {name} unavailable ({error}); using its lifetime",
                name=name,
                error=str(e) or type(e).__name__,
            )
            state.ari = _AriCache(cert_id, None, next_ari_check(self._now(), None))
            return None
        retry_after = getattr(info, "retry_after", None)
        state.ari = _AriCache(cert_id, info, next_ari_check(self._now(), retry_after))
        return info

    def _schedule(self, name: str, plan: RenewalPlan) -> Deferred[Any] | None:
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
        if pem_objects and (new_client or self._client is not None):
            # Only a stored certificate has renewal information to ask about.
            client = await self._ari_client()
        plan = await self._plan(name, pem_objects, client)
        if plan is not None:
            self._schedule(name, plan)

    # -- issuance ------------------------------------------------------------

    def issue_cert(self, server_name: str) -> Deferred[Any]:
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

    async def _issue_on_demand(self, name: str) -> Any:
        managed = True
        try:
            pem_objects = await self._cert_store.get(name)
        except KeyError:
            pem_objects, managed = [], False
        state = self._state(name)
        if state.in_flight is not None:  # started while we read the store
            return await state.in_flight.wait()
        certificate = self._certificate_in(name, pem_objects)
        ari = None
        if certificate is not None and state.ari is not None:
            if state.ari.cert_id == ari_certificate_id(certificate):
                ari = state.ari.info
        plan = attrs.evolve(self._plan_now(name, certificate, ari), due_at=self._now())
        return await self._issue(name, plan, managed=managed)

    def _issue(self, name: str, plan: RenewalPlan, *, managed: bool = True) -> Deferred[Any]:
        """
        Join or start the issuance of ``name``. ``managed`` is false for an
        on-demand name the store does not hold: its failures are no emergency.
        """
        state = self._state(name)
        fanout = state.in_flight
        if fanout is None:
            fanout = _Fanout(self._semaphore.run(self._start_attempt, name, plan, managed))
            state.in_flight = fanout
            fanout.wait().addBoth(self._issue_done, name, fanout)
        return fanout.wait()

    def _start_attempt(self, name: str, plan: RenewalPlan, managed: bool) -> Deferred[Any]:
        if self._stopping:  # the semaphore was released by a cancelled attempt
            return fail(CancelledError())
        return Deferred.fromCoroutine(self._attempt(name, plan, managed))

    def _issue_done(self, result: object, name: str, fanout: _Fanout[Any]) -> None:
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

    async def _replan_after_success(self, name: str, issued: Any) -> None:
        client = await self._ari_client()
        plan = await self._plan(name, list(issued.pem_objects), client)
        if plan is not None:
            self._schedule(name, plan)

    def _issue_kwargs(self, plan: RenewalPlan) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"profile": self._profile, "replaces": plan.replaces}
        if self._generate_key is not None:
            kwargs["key"] = self._generate_key()
        else:
            kwargs["key_type"] = self._key_type or "ec256"
        return kwargs

    async def _attempt(self, name: str, plan: RenewalPlan, managed: bool) -> Any:
        state = self._state(name)
        identifiers = self._identifiers(name)
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
        state.generation += 1
        state.failures = 0
        state.retry_at = state.hold_until = state.hold_failure = None
        state.skip_replaces = None
        if self._on_stored is not None:
            try:
                await maybeDeferred(self._on_stored, name, pem_objects)
            except CancelledError:
                raise
            except Exception:
                log.failure("on_stored callback failed for {name}", name=name)
        seconds = self._clock.seconds() - started
        self._emit(Obtained(name, identifiers, getattr(issued, "not_after", None), seconds))
        return issued

    async def _order_and_store(
        self, name: str, plan: RenewalPlan, identifiers: tuple[str, ...]
    ) -> Any:
        """
        Order and store. With a store shared by several processes
        (``txacme.stores.coordination.ICoordinatingStore``), under the name's lock:
        the entry is read again first and not ordered when another process
        has just renewed it (see :func:`txacme.stores.coordination.coordinated_issue`).
        """
        from txacme.stores.coordination import coordinated_issue, provides_coordination

        if provides_coordination(self._cert_store):
            return await coordinated_issue(
                self._cert_store,
                name,
                lambda: self._order(plan, identifiers),
                lambda pem_objects: self._still_due(name, plan, pem_objects),
                clock=self._clock,
            )
        issued = await self._order(plan, identifiers)
        await self._cert_store.store(name, list(issued.pem_objects))
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

    async def _order(self, plan: RenewalPlan, identifiers: tuple[str, ...]) -> Any:
        issue = self._issue_fn
        if issue is None:
            from txacme.issuing.order import obtain_certificate

            issue = obtain_certificate
        for again in (True, False):
            client = await self._get_client()
            try:
                return await maybeDeferred(
                    issue, client, list(identifiers), self._responders,
                    **self._issue_kwargs(plan),
                )
            except errors.AccountDoesNotExist:
                if not again:
                    raise
                # The CA lost the account (e.g. a reset test CA): register
                # again with a new client and retry at once, once.
                log.warn("the CA no longer knows the ACME account; registering again")
                await self._drop_client()
        raise AssertionError("unreachable")

    def _failed(self, name: str, plan: RenewalPlan, managed: bool, failure: Failure) -> None:
        state = self._state(name)
        error = failure.value
        assert error is not None
        state.failures += 1
        delay = backoff_delay(state.failures, self._rng)
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
            self._drop_client()
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

    # -- the ACME client ---------------------------------------------------------

    def _get_client(self) -> Deferred[Any]:
        if self._client is not None:
            return succeed(self._client)
        fanout = self._client_fanout
        if fanout is None:
            fanout = _Fanout(Deferred.fromCoroutine(self._create_client()))
            if not fanout.done:
                self._client_fanout = fanout

                def forget(result: object) -> None:
                    self._client_fanout = None

                fanout.wait().addBoth(forget)
        return fanout.wait()

    def _drop_client(self) -> Deferred[None]:
        """Forget the client; close it when the service created it."""
        client, self._client = self._client, None
        close = getattr(client, "close", None)
        if client is None or client is self._given_client or close is None:
            return succeed(None)
        return maybeDeferred(close).addCallbacks(
            lambda _: None, lambda f: log.failure("closing the ACME client failed", f)
        )

    async def _create_client(self) -> Any:
        if self._given_client is not None:
            client = self._given_client
        else:
            assert self._client_creator is not None
            client = await maybeDeferred(self._client_creator)
        try:
            await maybeDeferred(client.start, email=self._email)
        except BaseException:
            # A client whose account could not be set up is never used: close
            # it (and its connections to the CA) unless its owner gave it.
            close = getattr(client, "close", None)
            if client is not self._given_client and close is not None:
                try:
                    await maybeDeferred(close)
                except Exception:
                    log.failure("closing the ACME client failed")
            raise
        self._client = client
        return client
