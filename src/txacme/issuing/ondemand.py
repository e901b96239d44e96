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
rate limits.

Rate limit
----------

:class:`OnDemandIssuer` starts at most ``rate`` issuances per ``per`` seconds
(a sliding window, per process), and at most ``max_pending`` at once; a name
whose issuance failed is not tried again for ``failure_cooldown`` seconds.
Handshakes beyond the limits get the fallback at once.

May import the core modules, :mod:`txacme.protocol` (trust roots) and
:mod:`txacme.challenges.tlsalpn01`; the TLS layer it serves is known only by
the :class:`ServedNames` and :class:`Hello` types.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlencode, urlsplit

import pem
import treq.client
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from txacme.challenges.tlsalpn01 import ACME_TLS_1
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.logs import Logger
from txacme.names import is_ip_address, is_wildcard, normalize_server_name
from txacme.protocol.transport import load_trust_root

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


def _check_pattern(pattern: str) -> str:
    if not isinstance(pattern, str):
        raise ConfigurationError(f"on-demand allow pattern {pattern!r} must be a string")
    lowered = pattern.strip().lower()
    if lowered.startswith("*."):
        try:
            normalize_server_name(lowered[2:])
        except InvalidServerName as e:
            raise ConfigurationError(f"on-demand allow pattern {pattern!r}: {e.reason}")
        if is_ip_address(lowered[2:]):
            raise ConfigurationError(f"on-demand allow pattern {pattern!r}: not a domain")
        return lowered
    try:
        return normalize_server_name(lowered)
    except InvalidServerName as e:
        raise ConfigurationError(f"on-demand allow pattern {pattern!r}: {e.reason}")


class OnDemandPolicy:
    """
    Which names may be issued on demand.

    :param allow: exact names, or ``*.example.com`` (any one label below).
    :param ask: a URL asked ``GET <ask>?domain=<name>``: ``200`` allows. It
        must be ``https://``, or ``http://`` to a loopback address.
    :param ask_timeout: seconds to wait for the ask URL.
    :param ask_cache: seconds an answer of the ask URL is reused.
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
        ca_file: str | None = None,
        http_get: Callable[[str], Deferred[int]] | None = None,
        clock: IReactorTime,
    ) -> None:
        if isinstance(allow, str):
            allow = [p for p in allow.split(",") if p.strip()]
        patterns = [_check_pattern(p) for p in allow]
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
        self._exact = frozenset(p for p in patterns if not p.startswith("*."))
        self._suffixes = frozenset(p[1:] for p in patterns if p.startswith("*."))
        self.ask = ask
        self.ask_timeout = ask_timeout
        self.ask_cache = ask_cache
        self._ca_file = ca_file
        self._http_get = http_get
        self._clock = clock
        self._answers: dict[str, tuple[bool, float]] = {}
        self._asking: dict[str, Deferred[bool]] = {}

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
        allow-list and for cached answers.
        """
        if is_wildcard(name):
            return succeed(False)
        if self.allowed_by_list(name):
            return succeed(True)
        if self.ask is None:
            return succeed(False)
        now = self._clock.seconds()
        cached = self._answers.get(name)
        if cached is not None and cached[1] > now:
            return succeed(cached[0])
        running = self._asking.get(name)
        if running is None:
            running = self._ask(name)
            self._asking[name] = running
        result: Deferred[bool] = Deferred()
        running.addBoth(_copy_to(result))
        return result

    def _ask(self, name: str) -> Deferred[bool]:
        assert self.ask is not None
        separator = "&" if "?" in self.ask else "?"
        url = f"{self.ask}{separator}{urlencode({'domain': name})}"
        getter = self._http_get if self._http_get is not None else self._treq_get
        d: Deferred[int] = maybeDeferred(getter, url)
        timer = self._clock.callLater(self.ask_timeout, d.cancel)

        def answered(status: int) -> bool:
            return status == 200

        def failed(failure: Failure) -> bool:
            log.warn(
                "the on-demand ask URL gave no answer for {name}: {error}",
                name=name,
                error=failure.getErrorMessage(),
            )
            return False

        def done(allowed: bool) -> bool:
            if timer.active():
                timer.cancel()
            self._asking.pop(name, None)
            self._answers[name] = (allowed, self._clock.seconds() + self.ask_cache)
            if len(self._answers) > 10000:
                now = self._clock.seconds()
                self._answers = {k: v for k, v in self._answers.items() if v[1] > now}
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


class OnDemandIssuer:
    """
    Issues certificates for allowed names when a handshake asks for them.

    Use :meth:`hello_hook` with :class:`txacme.serving.hello.HelloHookFactory`. The hook does
    nothing (the handshake goes on at once) for: no SNI, a validator's
    ``acme-tls/1``-only ClientHello, a name the index already serves, an
    invalid name, a name the policy refuses at once (allow-list only), and a
    name whose issuance failed less than ``failure_cooldown`` seconds ago. For
    other names it asks the policy and, when allowed and within the rate limit,
    ``issue(name)``; the handshake is held until the certificate is in
    ``index`` (or the hook timeout).

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
    :param clock: the reactor's time.
    """

    def __init__(
        self,
        policy: OnDemandPolicy,
        issue: Callable[[str], Awaitable[Issued]],
        index: ServedNames | None,
        *,
        rate: int = 10,
        per: float = 60.0,
        max_pending: int = 5,
        failure_cooldown: float = 600.0,
        clock: IReactorTime,
    ) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigurationError(f"max_pending={max_pending!r} must be a positive integer")
        self.policy = policy
        self._issue = issue
        self.index = index
        self.limiter = RateLimiter(rate, per, clock)
        self.max_pending = max_pending
        self.failure_cooldown = float(failure_cooldown)
        self._clock = clock
        self._pending: dict[str, Deferred[bool]] = {}
        self._issuing = 0
        self._failed_until: dict[str, float] = {}
        self.issued = 0
        self.refused = 0
        self.limited = 0
        self._limited_logged_at = float("-inf")

    def _known(self, name: str) -> bool:
        return self.index is not None and self.index.find(name) is not None

    def hello_hook(self, hello: Hello) -> Deferred[bool] | None:
        """
        The :data:`~txacme.serving.hello.HelloHook`: hold a handshake while its
        name is issued.
        """
        sni = hello.server_name
        if not sni or hello.alpn_protocols == (ACME_TLS_1,) or self._known(sni):
            return None
        try:
            name = normalize_server_name(sni)
        except InvalidServerName:
            return None
        if is_wildcard(name) or is_ip_address(name):
            return None
        d = self.request(name)
        return None if d.called else d

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
                return succeed(False)
            del self._failed_until[name]
        decided = self.policy.decide(name)
        decision: list[object] = []

        def peek(result: object) -> object:
            decision.append(result)
            return result

        decided.addBoth(peek)
        if decision and decision[0] is not True:
            self.refused += 1
            log.debug("on-demand issuance refused for {name}", name=name)
            return succeed(False)
        d = Deferred.fromCoroutine(self._obtain(name, decided))
        if not d.called:
            self._pending[name] = d

            def forget(result: object) -> object:
                self._pending.pop(name, None)
                return result

            d.addBoth(forget)
        return d

    async def _obtain(self, name: str, decided: Deferred[bool]) -> bool:
        allowed = await decided
        if allowed is not True:
            self.refused += 1
            log.debug("on-demand issuance refused for {name}", name=name)
            return False
        if self._known(name):
            return True
        if self._issuing >= self.max_pending or not self.limiter.try_take():
            self.limited += 1
            now = self._clock.seconds()
            if now - self._limited_logged_at > 10:
                self._limited_logged_at = now
                log.warn(
                    "on-demand issuance rate limit reached ({rate} per {per} s); "
                    "not issuing {name} now",
                    rate=self.limiter.count,
                    per=self.limiter.per,
                    name=name,
                )
            return False
        self.issued += 1
        self._issuing += 1
        log.info("on-demand issuance for {name}", name=name, event="on_demand")
        try:
            issued = await self._issue(name)
        except Exception as e:
            self._failed_until[name] = self._clock.seconds() + self.failure_cooldown
            log.warn("on-demand issuance for {name} failed: {error}", name=name, error=str(e))
            return False
        finally:
            self._issuing -= 1
        if self.index is not None and not self._known(name):
            self.index.update(name, list(issued.pem_objects))
        return True


__all__ = [
    "Hello",
    "Issued",
    "OnDemandIssuer",
    "OnDemandPolicy",
    "RateLimiter",
    "ServedNames",
]
