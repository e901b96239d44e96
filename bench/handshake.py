"""
TLS handshakes per second through txacme's SNIConnectionCreator, against a
plain Twisted server (``CertificateOptions`` with one certificate).

Method: everything runs in this process over memory BIOs (no sockets, no
reactor), so the numbers isolate the server's cost. A pyOpenSSL client and a
server connection are pumped into each other; only the server's work is timed:
``serverConnectionForTLS``, feeding it the client's bytes, ``do_handshake`` and
reading its answer. That includes the SNI and ALPN callbacks and the context
switch, and excludes the client. Configurations are interleaved in rounds and
the best round of each is kept, which removes most scheduling noise.

Configurations (all TLS 1.3 unless said, ECDSA P-256 certificates with a
one-certificate chain, the client sends SNI and offers ``h2, http/1.1``; the
server speaks ``http/1.1``):

* ``plain``: ``CertificateOptions(..., acceptableProtocols=[b"http/1.1"])``.
* ``creator, 1 cert``: an index holding one certificate.
* ``creator, 10k certs, one name``: 10,000 certificates, every handshake for the
  same name.
* ``creator, 10k certs, 1k names``: handshakes cycle over 1,000 names (all
  their contexts fit the default cache).
* ``creator, 10k certs, all names``: handshakes cycle over all 10,000 names,
  more than the context cache holds, so each one builds an OpenSSL context.

Also printed: the time to build the index of 10,000 certificates from PEM
objects and from a certificate directory, and the resident memory (RSS).

Run: ``PYTHONPATH=src python bench/handshake.py [--quick]`` (under 2 minutes).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import pem
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions, TLSVersion

from txacme.serving.index import CertificateIndex
from txacme.serving.tls import SNIConnectionCreator
from txacme.stores.directory import DirectoryStore

CLIENT_ALPN = [b"h2", b"http/1.1"]
SERVER_ALPN = [b"http/1.1"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Certificates:
    """A CA and ``count`` leaf certificates ``host<i>.bench.example``."""

    def __init__(self, count: int) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        ca_pem = self.ca.public_bytes(serialization.Encoding.PEM)
        self.names: list[str] = []
        self.pem_bytes: dict[str, bytes] = {}
        for i in range(count):
            host = f"host{i}.bench.example"
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(i + 2)
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .sign(self.ca_key, hashes.SHA256())
            )
            self.names.append(host)
            self.pem_bytes[host] = (
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                + cert.public_bytes(serialization.Encoding.PEM)
                + ca_pem
            )

    def entries(self, names: Sequence[str]) -> dict[str, list[pem.AbstractPEMObject]]:
        return {n: pem.parse(self.pem_bytes[n]) for n in names}


class FakeTLSProtocol:
    """What a connection creator sees of Twisted's TLSMemoryBIOProtocol."""

    class _TLSFactory:
        wrappedFactory = Factory()

    factory = _TLSFactory()
    transport = None


def plain_creator(certs: Certificates) -> Any:
    objects = pem.parse(certs.pem_bytes[certs.names[0]])
    key = serialization.load_pem_private_key(objects[0].as_bytes(), None)
    leaf = x509.load_pem_x509_certificate(objects[1].as_bytes())
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[crypto.X509.from_cryptography(certs.ca)],
        acceptableProtocols=SERVER_ALPN,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def handshake_server_seconds(
    creator: Any, client_context: SSL.Context, sni: bytes, tls: FakeTLSProtocol
) -> float:
    """One handshake; returns the server-side time."""
    perf = time.perf_counter
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    client.set_tlsext_host_name(sni)
    client.set_alpn_protos(CLIENT_ALPN)
    start = perf()
    server = creator.serverConnectionForTLS(tls)
    server.set_accept_state()
    server.set_app_data(tls)
    spent = perf() - start
    server_done = client_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except SSL.WantReadError:
                pass
        try:
            data = client.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        start = perf()
        if data:
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
        try:
            answer = server.bio_read(65536)
        except SSL.WantReadError:
            answer = b""
        spent += perf() - start
        if answer:
            client.bio_write(answer)
        if server_done and client_done and not data and not answer:
            break
    if not (server_done and client_done):
        raise RuntimeError("handshake did not complete")
    if client.get_alpn_proto_negotiated() != b"http/1.1":
        raise RuntimeError("ALPN did not negotiate http/1.1")
    return spent


def client_context(version: int) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    context.set_max_proto_version(version)
    return context


def run_rounds(
    configs: dict[str, tuple[Any, Callable[[int], bytes]]],
    version: int,
    per_round: int,
    rounds: int,
) -> dict[str, float]:
    """Best handshakes per second (server side) of each configuration."""
    tls = FakeTLSProtocol()
    context = client_context(version)
    best: dict[str, float] = {name: 0.0 for name in configs}
    counters = {name: 0 for name in configs}
    for _ in range(rounds):
        for name, (creator, sni_for) in configs.items():
            gc.disable()
            total = 0.0
            for _ in range(per_round):
                total += handshake_server_seconds(creator, context, sni_for(counters[name]), tls)
                counters[name] += 1
            gc.enable()
            best[name] = max(best[name], per_round / total)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer handshakes (for CI)")
    parser.add_argument("--certificates", type=int, default=10_000)
    args = parser.parse_args(argv)
    count = args.certificates
    per_round, rounds = (100, 3) if args.quick else (400, 5)
    began = time.perf_counter()

    print(f"txacme TLS handshake benchmark ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})")
    rss_start = rss_mb()
    t = time.perf_counter()
    certs = Certificates(count)
    print(f"generated {count} certificates in {time.perf_counter() - t:.1f}s")
    names = certs.names

    # Start-up: the index from PEM objects (the input stays alive, so the
    # difference in resident memory is the index's own).
    entries = certs.entries(names)
    gc.collect()
    rss_before_index = rss_mb()
    t = time.perf_counter()
    big_index = CertificateIndex()
    big_index.replace_all(entries)
    index_seconds = time.perf_counter() - t
    gc.collect()
    rss_index = rss_mb() - rss_before_index
    del entries

    one_index = CertificateIndex()
    one_index.replace_all(certs.entries(names[:1]))
    plain = plain_creator(certs)
    one = SNIConnectionCreator(one_index, acceptable_protocols=SERVER_ALPN)
    big = SNIConnectionCreator(big_index, acceptable_protocols=SERVER_ALPN)
    big_cycle = SNIConnectionCreator(big_index, acceptable_protocols=SERVER_ALPN)
    first = names[0].encode()
    working_set = [n.encode() for n in names[:1000]]
    all_names = [n.encode() for n in names]
    # Warm up the working set (its contexts are built once, then cached).
    tls = FakeTLSProtocol()
    warm = client_context(SSL.TLS1_3_VERSION)
    gc.collect()
    rss_before_contexts = rss_mb()
    for sni in working_set:
        handshake_server_seconds(big, warm, sni, tls)
    gc.collect()
    rss_contexts = rss_mb() - rss_before_contexts
    configs: dict[str, tuple[Any, Callable[[int], bytes]]] = {
        "plain Twisted (CertificateOptions)": (plain, lambda i: first),
        "creator, 1 cert": (one, lambda i: first),
        f"creator, {count} certs, one name": (big, lambda i: first),
        f"creator, {count} certs, 1k names": (big, lambda i: working_set[i % len(working_set)]),
    }
    results13 = run_rounds(configs, SSL.TLS1_3_VERSION, per_round, rounds)
    results12 = run_rounds(configs, SSL.TLS1_2_VERSION, per_round, rounds)
    cold_configs: dict[str, tuple[Any, Callable[[int], bytes]]] = {
        f"creator, {count} certs, all names (cache misses)": (
            big_cycle,
            lambda i: all_names[(i * 7919) % len(all_names)],
        ),
    }
    cold = run_rounds(cold_configs, SSL.TLS1_3_VERSION, per_round, 2)
    rss_after_run = rss_mb()

    # Start-up from a certificate directory (DirectoryStore reads and checks
    # every file, then the index parses them).
    directory = tempfile.mkdtemp(prefix="txacme-bench-")
    try:
        for name in names:
            with open(os.path.join(directory, name + ".pem"), "wb") as f:
                f.write(certs.pem_bytes[name])
        t = time.perf_counter()
        from_disk = CertificateIndex()
        from_disk.load_from(DirectoryStore(directory))
        disk_seconds = time.perf_counter() - t
        if len(from_disk) != count:
            raise RuntimeError("the directory index is incomplete")
        del from_disk
    finally:
        shutil.rmtree(directory)

    plain_name = "plain Twisted (CertificateOptions)"
    print()
    print(f"server-side handshakes per second (best of {rounds} rounds of {per_round})")
    print(f"{'configuration':<48} {'TLS 1.3':>9} {'ratio':>6} {'TLS 1.2':>9} {'ratio':>6}")
    for name in configs:
        print(
            f"{name:<48} {results13[name]:>9.0f} {results13[name] / results13[plain_name]:>6.2f}"
            f" {results12[name]:>9.0f} {results12[name] / results12[plain_name]:>6.2f}"
        )
    for name, value in cold.items():
        print(f"{name:<48} {value:>9.0f} {value / results13[plain_name]:>6.2f}")
    one_name = "creator, 1 cert"
    big_name = f"creator, {count} certs, one name"
    print()
    print(
        f"creator/plain (1 cert): TLS 1.3 {results13[one_name] / results13[plain_name]:.2f}x, "
        f"TLS 1.2 {results12[one_name] / results12[plain_name]:.2f}x (target >= 0.9x)"
    )
    print(
        f"{count} certs vs 1 cert: TLS 1.3 {results13[big_name] / results13[one_name]:.3f}, "
        f"TLS 1.2 {results12[big_name] / results12[one_name]:.3f} (target within 5%)"
    )
    print()
    print(
        f"index of {count} certificates from PEM objects: {index_seconds:.2f}s, "
        f"{rss_index:.1f} MB ({rss_index * 1024 / count:.1f} KB per certificate)"
    )
    print(f"index of {count} certificates from a certificate directory: {disk_seconds:.2f}s")
    print(
        f"{len(working_set)} OpenSSL contexts (one per name in use): +{rss_contexts:.1f} MB "
        f"({rss_contexts * 1024 / len(working_set):.1f} KB each; the creator keeps at most "
        f"{big._cache_size})"
    )
    print(
        f"resident memory after the handshakes: {rss_after_run:.0f} MB "
        f"(at start {rss_start:.0f} MB; includes the benchmark's own copies of the PEM data)"
    )
    print(f"total time {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
