"""
DirectoryChanges against the real file system: inotify (Linux) and the stat
scan, each seeing an entry added, replaced by a rename into place, written in
several steps and removed, plus the hidden lock and challenge directories, a
queue overflow and a lost watch.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform
from twisted.trial.unittest import SkipTest, TestCase

from txacme.stores._dirwatch import DirectoryChanges, entry_name, scan_entry_stamps
from txacme.stores.coordination import StoreChange


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def rename_into_place(directory: str, filename: str, data: bytes) -> None:
    temporary = os.path.join(directory, f".{filename}.0123456789abcdef.tmp")
    write(temporary, data)
    os.rename(temporary, os.path.join(directory, filename))


class _Changes:
    """Mixin: the same behaviour, whichever backend ``mode`` picks."""

    mode = "auto"
    timeout = 20

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txacme-changes-")
        write(os.path.join(self.dir, "old.example.pem"), b"old")
        self.changes: list[StoreChange] = []
        self.watcher = DirectoryChanges(
            self.dir, reactor, mode=self.mode, debounce=0.02, scan_interval=0.05
        )
        self.watcher.subscribe(self.changes.append)
        self.watcher.start()
        self.addCleanup(self.watcher.stop)  # type: ignore[attr-defined]

    def wait_for(self, predicate: Any, seconds: float = 5.0) -> Deferred[None]:
        """Poll ``predicate(changes)`` until true, failing after ``seconds``."""

        async def poll() -> None:
            for _ in range(int(seconds / 0.02)):
                if predicate(self.changes):
                    return
                await deferLater(reactor, 0.02, lambda: None)
            raise AssertionError(f"no such change within {seconds} s: {self.changes!r}")

        return Deferred.fromCoroutine(poll())

    def seen(self, kind: str, name: str | None = None, deleted: bool = False) -> Any:
        return lambda changes: any(
            c.kind == kind and c.name == name and c.deleted == deleted for c in changes
        )

    @inlineCallbacks
    def test_add(self) -> Any:
        """A new entry (an empty one too: "issue this name") is announced; hidden files are not."""
        write(os.path.join(self.dir, "new.example.pem"), b"")
        write(os.path.join(self.dir, ".hidden.pem"), b"x")
        write(os.path.join(self.dir, "Not-Canonical.pem"), b"x")
        yield self.wait_for(self.seen("certificate", "new.example"))
        names = {c.name for c in self.changes}
        self.assertNotIn(".hidden", names)
        self.assertNotIn("Not-Canonical", names)

    @inlineCallbacks
    def test_replace_by_rename(self) -> Any:
        """An atomic replacement (a temporary file renamed over the entry) is one hint."""
        rename_into_place(self.dir, "old.example.pem", b"new contents")
        yield self.wait_for(self.seen("certificate", "old.example"))
        self.assertTrue(all(c.name == "old.example" for c in self.changes), self.changes)

    @inlineCallbacks
    def test_remove(self) -> Any:
        """A removed entry is announced as deleted."""
        os.remove(os.path.join(self.dir, "old.example.pem"))
        yield self.wait_for(self.seen("certificate", "old.example", deleted=True))

    @inlineCallbacks
    def test_written_in_steps(self) -> Any:
        """A file written in several steps is announced after the last step."""
        path = os.path.join(self.dir, "steps.example.pem")
        write(path, b"part one")
        yield deferLater(reactor, 0.3, lambda: None)
        del self.changes[:]
        with open(path, "ab") as f:
            f.write(b" and part two, which makes it longer")
        yield self.wait_for(self.seen("certificate", "steps.example"))

    @inlineCallbacks
    def test_default(self) -> Any:
        """DEFAULT.pem has its own kind."""
        rename_into_place(self.dir, "DEFAULT.pem", b"default")
        yield self.wait_for(self.seen("default"))

    @inlineCallbacks
    def test_state_directories(self) -> Any:
        """Lock and challenge files under .txacme/ are announced, even when created later."""
        locks = os.path.join(self.dir, ".txacme", "locks")
        record_dir = os.path.join(self.dir, ".txacme", "challenges", "tls-alpn-01", "a.example")
        os.makedirs(locks)
        os.makedirs(record_dir)
        yield deferLater(reactor, 0.3, lambda: None)
        write(os.path.join(locks, "a.example.lock"), b"{}")
        rename_into_place(record_dir, "tok.json", b"{}")
        yield self.wait_for(self.seen("lock", "a.example"))
        yield self.wait_for(
            lambda changes: any(
                c.kind == "challenge"
                and c.name == "a.example"
                and c.challenge_type == "tls-alpn-01"
                and c.token == "tok"
                and not c.deleted
                for c in changes
            )
        )
        os.remove(os.path.join(record_dir, "tok.json"))
        yield self.wait_for(
            lambda changes: any(c.kind == "challenge" and c.deleted for c in changes)
        )

    @inlineCallbacks
    def test_stop(self) -> Any:
        """After stop() no hints arrive."""
        self.watcher.stop()
        write(os.path.join(self.dir, "late.example.pem"), b"")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.changes, [])


class InotifyChangesTests(_Changes, TestCase):
    mode = "inotify"

    def setUp(self) -> None:
        if not platform.supportsINotify():
            raise SkipTest("inotify needs Linux")
        super().setUp()
        self.assertEqual(self.watcher.backend, "inotify")

    @inlineCallbacks
    def test_overflow(self) -> Any:
        """A kernel queue overflow (wd -1, IN_Q_OVERFLOW) becomes a "resync"."""
        from twisted.internet.inotify import IN_Q_OVERFLOW

        self.watcher._notifier._doRead(struct.pack("=LLLL", 0xFFFFFFFF, IN_Q_OVERFLOW, 0, 0))
        yield self.wait_for(self.seen("resync"))

    @inlineCallbacks
    def test_directory_replaced(self) -> Any:
        """The watched directory moved away and another put in its place: "resync", then hints."""
        os.rename(self.dir, self.dir + "-gone")
        self.addCleanup(lambda: None)
        os.mkdir(self.dir)
        yield self.wait_for(self.seen("resync"))
        self.assertIsNotNone(self.watcher.backend)
        write(os.path.join(self.dir, "after.example.pem"), b"")
        yield self.wait_for(self.seen("certificate", "after.example"))

    @inlineCallbacks
    def test_safety_net(self) -> Any:
        """
        A change inotify does not report (another host writing over NFS,
        simulated by dropping the watch) is found by rescan().
        """
        path = os.path.join(self.dir, "missed.example.pem")
        write(path, b"one")
        yield self.wait_for(self.seen("certificate", "missed.example"))
        self.watcher._notifier.ignore(FilePath(self.dir))
        del self.changes[:]
        write(path, b"two, longer")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(self.changes, [])
        self.watcher.rescan()
        yield self.wait_for(self.seen("certificate", "missed.example"))

    @inlineCallbacks
    def test_link_target_not_followed(self) -> Any:
        """
        A symbolic link is an entry of its own (refused when read): its
        target changing is no change of the directory.
        """
        target_dir = tempfile.mkdtemp(prefix="txacme-changes-target-")
        self.addCleanup(shutil.rmtree, target_dir, True)
        target = os.path.join(target_dir, "t.pem")
        write(target, b"one")
        os.symlink(target, os.path.join(self.dir, "linked.example.pem"))
        yield self.wait_for(self.seen("certificate", "linked.example"))
        del self.changes[:]
        write(target, b"two, longer")
        self.watcher.rescan()
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(self.seen("certificate", "linked.example")(self.changes))


class ScanChangesTests(_Changes, TestCase):
    mode = "scan"

    def setUp(self) -> None:
        super().setUp()
        self.assertEqual(self.watcher.backend, "scan")


class HelperTests(TestCase):
    def test_entry_name(self) -> None:
        self.assertEqual(entry_name("a.example.pem"), "a.example")
        self.assertEqual(entry_name("*.example.pem"), "*.example")
        self.assertEqual(entry_name("DEFAULT.pem"), "DEFAULT")
        self.assertIsNone(entry_name(".a.example.pem.0123456789abcdef.tmp"))
        self.assertIsNone(entry_name("client.key"))
        self.assertIsNone(entry_name("A.example.pem"))

    def test_scan_entry_stamps(self) -> None:
        directory = tempfile.mkdtemp(prefix="txacme-stamps-")
        write(os.path.join(directory, "a.example.pem"), b"abc")
        write(os.path.join(directory, "client.key"), b"k")
        os.mkdir(os.path.join(directory, "sub.pem"))
        stamps = scan_entry_stamps(directory)
        self.assertEqual(list(stamps), ["a.example"])
        self.assertEqual(stamps["a.example"][0], 3)
