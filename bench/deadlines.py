"""
Handshake deadlines against silent and slow clients (issue: hardening, point 3).

A server process runs an ``AutoTLSEndpoint`` (directory store, one
certificate, ``twisted.web`` site; with ``--on-demand`` an on-demand policy too,
so partial ClientHellos are buffered by txacme itself) on loopback. This
process then opens ``--silent`` connections that send nothing and
``--partial`` connections that send the first part of a ClientHello, and
prints:

* the server's resident memory (RSS) before, and when it held the most of
  them at once (``held_at_once``; with ``TCP_DEFER_ACCEPT`` the kernel hands
  silent connections over about a second late, so not always all), per
  connection held;
* how long after connecting each of them was closed by the server
  (min / median / max), and how many were still open at the end;
* the latency of ordinary handshakes made while they are pending.

Run: ``PYTHONPATH=src python bench/deadlines.py [--silent 2000] [--partial 500]
[--deadline 1.0] [--on-demand]``. ``--deadline none`` runs without passing
``handshake_timeout`` (for a version of txacme without it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.closes import watch_closes  # noqa: E402

GOOD = "good.example"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def serve(directory: str, deadline: str, on_demand: bool) -> None:
    """The server process: listen, print the port, run until stdin closes."""
    from twisted.internet import reactor, stdio
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from txacme.issuing.ondemand import OnDemandPolicy
    from txacme.serving.endpoint import AutoTLSEndpoint
    from txacme.stores.directory import DirectoryStore
    from txacme.testing import FakeClient

    root = Resource()
    root.putChild(b"", Data(b"hello\n", "text/plain"))
    options: dict[str, object] = {}
    if deadline != "none":
        options["handshake_timeout"] = float(deadline)
    if on_demand:
        options["on_demand"] = OnDemandPolicy(allow=["*.ondemand.test"], clock=reactor)
    endpoint = AutoTLSEndpoint(
        reactor,
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1", backlog=4096),
        DirectoryStore(directory),
        FakeClient,
        watch_interval=None,
        **options,  # type: ignore[arg-type]
    )

    class Quit(Protocol):
        def connectionLost(self, reason: object = None) -> None:  # noqa: N802
            reactor.stop()  # type: ignore[attr-defined]

    async def start() -> None:
        port = await endpoint.listen(Site(root))
        print(port.getHost().port, flush=True)  # type: ignore[attr-defined]
        stdio.StandardIO(Quit())

    from twisted.internet.defer import Deferred

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def partial_hello() -> bytes:
    """The first 60 bytes of a ClientHello record announcing 512 bytes."""
    body = b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\x00"
    return (b"\x16\x03\x01\x02\x00" + body)[:60]


def handshake(port: int) -> float:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=GOOD):
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=2000)
    parser.add_argument("--partial", type=int, default=500)
    parser.add_argument("--deadline", default="1.0")
    parser.add_argument("--on-demand", action="store_true")
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds to wait for closes (default: 3 x deadline + 2, or 5)",
    )
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.serve[2] == "yes")
        return

    from txacme.stores.directory import DirectoryStore
    from txacme.testing import make_pem_objects

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    directory = tempfile.mkdtemp(prefix="txacme-deadlines-")
    now = datetime.now(timezone.utc)
    objects = make_pem_objects([GOOD], now - timedelta(days=1), now + timedelta(days=89))
    DirectoryStore(directory).store(GOOD, objects)
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            directory,
            args.deadline,
            "yes" if args.on_demand else "no",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)),
    )
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline())
    for _ in range(20):  # warm up: contexts built, allocator settled
        handshake(port)
    time.sleep(0.3)
    before = rss_kib(server.pid)

    base_fds = len(os.listdir(f"/proc/{server.pid}/fd"))
    opened: dict[socket.socket, float] = {}
    started = time.monotonic()
    hello = partial_hello()
    for i in range(args.silent + args.partial):
        s = socket.create_connection(("127.0.0.1", port))
        if i >= args.silent:
            s.sendall(hello)
        s.setblocking(False)
        opened[s] = time.monotonic()
    connect_time = time.monotonic() - started
    target = args.silent + args.partial

    deadline = None if args.deadline == "none" else float(args.deadline)
    wait = args.wait if args.wait is not None else (3 * deadline + 4 if deadline else 7.0)
    closed_after: list[float] = []

    def watch() -> None:
        # From the start: a close is timed when it happens.
        closed_after.extend(watch_closes(opened, wait)[0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    # The most connections the server held at once (with TCP_DEFER_ACCEPT the
    # kernel hands silent ones over about a second late), and its RSS then.
    held, after = 0, before
    sample_end = time.monotonic() + (deadline or 2.0) + 2.0
    while time.monotonic() < sample_end and held < target:
        fds = len(os.listdir(f"/proc/{server.pid}/fd")) - base_fds
        if fds > held:
            held, after = fds, rss_kib(server.pid)
        time.sleep(0.02)
    latencies = [handshake(port) for _ in range(10)]
    watcher.join()
    still_open = len(opened)
    for s in opened:
        s.close()
    server.stdin.close()
    server.wait(10)

    per_connection = (after - before) * 1024 / max(held, 1)
    report = {
        "deadline_s": deadline,
        "on_demand": args.on_demand,
        "silent": args.silent,
        "partial": args.partial,
        "connect_s": round(connect_time, 2),
        "rss_before_kib": before,
        "held_at_once": held,
        "rss_pending_kib": after,
        "rss_per_pending_connection_bytes": round(per_connection),
        "closed": len(closed_after),
        "still_open_after_wait": still_open,
        "closed_after_s": {
            "min": round(min(closed_after), 3) if closed_after else None,
            "median": round(statistics.median(closed_after), 3) if closed_after else None,
            "max": round(max(closed_after), 3) if closed_after else None,
        },
        "handshakes_while_pending_ms": {
            "median": round(statistics.median(latencies) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
