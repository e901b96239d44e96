"""
Serving a large certificate directory: start-up, idle cost, and how fast
changes to the directory are served.

Method: this process starts Pebble (``tests/harness/pebble.py``) and writes
``--count`` self-signed ECDSA entries (``host<i>.bench.example.pem``, valid
90 days, so nothing is due) into a fresh directory. It launches a server
process (``AutoTLSEndpoint`` on a ``DirectoryStore`` of that directory,
listening on Pebble's ``tls-alpn-01`` port, with the source tree of ``--src``)
and measures from outside, on loopback, with Python's ``ssl``:

* launch -> first completed handshake (SNI of the last name), the server's RSS
  then, and its CPU over the next ``--idle`` seconds twice (the first window
  includes the background parse; the second is idle);
* an empty ``added.bench.example.pem`` written -> a handshake for that name
  gets a certificate naming it (an ACME order with Pebble included);
* an entry replaced by an atomic rename -> a handshake gets the new serial;
* the worst handshake while ``--churn`` entries are replaced (atomic renames,
  spread over ``--churn-seconds``): a client doing back-to-back handshakes
  over random names prints count, p50, p99 and max.

Run: ``PYTHONPATH=src python bench/serving.py`` (about a minute). For the
figures of another tree (e.g. ``git worktree add /tmp/base HEAD``):
``--src /tmp/base/src``; ``--watch scan`` for the stat-scan watcher (where there
is no inotify).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402

from tests.harness.pebble import start_pebble  # noqa: E402
from txacme.testing import make_pem_objects  # noqa: E402

SERVER = r"""
import inspect, sys
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client
from txacme.serving.endpoint import AutoTLSEndpoint
from txacme.stores.directory import DirectoryStore

certs, port, url, ca_file, watch = sys.argv[1:6]
port = int(port)
key = jwk_for(generate_private_key("ec256"))
options = {}
if "watch_mode" in inspect.signature(AutoTLSEndpoint).parameters:
    options["watch_mode"] = watch
endpoint = AutoTLSEndpoint(
    reactor,
    TCP4ServerEndpoint(reactor, port, interface="127.0.0.1", backlog=1024),
    DirectoryStore(certs),
    lambda: Client.from_url(reactor, url, key, ca_file=ca_file),
    **options,
)
endpoint.listen(Factory.forProtocol(Protocol)).addErrback(lambda f: f.printTraceback())
reactor.run()
"""


def write_entries(directory: Path, count: int) -> None:
    for i in range(count):
        name = f"host{i}.bench.example"
        objects = make_pem_objects([name], authority_key_id=None)
        (directory / f"{name}.pem").write_bytes(b"".join(o.as_bytes() for o in objects))


def new_entry(name: str) -> tuple[bytes, int]:
    """A fresh entry for ``name``: its bytes and serial number."""
    objects = make_pem_objects([name], authority_key_id=None)
    cert = next(o for o in objects if o.__class__.__name__ == "Certificate")
    serial = x509.load_pem_x509_certificate(cert.as_bytes()).serial_number
    return b"".join(o.as_bytes() for o in objects), serial


def replace_entry(directory: Path, name: str, data: bytes) -> None:
    """Atomically replace ``name``'s entry with ``data`` (a rename into place)."""
    temporary = directory / f".{name}.pem.{random.getrandbits(64):016x}.tmp"
    temporary.write_bytes(data)
    os.rename(temporary, directory / f"{name}.pem")


CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CONTEXT.check_hostname = False
CONTEXT.verify_mode = ssl.CERT_NONE


def handshake(port: int, name: str) -> x509.Certificate | None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with CONTEXT.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def names_of(cert: x509.Certificate | None) -> list[str]:
    if cert is None:
        return []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(predicate, limit: float) -> float | None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            if predicate():
                return time.monotonic() - start
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.005)
    return None


def seconds(took: float | None, args: argparse.Namespace, scale: int = 1) -> str:
    if took is None:
        return f"> {args.max_wait * scale:.0f}"
    return f"{took * scale:.2f}" if scale == 1 else f"{took * scale:.0f}"


def churn_run(port: int, directory: Path, args: argparse.Namespace) -> list[float]:
    waits: list[float] = []
    stop = threading.Event()
    # Made beforehand: key generation in this process would slow the client thread.
    names = [f"host{random.randrange(args.count)}.bench.example" for _ in range(args.churn)]
    payloads = [(name, new_entry(name)[0]) for name in names]

    def client() -> None:
        while not stop.is_set():
            name = f"host{random.randrange(args.count)}.bench.example"
            start = time.perf_counter()
            try:
                handshake(port, name)
            except (OSError, ssl.SSLError):
                continue
            waits.append(time.perf_counter() - start)

    thread = threading.Thread(target=client)
    thread.start()
    pause = args.churn_seconds / max(1, args.churn)
    for name, data in payloads:
        replace_entry(directory, name, data)
        time.sleep(pause)
    time.sleep(2)
    stop.set()
    thread.join()
    return sorted(waits)


def run(args: argparse.Namespace) -> None:
    cache = Path(tempfile.gettempdir()) / f"txacme-bench-serving-{args.count}"
    if not (cache / "done").exists():
        cache.mkdir(exist_ok=True)
        print(f"writing {args.count} entries to {cache} (once)...", flush=True)
        write_entries(cache, args.count)
        (cache / "done").write_text("")
    with start_pebble() as pebble:
        work = Path(tempfile.mkdtemp(prefix="txacme-bench-serving-"))
        directory = work / "certs"
        shutil.copytree(cache, directory, ignore=shutil.ignore_patterns("done"))
        port = pebble.tls_port
        env = dict(os.environ, PYTHONPATH=str(Path(args.src).resolve()))
        launched = time.monotonic()
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVER,
                str(directory),
                str(port),
                pebble.directory_url,
                pebble.ca_file,
                args.watch,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "server.log", "wb"),
        )
        try:
            last = f"host{args.count - 1}.bench.example"
            first = wait_for(lambda: last in names_of(handshake(port, last)), 120)
            print(f"source tree: {args.src}; {args.count} certificates; watch={args.watch}")
            print(
                f"launch -> first handshake: {first if first is None else round(first, 2)} s"
                f" (launch to now {time.monotonic() - launched:.2f} s)"
            )
            print(f"RSS at first handshake: {rss_mib(server.pid):.0f} MiB")
            for window in ("next", "idle"):
                before = cpu_seconds(server.pid)
                time.sleep(args.idle)
                used = cpu_seconds(server.pid) - before
                share = 100 * used / args.idle
                print(
                    f"CPU over the {window} {args.idle:.0f} s: {used:.2f} s "
                    f"({share:.1f} % of a core); RSS {rss_mib(server.pid):.0f} MiB"
                )
            added = "added.bench.example"
            (directory / f"{added}.pem").write_bytes(b"")
            took = wait_for(lambda: added in names_of(handshake(port, added)), args.max_wait)
            print(f"empty entry added -> served (Pebble order included): {seconds(took, args)} s")
            name = "host5.bench.example"
            data, serial = new_entry(name)
            replace_entry(directory, name, data)
            took = wait_for(
                lambda: (c := handshake(port, name)) is not None and c.serial_number == serial,
                args.max_wait,
            )
            print(f"entry replaced -> new certificate served: {seconds(took, args, 1000)} ms")
            waits = churn_run(port, directory, args)
            if waits:
                print(
                    f"handshakes while {args.churn} entries were replaced: {len(waits)}; "
                    f"p50 {waits[len(waits) // 2] * 1000:.1f} ms, "
                    f"p99 {waits[int(len(waits) * 0.99)] * 1000:.1f} ms, "
                    f"max {waits[-1] * 1000:.0f} ms"
                )
        finally:
            server.terminate()
            server.wait()
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--src", default=str(ROOT / "src"), help="source tree of the server")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds per CPU window")
    parser.add_argument("--max-wait", type=float, default=75.0)
    parser.add_argument("--watch", default="auto", choices=["auto", "inotify", "scan"])
    parser.add_argument("--churn", type=int, default=500, help="entries replaced")
    parser.add_argument("--churn-seconds", type=float, default=10.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
