"""
Durable file writing shared by :mod:`txacme.keys` and :mod:`txacme.stores.directory`.

Private: the callers choose the temporary file's name and how it is moved into
place; these helpers only make the bytes and the directory entry durable.
"""

from __future__ import annotations

import os


def write_synced(fd: int, data: bytes, mode: int) -> None:
    """
    Set ``fd``'s mode to ``mode``, write all of ``data``, fsync it and close it.

    ``fd`` is closed even when a step fails; the ``OSError`` propagates.
    """
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str) -> None:
    """
    Sync ``directory`` so that a file just linked or renamed into it survives a
    crash; best effort (errors are ignored: not every platform allows it).
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
