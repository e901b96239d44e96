"""Collect the events sent to Twisted's global log publisher during a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


@contextmanager
def captured_logs() -> Iterator[list[LogEvent]]:
    """The events logged inside the ``with`` block."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def capture_log(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """The events logged from now until ``test`` cleans up."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def txacme_log_level(test: SynchronousTestCase, level: str) -> None:
    """Log txacme's events from ``level`` up until ``test`` cleans up (the default is info)."""
    from txacme.logs import get_log_level, set_log_level

    previous = get_log_level()
    set_log_level(level)
    test.addCleanup(set_log_level, previous)


def capture_txacme_lines(test: SynchronousTestCase) -> list[str]:
    """txacme's events as text lines (no system prefix), from now until ``test`` cleans up."""
    from twisted.logger import eventAsText

    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("txacme"):
            lines.append(eventAsText(event, includeSystem=False))

    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines
