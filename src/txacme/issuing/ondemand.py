"""
On-demand issuance: which names a TLS handshake may obtain a certificate for,
how many at a time, and obtaining it while the handshake waits.

The handshake is held by :class:`txacme.serving.hello.HelloHookFactory` (see
:mod:`txacme.serving.hello`); :meth:`OnDemandIssuer.hello_hook` is the hook that
decides and issues.

Policy
------

:class:`OnDemandPolicy` decides which names may be issued: names matching the
allow-list (exact names, or ``*.example.com`` for any one label below
``example.com``), or names that an "ask" URL approves (``GET <url>?domain=<name>``
answering ``200``; anything else, or no answer within ``ask_timeout``, is a
refusal; answers are cached for ``ask_cache`` seconds). Names the policy
refuses never reach the CA. A policy with neither is refused: on-demand
issuance for any name a client cares to send would let anyone spend the CA's
rate limits. Allow-list patterns at or above a public suffix (``com``,
``*.co.uk``, ``*.github.io``, by the Public Suffix List of the
``publicsuffixlist`` package) and patterns that can never match
(``*.*.example.com``) are refused when the policy is made.

The ask URL is asked at most ``ask_rate`` times a second and
``ask_concurrency`` times at once; a new name beyond these limits is refused
*without* asking (a client sending random names cannot make txacme flood the
ask URL). Its answers are kept in two bounded LRU caches (allowed, refused;
constant-time eviction), so a flood of refused names never evicts an allowed
one.

Limits
------

:class:`OnDemandIssuer` checks, before anything is ordered: ``rate``
issuances per ``per`` seconds (default :data:`DEFAULT_RATE`, 50 an hour),
``domain_rate`` per registered domain (default :data:`DEFAULT_DOMAIN_RATE`, 20
a week), ``max_pending`` at once, ``max_names`` names held (default
:data:`DEFAULT_MAX_NAMES`), and a pause of every on-demand order after the CA
answered ``rateLimited``. A name whose issuance failed is not tried again for
``failure_cooldown`` seconds (a bounded LRU cache in memory, nothing on disk).
Names issued on demand without a handshake for ``idle`` seconds (default 30
days) are removed from the store, so they are not renewed. Handshakes beyond
the limits get the fallback at once; refusals are counted and logged in
aggregate (:mod:`txacme.issuing.refusals`).

May import the core modules, :mod:`txacme.protocol` (trust roots) and
:mod:`txacme.challenges.tlsalpn01`; the TLS layer it serves is known only by
the :class:`ServedNames` and :class:`Hello` types.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import urlencode, urlsplit

import pem
import treq.client
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from txacme.challenges.tlsalpn01 import ACME_TLS_1
from txacme.errors import (
    ACMEProblem,
    ConfigurationError,
    InvalidServerName,
    IssuanceFailed,
    RateLimited,
)
from txacme.issuing.refusals import RefusalLog, safe_name
from txacme.logs import Logger
from txacme.names import is_ip_address, is_wildcard, normalize_server_name
from txacme.protocol.transport import load_trust_root
from txacme.stores.directory import write_entry

log = Logger()


class Hello(Protocol):
    """What :meth:`OnDemandIssuer.hello_hook` reads of a ClientHello
    (:class:`txacme.serving.hello.ClientHello` has it)."""

    @property
    def server_name(self) -> str | None:
        """The SNI name, lower case, without a trailing dot."""

    @property
    def alpn_protocols(self) -> tuple[bytes, ...]:
        """The ALPN protocols offered, in the client's order."""


class ServedNames(Protocol):
    """The certificates the TLS layer serves
    (:class:`txacme.serving.index.CertificateIndex` is one)."""

    def find(self, name: str) -> object | None:
        """What is served for ``name`` (exact or wildcard), or ``None``."""

    def update(self, name: str, pem_objects: Sequence[pem.AbstractPEMObject]) -> bool:
        """Serve ``pem_objects`` for ``name`` from now on."""


class Issued(Protocol):
    """What ``issue(name)`` fires with: an issued certificate's PEM objects."""

    @property
    def pem_objects(self) -> Sequence[pem.AbstractPEMObject]:
        """The private key, the certificate, then the chain."""


_PSL: Any = None


def _public_suffixes() -> Any:
    """The Public Suffix List (ICANN and private sections), loaded once."""
    global _PSL
    if _PSL is None:
        from publicsuffixlist import PublicSuffixList

        _PSL = PublicSuffixList()
    return _PSL


def is_public_suffix(name: str) -> bool:
    """
    Whether ``name`` (canonical, ASCII) is a public suffix (``com``, ``co.uk``,
    ``github.io``) by the Public Suffix List, unknown top-level labels included.
    """
    return bool(_public_suffixes().is_public(name))


def registered_domain(name: str) -> str:
    """
    The registered domain of ``name`` (one label below its public suffix:
    ``example.co.uk`` for ``a.b.example.co.uk``), the unit of the CAs'
    per-domain limits; ``name`` itself when it has none.
    """
    private = _public_suffixes().privatesuffix(name)
    return str(private) if private else name


def check_pattern(pattern: str) -> str:
    """
    The canonical form of an allow-list pattern (an exact name or
    ``*.example.com``).

    :raises txacme.errors.ConfigurationError: for a pattern at or above a public
        suffix, one that can never match, or an invalid name (one line).
    """
    if not isinstance(pattern, str):
        raise ConfigurationError(f"on-demand allow pattern {pattern!r} must be a string")
    lowered = pattern.strip().lower()
    if lowered.startswith("*."):
        parent = lowered[2:]
        if "*" in parent:
            raise ConfigurationError(
                f"on-demand allow pattern {pattern!r} can never match: "
                "a wildcard stands only for the leftmost label"
            )
        try:
            normalize_server_name(parent)
        except InvalidServerName as e:
            raise ConfigurationError(f"on-demand allow pattern {pattern!r}: {e.reason}")
        if is_ip_address(parent):
            raise ConfigurationError(f"on-demand allow pattern {pattern!r}: not a domain")
        if is_public_suffix(parent):
            raise ConfigurationError(
                f"on-demand allow pattern {pattern!r} would allow names of anyone's domain: "
                f"{parent!r} is a public suffix"
            )
        return lowered
    try:
        name = normalize_server_name(lowered)
    except InvalidServerName as e:
        raise ConfigurationError(f"on-demand allow pattern {pattern!r}: {e.reason}")
    if not is_ip_address(name) and is_public_suffix(name):
        raise ConfigurationError(
            f"on-demand allow pattern {pattern!r}: {name!r} is a public suffix"
        )
    return name


K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """
    At most ``size`` entries; the least recently used goes first. Every
    operation takes constant time.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigurationError(f"cache size {size!r} must be positive")
        self.size = size
        self._data: collections.OrderedDict[K, V] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or ``None``."""
        try:
            self._data.move_to_end(key)
        except KeyError:
            return None
        return self._data[key]

    def put(self, key: K, value: V) -> None:
        """Set ``key``, evicting the least recently used entry when full."""
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value or ``None``."""
        return self._data.pop(key, None)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(name: str, value: object) -> float:
    """
    Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number
    of seconds.

    :raises txacme.errors.ConfigurationError: naming ``name=value``.
    """
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a duration (e.g. 30d, 12h, 90m, 45s)")
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{name}={value!r} must be a positive duration")
    return seconds


def parse_rate(name: str, value: object, bare_unit: str = "m") -> tuple[int, float]:
    """
    ``(count, seconds)`` from ``50/h``, ``20/w``, ``10/3h`` or a bare count
    (per ``bare_unit``).

    :raises txacme.errors.ConfigurationError: naming ``name=value``.
    """
    text = str(value).strip().lower()
    count_text, slash, period_text = text.partition("/")
    try:
        count = int(count_text)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a rate (e.g. 50/h, 20/w)")
    if count < 1:
        raise ConfigurationError(f"{name}={value!r}: the count must be positive")
    if not slash:
        return count, _UNITS[bare_unit]
    if period_text[:1].isalpha():
        period_text = "1" + period_text
    return count, parse_duration(name, period_text)


DEFAULT_ASK_RATE = 10
"""Requests to the ask URL a second, at most (``on_demand_ask_rate=``)."""
DEFAULT_ASK_CONCURRENCY = 10
"""Requests to the ask URL running at once, at most (``on_demand_ask_concurrency=``)."""
ANSWER_CACHE_SIZE = 10000
"""Answers of the ask URL kept (allowed and refused names each)."""


class OnDemandPolicy:
    """
    Which names may be issued on demand.

    :param allow: exact names, or ``*.example.com`` (any one label below).
        Patterns at or above a public suffix (``*.com``, ``*.co.uk``, ``com``)
        and patterns that can never match (``*.*.example.com``) are refused.
    :param ask: a URL asked ``GET <ask>?domain=<name>``: ``200`` allows. It
        must be ``https://``, or ``http://`` to a loopback address.
    :param ask_timeout: seconds to wait for the ask URL.
    :param ask_cache: seconds an answer of the ask URL is reused.
    :param ask_rate: requests to the ask URL a second, at most; a name that
        would need one more is refused without asking (and asked again later).
    :param ask_concurrency: requests to the ask URL running at once, at most.
    :param cache_size: answers kept, for allowed and for refused names each
        (least recently used first out).
    :param ca_file: a PEM file of CAs to trust for an ``https`` ask URL
        (default: the system's).
    :param http_get: ``http_get(url) -> Deferred[int]`` (the status), instead of
        treq (for tests).
    :param clock: the reactor: its time, and its connections to the ask URL.
    :raises txacme.errors.ConfigurationError: without ``allow`` or ``ask``, or
        for a bad pattern or URL.
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        ask: str | None = None,
        ask_timeout: float = 5.0,
        ask_cache: float = 300.0,
        ask_rate: int = DEFAULT_ASK_RATE,
        ask_concurrency: int = DEFAULT_ASK_CONCURRENCY,
        cache_size: int = ANSWER_CACHE_SIZE,
        ca_file: str | None = None,
        http_get: Callable[[str], Deferred[int]] | None = None,
        clock: IReactorTime,
    ) -> None:
        if isinstance(allow, str):
            allow = [p for p in allow.split(",") if p.strip()]
        patterns = [check_pattern(p) for p in allow]
        if not patterns and ask is None:
            raise ConfigurationError(
                "on-demand issuance needs a policy: allow= names or patterns, or an ask= URL"
            )
        if ask is not None:
            parts = urlsplit(ask)
            loopback = parts.hostname in ("localhost",) or (
                parts.hostname is not None
                and is_ip_address(parts.hostname)
                and parts.hostname.startswith(("127.", "::1"))
            )
            if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
                raise ConfigurationError(
                    f"ask={ask!r} must be an https:// URL (or http:// to a loopback address)"
                )
        if not isinstance(ask_concurrency, int) or ask_concurrency < 1:
            raise ConfigurationError(
                f"ask_concurrency={ask_concurrency!r} must be a positive integer"
            )
        self._exact = frozenset(p for p in patterns if not p.startswith("*."))
        self._suffixes = frozenset(p[1:] for p in patterns if p.startswith("*."))
        self.ask = ask
        self.ask_timeout = ask_timeout
        self.ask_cache = ask_cache
        self.ask_limiter = RateLimiter(ask_rate, 1.0, clock)
        self.ask_concurrency = ask_concurrency
        self._ca_file = ca_file
        self._http_get = http_get
        self._clock = clock
        self._allowed: LRUCache[str, float] = LRUCache(cache_size)
        self._refused: LRUCache[str, float] = LRUCache(cache_size)
        self._asking: dict[str, Deferred[bool]] = {}
        #: Requests made to the ask URL, and names refused without asking
        #: because of the limits.
        self.asked = 0
        self.ask_limited = 0
        self._warned_at = float("-inf")

    def __repr__(self) -> str:
        return (
            f"OnDemandPolicy(allow={sorted(self._exact | {'*' + s for s in self._suffixes})!r}, "
            f"ask={self.ask!r})"
        )

    def allowed_by_list(self, name: str) -> bool:
        """Whether the canonical ``name`` matches the allow-list."""
        if name in self._exact:
            return True
        _, dot, parent = name.partition(".")
        return bool(dot) and "." + parent in self._suffixes

    def decide(self, name: str) -> Deferred[bool]:
        """
        Whether ``name`` (canonical) may be issued. Fires at once for the
        allow-list, for cached answers, and when the ask limits are reached.
        """
        if is_wildcard(name):
            return succeed(False)
        if self.allowed_by_list(name):
            return succeed(True)
        if self.ask is None:
            return succeed(False)
        now = self._clock.seconds()
        for cache, answer in ((self._allowed, True), (self._refused, False)):
            until = cache.get(name)
            if until is not None:
                if until > now:
                    return succeed(answer)
                cache.pop(name)
        running = self._asking.get(name)
        if running is None:
            if len(self._asking) >= self.ask_concurrency or not self.ask_limiter.try_take():
                self.ask_limited += 1
                return succeed(False)
            running = self._ask(name)
            if running.called:  # answered at once (a test's http_get)
                return running
            self._asking[name] = running
        result: Deferred[bool] = Deferred()
        running.addBoth(_copy_to(result))
        return result

    def _ask(self, name: str) -> Deferred[bool]:
        assert self.ask is not None
        self.asked += 1
        separator = "&" if "?" in self.ask else "?"
        url = f"{self.ask}{separator}{urlencode({'domain': name})}"
        getter = self._http_get if self._http_get is not None else self._treq_get
        d: Deferred[int] = maybeDeferred(getter, url)
        timer = self._clock.callLater(self.ask_timeout, d.cancel)

        def answered(status: int) -> bool:
            return status == 200

        def failed(failure: Failure) -> bool:
            now = self._clock.seconds()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warn(
                    "the on-demand ask URL gave no answer (e.g. for {name}): {error}",
                    name=safe_name(name),
                    error=failure.getErrorMessage(),
                )
            return False

        def done(allowed: bool) -> bool:
            if timer.active():
                timer.cancel()
            self._asking.pop(name, None)
            cache = self._allowed if allowed else self._refused
            cache.put(name, self._clock.seconds() + self.ask_cache)
            return allowed

        return d.addCallbacks(answered, failed).addCallback(done)

    def _treq_get(self, url: str) -> Deferred[int]:
        trust_root = load_trust_root(self._ca_file) if self._ca_file is not None else None
        policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root)  # type: ignore[no-untyped-call]
        agent = Agent(self._clock, contextFactory=policy)  # type: ignore[no-untyped-call]
        d = treq.client.HTTPClient(agent).get(url, allow_redirects=False)

        def status(response: Any) -> Deferred[int]:
            code = int(response.code)
            return cast(Deferred[int], response.text().addBoth(lambda _: code))

        return cast(Deferred[int], d.addCallback(status))


def _copy_to(target: Deferred[Any]) -> Callable[[Any], Any]:
    def copy(result: Any) -> Any:
        if isinstance(result, Failure):
            target.errback(result)
            return None
        target.callback(result)
        return result

    return copy


class RateLimiter:
    """
    At most ``count`` events in any ``per`` seconds (a sliding window).

    :param clock: the reactor's time.
    """

    def __init__(self, count: int, per: float, clock: IReactorTime) -> None:
        if not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"rate={count!r} must be a positive integer")
        if not per > 0:
            raise ConfigurationError(f"per={per!r} must be a positive number of seconds")
        self.count = count
        self.per = float(per)
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()

    def try_take(self) -> bool:
        """Record one event if the window allows it; ``False`` otherwise."""
        now = self._clock.seconds()
        while self._times and self._times[0] <= now - self.per:
            self._times.popleft()
        if len(self._times) >= self.count:
            return False
        self._times.append(now)
        return True

    def _expire(self) -> None:
        now = self._clock.seconds()
        while self._times and self._times[0] <= now - self.per:
            self._times.popleft()

    def has_room(self) -> bool:
        """Whether :meth:`try_take` would succeed now (without taking)."""
        self._expire()
        return len(self._times) < self.count

    def active(self) -> bool:
        """Whether any event is still inside the window."""
        self._expire()
        return bool(self._times)


DEFAULT_RATE = (50, 3600.0)
"""On-demand issuances per period (``on_demand_rate=50/h``): 150 new orders in 3 hours, half
of Let's Encrypt's 300 per account, leaving the rest for renewals."""
DEFAULT_DOMAIN_RATE = (20, 7 * 86400.0)
"""On-demand issuances per registered domain (``on_demand_domain_rate=20/w``): Let's Encrypt
allows 50 certificates a week per registered domain; 30 are left for renewals."""
DEFAULT_MAX_NAMES = 100
"""On-demand names held at most (``on_demand_max=``)."""
DEFAULT_IDLE = 30 * 86400.0
"""Seconds without a handshake after which an on-demand name is dropped (``on_demand_idle=``)."""
DEFAULT_RATE_LIMITED_PAUSE = 3600.0
"""Seconds every on-demand order waits after a ``rateLimited`` answer without ``Retry-After``."""
FAILURE_CACHE_SIZE = 10000
"""Failed names remembered (for their cooldown) at most."""
REGISTRY_FILENAME = ".txacme-ondemand.json"
"""The file, in the certificate directory, of the names issued on demand."""


def _rate_limited(error: BaseException) -> ACMEProblem | None:
    problem: ACMEProblem | None = None
    if isinstance(error, ACMEProblem):
        problem = error
    elif isinstance(error, IssuanceFailed):
        problem = error.problem
    return problem if isinstance(problem, RateLimited) else None


class OnDemandIssuer:
    """
    Issues certificates for allowed names when a handshake asks for them.

    Use :meth:`hello_hook` with :class:`txacme.serving.hello.HelloHookFactory`. The hook does
    nothing (the handshake goes on at once) for: no SNI, a validator's
    ``acme-tls/1``-only ClientHello, a name the index already serves, an
    invalid name, a name the policy refuses at once (allow-list only), and a
    name whose issuance failed less than ``failure_cooldown`` seconds ago. For
    other names it asks the policy and, when allowed and within the limits,
    ``issue(name)``; the handshake is held until the certificate is in
    ``index`` (or the hook timeout).

    Limits, checked before anything is ordered: ``rate`` issuances per ``per``
    seconds, ``domain_rate`` per ``domain_per`` seconds for each registered
    domain, ``max_pending`` at once, ``max_names`` names held, and none at all
    for a while after the CA answered ``rateLimited`` (its ``Retry-After``, or
    :data:`DEFAULT_RATE_LIMITED_PAUSE`).

    Names issued here are remembered with the time of their last handshake (in
    ``registry`` when given, so across restarts); a name without a handshake
    for ``idle`` seconds is removed (``remove(name)``: from the store, so it is
    not renewed) and forgotten. A name whose issuance failed leaves no trace
    but its cooldown, in memory: ``forget(name)`` callbacks drop it from the
    state file and the metrics.

    :param policy: an :class:`OnDemandPolicy`.
    :param issue: ``issue(name) -> Deferred`` of an issued certificate (with
        ``pem_objects``), e.g. ``AcmeIssuingService.issue_cert``, which also
        stores it (so it is renewed like any other name).
    :param index: the :class:`~txacme.serving.index.CertificateIndex` the TLS
        layer serves from (any :class:`ServedNames`); the new certificate is put
        there.
    :param rate: issuances allowed per ``per`` seconds (this process).
    :param max_pending: issuances running at once.
    :param failure_cooldown: seconds before a failed name is tried again.
    :param max_names: names issued on demand held at once, at most.
    :param idle: seconds without a handshake before a name is dropped.
    :param domain_rate: issuances per registered domain per ``domain_per`` seconds.
    :param registry: a JSON file remembering the names issued on demand.
    :param remove: ``remove(name)``: take the name out of the store (and the
        index); may return a ``Deferred``.
    :param forget: callbacks ``forget(name)`` for names that must leave no
        trace (failed, or removed).
    :param refusals: where refusals are counted and logged in aggregate.
    :param clock: the reactor's time.
    """

    def __init__(
        self,
        policy: OnDemandPolicy,
        issue: Callable[[str], Awaitable[Issued]],
        index: ServedNames | None,
        *,
        rate: int = DEFAULT_RATE[0],
        per: float = DEFAULT_RATE[1],
        max_pending: int = 5,
        failure_cooldown: float = 600.0,
        max_names: int = DEFAULT_MAX_NAMES,
        idle: float = DEFAULT_IDLE,
        domain_rate: int = DEFAULT_DOMAIN_RATE[0],
        domain_per: float = DEFAULT_DOMAIN_RATE[1],
        registry: str | None = None,
        remove: Callable[[str], object] | None = None,
        forget: Sequence[Callable[[str], object]] = (),
        refusals: RefusalLog | None = None,
        clock: IReactorTime,
    ) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending={max_pending!r} must be a positive integer")
        if not isinstance(max_names, int) or max_names < 1:
            raise ConfigurationError(f"max_names={max_names!r} must be a positive integer")
        if not idle > 0:
            raise ConfigurationError(f"idle={idle!r} must be a positive number of seconds")
        self.policy = policy
        self._issue = issue
        self.index = index
        self.limiter = RateLimiter(rate, per, clock)
        self.domain_rate = RateLimiter(domain_rate, domain_per, clock)  # checks the arguments
        self._domains: dict[str, RateLimiter] = {}
        self.max_pending = max_pending
        self.failure_cooldown = float(failure_cooldown)
        self.max_names = max_names
        self.idle = float(idle)
        self.registry = registry
        self._remove = remove
        self.forget = list(forget)
        self.refusals = refusals if refusals is not None else RefusalLog(clock)
        self._clock = clock
        self._pending: dict[str, Deferred[bool]] = {}
        self._issuing = 0
        self._failed_until: LRUCache[str, float] = LRUCache(FAILURE_CACHE_SIZE)
        self._paused_until = float("-inf")
        #: Names issued on demand, with the time of their last handshake.
        self.held: dict[str, float] = {}
        self._dirty = False
        self._sweeper: IDelayedCall | None = None
        self.issued = 0
        self.refused = 0
        self.limited = 0
        self.expired = 0
        self._load()

    # -- the names held --------------------------------------------------------

    def _load(self) -> None:
        if self.registry is None:
            return
        try:
            with open(self.registry, "rb") as f:
                document = json.load(f)
            names = document["names"]
            now = self._clock.seconds()
            for name, seen in names.items():
                self.held[normalize_server_name(name)] = min(float(seen), now)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidServerName) as e:
            log.warn(
                "ignoring the damaged on-demand file {path}: {error}",
                path=self.registry,
                error=str(e),
            )

    def save(self) -> None:
        """Write the names held and their last handshakes (atomically)."""
        self._dirty = False
        if self.registry is None:
            return
        data = {"version": 1, "names": {n: round(t) for n, t in sorted(self.held.items())}}
        try:
            write_entry(self.registry, json.dumps(data, indent=1).encode("ascii") + b"\n")
        except OSError as e:
            log.warn("cannot write {path}: {error}", path=self.registry, error=str(e))

    def start(self) -> None:
        """Check for idle names now and then (every hour, or ``idle/10``)."""
        if self._sweeper is None:
            self._sweeper = self._clock.callLater(0, self.sweep)

    def stop(self) -> None:
        """Stop checking; save the names held; log pending refusals."""
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        if self._dirty:
            self.save()
        self.refusals.stop()

    def sweep(self) -> Deferred[None]:
        """
        Remove the names without a handshake for ``idle`` seconds, save the
        rest, and check again later.
        """
        self._sweeper = self._clock.callLater(min(3600.0, self.idle / 10), self.sweep)
        now = self._clock.seconds()
        idle = [name for name, seen in self.held.items() if now - seen > self.idle]
        removals = []
        for name in idle:
            del self.held[name]
            self.expired += 1
            self._dirty = True
            log.info(
                "{name} was issued on demand and had no handshake for {days:g} days; removing it",
                name=name,
                days=self.idle / 86400,
            )
            removals.append(self._drop(name))
        if self._dirty:
            self.save()
        return gatherResults(removals, consumeErrors=True).addBoth(lambda _: None)

    def _drop(self, name: str) -> Deferred[None]:
        def forget(result: object) -> None:
            if isinstance(result, Failure):
                log.warn(
                    "could not remove {name}: {error}", name=name, error=result.getErrorMessage()
                )
            self._forget(name)

        if self._remove is None:  # a shared store: the entry stays, and so do its records
            return succeed(None)
        return maybeDeferred(self._remove, name).addBoth(forget)

    def _forget(self, name: str) -> None:
        for callback in self.forget:
            try:
                callback(name)
            except Exception:
                log.failure("forgetting {name}", name=name)

    # -- handshakes ------------------------------------------------------------

    def _known(self, name: str) -> bool:
        return self.index is not None and self.index.find(name) is not None

    def hello_hook(self, hello: Hello) -> Deferred[bool] | None:
        """
        The :data:`~txacme.serving.hello.HelloHook`: hold a handshake while its
        name is issued.
        """
        sni = hello.server_name
        if not sni:
            return None
        if sni in self.held:
            self.held[sni] = self._clock.seconds()
            self._dirty = True
        if hello.alpn_protocols == (ACME_TLS_1,) or self._known(sni):
            return None
        try:
            name = normalize_server_name(sni)
        except InvalidServerName:
            return None
        if is_wildcard(name) or is_ip_address(name):
            return None
        d = self.request(name)
        return None if d.called else d

    def _refuse(self, name: str) -> Deferred[bool]:
        self.refused += 1
        self.refusals.refused("on_demand_refused", name)
        return succeed(False)

    def request(self, name: str) -> Deferred[bool]:
        """
        Obtain a certificate for ``name`` if the policy and the limits allow.

        :return: ``Deferred`` firing with whether ``name`` is now served (never
            failing).
        """
        if self._known(name):
            return succeed(True)
        running = self._pending.get(name)
        if running is not None:
            result: Deferred[bool] = Deferred()
            running.addBoth(_copy_to(result))
            return result
        until = self._failed_until.get(name)
        if until is not None:
            if until > self._clock.seconds():
                return self._refuse(name)
            self._failed_until.pop(name)
        ask_limited = self.policy.ask_limited
        decided = self.policy.decide(name)
        decision: list[object] = []

        def peek(result: object) -> object:
            decision.append(result)
            return result

        decided.addBoth(peek)
        if decision and decision[0] is not True:
            if self.policy.ask_limited > ask_limited:  # not asked: the ask URL's limits
                self.limited += 1
                self.refusals.refused("on_demand_limited", name)
                return succeed(False)
            return self._refuse(name)
        d = Deferred.fromCoroutine(self._obtain(name, decided))
        if not d.called:
            self._pending[name] = d

            def forget(result: object) -> object:
                self._pending.pop(name, None)
                return result

            d.addBoth(forget)
        return d

    def _limit(self, name: str) -> str | None:
        """Why ``name`` may not be ordered now, or ``None`` (and the limits are taken)."""
        now = self._clock.seconds()
        if now < self._paused_until:
            return "the CA answered rateLimited"
        if self._issuing >= self.max_pending:
            return f"{self.max_pending} on-demand issuances are running"
        if len(self.held) + self._issuing >= self.max_names:
            return f"{self.max_names} names issued on demand are held (on_demand_max)"
        domain = registered_domain(name)
        limiter = self._domains.get(domain)
        if limiter is None:
            limiter = RateLimiter(self.domain_rate.count, self.domain_rate.per, self._clock)
        if not limiter.has_room():
            return f"{self.domain_rate.count} issuances for {domain} in {self.domain_rate.per:g} s"
        if not self.limiter.try_take():
            return f"{self.limiter.count} on-demand issuances in {self.limiter.per:g} s"
        limiter.try_take()
        self._domains[domain] = limiter
        if len(self._domains) > FAILURE_CACHE_SIZE:
            for stale in [d for d, lim in self._domains.items() if not lim.active()]:
                del self._domains[stale]
        return None

    async def _obtain(self, name: str, decided: Deferred[bool]) -> bool:
        allowed = await decided
        if allowed is not True:
            await self._refuse(name)
            return False
        if self._known(name):
            return True
        why = self._limit(name)
        if why is not None:
            self.limited += 1
            self.refusals.refused("on_demand_limited", name)
            now = self._clock.seconds()
            if now - self._limited_logged_at > 60:
                self._limited_logged_at = now
                log.warn(
                    "on-demand issuance limit reached: {why}; not issuing {name} now",
                    why=why,
                    name=name,
                )
            return False
        self.issued += 1
        self._issuing += 1
        log.info("on-demand issuance for {name}", name=name, event="on_demand")
        try:
            issued = await self._issue(name)
        except Exception as e:
            now = self._clock.seconds()
            self._failed_until.put(name, now + self.failure_cooldown)
            limited = _rate_limited(e)
            if limited is not None:
                pause = max(limited.retry_after or DEFAULT_RATE_LIMITED_PAUSE, 60.0)
                self._paused_until = max(self._paused_until, now + pause)
                log.warn(
                    "the CA answered rateLimited: no on-demand order for {pause:g} s",
                    pause=pause,
                )
            log.warn("on-demand issuance for {name} failed: {error}", name=name, error=str(e))
            if name not in self.held:
                self._forget(name)
            return False
        finally:
            self._issuing -= 1
        self.held[name] = self._clock.seconds()
        self.save()
        if self.index is not None and not self._known(name):
            self.index.update(name, list(issued.pem_objects))
        return True

    _limited_logged_at = float("-inf")


__all__ = [
    "ANSWER_CACHE_SIZE",
    "DEFAULT_ASK_CONCURRENCY",
    "DEFAULT_ASK_RATE",
    "DEFAULT_DOMAIN_RATE",
    "DEFAULT_IDLE",
    "DEFAULT_MAX_NAMES",
    "DEFAULT_RATE",
    "DEFAULT_RATE_LIMITED_PAUSE",
    "FAILURE_CACHE_SIZE",
    "REGISTRY_FILENAME",
    "LRUCache",
    "Hello",
    "check_pattern",
    "Issued",
    "OnDemandIssuer",
    "OnDemandPolicy",
    "RateLimiter",
    "ServedNames",
    "is_public_suffix",
    "parse_duration",
    "parse_rate",
    "registered_domain",
]
