"""
Change hints for a certificate directory: :class:`DirectoryChanges`.

It owns watching one store directory (``<name>.pem`` entries, ``DEFAULT.pem``,
and, when they exist, the hidden ``.txacme/locks/`` and ``.txacme/challenges/``
subdirectories) and turning what changed into
:class:`~txacme.stores.coordination.StoreChange` hints. It never reads a file:
a hint only names what changed, and the subscriber reads the store.

Hints (delivered in the reactor thread, coalesced over ``debounce`` seconds):

* ``StoreChange("certificate", name, deleted=...)`` for ``<name>.pem`` (the
  name in canonical form; other file names are ignored);
* ``StoreChange("default", deleted=...)`` for ``DEFAULT.pem``;
* ``StoreChange("lock", name)`` for ``.txacme/locks/<name>.lock``;
* ``StoreChange("challenge", identifier, challenge_type=..., token=...,
  deleted=...)`` for ``.txacme/challenges/<type>/<identifier>/<token>.json``
  (any other file there gives a ``"challenge"`` hint with no name);
* ``StoreChange("resync")`` when hints may have been lost (the kernel queue
  overflowed, the watch was lost and re-established): reload everything.

Hidden files (the temporary files of atomic writes) give no hint; the rename
into place does. ``deleted`` is whether the file was gone when the hint was
sent.

Backends (``mode``):

``"inotify"`` (Linux)
    One inotify instance with an explicit mask (close-write, moved to/from,
    create, delete, attribute change; and modify for the entries, which may be
    written in place). The callback only records the name and
    arms one flush ``debounce`` seconds later. A stat scan every
    ``rescan_interval`` seconds is the safety net (it also sees changes behind
    symbolic links, which inotify does not report).
``"scan"`` (elsewhere, NFS, FUSE)
    Every ``scan_interval`` seconds, one ``stat`` of the directory; the files
    are stat'ed (never read; in the reactor's thread pool) when the directory
    changed, when its mtime is within 2 s of now (coarse time stamps), or every
    ``rescan_interval`` seconds. A rename into place is seen within ``scan_interval``; an in-place
    edit within ``rescan_interval``.
``"auto"``
    inotify where the platform has it, else the scan; also the scan when
    inotify cannot be set up (watch limit), with a warning.

May import the core modules and :mod:`txacme.stores.coordination`.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform

from txacme.errors import ConfigurationError, InvalidServerName
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.stores.coordination import StoreChange

log = Logger()

Stamp = tuple[int, int, int, int, int]
"""What tells two versions of a file apart without reading it:
``(size, mtime_ns, ctime_ns, inode, device)``."""

MODES = ("auto", "inotify", "scan")
PEM_SUFFIX = ".pem"
DEFAULT_STEM = "DEFAULT"
STATE_DIR = ".txacme"
LOCKS = "locks"
CHALLENGES = "challenges"
COARSE_MTIME = 2.0
"""A directory modified this recently (seconds) is scanned again at the next tick."""


def stamp_of(info: os.stat_result) -> Stamp:
    """The :data:`Stamp` of a ``stat`` result."""
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)


def file_stamp(path: str) -> Stamp | None:
    """
    The :data:`Stamp` of ``path``, ``None`` if absent or neither a regular file
    nor a symbolic link. A link is never followed: its own stamp is given, and
    reading it is refused (:func:`txacme._files.read_own_file`).
    """
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        return None
    return stamp_of(info)


def entry_name(filename: str) -> str | None:
    """
    The canonical server name an entry file name stands for, ``DEFAULT`` for
    ``DEFAULT.pem``, ``None`` if the file is not an entry (hidden, temporary,
    not ``.pem``, not canonical).
    """
    if filename.startswith(".") or not filename.endswith(PEM_SUFFIX):
        return None
    stem = filename[: -len(PEM_SUFFIX)]
    if stem == DEFAULT_STEM:
        return stem
    try:
        canonical = normalize_server_name(stem)
    except InvalidServerName:
        return None
    return stem if canonical == stem else None


def scan_entry_stamps(path: str) -> dict[str, Stamp]:
    """
    Stat (never read) every entry file of the store directory ``path``:
    ``{name: stamp}``, ``DEFAULT`` included. 10,000 files take about 20 ms.
    """
    result: dict[str, Stamp] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            name = entry_name(entry.name)
            if name is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                result[name] = stamp_of(info)
    return result


def _scan_tree(root: str) -> dict[str, Stamp]:
    """Stamps of the non-hidden files below ``root``, by path relative to it."""
    result: dict[str, Stamp] = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for filename in files:
            if filename.startswith("."):
                continue
            full = os.path.join(top, filename)
            stamp = file_stamp(full)
            if stamp is not None:
                result[os.path.relpath(full, root)] = stamp
    return result


def _challenge_change(relative: str, deleted: bool) -> StoreChange:
    parts = relative.split(os.sep)
    if len(parts) == 3 and parts[2].endswith(".json"):
        return StoreChange(
            "challenge",
            parts[1],
            deleted=deleted,
            challenge_type=parts[0],
            token=parts[2][: -len(".json")],
        )
    return StoreChange("challenge", deleted=deleted)


def _lock_change(filename: str) -> StoreChange | None:
    if filename.startswith(".") or not filename.endswith(".lock"):
        return None
    return StoreChange("lock", filename[: -len(".lock")])


def _diff(old: dict[str, Stamp], new: dict[str, Stamp]) -> Iterator[tuple[str, bool]]:
    """``(key, deleted)`` for each key whose stamp differs between ``old`` and ``new``."""
    for key, stamp in new.items():
        if old.get(key) != stamp:
            yield key, False
    for key in old.keys() - new.keys():
        yield key, True


class DirectoryChanges:
    """
    Watch a store directory and send :class:`StoreChange` hints to subscribers.

    :param path: the store directory.
    :param clock: schedules the debounce and the scans.
    :param mode: ``"auto"``, ``"inotify"`` or ``"scan"`` (see the module).
    :param debounce: seconds over which hints are gathered before delivery.
    :param scan_interval: seconds between the cheap directory checks of the
        scan backend.
    :param rescan_interval: seconds between full stat scans (the safety net of
        the inotify backend, the in-place-edit detector of the scan backend).
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        mode: str = "auto",
        debounce: float = 0.05,
        scan_interval: float = 1.0,
        rescan_interval: float = 60.0,
    ) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"watch mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "inotify" and not platform.supportsINotify():
            raise ConfigurationError("inotify is not available on this platform: use watch=scan")
        self.path = os.fspath(path)
        self.clock = clock
        self.mode = mode
        self.debounce = debounce
        self.scan_interval = scan_interval
        self.rescan_interval = rescan_interval
        self.backend: str | None = None
        """``"inotify"`` or ``"scan"`` once started, ``None`` when stopped."""
        self._subscribers: list[Callable[[StoreChange], object]] = []
        self._pending: dict[tuple[str, str | None], StoreChange | None] = {}
        self._flush_call: IDelayedCall | None = None
        self._tick_call: IDelayedCall | None = None
        self._notifier: Any = None
        self._entries: dict[str, Stamp] = {}
        self._locks: dict[str, Stamp] = {}
        self._challenges: dict[str, Stamp] = {}
        self._dir_stamp: Stamp | None = None
        self._last_full = 0.0
        self._scanning = False

    # -- public API -------------------------------------------------------

    def subscribe(self, callback: Callable[[StoreChange], object]) -> Callable[[], None]:
        """Call ``callback(change)`` for every hint from now on; return the unsubscriber."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    @property
    def running(self) -> bool:
        return self.backend is not None

    def start(self) -> None:
        """Start watching (synchronous: the baseline stat scan happens now)."""
        if self.backend is not None:
            return
        if self.mode != "scan" and platform.supportsINotify():
            try:
                self._start_inotify()
            except Exception as e:
                if self.mode == "inotify":
                    raise
                log.warn(
                    "cannot watch {path} with inotify ({reason}): scanning it every "
                    "{interval} s instead",
                    path=self.path,
                    reason=str(e) or type(e).__name__,
                    interval=self.scan_interval,
                )
                self._stop_inotify()
        if self.backend is None:
            self.backend = "scan"
        self._baseline()
        self._schedule_tick()

    def stop(self) -> None:
        """Stop watching; pending hints are dropped."""
        self.backend = None
        self._stop_inotify()
        for call in (self._flush_call, self._tick_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._tick_call = None
        self._pending.clear()

    # -- delivery ---------------------------------------------------------

    def _hint(self, key: tuple[str, str | None], change: StoreChange | None = None) -> None:
        """Record that ``key`` changed; deliver after ``debounce`` seconds."""
        self._pending[key] = change
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.callLater(self.debounce, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        pending, self._pending = self._pending, {}
        changes: list[StoreChange] = []
        if ("resync", None) in pending:
            changes.append(StoreChange("resync"))
        for (area, key), change in pending.items():
            if area == "entry" and key is not None:
                change = self._entry_change(key)
            if change is not None and change.kind != "resync":
                changes.append(change)
        for change in changes:
            self._deliver(change)

    def _entry_change(self, name: str) -> StoreChange:
        """The hint for entry ``name``, its stamp refreshed (one stat, no read)."""
        stamp = file_stamp(os.path.join(self.path, name + PEM_SUFFIX))
        if stamp is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = stamp
        if name == DEFAULT_STEM:
            return StoreChange("default", deleted=stamp is None)
        return StoreChange("certificate", name, deleted=stamp is None)

    def _deliver(self, change: StoreChange) -> None:
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.failure(
                    "a subscriber to changes in {path} failed on {kind} {name}",
                    path=self.path,
                    kind=change.kind,
                    name=change.name,
                )

    # -- stat scans -------------------------------------------------------

    def _state_dir(self, *parts: str) -> str:
        return os.path.join(self.path, STATE_DIR, *parts)

    def _scan_all(self) -> tuple[dict[str, Stamp], dict[str, Stamp], dict[str, Stamp]]:
        try:
            entries = scan_entry_stamps(self.path)
        except OSError:
            entries = {}
        locks, challenges = self._scan_state()
        return entries, locks, challenges

    def _baseline(self) -> None:
        self._entries, self._locks, self._challenges = self._scan_all()
        self._dir_stamp = self._stat_dir()
        self._last_full = self.clock.seconds()

    def _stat_dir(self) -> Stamp | None:
        try:
            return stamp_of(os.stat(self.path))
        except OSError:
            return None

    def _schedule_tick(self) -> None:
        interval = self.scan_interval if self.backend == "scan" else self.rescan_interval
        self._tick_call = self.clock.callLater(interval, self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        if self.backend is None:
            return
        try:
            if self.backend == "inotify":
                self.rescan()
            else:
                self._scan_tick()
        except Exception:
            log.failure("scanning {path} for changes failed", path=self.path)
        if self.backend is not None:
            self._schedule_tick()

    def _scan_tick(self) -> None:
        """The scan backend's tick: stat the directory, scan the files if it may have changed."""
        now = self.clock.seconds()
        dir_stamp = self._stat_dir()
        recent = dir_stamp is not None and time.time() - dir_stamp[1] / 1e9 < COARSE_MTIME
        if dir_stamp != self._dir_stamp or recent or now - self._last_full >= self.rescan_interval:
            self._dir_stamp = dir_stamp
            self.rescan()
        else:
            self._scan_state_only()

    def _scan_state_only(self) -> None:
        """Compare the (few) lock and challenge files only."""
        locks, challenges = self._scan_state()
        self._compare(None, locks, challenges)

    def _scan_state(self) -> tuple[dict[str, Stamp], dict[str, Stamp]]:
        locks: dict[str, Stamp] = {}
        locks_dir = self._state_dir(LOCKS)
        if os.path.isdir(locks_dir):
            for filename in os.listdir(locks_dir):
                stamp = file_stamp(os.path.join(locks_dir, filename))
                if stamp is not None and _lock_change(filename) is not None:
                    locks[filename] = stamp
        challenges_dir = self._state_dir(CHALLENGES)
        challenges = _scan_tree(challenges_dir) if os.path.isdir(challenges_dir) else {}
        return locks, challenges

    def rescan(self) -> None:
        """
        Stat every file (in the reactor's thread pool when it has one) and send
        hints for those that changed since last seen.
        """
        if self._scanning:
            return
        if not IReactorThreads.providedBy(self.clock):
            self._scanned(self._scan_all())
            return
        self._scanning = True
        threads = cast(IReactorThreads, self.clock)
        d = deferToThreadPool(self.clock, threads.getThreadPool(), self._scan_all)
        d.addCallback(self._scanned)
        d.addErrback(lambda f: log.failure("scanning {path} for changes", f, path=self.path))
        d.addBoth(self._scan_done)

    def _scan_done(self, _: object) -> None:
        self._scanning = False

    def _scanned(self, found: tuple[dict[str, Stamp], dict[str, Stamp], dict[str, Stamp]]) -> None:
        if self.backend is None:
            return
        self._last_full = self.clock.seconds()
        self._compare(*found)

    def _compare(
        self,
        entries: dict[str, Stamp] | None,
        locks: dict[str, Stamp],
        challenges: dict[str, Stamp],
    ) -> None:
        if entries is not None:
            for name, _ in _diff(self._entries, entries):
                self._hint(("entry", name))
            self._entries = entries
        for filename, deleted in _diff(self._locks, locks):
            if not deleted:
                self._hint(("lock", filename), _lock_change(filename))
        self._locks = locks
        for relative, deleted in _diff(self._challenges, challenges):
            self._hint(("challenge", relative), _challenge_change(relative, deleted))
        self._challenges = challenges

    # -- inotify ----------------------------------------------------------

    def _start_inotify(self) -> None:
        from twisted.internet import inotify  # Linux only: imports libc

        notifier = _Notifier(self.clock, on_overflow=self._overflow, on_lost=self._lost)
        self._notifier = notifier
        notifier.startReading()
        mask = (
            inotify.IN_CLOSE_WRITE
            | inotify.IN_MOVED_TO
            | inotify.IN_MOVED_FROM
            | inotify.IN_DELETE
            | inotify.IN_CREATE
            | inotify.IN_ATTRIB
            | inotify.IN_MOVE_SELF
            | inotify.IN_ONLYDIR
        )
        self._mask = mask
        # Entries are also written in place (editors, cp, truncate): IN_MODIFY too.
        top = mask | inotify.IN_MODIFY
        notifier.watch(FilePath(self.path), mask=top, callbacks=[self._on_top])
        self.backend = "inotify"
        self._watch_state_dir()

    def _watch_state_dir(self) -> None:
        """Watch ``.txacme`` and its ``locks`` and ``challenges`` subdirectories, if present."""
        notifier = self._notifier
        if notifier is None:
            return
        state = self._state_dir()
        if os.path.isdir(state):
            notifier.watch(FilePath(state), mask=self._mask, callbacks=[self._on_state])
        locks = self._state_dir(LOCKS)
        if os.path.isdir(locks):
            notifier.watch(FilePath(locks), mask=self._mask, callbacks=[self._on_lock])
        challenges = self._state_dir(CHALLENGES)
        if os.path.isdir(challenges):
            notifier.watch(
                FilePath(challenges),
                mask=self._mask,
                autoAdd=True,
                callbacks=[self._on_challenge],
                recursive=True,
            )

    def _stop_inotify(self) -> None:
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.closing = True
            notifier.loseConnection()

    def _on_top(self, _watch: object, filepath: FilePath[bytes], mask: int) -> None:
        from twisted.internet import inotify

        filename = os.fsdecode(filepath.basename())
        if mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
            self._lost()
            return
        if filename == STATE_DIR and mask & inotify.IN_ISDIR:
            self.clock.callLater(0, self._state_appeared)
            return
        name = entry_name(filename)
        if name is not None:
            self._hint(("entry", name))

    def _state_appeared(self) -> None:
        try:
            self._watch_state_dir()
        except Exception:
            self._lost()
            return
        # Files may have been written before the watch was added.
        self.rescan()

    def _on_state(self, _watch: object, filepath: FilePath[bytes], mask: int) -> None:
        from twisted.internet import inotify

        if mask & inotify.IN_ISDIR and os.fsdecode(filepath.basename()) in (LOCKS, CHALLENGES):
            self.clock.callLater(0, self._state_appeared)

    def _on_lock(self, _watch: object, filepath: FilePath[bytes], mask: int) -> None:
        filename = os.fsdecode(filepath.basename())
        change = _lock_change(filename)
        if change is not None:
            self._hint(("lock", filename), change)

    def _on_challenge(self, _watch: object, filepath: FilePath[bytes], mask: int) -> None:
        from twisted.internet import inotify

        if mask & (inotify.IN_ISDIR | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF):
            return
        if filepath.basename().startswith(b"."):
            return
        relative = os.path.relpath(os.fsdecode(filepath.path), self._state_dir(CHALLENGES))
        deleted = bool(mask & (inotify.IN_DELETE | inotify.IN_MOVED_FROM))
        self._hint(("challenge", relative), _challenge_change(relative, deleted))

    def _overflow(self) -> None:
        log.warn("the inotify queue for {path} overflowed: reloading", path=self.path)
        self._resync()

    def _resync(self) -> None:
        self._baseline()
        self._hint(("resync", None), StoreChange("resync"))

    def _lost(self) -> None:
        """The inotify watch went away: start again (or scan), and ask for a reload."""
        if self.backend is None:
            return
        log.warn("lost the inotify watch on {path}: watching it again", path=self.path)
        self._stop_inotify()
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self.backend = None
        self.start()
        self._hint(("resync", None), StoreChange("resync"))


def _make_notifier_class() -> type[Any]:
    from twisted.internet import inotify

    class Notifier(inotify.INotify):
        """
        Twisted's inotify reader, fixed for long-lived watches: a queue overflow
        is reported (Twisted drops it), and a watched directory that goes away
        only drops its own watch (Twisted closes every watch).
        """

        closing = False

        def __init__(
            self,
            reactor: IReactorTime,
            *,
            on_overflow: Callable[[], None],
            on_lost: Callable[[], None],
        ) -> None:
            super().__init__(reactor=reactor)  # type: ignore[no-untyped-call]
            self._on_overflow = on_overflow
            self._on_lost = on_lost
            self._clock = reactor

        def _doRead(self, in_: bytes) -> None:
            self._buffer += in_
            while len(self._buffer) >= 16:
                wd, mask, _cookie, size = struct.unpack("=LLLL", self._buffer[0:16])
                name = self._buffer[16 : 16 + size].rstrip(b"\0") if size else None
                self._buffer = self._buffer[16 + size :]
                if mask & inotify.IN_Q_OVERFLOW:
                    self._on_overflow()
                    continue
                iwp = self._watchpoints.get(wd)
                if iwp is None:
                    continue
                if mask & inotify.IN_IGNORED:
                    # The kernel dropped this watch (directory removed).
                    self._watchpoints.pop(wd, None)
                    self._watchpaths.pop(iwp.path, None)
                    continue
                path = iwp.path.child(name) if name else iwp.path
                iwp._notify(path, mask)
                if iwp.autoAdd and mask & inotify.IN_ISDIR and mask & inotify.IN_CREATE:
                    try:
                        new_wd = self.watch(  # type: ignore[no-untyped-call]
                            path, mask=iwp.mask, autoAdd=True, callbacks=iwp.callbacks
                        )
                    except Exception:
                        continue
                    self._clock.callLater(0, self._addChildren, self._watchpoints[new_wd])

        def connectionLost(self, reason: object) -> None:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
            if not self.closing:
                self._on_lost()

    return Notifier


_notifier_class: type[Any] | None = None


def _Notifier(
    clock: IReactorTime, *, on_overflow: Callable[[], None], on_lost: Callable[[], None]
) -> Any:
    global _notifier_class
    if _notifier_class is None:
        _notifier_class = _make_notifier_class()
    return _notifier_class(clock, on_overflow=on_overflow, on_lost=on_lost)


__all__ = ["DirectoryChanges", "Stamp", "entry_name", "file_stamp", "scan_entry_stamps"]
