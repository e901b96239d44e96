"""
Refused handshakes, counted and logged in aggregate, so that a client sending
random names cannot decide how much txacme logs.

:class:`RefusalLog` counts every refusal by reason (the metrics read the
counts) and logs at most one line per ``interval`` seconds: how many
handshakes were refused since the last line, by reason, with the first few
names seen, each escaped (:func:`safe_name`: non-printable and non-ASCII
characters as ``\\xNN`` escapes) and cut to :data:`MAX_NAME_LENGTH`
characters. 10,000 refusals a second give one line a minute of a few hundred
bytes.

May import the core modules only.
"""

from __future__ import annotations

import collections
from typing import Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txacme.logs import Logger

log = Logger()

MAX_NAME_LENGTH: Final = 64
"""Names in the aggregate line are cut to this many characters (after escaping)."""
SAMPLES: Final = 5
"""How many names the aggregate line shows."""
DEFAULT_INTERVAL: Final = 60.0
"""Seconds between two aggregate lines."""

#: Reasons a handshake or an on-demand request is refused.
REASONS: Final = (
    "unknown_name",  # no certificate and no default: the handshake fails
    "on_demand_refused",  # the allow-list or the ask URL said no
    "on_demand_limited",  # a rate, the ask URL's limits, the cap on names, a CA back-off
)


def safe_name(raw: object, limit: int = MAX_NAME_LENGTH) -> str:
    """
    ``raw`` (``bytes``, ``str`` or ``None``) as printable ASCII, cut to ``limit``
    characters (with ``...`` when cut): safe to put in a log line.
    """
    if raw is None:
        return "(none)"
    if isinstance(raw, bytes):
        text = raw[: limit * 4].decode("latin-1")
    else:
        text = str(raw)[: limit * 4]
    escaped = "".join(
        c
        if 0x20 < ord(c) < 0x7F and c != "\\"
        else f"\\x{ord(c) & 0xFF:02x}"
        if ord(c) < 0x100
        else f"\\u{ord(c):04x}"
        for c in text
    )
    if len(escaped) > limit:
        return escaped[: limit - 3] + "..."
    return escaped


class RefusalLog:
    """
    Counts refusals and logs them at most once per ``interval``.

    :param clock: the reactor: its time and the timer of the next line.
    :param interval: seconds between two lines.
    :ivar counts: refusals by reason since the start (for the metrics).
    """

    def __init__(self, clock: IReactorTime, interval: float = DEFAULT_INTERVAL) -> None:
        self._clock = clock
        self.interval = float(interval)
        self.counts: collections.Counter[str] = collections.Counter()
        self._pending: collections.Counter[str] = collections.Counter()
        self._samples: list[str] = []
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def refused(self, reason: str, name: object) -> None:
        """Count one refusal for ``reason`` of ``name`` (raw SNI bytes or text)."""
        self.counts[reason] += 1
        self._pending[reason] += 1
        if len(self._samples) < SAMPLES:
            self._samples.append(safe_name(name))
        if self._timer is None and not self._stopped:
            self._timer = self._clock.callLater(self.interval, self.flush)

    def flush(self) -> None:
        """Log the line for what was refused since the last one (if anything)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, collections.Counter()
        samples, self._samples = self._samples, []
        total = sum(pending.values())
        by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(pending.items()))
        log.info(
            "refused {total} handshakes or on-demand requests in the last {interval:g} s "
            "({by_reason}); e.g. {samples}",
            total=total,
            interval=self.interval,
            by_reason=by_reason,
            samples=" ".join(samples),
            refusals=dict(pending),
        )

    def start(self) -> None:
        """Log again once per interval after :meth:`stop`."""
        self._stopped = False

    def stop(self) -> None:
        """Log what is pending and stop the timer (refusals are still counted)."""
        self._stopped = True
        self.flush()


__all__ = ["DEFAULT_INTERVAL", "MAX_NAME_LENGTH", "REASONS", "SAMPLES", "RefusalLog", "safe_name"]
