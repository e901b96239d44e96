"""
How much txacme logs: one level for all of txacme's own events.

Every module of txacme logs through :class:`Logger`, a ``twisted.logger.Logger``
that drops events below the process's txacme log level before they reach any
observer. twistd shows every event it is given, so this is where the detail is
held back: at the default level, ``info``, an operator reads one line per event
that matters (start-up summary, obtained, renewed, failed, emergency); at
``debug`` every ACME request and every name's schedule is logged too.

The level is set by the ``log_level=`` keyword of an endpoint string, by ``-vv``
on the ``txacme`` command, or by a program with :func:`set_log_level`. It applies
to the whole process and to txacme's events only; other libraries' events are
left to the observers.

Core module: imports nothing else of txacme but :mod:`txacme.errors`.
"""

from __future__ import annotations

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

from txacme.errors import ConfigurationError

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "LOG_LEVELS",
    "Logger",
    "get_log_level",
    "parse_log_level",
    "set_log_level",
]

LOG_LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
"""The level names ``log_level=`` takes (``warning`` is accepted for ``warn``)."""

DEFAULT_LOG_LEVEL = LogLevel.info
"""The level when nothing sets another."""

_RANK = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}

_threshold = [_RANK[DEFAULT_LOG_LEVEL]]


def parse_log_level(text: str, *, what: str = "log_level") -> LogLevel:
    """
    The level named by ``text`` (``debug``, ``info``, ``warn`` or ``error``, any case).

    :raises txacme.errors.ConfigurationError: naming ``what`` and the choices.
    """
    name = text.strip().lower()
    if name == "warning":
        name = "warn"
    level = LOG_LEVELS.get(name)
    if level is None:
        raise ConfigurationError(
            f"{what}={text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    return level


def set_log_level(level: LogLevel | str) -> None:
    """Log txacme's events of ``level`` and above from now on (the whole process)."""
    if isinstance(level, str):
        level = parse_log_level(level)
    _threshold[0] = _RANK[level]


def get_log_level() -> LogLevel:
    """The level txacme logs at now."""
    levels: list[LogLevel] = [level for level, rank in _RANK.items() if rank == _threshold[0]]
    return levels[0]


class Logger(_TwistedLogger):
    """
    A ``twisted.logger.Logger`` whose events below the txacme log level are
    dropped at once (no formatting, no observer sees them).
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        """Emit the event when ``level`` is at or above the txacme log level."""
        if _RANK.get(level, 4) < _threshold[0]:
            return
        super().emit(level, format, **kwargs)
