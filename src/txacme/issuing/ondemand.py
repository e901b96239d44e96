"""
On-demand issuance: a TLS handshake for a name without a certificate, that a
policy allows, obtains one, and the connection waits for it.

Holding a handshake
-------------------

OpenSSL asks for a certificate in callbacks that must answer at once (the SNI
callback; the certificate callback ``SSL_CTX_set_cert_cb`` can pause a
handshake, but pyOpenSSL does not expose it and Twisted's TLS protocol does not
resume one). So txacme waits *before* OpenSSL: :class:`HelloHookFactory` wraps
connections like ``TLSMemoryBIOFactory`` (it is one) and keeps the bytes
received from the client until the whole ClientHello has arrived. It reads the
server name and ALPN list from it (:func:`parse_client_hello`), asks a hook, and
feeds the bytes to OpenSSL when the hook's ``Deferred`` fires, or after
``timeout`` seconds, whichever is first. Nothing was sent to the client
meanwhile, so the handshake then proceeds as if the ClientHello had just
arrived: with the new certificate when it was obtained in time, otherwise with
the default certificate, or a ``handshake_failure`` alert when there is none;
the next handshake gets the certificate. Works with TLS 1.2 and 1.3 and needs
no private OpenSSL bindings.

A hook that returns ``None`` costs one parse of the ClientHello (a few
microseconds), so known names are not slowed down. Bytes that are not a TLS
ClientHello are handed to OpenSSL at once.

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
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

from txacme.errors import ConfigurationError, InvalidServerName
from txacme.names import is_ip_address, is_wildcard, normalize_server_name

log = Logger()

ACME_TLS_1 = b"acme-tls/1"

MAX_HELLO_BYTES = 65536
"""Bytes kept while waiting for a whole ClientHello; more is not TLS we wait for."""

DEFAULT_HELLO_TIMEOUT = 10.0
"""Seconds a handshake is held by default."""


# ---------------------------------------------------------------------------
# ClientHello
# ---------------------------------------------------------------------------


class ClientHello:
    """
    What the server needs from a TLS ClientHello before answering it.

    :ivar server_name: the SNI host name, lower case, without a trailing dot;
        ``None`` when absent or not ASCII.
    :ivar alpn_protocols: the ALPN protocols offered, in the client's order.
    """

    __slots__ = ("server_name", "alpn_protocols")

    def __init__(self, server_name: str | None, alpn_protocols: tuple[bytes, ...] = ()) -> None:
        self.server_name = server_name
        self.alpn_protocols = alpn_protocols

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientHello):
            return NotImplemented
        return (self.server_name, self.alpn_protocols) == (
            other.server_name,
            other.alpn_protocols,
        )

    def __hash__(self) -> int:
        return hash((self.server_name, self.alpn_protocols))

    def __repr__(self) -> str:
        return f"ClientHello({self.server_name!r}, {self.alpn_protocols!r})"


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Any = _NeedMore()
"""Returned by :func:`parse_client_hello` when the ClientHello is incomplete."""


def parse_client_hello(data: bytes) -> ClientHello | None | Any:
    """
    Parse the ClientHello at the start of ``data`` (TLS records as received).

    :return: a :class:`ClientHello`; :data:`NEED_MORE` when more bytes are
        needed; ``None`` when ``data`` does not start with a ClientHello (then
        OpenSSL should see the bytes and fail the handshake itself).
    """
    size = len(data)
    if size < 5:
        return NEED_MORE if not size or data[0] == 22 else None
    if data[0] != 22 or data[1] != 3:
        return None
    record_length = (data[3] << 8) | data[4]
    if size >= 9 and record_length >= 4 and data[5] == 1:
        end = 9 + ((data[6] << 16) | (data[7] << 8) | data[8])
        if end <= 5 + record_length:
            # The usual case: the whole ClientHello in the first record.
            if size < end:
                return NEED_MORE
            try:
                return _parse_hello_body(data, 9, end)
            except (IndexError, ValueError):
                return None
    return _parse_fragmented(data)


def _parse_fragmented(data: bytes) -> ClientHello | None | Any:
    """A ClientHello spread over several records: reassemble, then parse."""
    body = bytearray()
    offset = 0
    needed: int | None = None
    while needed is None or len(body) < needed:
        if len(data) < offset + 5:
            return NEED_MORE if len(data) < MAX_HELLO_BYTES else None
        content_type, major = data[offset], data[offset + 1]
        length = (data[offset + 3] << 8) | data[offset + 4]
        if content_type != 22 or major != 3 or length == 0 or length > 16384 + 2048:
            return None
        if len(data) < offset + 5 + length:
            return NEED_MORE if len(data) < MAX_HELLO_BYTES else None
        body += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if needed is None and len(body) >= 4:
            if body[0] != 1:  # not a ClientHello
                return None
            needed = 4 + int.from_bytes(body[1:4], "big")
            if needed > MAX_HELLO_BYTES:
                return None
    try:
        return _parse_hello_body(bytes(body), 4, needed)
    except (IndexError, ValueError):
        return None


def _parse_hello_body(data: bytes, pos: int, end: int) -> ClientHello:
    """
    Parse the ClientHello body in ``data[pos:end]``: offsets, no copies, one
    function (this runs for every handshake; it is written for speed).

    :raises IndexError, ValueError: for a malformed ClientHello.
    """
    pos += 34  # legacy_version, random
    pos += 1 + data[pos]  # session id
    pos += 2 + ((data[pos] << 8) | data[pos + 1])  # cipher suites
    pos += 1 + data[pos]  # compression methods
    if pos >= end:
        return ClientHello(None, ())
    extensions_end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if extensions_end > end:
        raise ValueError("extensions overrun the ClientHello")
    pos += 2
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    wanted = 2  # server_name and ALPN: stop looking once both were seen
    while pos + 4 <= extensions_end:
        ext_end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
        if ext_end > extensions_end:
            raise ValueError("an extension overruns the ClientHello")
        if data[pos] == 0:
            ext_type = data[pos + 1]
            if ext_type == 0:  # server_name: list length, type 0 (host_name), length, name
                wanted -= 1
                length = (data[pos + 7] << 8) | data[pos + 8]
                if data[pos + 6] == 0 and 0 < length <= 255 and pos + 9 + length <= ext_end:
                    raw = data[pos + 9 : pos + 9 + length]
                    if raw.isascii():
                        server_name = raw.decode("ascii").lower()
                        if server_name.endswith("."):
                            server_name = server_name[:-1] or None
            elif ext_type == 16:  # ALPN: list length, then length-prefixed names
                wanted -= 1
                protocols = []
                item = pos + 6
                while item < ext_end:
                    length = data[item]
                    protocols.append(bytes(data[item + 1 : item + 1 + length]))
                    item += 1 + length
                if item != ext_end:
                    raise ValueError("malformed ALPN extension")
                alpn = tuple(protocols)
            if not wanted:
                break
        pos = ext_end
    return ClientHello(server_name, alpn)


HelloHook = Callable[[ClientHello], "Deferred[Any] | None"]
"""Sees each ClientHello; a ``Deferred`` it returns holds the handshake until it fires."""


def combine_hooks(*hooks: HelloHook | None) -> HelloHook:
    """One hook calling each of ``hooks``; the handshake waits for all of them."""
    active = [h for h in hooks if h is not None]

    def hook(hello: ClientHello) -> Deferred[Any] | None:
        waits: list[Deferred[Any]] = []
        for each in active:
            try:
                result = each(hello)
            except Exception:
                log.failure("ClientHello hook {hook!r} failed", hook=each)
                continue
            if result is not None:
                waits.append(result)
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return DeferredList(waits, consumeErrors=True)

    return hook


class HelloHookProtocol(BufferingTLSTransport):
    """
    A server TLS connection that shows the ClientHello to its factory's hook
    before OpenSSL sees it (see the module documentation).
    """

    factory: HelloHookFactory

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        """Start holding received bytes until the ClientHello has been judged."""
        self._hello_buffer = b""
        self._hello_pending = True
        self._hello_waiting: Deferred[Any] | None = None
        self._hello_timer: IDelayedCall | None = None
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Feed OpenSSL, unless the ClientHello is still being read or judged."""
        if not self._hello_pending:
            super().dataReceived(data)  # type: ignore[no-untyped-call]
            return
        self._hello_buffer += data
        if self._hello_waiting is not None:
            if len(self._hello_buffer) > MAX_HELLO_BYTES:
                self._release()
            return
        hello = parse_client_hello(self._hello_buffer)
        if hello is NEED_MORE:
            return
        if hello is None:
            self._release()
            return
        try:
            waiting = self.factory.hook(hello)
        except Exception:
            log.failure("ClientHello hook failed")
            waiting = None
        if waiting is None or waiting.called:
            if waiting is not None:
                waiting.addErrback(lambda f: None)
            self._release()
            return
        self._hello_waiting = waiting
        self._hello_timer = self.factory.clock.callLater(
            self.factory.timeout, self._timed_out, hello
        )

        def done(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("waiting for the ClientHello hook", result)
            self._release()

        waiting.addBoth(done)

    def _timed_out(self, hello: ClientHello) -> None:
        self._hello_timer = None
        log.info(
            "handshake for {server_name} held {timeout} s; going on without waiting more",
            server_name=hello.server_name,
            timeout=self.factory.timeout,
        )
        self._release()

    def _release(self) -> None:
        if not self._hello_pending:
            return
        self._hello_pending = False
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        data, self._hello_buffer = self._hello_buffer, b""
        if self._lostTLSConnection or self._tlsConnection is None or not self.connected:
            return
        if data:
            super().dataReceived(data)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        """Stop waiting (the hook's work goes on) and close as usual."""
        if self._hello_pending:
            self._hello_pending = False
            if self._hello_timer is not None and self._hello_timer.active():
                self._hello_timer.cancel()
            self._hello_timer = None
            self._hello_buffer = b""
        super().connectionLost(reason)


class HelloHookFactory(TLSMemoryBIOFactory):
    """
    ``TLSMemoryBIOFactory(creator, False, factory)`` whose connections are held
    while ``hook(client_hello)`` works (at most ``timeout`` seconds).

    :param creator: the server connection creator (e.g.
        :class:`txacme.serving.tls.SNIConnectionCreator`).
    :param wrapped_factory: the application's factory.
    :param hook: a :data:`HelloHook` (see :func:`combine_hooks`).
    :param timeout: the longest a handshake is held, in seconds.
    :param clock: the reactor's time (default: the global reactor).
    """

    protocol = HelloHookProtocol

    def __init__(
        self,
        creator: Any,
        wrapped_factory: IProtocolFactory,
        hook: HelloHook,
        *,
        timeout: float = DEFAULT_HELLO_TIMEOUT,
        clock: IReactorTime | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"hello timeout={timeout!r} must be positive")
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        super().__init__(creator, False, wrapped_factory, clock=clock)
        self.hook = hook
        self.timeout = float(timeout)
        self.clock: IReactorTime = clock


# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------


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
    :param clock: the reactor's time.
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
        clock: IReactorTime | None = None,
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
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
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
        import treq.client
        from twisted.internet import reactor
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        trust_root = None
        if self._ca_file is not None:
            from txacme.protocol.client import load_trust_root

            trust_root = load_trust_root(self._ca_file)
        policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root)  # type: ignore[no-untyped-call]
        agent = Agent(reactor, contextFactory=policy)  # type: ignore[no-untyped-call]
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

    Use :meth:`hello_hook` with :class:`HelloHookFactory`. The hook does
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
    :param index: the :class:`~txacme.serving.tls.CertificateIndex` the TLS layer
        serves from; the new certificate is put there.
    :param rate: issuances allowed per ``per`` seconds (this process).
    :param max_pending: issuances running at once.
    :param failure_cooldown: seconds before a failed name is tried again.
    :param clock: the reactor's time.
    """

    def __init__(
        self,
        policy: OnDemandPolicy,
        issue: Callable[[str], Any],
        index: Any,
        *,
        rate: int = 10,
        per: float = 60.0,
        max_pending: int = 5,
        failure_cooldown: float = 600.0,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
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

    def hello_hook(self, hello: ClientHello) -> Deferred[Any] | None:
        """The :data:`HelloHook`: hold a handshake while its name is issued."""
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
            issued = await maybeDeferred(self._issue, name)
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
    "ClientHello",
    "DEFAULT_HELLO_TIMEOUT",
    "HelloHook",
    "HelloHookFactory",
    "HelloHookProtocol",
    "NEED_MORE",
    "OnDemandIssuer",
    "OnDemandPolicy",
    "RateLimiter",
    "combine_hooks",
    "parse_client_hello",
]
