"""
The ``on_demand=persist`` policy: on-demand issuance for exactly the names
whose owner published a ``dns-persist-01`` record
(``_validation-persist.<name>``) naming this CA and this ACME account. The
record is the permission: a customer who adds it gets certificates at the first
handshake, and nobody else can make the server spend the CA's rate limits.

The record is checked at every authoritative name server of its zone (as the
responder does); an answer is reused for ``cache`` seconds when it allows and
``negative_cache`` seconds when it refuses. Wildcard names are never issued on
demand, and a parent's ``policy=wildcard`` record does not allow a subdomain
(the CA might not accept it: the draft makes subdomain validation optional).

May import the core modules, :mod:`txacme.challenges` and
:mod:`txacme.issuing.ondemand`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from txacme.challenges.dns01 import DNSPythonLookup, IDNSLookup
from txacme.challenges.dnspersist01 import record_matches, validation_name
from txacme.issuing.ondemand import (
    ANSWER_CACHE_SIZE,
    DEFAULT_ASK_CONCURRENCY,
    DEFAULT_ASK_RATE,
    LRUCache,
    OnDemandPolicy,
    RateLimiter,
)
from txacme.logs import Logger
from txacme.names import is_ip_address, is_wildcard

log = Logger()

Identity = Callable[[], "Deferred[tuple[str, Sequence[str]]]"]
"""Gives ``(account URI, issuer domain names)`` of the CA and account in use."""


class PersistOnDemandPolicy:
    """
    Allows on-demand issuance for names with a matching persistent record
    (or that ``base``, an allow-list / ask policy, allows).

    :param identity: gives the account URI and the CA's issuer domain names;
        asked once, until it succeeds.
    :param lookup: the DNS queries (default: :class:`DNSPythonLookup`).
    :param base: an :class:`~txacme.issuing.ondemand.OnDemandPolicy` asked first.
    :param cache: seconds an allowing answer is reused.
    :param negative_cache: seconds a refusal is reused.
    :param ask_rate: record checks a second, at most; a new name beyond it is
        refused without a DNS query (and checked again later), as the
        ``on_demand_ask=`` limits do.
    :param ask_concurrency: record checks running at once, at most.
    :param cache_size: answers kept (least recently used first out).
    :param clock: the reactor's time.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        lookup: IDNSLookup | None = None,
        base: OnDemandPolicy | None = None,
        cache: float = 300.0,
        negative_cache: float = 60.0,
        ask_rate: int = DEFAULT_ASK_RATE,
        ask_concurrency: int = DEFAULT_ASK_CONCURRENCY,
        cache_size: int = ANSWER_CACHE_SIZE,
        clock: IReactorTime,
    ) -> None:
        self._identity = identity
        self._known: tuple[str, Sequence[str]] | None = None
        self.lookup: IDNSLookup = lookup if lookup is not None else DNSPythonLookup()
        self.base = base
        self.cache = cache
        self.negative_cache = negative_cache
        self._clock = clock
        self._answers: LRUCache[str, tuple[bool, float]] = LRUCache(cache_size)
        self._asking: dict[str, Deferred[bool]] = {}
        self.ask_limiter = RateLimiter(ask_rate, 1.0, clock)
        self.ask_concurrency = ask_concurrency
        #: Names refused without a check because of the limits (with ``base``'s).
        self._limited = 0

    def __repr__(self) -> str:
        return f"PersistOnDemandPolicy(base={self.base!r}, lookup={self.lookup!r})"

    @property
    def ask_limited(self) -> int:
        """Names refused without a check or an ask because of the limits."""
        return self._limited + (self.base.ask_limited if self.base is not None else 0)

    def allowed_by_list(self, name: str) -> bool:
        """Whether ``base`` allows ``name`` by its list."""
        return self.base is not None and self.base.allowed_by_list(name)

    def decide(self, name: str) -> Deferred[bool]:
        """Whether ``name`` (canonical) may be issued on demand; never fails."""
        if is_wildcard(name) or is_ip_address(name):
            return succeed(False)
        cached = self._answers.get(name)
        if cached is not None:
            if cached[1] > self._clock.seconds():
                return succeed(cached[0])
            self._answers.pop(name)
        running = self._asking.get(name)
        if running is None:
            if len(self._asking) >= self.ask_concurrency or not self.ask_limiter.try_take():
                self._limited += 1
                return succeed(False)
            running = Deferred.fromCoroutine(self._decide(name))
            if not running.called:
                self._asking[name] = running
        result: Deferred[bool] = Deferred()

        def copy(value: bool) -> bool:
            result.callback(value)
            return value

        running.addCallback(copy)
        return result

    async def _decide(self, name: str) -> bool:
        try:
            if self.base is not None and await self.base.decide(name):
                return True
            allowed = await self._has_record(name)
        except Exception as e:
            log.warn("on_demand=persist: checking {name} failed: {error}", name=name, error=str(e))
            allowed = False
        finally:
            self._asking.pop(name, None)
        ttl = self.cache if allowed else self.negative_cache
        self._answers.put(name, (allowed, self._clock.seconds() + ttl))
        log.debug(
            "on_demand=persist: {name} {verdict}",
            name=name,
            verdict="has a matching record" if allowed else "has no matching record: refused",
        )
        return allowed

    async def _has_record(self, name: str) -> bool:
        if self._known is None:
            self._known = await self._identity()
        account_uri, issuers = self._known
        fqdn = validation_name(name)
        zone = await self.lookup.find_zone(fqdn)
        servers = await self.lookup.authoritative_servers(zone)
        now = self._clock.seconds()
        for server in servers:
            values = await self.lookup.query_txt(server, fqdn)
            if not any(record_matches(v, issuers, account_uri, now=now) for v in values):
                return False
        return bool(servers)


__all__ = ["Identity", "PersistOnDemandPolicy"]
