"""
A start that fails, fails: an endpoint made from an ``le:``/``lets:``/``acme:``
string that cannot start ends the process with one line and exit status 1.

Under ``twistd`` (and ``twist``, or a ``.tac`` using :func:`twisted.application.strports.service`)
the endpoint's ``listen()`` is called by Twisted's
:class:`~twisted.application.internet.StreamServerEndpointService`, which only
logs a failed ``Deferred`` ("Unhandled Error" and a traceback) and keeps the
process running, listening on nothing. Nobody else can act on that failure, so
:class:`StartGuardedEndpoint` does, only when that service is the caller:

- the reason is logged as one CRITICAL line naming the endpoint (never the
  full description, which may hold secrets) and the cause;
- the reactor is stopped (``twistd`` then removes its PID file and flushes its
  log as on any stop);
- the process exits with :data:`EXIT_START_FAILED`. ``twistd`` has no exit
  status of its own (only a signal it re-raises), so an :mod:`atexit` hook,
  registered at that moment and run after ``twistd`` has cleaned up, flushes
  the standard streams and calls :func:`os._exit`.

A program that calls ``listen()`` itself gets the failed ``Deferred`` as
before: what to do with it is its choice.

The ACME account rejected by the CA at its first use in the process (external
account binding required or refused, a contact refused, terms to accept...) is
fatal in the same way: no retry can fix it. A CA that cannot be reached is not:
the stored certificates are served and the account is tried again with the
next attempt. See ``docs/endpoints.rst`` ("When a start fails").

Configuration layer.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorCore
from twisted.python.failure import Failure

from txacme.errors import ACMEProblem, ConfigurationError, TxACMEError
from txacme.issuing.events import Failed, ServiceEvent
from txacme.logs import Logger
from txacme.serving.endpoint import AutoTLSEndpoint

log = Logger()

EXIT_START_FAILED = 1
"""The exit status of a process whose endpoint could not start."""

#: ACME problems that, answered to the account look-up or creation, no retry can fix.
ACCOUNT_REJECTIONS = frozenset(
    {
        "externalAccountRequired",
        "unauthorized",
        "malformed",
        "invalidContact",
        "unsupportedContact",
        "badPublicKey",
        "badSignatureAlgorithm",
        "userActionRequired",
    }
)


class ListenerFailed(TxACMEError):
    """A listener other than the sub-endpoint could not listen: ``what`` names it."""

    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(what, error)
        self.what = what
        self.error = error

    def __str__(self) -> str:
        return f"{self.what}: {describe_error(self.error)}"


def describe_start_failure(failure: Failure) -> str:
    """One line saying why a start failed, without a traceback."""
    return describe_error(failure.value) if failure.value is not None else "unknown error"


def describe_error(error: BaseException) -> str:
    """One line describing ``error`` (see :func:`describe_start_failure`)."""
    if isinstance(error, CannotListenError):
        host = error.interface or "*"
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return f"cannot listen on {host}:{error.port}: {reason}"
    if isinstance(error, ACMEProblem):
        return f"the CA refused: {error.code}: {error.detail}"
    if isinstance(error, TxACMEError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror}{where}"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_account_rejection(error: BaseException) -> bool:
    """
    Whether ``error``, raised by the account set-up, means the CA refuses the
    account: an ACME problem of :data:`ACCOUNT_REJECTIONS`, or the client's own
    :class:`~txacme.errors.ConfigurationError` (the CA's directory says external
    account binding is required and none is configured).
    """
    if isinstance(error, ConfigurationError):
        return True
    return isinstance(error, ACMEProblem) and error.code in ACCOUNT_REJECTIONS


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110  # a closed stream: nothing more to say
            pass
    os._exit(status)


class ProcessExit:
    """
    Ends the process: stops the reactor, then exits with a status once the
    reactor's runner (``twistd``) has cleaned up.

    :param reactor: the reactor to stop.
    :param at_exit: registers the final exit (default :func:`atexit.register`;
        tests give their own).
    """

    def __init__(
        self,
        reactor: IReactorCore,
        at_exit: Callable[[Callable[..., object], int], object] = atexit.register,
    ) -> None:
        self.reactor = reactor
        self._at_exit = at_exit
        self.status: int | None = None

    def fail(self, message: str, status: int = EXIT_START_FAILED) -> None:
        """Log ``message`` (one CRITICAL line), stop the reactor, exit with ``status``."""
        if self.status is not None:
            return  # the first reason is the one reported
        self.status = status
        message = " ".join(message.split())  # one line, whatever the cause's text
        log.critical("{message}; exiting with status {status}", message=message, status=status)
        self._at_exit(_exit_now, status)
        if self.reactor.running:
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass
        else:
            self.reactor.callWhenRunning(self._stop)

    def _stop(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


def called_by_endpoint_service(frames: int = 3) -> bool:
    """
    Whether a :class:`~twisted.application.internet.StreamServerEndpointService`
    is among the ``frames`` callers of the function calling this one.
    """
    frame: FrameType | None = sys._getframe(2)  # the caller of our caller
    for _ in range(frames):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), StreamServerEndpointService):
            return True
        frame = frame.f_back
    return False


class _AccountWatch:
    """
    Remembers the errors the account set-up raised, so that a ``failed`` event
    caused by one can be told from an order's failure.
    """

    def __init__(self, on_rejected: Callable[[str], object]) -> None:
        self._on_rejected = on_rejected
        self._errors: list[BaseException] = []
        self.accepted = False

    def wrap(self, creator: Callable[..., Deferred[Any]]) -> Callable[..., Deferred[Any]]:
        """A client creator whose clients report how their account set-up ended."""

        @functools.wraps(creator)  # keeps its signature: on_exchange= is passed only if taken
        def create(*args: Any, **kwargs: Any) -> Deferred[Any]:
            return maybeDeferred(creator, *args, **kwargs).addCallback(self._watch_client)

        return create

    def _watch_client(self, client: Any) -> Any:
        start = client.start

        def watched_start(*args: Any, **kwargs: Any) -> Deferred[Any]:
            def accepted(result: object) -> object:
                self.accepted = True
                return result

            def refused(failure: Failure) -> Failure:
                if failure.value is not None:
                    self._errors.append(failure.value)
                del self._errors[:-8]
                return failure

            return maybeDeferred(start, *args, **kwargs).addCallbacks(accepted, refused)

        # The instance's own start: the issuing service calls client.start(email=...).
        setattr(client, "start", watched_start)  # noqa: B010
        return client

    def on_event(self, event: ServiceEvent) -> None:
        """The issuing service's subscriber."""
        if self.accepted or not isinstance(event, Failed):
            return
        error = event.failure.value
        if error is None or not any(error is e for e in self._errors):
            return
        if is_account_rejection(error):
            self._on_rejected(describe_start_failure(event.failure))


class StartGuardedEndpoint(AutoTLSEndpoint):
    """
    The :class:`~txacme.serving.endpoint.AutoTLSEndpoint` of an endpoint string:
    under Twisted's endpoint service a failed start ends the process
    (:class:`ProcessExit`); called by anyone else it behaves as its base class.

    :ivar label: how the endpoint is named in the error line (``acme:/srv/certs``).
    """

    label = "txacme endpoint"
    #: Makes the :class:`ProcessExit` used under the endpoint service (tests give their own).
    exit_factory: Callable[[IReactorCore], ProcessExit] = ProcessExit
    _guarded = False

    async def _listen_http01(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super()._listen_http01(*args, **kwargs)
        except CannotListenError as e:
            raise ListenerFailed("http01=", e) from e

    async def _serve_metrics(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super()._serve_metrics(*args, **kwargs)
        except CannotListenError as e:
            raise ListenerFailed(f"metrics={self.metrics}", e) from e

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        """Listen; under ``twistd`` a failure is fatal to the process."""
        if not called_by_endpoint_service():
            return super().listen(protocolFactory)
        exit_ = self.exit_factory(self.reactor)  # type: ignore[arg-type]  # twistd's reactor
        return self.listen_or_exit(protocolFactory, exit_)

    def listen_or_exit(
        self, protocol_factory: IProtocolFactory, exit_: ProcessExit
    ) -> Deferred[IListeningPort]:
        """
        Listen; on failure (or the CA refusing the account at its first use)
        call ``exit_.fail`` with one line. The returned ``Deferred`` then fires
        with ``None``: the failure is handled.
        """
        if not self._guarded:  # once, however often listen() is called
            self._guarded = True
            watch = _AccountWatch(lambda reason: exit_.fail(f"{self.label}: {reason}"))
            self.client_creator = watch.wrap(self.client_creator)
            self.subscribers.append(watch.on_event)

        def failed(failure: Failure) -> Failure | None:
            if isinstance(failure.value, CancelledError):
                return failure  # stopped while starting: not an error
            exit_.fail(f"{self.label}: cannot start: {describe_start_failure(failure)}")
            return None

        d = super().listen(protocol_factory)
        d.addErrback(failed)
        return d


__all__ = [
    "ACCOUNT_REJECTIONS",
    "EXIT_START_FAILED",
    "ListenerFailed",
    "ProcessExit",
    "StartGuardedEndpoint",
    "called_by_endpoint_service",
    "describe_error",
    "describe_start_failure",
    "is_account_rejection",
]
