"""
:class:`StoreLoader`: keeps a :class:`~txacme.serving.index.CertificateIndex`
in step with a :class:`~txacme.stores.directory.DirectoryStore` without
re-reading the world.

* Start-up serves at once: :meth:`StoreLoader.start` only lists the directory
  (the names come from the file names) and returns; the entries are read and
  parsed in a background thread, in batches, and installed on the reactor
  thread batch by batch. A handshake for a name not parsed yet parses that one
  file on the spot.
* Afterwards only what changed is read: change hints from
  ``DirectoryChanges`` (``txacme.stores._dirwatch``) (inotify on Linux, a stat
  scan elsewhere, and a stat-only safety-net scan every ``rescan_interval``)
  name the file; it is stat'ed and, when its stamp changed, read and parsed in
  the thread.
* A file that does not parse (damaged, or a writer still writing it in several
  steps) is logged once per version and the name keeps its previous entry; the
  next change to the file is read again, and a file changed within
  ``SETTLE`` seconds is looked at again after ``RETRY`` seconds even
  without a change notification.

May import the core modules, :mod:`txacme.stores` and :mod:`txacme.serving.index`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import pem
from twisted.internet.defer import Deferred, DeferredQueue, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from txacme.errors import ConfigurationError
from txacme.logs import Logger
from txacme.serving.index import DEFAULT_ENTRY_NAME, CertificateEntry, CertificateIndex
from txacme.stores._dirwatch import DirectoryChanges, Stamp, entry_name, file_stamp
from txacme.stores.coordination import StoreChange
from txacme.stores.directory import DirectoryStore, load_entry

log = Logger()

SETTLE = 2.0
"""Seconds after its last change during which a file that does not parse is looked at again."""
RETRY = 0.25
"""Seconds between those retries."""

Objects = list[pem.AbstractPEMObject]
OnChange = Callable[[str, "Objects | None"], object]


@attrs.define
class _Read:
    """What the thread found for one name."""

    name: str
    stamp: Stamp | None
    objects: Objects | None = None
    entry: CertificateEntry | None = None
    error: ConfigurationError | None = None


class StoreLoader:
    """
    Load a directory store into an index lazily, then follow its changes.

    :param index: the index to fill.
    :param store: the directory store.
    :param reactor: runs the thread pool and the timers.
    :param on_change: ``on_change(name, objects)`` after a change found from
        a hint or a scan (not during the initial load) was applied: ``objects``
        is ``[]`` for an empty entry ("issue this name"), ``None`` when the file
        is gone.
    :param watch: the ``DirectoryChanges`` mode: ``"auto"``,
        ``"inotify"`` or ``"scan"``; ``None`` to not follow changes.
    :param rescan_interval: seconds between safety-net stat scans.
    :param batch: entries read per trip to the thread.
    :param feed_batches: keep the initial load's entries for the first
        :meth:`batches` (the issuing service's first check), so the files are
        read once at start-up.
    """

    def __init__(
        self,
        index: CertificateIndex,
        store: DirectoryStore,
        reactor: Any,
        *,
        on_change: OnChange | None = None,
        watch: str | None = "auto",
        rescan_interval: float = 60.0,
        scan_interval: float = 1.0,
        debounce: float = 0.05,
        batch: int = 256,
        feed_batches: bool = False,
    ) -> None:
        self.index = index
        self.store = store
        self.path = store.path.path
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.on_change = on_change
        self.changes = (
            None
            if watch is None
            else DirectoryChanges(
                self.path,
                reactor,
                mode=watch,
                debounce=debounce,
                scan_interval=scan_interval,
                rescan_interval=rescan_interval,
            )
        )
        self._batch = batch
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="txacme-store-loader")
        self._stamps: dict[str, Stamp] = {}
        self._empty: set[str] = set()
        self._rejected: dict[str, Stamp | None] = {}
        self._dirty: dict[str, int] = {}
        self._worker: Deferred[None] | None = None
        self._initial: Deferred[None] | None = None
        self._initial_waiters: list[Deferred[None]] = []
        self._feed: DeferredQueue[dict[str, Objects] | None] | None = (
            DeferredQueue() if feed_batches else None
        )
        self._feed_claimed = False
        self._shutdown_trigger: object = None
        self._retries: dict[str, IDelayedCall] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._running = False

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """
        List the directory (no file is read), make every name known to the
        index, start following changes and the background load; returns at once.
        """
        self._running = True
        self._pool.start()
        # Like the reactor's own pool: its thread must not keep the process alive.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._pool.stop
        )
        names = sorted(n for n in map(entry_name, os.listdir(self.path)) if n is not None)
        if self.changes is not None:
            self._unsubscribe = self.changes.subscribe(self._hint)
            self.changes.start()
        default = DEFAULT_ENTRY_NAME in names
        names = [n for n in names if n != DEFAULT_ENTRY_NAME]
        self.index.add_unloaded(names)
        self.index.set_loader(self._load_now)
        if default:
            self._apply(self._read(DEFAULT_ENTRY_NAME), initial=True)
        self._initial = Deferred.fromCoroutine(self._load_initial(names))
        self._initial.addBoth(self._initial_done)
        log.debug(
            "serving {count} names from {path}; parsing them in the background",
            count=len(names),
            path=self.path,
        )

    def stop(self) -> Deferred[None]:
        """Stop following changes and loading; fires once the thread is idle."""
        if not self._running:
            return succeed(None)
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self.changes is not None:
            self.changes.stop()
        self.index.set_loader(None)
        retries, self._retries = self._retries, {}
        for call in retries.values():
            if call.active():
                call.cancel()
        for d in (self._initial, self._worker):
            if d is not None and not d.called:
                d.cancel()
        if self._feed is not None:
            self._feed.put(None)
        pool = self._pool
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if not pool.started:
            return succeed(None)
        # Joining the pool blocks; do it in a throw-away thread.
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), pool.stop)

    def when_loaded(self) -> Deferred[None]:
        """Fires once every entry known at start-up has been parsed."""
        d: Deferred[None] = Deferred()
        if self._initial is None or self._initial.called:
            d.callback(None)
        else:
            self._initial_waiters.append(d)
        return d

    def _initial_done(self, result: object) -> None:
        waiters, self._initial_waiters = self._initial_waiters, []
        for d in waiters:
            d.callback(None)
        if self._feed is not None:
            self._feed.put(None)
            self._feed = None
        return None

    # -- reading (in the thread, or on the spot) ------------------------------

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name + ".pem")

    def _read(self, name: str) -> _Read:
        """Stat, read and parse one entry (blocking; in the thread)."""
        path = self._file(name)
        stamp = file_stamp(path)
        if stamp is None:
            return _Read(name, None)
        try:
            objects = load_entry(path)
            entry = self.index.parse(name, objects, validated=True) if objects else None
        except FileNotFoundError:
            return _Read(name, None)
        except ConfigurationError as e:
            return _Read(name, stamp, error=e)
        except Exception as e:  # an unexpected parse failure must not stop the loader
            return _Read(name, stamp, error=ConfigurationError(f"{path}: {e}"))
        return _Read(name, stamp, objects, entry)

    def _read_many(self, names: Sequence[str]) -> list[_Read]:
        return [self._read(name) for name in names]

    def _in_thread(self, names: Sequence[str]) -> Deferred[list[_Read]]:
        return deferToThreadPool(self._reactor, self._pool, self._read_many, names)

    def _load_now(self, name: str) -> CertificateEntry | None:
        """The index asks for a name not parsed yet (a handshake): read it here."""
        self._apply(self._read(name), initial=True)
        return self.index.get(name)

    # -- applying (on the reactor) ------------------------------------------

    def _apply(self, read: _Read, *, initial: bool) -> None:
        name = read.name
        if read.error is not None:
            self._failed(read, initial=initial)
            return
        self._rejected.pop(name, None)
        previous_stamp = self._stamps.get(name)
        was_empty = name in self._empty
        if read.stamp is None:
            self._stamps.pop(name, None)
            self._empty.discard(name)
        else:
            self._stamps[name] = read.stamp
        if name == DEFAULT_ENTRY_NAME:
            self.index.put_default(read.entry)
            return
        self.index.put(name, read.entry)
        if read.stamp is not None and read.entry is None:
            self._empty.add(name)
        else:
            self._empty.discard(name)
        if initial or self.on_change is None:
            return
        if read.stamp is None and previous_stamp is None:
            return
        if read.objects == [] and was_empty and previous_stamp == read.stamp:
            return
        try:
            self.on_change(name, read.objects if read.stamp is not None else None)
        except Exception:
            log.failure("handling the change of {server_name}", server_name=name)

    def _retry(self, name: str) -> None:
        del self._retries[name]
        self.invalidate(name)

    def _failed(self, read: _Read, *, initial: bool) -> None:
        """
        A file that does not parse: logged (once per version), the name keeps
        its previous entry; a file changed within ``SETTLE`` seconds (a
        writer may still be writing) is looked at again shortly.
        """
        name = read.name
        self.index.put(name, self.index.get(name))  # no longer "unloaded"
        stamp = read.stamp
        if stamp is not None:
            self._stamps[name] = stamp
        if self._rejected.get(name, ()) != stamp:
            self._rejected[name] = stamp
            log.error(
                "not serving the certificate of {server_name}: {reason}{kept}",
                server_name=name,
                reason=str(read.error),
                kept="; still serving the previous one" if self.index.get(name) else "",
            )
        young = stamp is not None and time.time() - stamp[1] / 1e9 < SETTLE
        if young and self._running and not initial and name not in self._retries:
            self._retries[name] = self._clock.callLater(RETRY, self._retry, name)

    # -- the initial load -------------------------------------------------

    def _remove_stale(self) -> None:
        try:
            self.store.remove_stale_temporary_files()
        except OSError as e:
            log.warn("cannot list {path}: {reason}", path=self.path, reason=str(e))

    async def _load_initial(self, names: list[str]) -> None:
        started = time.monotonic()
        await deferToThreadPool(self._reactor, self._pool, self._remove_stale)
        for i in range(0, len(names), self._batch):
            chunk = [n for n in names[i : i + self._batch] if self.index.is_unloaded(n)]
            # Names a handshake already loaded are skipped (their stamp is known).
            reads = await self._in_thread(chunk) if chunk else []
            feed: dict[str, Objects] = {}
            for read in reads:
                if read.name in self._stamps and read.error is None:
                    continue  # loaded meanwhile (handshake or hint): keep that
                self._apply(read, initial=True)
                if read.objects is not None:
                    feed[read.name] = read.objects
            for name in names[i : i + self._batch]:
                if name not in feed and self.index.get(name) is not None:
                    feed[name] = []  # loaded on the spot: re-read for the service below
            if self._feed is not None:
                self._feed.put(feed)
        log.debug(
            "parsed {count} certificates in {seconds:.2f} s",
            count=len(names),
            seconds=time.monotonic() - started,
        )

    # -- following changes ------------------------------------------------

    def _hint(self, change: StoreChange) -> None:
        if change.kind == "certificate" and change.name is not None:
            self.invalidate(change.name)
        elif change.kind == "default":
            self.invalidate(DEFAULT_ENTRY_NAME)
        elif change.kind == "resync":
            self.rescan()

    def invalidate(self, name: str) -> None:
        """``name``'s file may have changed: re-read it in the thread if its stamp did."""
        if not self._running:
            return
        self._dirty[name] = 1
        if self._worker is None:
            self._worker = Deferred.fromCoroutine(self._work())

            def done(result: object) -> None:
                self._worker = None
                if self._dirty and self._running:
                    self.invalidate(next(iter(self._dirty)))

            self._worker.addBoth(done)

    def rescan(self) -> None:
        """Compare every file's stamp (stat only) and re-read the changed ones."""
        if not self._running:
            return
        d = deferToThreadPool(self._reactor, self._pool, self._stamps_now)

        def compare(now: dict[str, Stamp]) -> None:
            known = set(self._stamps) | set(self.index.unloaded)
            for name, stamp in now.items():
                if self._stamps.get(name) != stamp:
                    self.invalidate(name)
            for name in known - set(now):
                self.invalidate(name)

        d.addCallback(compare).addErrback(
            lambda f: log.failure("rescanning {path}", f, path=self.path)
        )

    def _stamps_now(self) -> dict[str, Stamp]:
        from txacme.stores._dirwatch import scan_entry_stamps

        return scan_entry_stamps(self.path)

    async def _work(self) -> None:
        while self._dirty and self._running:
            names = list(self._dirty)[: self._batch]
            for name in names:
                del self._dirty[name]
            changed = [
                n
                for n in names
                if file_stamp(self._file(n)) != self._stamps.get(n) or self.index.is_unloaded(n)
            ]
            if not changed:
                continue
            for read in await self._in_thread(changed):
                self._apply(read, initial=False)

    # -- the issuing service's entry source ----------------------------------

    async def batches(self) -> AsyncIterator[dict[str, Objects]]:
        """
        Every entry, batch by batch (the issuing service's check): during the
        initial load, the entries it reads; afterwards a fresh read in the thread.
        """
        feed = self._feed
        if feed is not None and not self._feed_claimed:
            self._feed_claimed = True
            while True:
                got = await feed.get()
                if got is None:
                    return
                missing = [n for n, o in got.items() if o == [] and n not in self._empty]
                if missing:
                    for read in await self._in_thread(missing):
                        if read.objects is not None:
                            got[read.name] = read.objects
                        else:
                            del got[read.name]
                yield got
            return
        await deferToThreadPool(self._reactor, self._pool, self._remove_stale)
        names = sorted((set(self._stamps) | self.index.unloaded) - {DEFAULT_ENTRY_NAME})
        for i in range(0, len(names), self._batch):
            reads = await self._in_thread(names[i : i + self._batch])
            yield {r.name: r.objects for r in reads if r.objects is not None}


__all__ = ["StoreLoader"]
