"""
The start-up summary of the issuing service: one log line saying how many
certificates the store holds, how many are due now and when the next renewal is.

May import the core modules and the other issuing modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import attrs

from txacme.issuing.tracking import NameState
from txacme.logs import Logger

__all__ = ["StartupSummary", "log_startup_summary", "store_label", "summarize"]

log = Logger()


@attrs.frozen
class StartupSummary:
    """
    What the first check of the store found.

    :ivar certificates: the names the store holds (empty entries included).
    :ivar due: the names due now (missing, expired, in their renewal window...).
    :ivar next_name: the name renewed next among those not due now, if any.
    :ivar next_at: when.
    """

    certificates: int
    due: int
    next_name: str | None = None
    next_at: datetime | None = None


def summarize(states: Mapping[str, NameState], now: datetime) -> StartupSummary:
    """The summary of the names ``states`` tracks, at ``now``."""
    due = 0
    next_name: str | None = None
    next_at: datetime | None = None
    for name, state in states.items():
        if state.scheduled is None:
            continue
        at = state.scheduled[0]
        if at <= now or state.in_flight is not None:
            due += 1
        elif next_at is None or at < next_at:
            next_name, next_at = name, at
    return StartupSummary(len(states), due, next_name, next_at)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def log_startup_summary(summary: StartupSummary, store: str) -> None:
    """Log ``summary`` as one ``info`` line (event ``startup``)."""
    if summary.next_at is not None:
        when = summary.next_at.replace(microsecond=0).isoformat()
        upcoming = f"next renewal: {summary.next_name} at {when}"
    else:
        upcoming = "no renewal scheduled"
    log.info(
        "{certificates_text} in {store}: {due} due now; {upcoming}",
        event="startup",
        certificates=summary.certificates,
        certificates_text=_plural(summary.certificates, "certificate"),
        due=summary.due,
        next_name=summary.next_name,
        next_at=None if summary.next_at is None else summary.next_at.isoformat(),
        store=store,
        upcoming=upcoming,
    )


def store_label(store: object) -> str:
    """How the summary names a store: its directory, else its kind."""
    path = getattr(store, "path", None)
    path = getattr(path, "path", path)  # a FilePath
    if isinstance(path, str):
        return path
    return type(store).__name__
