"""
What happened to each certificate, kept beside the certificates.

Let's Encrypt no longer sends expiry e-mails, so the operator has to see for
themselves that renewals succeed. The issuing service only keeps its state in
memory; this module writes the part an operator needs to a small JSON file,
``.txacme-state.json`` in the certificate directory, where ``txacme status``
(and anything else) can read it:

* the last attempt, the last success (and the expiry of the certificate it
  produced), the last failure (ACME problem type, detail, attempt number, when
  the next attempt is due, whether it was an emergency);
* the renewal time and reason the running service planned (which may come from
  the CA's renewal information, ARI, that a reader without the CA cannot know);
* certificates revoked with ``txacme revoke``.

Decisions
---------

No secrets.
    Only names, times, problem types and the CA's problem detail are written;
    never keys, certificates, EAB or TSIG secrets, tracebacks or exception
    ``repr``. The file is still written with mode 0600 like every entry.

Atomic, locked writes.
    A write merges the changes into what is on disk now (another process, e.g.
    the CLI beside a running server, may have written meanwhile) under an
    exclusive ``flock`` of the directory, then replaces the file atomically
    (:func:`txacme.stores.directory.write_entry`). Readers never see a partial file.

Batched.
    :class:`StateRecorder` collects the changes of a burst of events (a start-up
    check of many names emits one ``RenewalScheduled`` each) and writes once, at
    the next turn of the reactor.

Best effort.
    A damaged or unreadable file reads as empty (and is logged); a failed write
    is logged and never reaches the issuing service. The file is a report, not
    a source of truth: deleting it loses nothing but history.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txacme.errors import ACME_ERROR_PREFIX, ACMEProblem, IssuanceFailed
from txacme.formats import format_time, parse_time
from txacme.issuing.events import (
    Emergency,
    EventSource,
    Failed,
    Obtained,
    Obtaining,
    RenewalScheduled,
    ServiceEvent,
)
from txacme.logs import Logger
from txacme.stores.directory import write_entry

log = Logger()

STATE_FILENAME = ".txacme-state.json"
"""The name of the state file inside a certificate directory."""

FORMAT_VERSION = 1
"""The ``version`` field written to the file."""

MAX_DETAIL_LENGTH = 1000
"""Problem details longer than this many characters are shortened."""

__all__ = [
    "FORMAT_VERSION",
    "MAX_DETAIL_LENGTH",
    "STATE_FILENAME",
    "ErrorRecord",
    "NameRecord",
    "RevocationRecord",
    "StateFile",
    "StateRecorder",
    "Change",
    "error_record",
]


def _short(text: str) -> str:
    if len(text) <= MAX_DETAIL_LENGTH:
        return text
    return text[: MAX_DETAIL_LENGTH - 3] + "..."


@attrs.frozen
class ErrorRecord:
    """
    The last failed attempt for a name.

    :ivar at: when it failed.
    :ivar problem: the ACME problem type (a URN) or the exception class name.
    :ivar detail: the problem's detail text (shortened to
        :data:`MAX_DETAIL_LENGTH`).
    :ivar attempt: how many attempts in a row have failed.
    :ivar retry_at: when the next attempt is due, if known.
    :ivar emergency: whether the failure left the name without a valid
        certificate or inside its emergency window.
    """

    at: datetime
    problem: str
    detail: str = attrs.field(converter=_short)
    attempt: int = 1
    retry_at: datetime | None = None
    emergency: bool = False

    @property
    def code(self) -> str:
        """The short problem code: ``connection`` for ``urn:...:error:connection``."""
        if self.problem.startswith(ACME_ERROR_PREFIX):
            return self.problem[len(ACME_ERROR_PREFIX) :]
        return self.problem

    def to_json(self) -> dict[str, object]:
        """The JSON form written to the state file."""
        return {
            "at": format_time(self.at),
            "problem": self.problem,
            "detail": self.detail,
            "attempt": self.attempt,
            "retry_at": format_time(self.retry_at),
            "emergency": self.emergency,
        }

    @classmethod
    def from_json(cls, data: object) -> ErrorRecord | None:
        """Read the JSON form back; ``None`` when it is not usable."""
        if not isinstance(data, Mapping):
            return None
        at = parse_time(data.get("at"))
        problem = data.get("problem")
        if at is None or not isinstance(problem, str):
            return None
        detail = data.get("detail")
        attempt = data.get("attempt")
        return cls(
            at=at,
            problem=problem,
            detail=detail if isinstance(detail, str) else "",
            attempt=attempt if isinstance(attempt, int) and attempt > 0 else 1,
            retry_at=parse_time(data.get("retry_at")),
            emergency=data.get("emergency") is True,
        )


@attrs.frozen
class RevocationRecord:
    """
    A certificate revoked with ``txacme revoke``.

    :ivar serial: its serial number, in lower-case hexadecimal.
    :ivar at: when it was revoked.
    :ivar reason: the revocation reason's name (``keyCompromise``...).
    """

    serial: str
    at: datetime
    reason: str

    def to_json(self) -> dict[str, object]:
        """The JSON form written to the state file."""
        return {"serial": self.serial, "at": format_time(self.at), "reason": self.reason}

    @classmethod
    def from_json(cls, data: object) -> RevocationRecord | None:
        """Read the JSON form back; ``None`` when it is not usable."""
        if not isinstance(data, Mapping):
            return None
        serial, at, reason = data.get("serial"), parse_time(data.get("at")), data.get("reason")
        if not isinstance(serial, str) or at is None:
            return None
        return cls(serial=serial, at=at, reason=reason if isinstance(reason, str) else "")


@attrs.frozen
class NameRecord:
    """
    Everything recorded for one store entry.

    :ivar name: the entry's (primary) server name.
    :ivar last_attempt: when the last issuance attempt started.
    :ivar last_success: when a certificate was last obtained and stored.
    :ivar not_after: the expiry of that certificate.
    :ivar last_error: the last failure, cleared by the next success.
    :ivar scheduled_at: the renewal time the issuing service planned.
    :ivar scheduled_reason: why (``ari``, ``lifetime``, ``missing``...).
    :ivar revoked: the last revocation made with ``txacme revoke``.
    """

    name: str
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    not_after: datetime | None = None
    last_error: ErrorRecord | None = None
    scheduled_at: datetime | None = None
    scheduled_reason: str | None = None
    revoked: RevocationRecord | None = None

    @property
    def failing(self) -> bool:
        """Whether the most recent attempt failed."""
        return self.last_error is not None

    def to_json(self) -> dict[str, object]:
        """The JSON form written to the state file (without the name)."""
        data: dict[str, object] = {
            "last_attempt": format_time(self.last_attempt),
            "last_success": format_time(self.last_success),
            "not_after": format_time(self.not_after),
            "last_error": self.last_error.to_json() if self.last_error else None,
            "scheduled": (
                {"at": format_time(self.scheduled_at), "reason": self.scheduled_reason}
                if self.scheduled_at is not None
                else None
            ),
            "revoked": self.revoked.to_json() if self.revoked else None,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, name: str, data: object) -> NameRecord:
        """Read the JSON form back, ignoring whatever is not usable."""
        if not isinstance(data, Mapping):
            return cls(name)
        scheduled = data.get("scheduled")
        scheduled_at = scheduled_reason = None
        if isinstance(scheduled, Mapping):
            scheduled_at = parse_time(scheduled.get("at"))
            reason = scheduled.get("reason")
            scheduled_reason = reason if isinstance(reason, str) else None
        return cls(
            name=name,
            last_attempt=parse_time(data.get("last_attempt")),
            last_success=parse_time(data.get("last_success")),
            not_after=parse_time(data.get("not_after")),
            last_error=ErrorRecord.from_json(data.get("last_error")),
            scheduled_at=scheduled_at,
            scheduled_reason=scheduled_reason if scheduled_at is not None else None,
            revoked=RevocationRecord.from_json(data.get("revoked")),
        )


Change = Callable[[NameRecord], NameRecord]
"""A change to one record: a function from the old record to the new one."""


class StateFile:
    """
    The state file of one certificate directory.

    Reading and writing are synchronous (the file is small). Every method is
    safe to call while another process writes the same file.

    :param path: the file; see :meth:`for_directory`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"StateFile({self.path!r})"

    @classmethod
    def for_directory(cls, directory: str | os.PathLike[str]) -> StateFile:
        """The state file (:data:`STATE_FILENAME`) of a certificate directory."""
        return cls(os.path.join(os.fspath(directory), STATE_FILENAME))

    def _load(self) -> dict[str, object]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warn("cannot read {path}: {error}", path=self.path, error=e.strerror)
            return {}
        try:
            document = json.loads(raw)
        except ValueError:
            log.warn("ignoring the damaged state file {path}", path=self.path)
            return {}
        names = document.get("names") if isinstance(document, dict) else None
        if not isinstance(names, dict):
            return {}
        return {str(k): v for k, v in names.items()}

    def read(self) -> dict[str, NameRecord]:
        """Every record, by name (``{}`` when the file is missing or damaged)."""
        return {name: NameRecord.from_json(name, data) for name, data in self._load().items()}

    def get(self, name: str) -> NameRecord:
        """The record of ``name`` (an empty one when there is none)."""
        return self.read().get(name, NameRecord(name))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(self.path) or "."
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def update(self, changes: Mapping[str, Change]) -> None:
        """
        Apply ``changes`` (a function from the old record to the new one, by
        name) to what the file holds now, and write it atomically.

        :raises OSError: when the file cannot be written.
        """
        if not changes:
            return
        with self._locked():
            names = self._load()
            for name, change in changes.items():
                record = change(NameRecord.from_json(name, names.get(name)))
                names[name] = record.to_json()
            document = {"version": FORMAT_VERSION, "names": dict(sorted(names.items()))}
            data = json.dumps(document, indent=1, sort_keys=False).encode("utf-8") + b"\n"
            write_entry(self.path, data)

    def forget(self, names: set[str] | frozenset[str]) -> None:
        """
        Remove the records of ``names`` (names that must leave no trace, such
        as failed on-demand names).

        :raises OSError: when the file cannot be written.
        """
        if not names:
            return
        with self._locked():
            current = self._load()
            if not names & set(current):
                return
            kept = {k: v for k, v in current.items() if k not in names}
            document = {"version": FORMAT_VERSION, "names": dict(sorted(kept.items()))}
            data = json.dumps(document, indent=1, sort_keys=False).encode("utf-8") + b"\n"
            write_entry(self.path, data)

    # -- the changes the CLI and the recorder make ------------------------------------

    def record_attempt(self, name: str, at: datetime) -> None:
        """Record that an attempt for ``name`` started at ``at``."""
        self.update({name: _attempt_change(at)})

    def record_success(self, name: str, at: datetime, not_after: datetime | None) -> None:
        """Record a certificate obtained for ``name``; clears the last error."""
        self.update({name: _success_change(at, not_after)})

    def record_failure(self, name: str, error: ErrorRecord) -> None:
        """Record a failed attempt for ``name``."""
        self.update({name: _failure_change(error)})

    def record_revocation(self, name: str, revocation: RevocationRecord) -> None:
        """Record that the certificate of ``name`` was revoked."""
        self.update({name: lambda r: attrs.evolve(r, revoked=revocation)})


def _compose(first: Change, second: Change) -> Change:
    return lambda record: second(first(record))


def _attempt_change(at: datetime) -> Change:
    """The change recording an attempt started at ``at``."""
    return lambda r: attrs.evolve(r, last_attempt=at)


def _success_change(at: datetime, not_after: datetime | None) -> Change:
    """The change recording a success at ``at``."""
    return lambda r: attrs.evolve(r, last_success=at, not_after=not_after, last_error=None)


def _failure_change(error: ErrorRecord) -> Change:
    """The change recording the failure ``error``."""
    return lambda r: attrs.evolve(r, last_error=error)


def error_record(
    error: BaseException, at: datetime, attempt: int = 1, retry_at: datetime | None = None
) -> ErrorRecord:
    """
    An :class:`ErrorRecord` for an exception: the ACME problem type and detail
    when it carries one, else the exception class name and message.
    """
    problem: ACMEProblem | None = None
    if isinstance(error, ACMEProblem):
        problem = error
    elif isinstance(error, IssuanceFailed):
        problem = error.problem
    if problem is not None:
        kind, detail = problem.type, problem.detail or str(error)
    else:
        kind, detail = type(error).__name__, str(error)
    return ErrorRecord(
        at=at, problem=kind, detail=_short(detail), attempt=attempt, retry_at=retry_at
    )


class StateRecorder:
    """
    Keeps a :class:`StateFile` up to date from an issuing service's events.

    ``StateRecorder(StateFile.for_directory(path), reactor).attach(service)`` is all it
    takes; the ``le:`` / ``lets:`` / ``acme:`` endpoints do it for their
    certificate directory.

    :param state: the file to write.
    :param clock: the reactor's time; writes happen at the next reactor turn
        after a burst of events.
    """

    def __init__(self, state: StateFile, clock: IReactorTime) -> None:
        self.state = state
        self._clock = clock
        self._pending: dict[str, Change] = {}
        self._forgotten: set[str] = set()
        self._flush_call: IDelayedCall | None = None

    def attach(self, service: EventSource) -> Callable[[], None]:
        """
        Subscribe to ``service`` (an :class:`~txacme.issuing.service.AcmeIssuingService`).

        :return: a function that unsubscribes and writes what is pending.
        """
        unsubscribe = service.subscribe(self)

        def detach() -> None:
            unsubscribe()
            self.flush()

        return detach

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), tz=timezone.utc)

    def __call__(self, event: ServiceEvent) -> None:
        """Record one service event (the subscriber callback)."""
        name = event.name
        change: Change | None = None
        if isinstance(event, RenewalScheduled):
            due, reason = event.due_at, event.reason
            change = lambda r: attrs.evolve(  # noqa: E731
                r, scheduled_at=due, scheduled_reason=reason
            )
        elif isinstance(event, Obtaining):
            change = _attempt_change(self._now())
        elif isinstance(event, Obtained):
            change = _success_change(self._now(), event.not_after)
        elif isinstance(event, Failed):
            failure = event.failure.value
            record = (
                error_record(failure, self._now())
                if failure is not None
                else ErrorRecord(at=self._now(), problem=event.problem, detail="")
            )
            record = attrs.evolve(
                record,
                problem=event.problem,
                detail=_short(event.detail),
                attempt=event.attempt,
                retry_at=event.retry_at,
            )
            change = _failure_change(record)
        elif isinstance(event, Emergency):

            def change(r: NameRecord) -> NameRecord:
                if r.last_error is None:
                    return r
                return attrs.evolve(r, last_error=attrs.evolve(r.last_error, emergency=True))

        if change is None:
            return
        previous = self._pending.get(name)
        self._pending[name] = change if previous is None else _compose(previous, change)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def forget(self, name: str) -> None:
        """Drop the record of ``name`` (and its pending changes) at the next write."""
        self._pending.pop(name, None)
        self._forgotten.add(name)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write every pending change now (errors are logged, not raised)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        pending, self._pending = self._pending, {}
        forgotten, self._forgotten = self._forgotten, set()
        if not pending and not forgotten:
            return
        try:
            self.state.forget(forgotten)
            self.state.update(pending)
        except Exception:
            log.failure("could not write the state file {path}", path=self.state.path)
