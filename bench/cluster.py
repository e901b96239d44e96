"""
A cluster node on PostgresStore against a single server on DirectoryStore: TLS
handshakes per second, and start-up time with 10,000 certificates.

Handshakes. Both servers are built the way they run: a
:class:`~txacme.serving.index.CertificateIndex` loaded from the store and an
``SNIConnectionCreator``. The single server wraps the application in
``TLSMemoryBIOFactory``; the cluster node in ``HelloHookFactory`` with the hooks of
``ClusterNode`` (challenge look-ups) and ``OnDemandIssuer`` (an allow-list
policy), so every handshake also has its ClientHello parsed and judged in Python.
Everything runs in this process: a pyOpenSSL client and Twisted's server
protocol are pumped into each other through memory (no sockets, no reactor
turns), and only the server's work is timed (``buildProtocol``,
``makeConnection``, ``dataReceived``). Handshakes cycle over 1,000 names (their
OpenSSL contexts are cached, as in a warm server), TLS 1.3, ECDSA P-256. The
two configurations alternate in rounds and each keeps its best round.

Start-up. 10,000 certificates are put in a PostgreSQL database (a throw-away
server from ``tests/postgres.py``) and in a directory; the time is what a node
spends before serving: ``PostgresStore.start()`` (schema check, LISTEN) plus
``CertificateIndex.load_from(store)``, against ``load_from(DirectoryStore)``;
also with private keys sealed with AES-256-GCM.

Run: ``PYTHONPATH=src python bench/cluster.py [--quick]`` (needs PostgreSQL).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pem
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, react
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.handshake import Certificates, rss_mb  # noqa: E402
from txacme.challenges.tlsalpn01 import TLSALPN01Responder  # noqa: E402
from txacme.issuing.ondemand import OnDemandIssuer, OnDemandPolicy  # noqa: E402
from txacme.serving.cluster import ClusterNode  # noqa: E402
from txacme.serving.hello import HelloHookFactory, combine_hooks  # noqa: E402
from txacme.serving.index import CertificateIndex  # noqa: E402
from txacme.serving.tls import SNIConnectionCreator  # noqa: E402
from txacme.stores.directory import DirectoryStore  # noqa: E402
from txacme.stores.postgres import KeyEncryption, PostgresStore  # noqa: E402

ALPN = [b"http/1.1"]
ADDRESS = IPv4Address("TCP", "127.0.0.1", 443)


def make_certificates(count: int) -> dict[str, tuple[bytes, str]]:
    """``count`` names -> (key PEM, certificate + chain PEM), signed by one CA."""
    certs = Certificates(count)
    result = {}
    for host in certs.names:
        key, *chain = pem.parse(certs.pem_bytes[host])
        result[host] = (key.as_bytes(), "".join(c.as_text() for c in chain))
    return result


def fill_directory(path: str, certs: dict[str, tuple[bytes, str]]) -> None:
    for name, (key_pem, chain) in certs.items():
        with open(os.path.join(path, name + ".pem"), "wb") as f:
            f.write(key_pem + chain.encode())


def fill_database(
    url: str, schema: str, certs: dict[str, tuple[bytes, str]], sealing: KeyEncryption | None
) -> None:
    """Bulk-load entries in the PostgresStore layout (one COPY)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        table = sql.Identifier(schema, "txacme_certificates")
        with conn.transaction():
            with conn.cursor().copy(
                sql.SQL("COPY {} (name, key_data, key_format, certificates) FROM STDIN").format(
                    table
                )
            ) as copy:
                for name, (key_pem, chain) in certs.items():
                    if sealing is not None:
                        copy.write_row((name, sealing.seal(name, key_pem), 2, chain))
                    else:
                        copy.write_row((name, key_pem, 1, chain))


class Handshaker:
    """Handshakes through a Twisted TLS server factory, timing the server's side."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.client_context.set_verify(SSL.VERIFY_NONE)

    def once(self, name: bytes) -> float:
        perf = time.perf_counter
        client = SSL.Connection(self.client_context, None)
        client.set_connect_state()
        client.set_tlsext_host_name(name)
        client.set_alpn_protos([b"h2", b"http/1.1"])
        transport = StringTransport()
        start = perf()
        server = self.factory.buildProtocol(ADDRESS)
        server.makeConnection(transport)
        spent = perf() - start
        done = False
        for _ in range(10):
            if not done:
                try:
                    client.do_handshake()
                    done = True
                except SSL.WantReadError:
                    pass
            try:
                data = client.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                start = perf()
                server.dataReceived(data)
                spent += perf() - start
            answer = transport.value()
            transport.clear()
            if answer:
                client.bio_write(answer)
            if done and not data and not answer:
                break
        if not done:
            raise RuntimeError("handshake did not complete")
        if client.get_alpn_proto_negotiated() != b"http/1.1":
            raise RuntimeError("ALPN was not negotiated")
        start = perf()
        server.connectionLost(None)
        spent += perf() - start
        return spent


def compare(
    configs: dict[str, Handshaker], names: list[bytes], per_round: int, rounds: int
) -> tuple[dict[str, float], list[float]]:
    """
    Best rate of each configuration, and the ratio second/first of every round
    (the two run back to back, in alternating order, so each ratio compares
    like with like).
    """
    best = dict.fromkeys(configs, 0.0)
    ratios = []
    position = 0
    order = list(configs.items())
    for _ in range(rounds):
        order.reverse()  # neither configuration always runs first
        rates = {}
        for label, handshaker in order:
            gc.disable()
            total = 0.0
            for i in range(per_round):
                total += handshaker.once(names[(position + i) % len(names)])
            gc.enable()
            rates[label] = per_round / total
            best[label] = max(best[label], rates[label])
        first, second = list(configs)
        ratios.append(rates[second] / rates[first])
        position += per_round
    return best, ratios


def application() -> Factory:
    class App(Protocol):
        pass

    factory = Factory.forProtocol(App)
    return factory


async def run(reactor: Any, args: argparse.Namespace) -> None:
    from tests.harness.postgres import Postgres

    count = args.certificates
    started = time.perf_counter()
    print("txacme cluster benchmark")
    t = time.perf_counter()
    certs = make_certificates(count)
    print(f"generated {count} certificates in {time.perf_counter() - t:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="txacme-bench-"))
    server = Postgres()
    try:
        url = server.new_database()
        directory = str(work / "certs")
        os.makedirs(directory)
        fill_directory(directory, certs)

        # Schemas: plain and sealed keys.
        sealing = KeyEncryption([os.urandom(32)])
        for schema, sealer in (("plain", None), ("sealed", sealing)):
            setup = PostgresStore(url, schema=schema, reactor=reactor, listen=False)
            await setup.start()
            await setup.close()
            t = time.perf_counter()
            fill_database(url, schema, certs, sealer)
            print(f"loaded {count} rows into schema {schema!r} in {time.perf_counter() - t:.1f} s")

        # -- start-up ---------------------------------------------------------
        print(f"\nstart-up with {count} certificates (until the index can serve):")
        results: dict[str, float] = {}
        indexes: dict[str, CertificateIndex] = {}
        stores: list[PostgresStore] = []
        for label in ("directory", "postgres", "postgres sealed"):
            gc.collect()
            rss = rss_mb()
            t = time.perf_counter()
            index = CertificateIndex()
            if label == "directory":
                await index.load_from(DirectoryStore(directory))
            else:
                store = PostgresStore(
                    url,
                    schema="plain" if label == "postgres" else "sealed",
                    key_encryption=sealing if label == "postgres sealed" else None,
                    reactor=reactor,
                )
                stores.append(store)
                await store.start()
                await index.load_from(store)
            results[label] = time.perf_counter() - t
            indexes[label] = index
            assert len(index) == count, (label, len(index))
            print(f"  {label:16} {results[label]:6.2f} s   (+{rss_mb() - rss:.0f} MB RSS)")

        # -- handshakes ------------------------------------------------------------
        clock = Clock()
        names = [n.encode() for n in list(certs)[: min(1000, count)]]
        single_creator = SNIConnectionCreator(indexes["directory"], acceptable_protocols=ALPN)
        single = TLSMemoryBIOFactory(single_creator, False, application(), clock=clock)
        responder = TLSALPN01Responder()
        node = ClusterNode(stores[0], indexes["postgres"], tls_alpn=responder.registry, clock=clock)
        on_demand = OnDemandIssuer(
            OnDemandPolicy(allow=["*.ondemand.bench"], clock=clock),
            lambda name: Deferred(),
            indexes["postgres"],
            clock=clock,
        )
        cluster_creator = SNIConnectionCreator(
            indexes["postgres"], challenges=responder.registry, acceptable_protocols=ALPN
        )
        cluster = HelloHookFactory(
            cluster_creator,
            application(),
            combine_hooks(node.hello_hook, on_demand.hello_hook),
            clock=clock,
        )
        configs = {
            "DirectoryStore, TLSMemoryBIOFactory": Handshaker(single),
            "PostgresStore, HelloHookFactory + hooks": Handshaker(cluster),
        }
        per_round, rounds = (200, 10) if args.quick else (250, 40)
        compare(configs, names, len(names), 1)  # build every OpenSSL context first
        best, ratios = compare(configs, names, per_round, rounds)
        print(
            f"\nhandshakes per second, server side (TLS 1.3, {len(names)} names, "
            f"best of {rounds} rounds of {per_round}):"
        )
        for label, rate in best.items():
            print(f"  {label:42} {rate:8.0f}/s")
        rates = list(best.values())
        ratios.sort()
        median = ratios[len(ratios) // 2]
        print(f"  difference of the best rounds: {(rates[1] - rates[0]) / rates[0] * 100:+.1f}%")
        print(
            f"  median difference of back-to-back rounds: {(median - 1) * 100:+.1f}% "
            f"(quartiles {(ratios[len(ratios) // 4] - 1) * 100:+.1f}% .. "
            f"{(ratios[3 * len(ratios) // 4] - 1) * 100:+.1f}%)"
        )
        for store in stores:
            await store.close()
        node.stop()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer handshakes")
    parser.add_argument("--certificates", type=int, default=10_000)
    args = parser.parse_args(argv)
    react(lambda reactor: ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main(sys.argv[1:])
