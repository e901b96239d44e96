"""
Waiting for a server to close many client sockets at once, timing each close
when it happens (the hostile-client tests and ``bench/deadlines.py``).
"""

from __future__ import annotations

import selectors
import socket
import time


def watch_closes(opened: dict[socket.socket, float], wait: float) -> tuple[list[float], int]:
    """
    Read from the non-blocking sockets of ``opened`` (each with the time it
    was opened) until the server has closed all of them or ``wait`` seconds
    passed; a closed one is closed here too and removed from ``opened``.

    :return: the seconds from opening to close of each closed socket, and how
        many reads returned data instead (the server answered something).
    """
    selector = selectors.DefaultSelector()
    for s in opened:
        selector.register(s, selectors.EVENT_READ)
    closed_after: list[float] = []
    data_reads = 0
    end = time.monotonic() + wait
    try:
        while opened and time.monotonic() < end:
            for key, _ in selector.select(timeout=0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    data_reads += 1
                    continue
                closed_after.append(time.monotonic() - opened.pop(s))
                selector.unregister(s)
                s.close()
    finally:
        selector.close()
    return closed_after, data_reads
