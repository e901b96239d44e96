"""
Load: many concurrent TLS clients against AutoTLSEndpoint while the service
renews certificates.

Method: this process starts Pebble (Let's Encrypt's test CA, from
``tests/pebble.py``), an AutoTLSEndpoint serving a small page on Pebble's
``tls-alpn-01`` port, and obtains ``--names`` certificates at start-up. Then
``--workers`` client processes (asyncio, separate from the server, on
loopback) run ``--clients`` concurrent clients in all; each client loops for
``--duration`` seconds: connect, TLS handshake with a random one of the names
as SNI (verified against Pebble's root, host name included), ``GET /``, read
the whole answer, close. Meanwhile the server forces a renewal of one name
every ``--renew-every`` seconds (``issue_cert``): a real ACME order whose
``tls-alpn-01`` validation connects to the same, busy port, and whose new
certificate is served from the next handshake on.

Printed: handshakes and requests completed, failed handshakes (must be zero;
the exit status is 1 otherwise), handshakes per second, p50 / p99 latency of
the handshake (TCP connect included) and of the request after it, renewals
completed during the load, and the peak resident memory (``VmHWM``) of the
server and of the client processes.

Run: ``PYTHONPATH=src python bench/load.py`` (about a minute; ``--quick`` for
a short smoke run).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Site  # noqa: E402
from twisted.web.static import Data  # noqa: E402

from tests.harness.pebble import start_pebble  # noqa: E402
from txacme.keys import generate_private_key, jwk_for  # noqa: E402
from txacme.protocol.client import Client  # noqa: E402
from txacme.serving.endpoint import AutoTLSEndpoint  # noqa: E402
from txacme.stores.directory import DirectoryStore  # noqa: E402

PAGE = b"txacme load benchmark\n"

WORKER = r"""
import asyncio, json, random, ssl, sys, time
port, names, roots, clients, duration = (
    int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
context = ssl.create_default_context(cafile=roots)
handshakes, requests, failures = [], [], {}
started_at = time.monotonic() + 0.5
end = started_at + duration

async def client(rng):
    await asyncio.sleep(max(0.0, started_at - time.monotonic()) + rng.random() * 0.05)
    while time.monotonic() < end:
        name = rng.choice(names)
        t0 = time.perf_counter()
        stage = "handshake"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=name), 120)
            t1 = time.perf_counter()
            stage = "request"
            writer.write(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name.encode())
            data = await asyncio.wait_for(reader.read(), 120)
            t2 = time.perf_counter()
            writer.close()
            if not (data.startswith(b"HTTP/1.1 200") and data.endswith(b"txacme load benchmark\n")):
                raise ValueError("bad answer")
            handshakes.append(t1 - t0)
            requests.append(t2 - t1)
        except Exception as e:
            key = f"{stage}: {type(e).__name__}: {e}"[:160]
            failures[key] = failures.get(key, 0) + 1

async def main():
    rngs = [random.Random(i) for i in range(clients)]
    await asyncio.gather(*(client(r) for r in rngs))

asyncio.run(main())
with open("/proc/self/status") as f:
    hwm = [int(l.split()[1]) for l in f if l.startswith("VmHWM:")][0] / 1024
print(json.dumps({"handshakes": handshakes, "requests": requests, "failures": failures,
                  "seconds": duration, "peak_mb": hwm}))
"""


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/plain"))
    factory = Site(root)
    factory.log = lambda request: None  # type: ignore[method-assign]
    return factory


async def run(options: argparse.Namespace) -> int:
    pebble = start_pebble()
    work = Path(tempfile.mkdtemp(prefix="txacme-load-"))
    clients: list[Client] = []
    try:
        certs = work / "certs"
        certs.mkdir()
        names = [f"load{i}.example" for i in range(options.names)]
        for name in names:
            (certs / f"{name}.pem").write_bytes(b"")
        roots = work / "roots.pem"
        roots.write_bytes(b"".join(pebble.roots()))
        key = jwk_for(generate_private_key())

        async def client_creator() -> Client:
            client = await Client.from_url(
                reactor, pebble.directory_url, key, ca_file=pebble.ca_file, timeout=30
            )
            clients.append(client)
            return client

        endpoint = AutoTLSEndpoint(
            reactor,
            TCP4ServerEndpoint(reactor, pebble.tls_port, interface="127.0.0.1", backlog=4096),
            DirectoryStore(str(certs)),
            lambda: defer.Deferred.fromCoroutine(client_creator()),
            watch_interval=None,
            acceptable_protocols=[b"http/1.1"],
        )
        started = time.monotonic()
        port = await endpoint.listen(site())
        print(
            f"{len(names)} certificates obtained from Pebble in "
            f"{time.monotonic() - started:.2f} s; starting {options.clients} clients in "
            f"{options.workers} processes for {options.duration:g} s"
        )
        renewed: list[float] = []
        renew_failures: list[str] = []

        def renew() -> None:
            name = random.choice(names)
            begun = time.monotonic()
            d = endpoint.service.issue_cert(name)
            d.addCallbacks(
                lambda _: renewed.append(time.monotonic() - begun),
                lambda f: renew_failures.append(f"{name}: {f.value!r}"),
            )

        per_worker = [options.clients // options.workers] * options.workers
        per_worker[0] += options.clients - sum(per_worker)
        outputs = []
        procs = []
        for count in per_worker:
            out = open(work / f"worker{len(procs)}.json", "w+b")  # noqa: SIM115
            outputs.append(out)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER,
                        str(pebble.tls_port),
                        ",".join(names),
                        str(roots),
                        str(count),
                        str(options.duration),
                    ],
                    stdout=out,
                )
            )
        renewals = task.LoopingCall(renew)
        renewals.clock = reactor
        await task.deferLater(reactor, 0.5, lambda: None)
        renewals.start(options.renew_every, now=True)
        try:
            while any(p.poll() is None for p in procs):
                await task.deferLater(reactor, 0.2, lambda: None)
        finally:
            renewals.stop()
        server_peak = peak_mb()
        await port.stopListening()
        results = []
        for proc, out in zip(procs, outputs, strict=True):
            out.seek(0)
            data = out.read()
            out.close()
            if proc.returncode != 0 or not data:
                print(f"a client process failed (status {proc.returncode})")
                return 1
            results.append(json.loads(data))
        handshakes = [h for r in results for h in r["handshakes"]]
        requests = [q for r in results for q in r["requests"]]
        failures: dict[str, int] = {}
        for r in results:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        failed = sum(failures.values())
        print(f"handshakes completed:   {len(handshakes)} ({len(requests)} requests answered)")
        print(f"failed handshakes:      {failed}")
        for reason, count in sorted(failures.items(), key=lambda kv: -kv[1])[:5]:
            print(f"    {count} x {reason}")
        print(f"handshakes per second:  {len(handshakes) / options.duration:.0f}")
        print(
            f"handshake latency:      p50 {percentile(handshakes, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(handshakes, 0.99) * 1000:.1f} ms "
            f"(mean {statistics.fmean(handshakes) * 1000:.1f} ms)"
            if handshakes
            else ""
        )
        print(
            f"request latency:        p50 {percentile(requests, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(requests, 0.99) * 1000:.1f} ms"
            if requests
            else ""
        )
        print(
            f"renewals during load:   {len(renewed)} completed"
            + (f" (median {statistics.median(renewed):.2f} s)" if renewed else "")
            + f", {len(renew_failures)} failed"
        )
        for failure in renew_failures[:3]:
            print(f"    {failure}")
        print(
            f"peak memory:            server {server_peak:.0f} MB, clients "
            + ", ".join(f"{r['peak_mb']:.0f}" for r in results)
            + " MB"
        )
        return 0 if failed == 0 and handshakes else 1
    finally:
        for client in clients:
            await client.close()
        pebble.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--names", type=int, default=20)
    parser.add_argument("--renew-every", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="200 clients for 5 seconds")
    options = parser.parse_args()
    if options.quick:
        options.clients, options.duration = 200, 5.0
    if not 1 <= options.workers <= options.clients <= 5000 or not 0 < options.duration <= 600:
        parser.error("need 1 <= workers <= clients <= 5000 and 0 < duration <= 600")
    status: list[int] = []

    def go() -> None:
        d = defer.Deferred.fromCoroutine(run(options))
        d.addCallbacks(status.append, lambda f: (f.printTraceback(), status.append(1)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
