"""
The events of the issuing service: what :meth:`AcmeIssuingService.subscribe
<txacme.issuing.service.AcmeIssuingService.subscribe>` callbacks receive and
what the service logs.

Every event is a frozen attrs object with a stable ``event`` name, a log
``level`` and a log ``format``; :func:`log_fields` gives the fields the service
logs with it. :data:`ServiceEvent` is their union, for annotations and for
observers (:mod:`txacme.reporting`) that handle each kind; :class:`EventSource`
is what such observers attach to.

May import the core modules only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import ClassVar, Protocol

import attrs
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txacme.errors import TxACMEError

__all__ = [
    "Emergency",
    "EventSource",
    "Failed",
    "Obtained",
    "Obtaining",
    "RenewalScheduled",
    "ServiceEvent",
    "log_fields",
]


@attrs.frozen
class RenewalScheduled:
    """The next issuance of ``name`` is planned at ``due_at`` for ``reason``."""

    event: ClassVar[str] = "renewal_scheduled"
    level: ClassVar[LogLevel] = LogLevel.debug
    format: ClassVar[str] = "certificate for {name} due at {due_at} ({reason})"

    name: str
    due_at: datetime
    reason: str
    replaces: str | None = None


@attrs.frozen
class Obtaining:
    """Issuance of ``names`` (store entry ``name``) starts; ``attempt`` counts from 1."""

    event: ClassVar[str] = "obtaining"
    level: ClassVar[LogLevel] = LogLevel.info
    format: ClassVar[str] = "obtaining a certificate for {names} ({why}, attempt {attempt})"

    name: str
    names: tuple[str, ...]
    reason: str
    attempt: int
    replaces: str | None = None


@attrs.frozen
class Obtained:
    """
    A certificate for ``name`` was obtained and stored, in ``seconds``.

    ``issuer`` is the common name (or whole name) of the certificate's issuer;
    ``renewed`` is true when it replaced a certificate that was still stored.
    """

    event: ClassVar[str] = "obtained"
    level: ClassVar[LogLevel] = LogLevel.info

    name: str
    names: tuple[str, ...]
    not_after: datetime | None
    seconds: float
    issuer: str = ""
    renewed: bool = False

    @property
    def format(self) -> str:
        """The log message format."""
        verb = "renewed the certificate" if self.renewed else "obtained a certificate"
        issuer = " from {issuer}" if self.issuer else ""
        return f"{verb} for {{names}}{issuer}, valid until {{not_after}}, in {{seconds:.1f}} s"


@attrs.frozen
class Failed:
    """
    An attempt for ``name`` failed; the next one is not before ``retry_at``.

    ``problem`` is the ACME problem type (a URN) or the exception class name;
    ``detail`` its text.
    """

    event: ClassVar[str] = "failed"
    level: ClassVar[LogLevel] = LogLevel.error
    format: ClassVar[str] = (
        "obtaining a certificate for {name} failed (attempt {attempt}): {cause}; "
        "next attempt at {next_attempt}"
    )

    name: str
    problem: str
    detail: str
    attempt: int
    retry_at: datetime
    failure: Failure = attrs.field(repr=False, eq=False)


@attrs.frozen
class Emergency:
    """
    Renewal of ``name`` failed while it has no valid certificate
    (``not_after`` is ``None`` or past) or is inside its emergency window.
    """

    event: ClassVar[str] = "emergency"
    level: ClassVar[LogLevel] = LogLevel.critical

    name: str
    not_after: datetime | None
    failure: Failure = attrs.field(repr=False, eq=False)

    @property
    def format(self) -> str:
        """The log message format."""
        if self.not_after is None:
            return "there is no certificate for {name} and obtaining one failed"
        return "certificate for {name} expires at {not_after} and renewal failed"


ServiceEvent = RenewalScheduled | Obtaining | Obtained | Failed | Emergency
"""Every event type :meth:`AcmeIssuingService.subscribe
<txacme.issuing.service.AcmeIssuingService.subscribe>` callbacks receive."""


class EventSource(Protocol):
    """What observers attach to: :class:`~txacme.issuing.service.AcmeIssuingService`."""

    def subscribe(self, callback: Callable[[ServiceEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns the unsubscribe function."""


def log_fields(event: ServiceEvent) -> dict[str, object]:
    """
    The fields ``event`` is logged with: its own (times as ISO 8601 text,
    ``names`` joined with commas, no ``Failure``); ``why`` (``obtaining``) and
    ``cause`` and ``next_attempt`` (``failed``), the reason, the failure and the
    next attempt in words for the message;
    plus ``log_failure`` for a failure that is no
    :class:`~txacme.errors.TxACMEError`, so that the unexpected error's
    traceback is kept.
    """
    fields: dict[str, object] = {}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, Failure):
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = ", ".join(value)
        fields[field.name] = value
    if isinstance(event, Obtaining):
        fields["why"] = _WHY.get(event.reason, event.reason)
    if isinstance(event, Failed):
        fields["cause"] = _cause(event)
        fields["next_attempt"] = event.retry_at.replace(microsecond=0).isoformat()
        if not isinstance(event.failure.value, TxACMEError):
            fields["log_failure"] = event.failure
    return fields


_ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

#: Each renewal reason as the ``obtaining`` line says it.
_WHY = {
    "missing": "none stored yet",
    "expired": "the stored one has expired",
    "names": "the stored one lacks a configured name",
    "lifetime": "renewal window reached",
    "ari": "the CA asked for renewal (ARI)",
    "emergency": "the stored one expires soon",
}


def _cause(event: Failed) -> str:
    """The cause of a failure in a few words: the ACME problem's code and detail, or the error."""
    problem = event.problem.removeprefix(_ACME_ERROR_PREFIX)
    if not event.detail or event.detail == problem:
        return problem
    if isinstance(event.failure.value, TxACMEError) and not problem[:1].islower():
        return event.detail  # a txacme error (CAUnreachable...) says it all
    return f"{problem}: {event.detail}"
