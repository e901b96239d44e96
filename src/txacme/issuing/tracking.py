"""
What the issuing service keeps between checks: the state of each name (its timer,
backoff, the issuance in flight, the last renewal information) and the ACME
client it shares between names.

:class:`Fanout` gives every caller of one operation its own ``Deferred``;
:class:`NameState` and :class:`AriCache` are plain records the service
updates; :func:`fetch_renewal_info` asks the CA for renewal information
through the cache; :class:`ClientKeeper` creates, shares and replaces the client.

May import the core modules and the issuing modules below the service
(:mod:`~txacme.issuing.order`, :mod:`~txacme.issuing.locked`,
:mod:`~txacme.issuing.policy`, :mod:`~txacme.issuing.settings`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import attrs
from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txacme.issuing.order import IssuedCertificate
from txacme.issuing.policy import next_ari_check
from txacme.issuing.settings import ClientCreator, RenewalAnswer, ServiceClient
from txacme.logs import Logger
from txacme.protocol.ari import ari_certificate_id

__all__ = [
    "AriCache",
    "ClientKeeper",
    "Fanout",
    "NameState",
    "fetch_renewal_info",
    "settle",
]

log = Logger()

_ARI_WARNING_EVERY = timedelta(hours=1)
#: When the last failure to fetch renewal information was logged as a warning.
_last_ari_warning: list[datetime | None] = [None]

_T = TypeVar("_T")


class Fanout(Generic[_T]):
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
class AriCache:
    """
    The last renewal information fetched for a certificate.

    :ivar cert_id: the ARI identifier of the certificate asked about.
    :ivar info: the answer, or ``None`` when fetching it failed.
    :ivar next_fetch: when to ask again.
    """

    cert_id: str
    info: RenewalAnswer | None
    next_fetch: datetime


@attrs.define
class NameState:
    """
    What the service tracks for one store entry.

    :ivar timer: the call that re-plans the name, if set.
    :ivar scheduled: the due time and reason last announced.
    :ivar failures: consecutive failed attempts.
    :ivar retry_at: no attempt before this (the backoff).
    :ivar hold_until: ``issue_cert`` fails at once until then (``rateLimited``).
    :ivar hold_failure: what it fails with.
    :ivar skip_replaces: an ARI identifier the CA said is already replaced.
    :ivar in_flight: the issuance running for the name.
    :ivar cancelling: the service is cancelling that issuance.
    :ivar generation: counts certificates stored, to drop stale plans.
    :ivar ari: the renewal information cache.
    """

    timer: IDelayedCall | None = None
    scheduled: tuple[datetime, str] | None = None
    failures: int = 0
    retry_at: datetime | None = None
    hold_until: datetime | None = None
    hold_failure: Failure | None = None
    skip_replaces: str | None = None
    in_flight: Fanout[IssuedCertificate] | None = None
    cancelling: bool = False
    generation: int = 0
    ari: AriCache | None = None

    def cancel_timer(self) -> None:
        """Cancel the timer, if any."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def cached_ari(self, certificate: x509.Certificate) -> RenewalAnswer | None:
        """The last renewal information fetched for ``certificate``, if any."""
        if self.ari is not None and self.ari.cert_id == ari_certificate_id(certificate):
            return self.ari.info
        return None

    def succeeded(self) -> None:
        """Forget the failures after a certificate was stored."""
        self.generation += 1
        self.failures = 0
        self.retry_at = self.hold_until = self.hold_failure = None
        self.skip_replaces = None


async def fetch_renewal_info(
    name: str,
    state: NameState,
    certificate: x509.Certificate,
    client: ServiceClient,
    now: Callable[[], datetime],
) -> RenewalAnswer | None:
    """
    The renewal information of ``certificate`` (store entry ``name``), from the
    cache of ``state`` until it is due again, else from ``client``. A failure is
    logged and cached as ``None`` (the lifetime rule applies) until the next
    fetch.
    """
    cert_id = ari_certificate_id(certificate)
    if cert_id is None:
        return None
    cache = state.ari
    if cache is not None and cache.cert_id == cert_id and now() < cache.next_fetch:
        return cache.info
    try:
        info = await client.renewal_info(certificate)
    except CancelledError:
        raise
    except Exception as e:
        # One warning an hour, not one per certificate: the rest at debug.
        moment = now()
        last = _last_ari_warning[0]
        quiet = last is not None and timedelta(0) <= moment - last < _ARI_WARNING_EVERY
        if not quiet:
            _last_ari_warning[0] = moment
        log.emit(
            LogLevel.debug if quiet else LogLevel.warn,
            "renewal information for {name} unavailable ({error}); using its lifetime"
            + ("" if quiet else " (more such failures within the hour are logged at debug)"),
            name=name,
            error=str(e) or type(e).__name__,
        )
        state.ari = AriCache(cert_id, None, next_ari_check(now(), None))
        return None
    state.ari = AriCache(cert_id, info, next_ari_check(now(), info.retry_after))
    return info


async def settle(value: Awaitable[_T] | _T) -> _T:
    """The result of ``value``: awaited when it is awaitable (a ``Deferred``, a coroutine)."""
    if isinstance(value, Awaitable):
        result: _T = await value
        return result
    return value


class ClientKeeper:
    """
    The service's ACME client: created when first needed, shared by every
    caller, dropped (and closed) after failures that suggest it is broken.

    :param creator: makes a new client; or
    :param given: a client made by the caller, never closed here.
    :param email: the account's contact address, given to ``client.start``.
    """

    def __init__(
        self, creator: ClientCreator | None, given: ServiceClient | None, email: str | None
    ) -> None:
        self._creator = creator
        self._given = given
        self._email = email
        self.current: ServiceClient | None = None
        self._creating: Fanout[ServiceClient] | None = None

    def get(self) -> Deferred[ServiceClient]:
        """The client, creating (and starting) it when there is none."""
        if self.current is not None:
            return succeed(self.current)
        fanout = self._creating
        if fanout is None:
            fanout = Fanout(Deferred.fromCoroutine(self._create()))
            if not fanout.done:
                self._creating = fanout

                def forget(result: object) -> None:
                    self._creating = None

                fanout.wait().addBoth(forget)
        return fanout.wait()

    def cancel(self) -> None:
        """Cancel the creation in progress, if any."""
        if self._creating is not None:
            self._creating.source.cancel()

    def drop(self) -> Deferred[None]:
        """Forget the client; close it when it was created here."""
        client, self.current = self.current, None
        if client is None or client is self._given:
            return succeed(None)
        return maybeDeferred(client.close).addCallbacks(
            lambda _: None, lambda f: log.failure("closing the ACME client failed", f)
        )

    async def _create(self) -> ServiceClient:
        if self._given is not None:
            client = self._given
        else:
            assert self._creator is not None
            client = await settle(self._creator())
        try:
            await maybeDeferred(client.start, email=self._email)
        except BaseException:
            # A client whose account could not be set up is never used: close
            # it (and its connections to the CA) unless its owner gave it.
            if client is not self._given:
                try:
                    await maybeDeferred(client.close)
                except Exception:
                    log.failure("closing the ACME client failed")
            raise
        self.current = client
        return client
