"""
:class:`StoreWatcher`: reloads a :class:`~txacme.serving.index.CertificateIndex`
from its store on a timer, so certificates another process wrote are served.

May import the core modules; it knows the index only by type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from txacme.errors import ConfigurationError
from txacme.interfaces import ICertificateStore
from txacme.logs import Logger

if TYPE_CHECKING:
    from txacme.serving.index import CertificateIndex, StoreEntries

log = Logger()


class StoreWatcher(Service):
    """
    Reloads a :class:`~txacme.serving.index.CertificateIndex` from a store on a
    timer.

    A reload still running when the next one is due is not doubled; a failed
    reload is logged and the index keeps what it had. ``on_loaded(entries)`` is
    called after each reload with the entries read (empty ones included), for
    callers that act on what appeared; stopping cancels a reload in progress.

    :param clock: the reactor's time.
    """

    def __init__(
        self,
        index: CertificateIndex,
        store: ICertificateStore,
        interval: float,
        clock: IReactorTime,
        on_loaded: Callable[[StoreEntries], object] | None = None,
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"store polling interval {interval!r} must be positive")
        self.index = index
        self.store = store
        self.interval = interval
        self._clock = clock
        self._on_loaded = on_loaded
        self._loop: LoopingCall | None = None
        self._running_load: Deferred[None] | None = None

    def startService(self) -> None:  # noqa: N802
        """Start polling."""
        Service.startService(self)  # type: ignore[no-untyped-call]
        loop = LoopingCall(self.poll)
        loop.clock = self._clock
        self._loop = loop
        loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[None] | None:  # noqa: N802
        """Stop polling."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._running_load is not None:
            self._running_load.cancel()
        return None

    def _loaded(self, entries: StoreEntries) -> None:
        if self._on_loaded is not None:
            self._on_loaded(entries)

    def poll(self) -> None:
        """Reload the index now, unless a reload is already running."""
        if self._running_load is not None:
            return
        d = self.index.load_from(self.store).addCallback(self._loaded)
        self._running_load = d

        def done(result: object) -> None:
            self._running_load = None
            if isinstance(result, Failure) and not result.check(  # type: ignore[no-untyped-call]
                CancelledError
            ):
                log.failure("reloading certificates from {store!r}", result, store=self.store)

        d.addBoth(done)


__all__ = ["StoreWatcher"]
