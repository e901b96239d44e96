"""
Durable file writing, and reading that never follows a symbolic link, shared by
:mod:`txacme.keys` and :mod:`txacme.stores.directory`.

Private: the callers choose the temporary file's name and how it is moved into
place; these helpers only make the bytes and the directory entry durable.
"""

from __future__ import annotations

import errno
import os
import stat


class NotOwnFile(OSError):
    """
    The path is a symbolic link, or not a regular file: txacme does not read it
    (see ``docs/certs-dir.rst``). The message names the file.
    """


def read_own_file(path: str) -> tuple[bytes, os.stat_result]:
    """
    The bytes of the regular file ``path``, and its ``fstat``, read without
    following a symbolic link.

    The file is opened with ``O_NOFOLLOW`` (a link at ``path`` itself is refused
    by the kernel, with no window between a check and the open) and
    ``O_NONBLOCK`` (a FIFO put in its place cannot block the reader); what was
    opened must be a regular file.

    :raises FileNotFoundError: when nothing is at ``path``.
    :raises NotOwnFile: naming ``path`` when it is a symbolic link (to anything,
        inside the directory or not) or not a regular file.
    :raises OSError: for any other error.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno != errno.ENOENT and os.path.islink(path)):
            raise NotOwnFile(
                errno.ELOOP, f"{path} is a symbolic link; txacme reads only regular files"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotOwnFile(errno.EINVAL, f"{path} is not a regular file; txacme does not read it")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


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
