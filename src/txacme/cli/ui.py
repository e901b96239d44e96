"""
Where the ``txacme`` command writes: result lines, errors, and the progress line
drawn on a terminal; and the short forms of times it prints.

May import the core modules and Twisted.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from typing import IO

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

__all__ = ["UI", "relative_time", "short_time"]


class UI:
    """
    Where the command writes: results to ``out``, errors and progress to
    ``err``. Progress is drawn only when ``err`` is a terminal.

    :param clock: the reactor's time, for the progress line's timer.
    """

    SPINNER = "|/-\\"

    def __init__(
        self,
        out: IO[str],
        err: IO[str],
        *,
        quiet: bool = False,
        progress: bool | None = None,
        clock: IReactorTime,
    ) -> None:
        self.out = out
        self.err = err
        self.quiet = quiet
        if progress is None:
            progress = _is_terminal(err) and not quiet
        self.progress_enabled = progress
        self._clock = clock
        self._active: dict[str, tuple[str, float]] = {}
        self._drawn = False
        self._tick = 0
        self._loop: LoopingCall | None = None

    # -- lines ---------------------------------------------------------------

    def result(self, text: str) -> None:
        """A result line on standard output (not with ``--quiet``)."""
        if not self.quiet:
            self._write(self.out, text)

    def error(self, text: str) -> None:
        """An error line on standard error (always)."""
        self._write(self.err, text)

    def hint(self, text: str) -> None:
        """Something only a person at a terminal needs (standard error)."""
        if self.progress_enabled:
            self._write(self.err, text)

    def _write(self, stream: IO[str], text: str) -> None:
        self._clear()
        stream.write(text + "\n")
        stream.flush()
        self._draw()

    # -- progress ------------------------------------------------------------

    def step(self, name: str, text: str) -> None:
        """Show that ``name`` is now doing ``text``."""
        if not self.progress_enabled:
            return
        previous = self._active.get(name)
        self._active[name] = (text, previous[1] if previous else self._clock.seconds())
        if self._loop is None:
            self._loop = LoopingCall(self._redraw)
            self._loop.clock = self._clock
            self._loop.start(0.2, now=False)
        self._redraw()

    def done(self, name: str) -> None:
        """``name`` has finished (its result line follows)."""
        if self._active.pop(name, None) is not None and not self._active:
            self.stop()

    def stop(self) -> None:
        """Remove the progress line."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._active.clear()
        self._clear()

    def _redraw(self) -> None:
        self._tick += 1
        self._clear()
        self._draw()

    def _clear(self) -> None:
        if self._drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._drawn = False

    def _draw(self) -> None:
        if not self.progress_enabled or not self._active:
            return
        now = self._clock.seconds()
        parts = [
            f"{name}: {text} ({now - started:.0f}s)"
            for name, (text, started) in self._active.items()
        ]
        width = shutil.get_terminal_size((80, 24)).columns
        line = f"{self.SPINNER[self._tick % len(self.SPINNER)]} " + "; ".join(parts)
        if len(line) > width - 1:
            line = line[: max(width - 4, 10)] + "..."
        self.err.write(line)
        self.err.flush()
        self._drawn = True


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def short_time(moment: datetime | None) -> str:
    """``2026-01-02 03:04Z``, or ``-``."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def relative_time(moment: datetime | None, now: datetime) -> str:
    """``in 3d``, ``5m ago``...; empty for ``None``."""
    if moment is None:
        return ""
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    if span < 90:
        text = f"{span:.0f}s"
    elif span < 5400:
        text = f"{span / 60:.0f}m"
    elif span < 2 * 86400:
        text = f"{span / 3600:.0f}h"
    else:
        text = f"{span / 86400:.0f}d"
    return f"in {text}" if seconds >= 0 else f"{text} ago"
