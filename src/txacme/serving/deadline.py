"""
Handshake deadlines: a server connection that has not completed its TLS
handshake ``timeout`` seconds after it was accepted is aborted.

The deadline covers everything before the handshake completes: the wait for a
first byte (on an ``AutoTLSEndpoint``'s TCP port, the kernel itself first
holds a connection that has sent nothing for about a second:
:func:`~txacme.serving.hello.defer_accept`), the wait for the rest of a ClientHello (which
:class:`~txacme.serving.hello.HelloHookProtocol` buffers, up to 64 KiB, when
on-demand issuance or a cluster is configured) and the handshake itself. The
time a handshake is *held by txacme* for a ClientHello hook (on-demand
issuance, bounded by its own ``hello_timeout``) is not the client's, so the
deadline is paused meanwhile and starts again, in full, when the handshake is
released. Once the handshake completes, the connection belongs to the
application and its own timeouts (``twisted.web`` has an idle timeout of 60 s,
other protocols may have none). A ``Site``'s protocol is made only when the
client's first request arrives; until then a second set of deadlines, with the
``Site``'s ``timeOut``, closes a client that sends nothing
(:class:`~txacme.serving.hello.ServerTLSFactory`).

Cost: one dictionary entry per pending connection (its deadline, about 100
bytes), no timer per connection. All connections share a timeout, so
insertion order is deadline order: one timer per listening factory wakes at the
oldest deadline, aborts every connection due within ``granularity`` seconds of
it (20 ms, so a burst is aborted in one pass), and sleeps until the next one.

Aborted connections are counted (:attr:`HandshakeDeadlines.expired`) and logged
in aggregate: one line when the first one expires, then at most one line every
``LOG_INTERVAL`` seconds with the count since the last line, so that an
attacker opening connections does not choose the log volume.

May import the core modules only.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txacme.errors import ConfigurationError
from txacme.logs import Logger

log = Logger()

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a connection has to complete its TLS handshake by default."""

LOG_INTERVAL = 10.0
"""Seconds between two log lines about expired handshakes, at most one a period."""

GRANULARITY = 0.02
"""Connections due within this many seconds of each other are aborted in one pass."""


_MESSAGE = (
    "aborted {count} connection(s) that did not complete the TLS handshake "
    "within {timeout} s ({total} so far)"
)
"""What :class:`HandshakeDeadlines` logs by default."""


class Expirable(TypingProtocol):
    """A pending connection: what :class:`HandshakeDeadlines` needs of it."""

    def handshake_expired(self) -> None:
        """The deadline passed: abort the connection."""


def check_handshake_timeout(value: object) -> float | None:
    """
    ``value`` as a handshake timeout in seconds, or ``None`` for none.

    :raises txacme.errors.ConfigurationError: for anything but a positive number.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"handshake_timeout={value!r} must be a positive number of seconds"
        )
    return float(value)


class HandshakeDeadlines:
    """
    Aborts the connections added with :meth:`add` that are not discarded
    (:meth:`discard`, on handshake completion or loss) within ``timeout``
    seconds.

    :param clock: the reactor's time.
    :param timeout: seconds a connection has.
    :param message: the aggregate log line (fields ``count``, ``timeout``,
        ``total``).
    """

    def __init__(self, clock: IReactorTime, timeout: float, message: str = _MESSAGE) -> None:
        self.clock = clock
        self.timeout = float(timeout)
        self.message = message
        self.expired = 0
        """Connections aborted so far."""
        self._pending: dict[Expirable, float] = {}
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._unlogged = 0
        self._log_timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, connection: Expirable) -> None:
        """Start (or restart, in full) ``connection``'s deadline."""
        pending = self._pending
        pending.pop(connection, None)  # restarted: keep insertion order = deadline order
        pending[connection] = self.clock.seconds() + self.timeout
        if self._timer is None:
            self._timer = self.clock.callLater(self.timeout, self._expire)

    def discard(self, connection: Expirable) -> None:
        """``connection`` completed its handshake, or is gone: forget it."""
        pending = self._pending
        if pending.pop(connection, None) is not None and not pending and self._stopped:
            self._idle()

    def start(self) -> None:
        """A port listens (again): keep the timer while connections come and go."""
        self._stopped = False

    def stop(self) -> None:
        """
        No port listens any more (connections accepted before may still add
        themselves, e.g. when their handshake completes): once none is pending,
        leave no timer behind. Pending ones keep their deadline.
        """
        self._stopped = True
        if not self._pending:
            self._idle()

    def _idle(self) -> None:
        # Stopped and nothing pending: log what is left, leave no timer behind.
        for timer in (self._timer, self._log_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._log_timer = None
        if self._unlogged:
            self._flush_log(rearm=False)

    def _expire(self) -> None:
        # When the oldest deadline passed: abort every connection due now
        # (insertion order is deadline order), then sleep until the next one.
        self._timer = None
        pending = self._pending
        now = self.clock.seconds()
        due = now + GRANULARITY
        expired = []
        for connection, deadline in pending.items():
            if deadline > due:
                break
            expired.append(connection)
        for connection in expired:
            if pending.pop(connection, None) is None:
                continue
            try:
                connection.handshake_expired()
            except Exception:
                log.failure("aborting a connection whose handshake timed out")
        if expired:
            self.expired += len(expired)
            self._note(len(expired))
        if pending and self._timer is None:
            deadline = next(iter(pending.values()))
            self._timer = self.clock.callLater(max(deadline - now, 0.0), self._expire)
        elif not pending and self._stopped:
            self._idle()

    def _note(self, count: int) -> None:
        self._unlogged += count
        if self._log_timer is None:
            self._flush_log()

    def _flush_log(self, rearm: bool = True) -> None:
        self._log_timer = None
        if not self._unlogged:
            return
        count, self._unlogged = self._unlogged, 0
        log.info(
            self.message,
            count=count,
            timeout=self.timeout,
            total=self.expired,
        )
        if rearm:
            self._log_timer = self.clock.callLater(LOG_INTERVAL, self._flush_log)


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Expirable",
    "HandshakeDeadlines",
    "check_handshake_timeout",
]
