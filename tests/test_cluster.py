"""
Three txacme processes, one PostgreSQL store, one Pebble: the cluster end to end.

Each node is a real subprocess (this file run as a program, see :func:`node_main`)
with its own :class:`~txacme.issuing.service.AcmeIssuingService`, responders, TLS listener and
:class:`~txacme.serving.cluster.ClusterNode`. Only node 0 listens where Pebble's validator
connects (``http_port`` / ``tls_port``); nodes 1 and 2 listen on ports of their own, so
every challenge they start is answered by node 0 from the challenge records in the
database. Node 1 answers only ``http-01``, node 2 only ``tls-alpn-01``, node 0 both.

What is shown:

* 20 wanted names are issued with exactly one order each (counted in Pebble's log), and
  the work is spread over the nodes;
* a certificate renewed by one node is served by the other two without a restart;
* a node killed with ``SIGKILL`` while holding the lock of a name: the lease lapses and
  another node obtains that name (fence 2), still with one order for it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness.tlsclient import tls_exchange

NODE_COUNT = 3
NAME_COUNT = 20


# ---------------------------------------------------------------------------
# The node program
# ---------------------------------------------------------------------------


def node_main(argv: list[str]) -> None:
    """Run one cluster node until killed (``python tests/test_cluster.py --db ...``)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--directory", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--challenges", default="tls-alpn-01,http-01")
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument(
        "--stall", action="store_true", help="take locks, then never finish (to be killed)"
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor as node_reactor
    from twisted.internet.task import react
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from txacme.logs import set_log_level

    set_log_level("debug")  # the test reads the debug lines of answers for other nodes
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    react(lambda r: Deferred.fromCoroutine(_run_node(node_reactor, args)))


async def _run_node(node_reactor: Any, args: argparse.Namespace) -> None:
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from txacme.challenges.http01 import HTTP01Responder, http01_root
    from txacme.challenges.tlsalpn01 import TLSALPN01Responder
    from txacme.issuing.service import AcmeIssuingService
    from txacme.keys import generate_private_key, jwk_for
    from txacme.protocol.client import Client
    from txacme.serving.cluster import ClusterNode
    from txacme.serving.hello import HelloHookFactory
    from txacme.serving.index import CertificateIndex
    from txacme.serving.tls import SNIConnectionCreator
    from txacme.stores.postgres import PostgresStore

    store = PostgresStore(
        args.db, node_id=args.node_id, lease_ttl=args.lease_ttl, reactor=node_reactor
    )
    await store.start()
    index = CertificateIndex()
    await index.load_from(store)
    account_key = jwk_for(generate_private_key())

    def client_creator() -> Deferred[Client]:
        return Client.from_url(node_reactor, args.directory, account_key, ca_file=args.ca_file)

    tls_responder = TLSALPN01Responder()
    http_responder = HTTP01Responder()
    local = {"tls-alpn-01": tls_responder, "http-01": http_responder}
    chosen = [local[c] for c in args.challenges.split(",")]
    options: dict[str, Any] = {}
    if args.stall:

        def stall(*a: Any, **kw: Any) -> Deferred[Any]:
            print("STALLING", flush=True)
            return Deferred()

        options["issue"] = stall
    holder: list[Any] = []

    def wanted(name: str) -> None:
        holder[0].issue_cert(name).addErrback(lambda _: None)

    node = ClusterNode(
        store,
        index,
        tls_alpn=tls_responder.registry,
        http01=http_responder,
        on_wanted=wanted,
        clock=node_reactor,
    )
    service = AcmeIssuingService(
        store,
        client_creator,
        node_reactor,
        node.responders(chosen),
        check_interval=3600,
        on_stored=index.update,
        **options,
    )
    holder.append(service)
    node.start()

    root = Resource()
    root.putChild(b"", Data(args.node_id.encode(), "text/plain"))
    creator = SNIConnectionCreator(
        index, challenges=tls_responder.registry, acceptable_protocols=[b"http/1.1"]
    )
    tls_port = node_reactor.listenTCP(
        args.tls_port,
        HelloHookFactory(creator, Site(root), node.hello_hook, clock=node_reactor),
        interface="127.0.0.1",
        backlog=128,
    )
    ports = {"tls": tls_port.getHost().port, "http": None, "control": None}
    if args.http_port:
        http_port = node_reactor.listenTCP(
            args.http_port, Site(http01_root(node.http01)), interface="127.0.0.1", backlog=128
        )
        ports["http"] = http_port.getHost().port

    class Issue(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            name = request.args[b"name"][0].decode()

            def done(issued: Any) -> None:
                request.write(f"{issued.certificate.serial_number:x}".encode())
                request.finish()

            def failed(failure: Any) -> None:
                request.setResponseCode(500)
                request.write(failure.getErrorMessage().encode())
                request.finish()

            service.issue_cert(name).addCallbacks(done, failed)
            from twisted.web.server import NOT_DONE_YET

            return NOT_DONE_YET

    control = Resource()
    control.putChild(b"issue", Issue())
    control_port = node_reactor.listenTCP(0, Site(control), interface="127.0.0.1")
    ports["control"] = control_port.getHost().port
    service.startService()
    print("READY " + json.dumps(ports), flush=True)
    await Deferred()  # until killed


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


def _import_root() -> str:
    import txacme

    return str(Path(txacme.__file__).resolve().parent.parent)


class Node:
    """A node subprocess, its ports and its log."""

    def __init__(self, node_id: str, args: list[str], workdir: Path) -> None:
        self.node_id = node_id
        self.log_path = workdir / f"{node_id}.log"
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            [_import_root(), repo] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--node-id", node_id, *args],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.ports: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Blocking: read stdout until the READY line."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise AssertionError(f"{self.node_id} exited:\n{self.log_text()}")
            if line.startswith("READY "):
                self.ports = json.loads(line[6:])
                return self.ports
        raise AssertionError(f"{self.node_id} not ready:\n{self.log_text()}")

    def wait_line(self, marker: str, timeout: float = 30.0) -> None:
        """Blocking: read stdout until a line starting with ``marker``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise AssertionError(f"{self.node_id} exited:\n{self.log_text()}")
            if line.startswith(marker):
                return
        raise AssertionError(f"{self.node_id} never printed {marker}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def served_serial(port: int, name: str, cafile: str) -> int:
    """Blocking: the serial number of the certificate served for ``name`` on ``port``."""
    return tls_exchange(port, name, cafile).certificate.serial_number


def control_get(port: int, path: str) -> tuple[int, str]:
    """Blocking GET on a node's control port."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def pebble_issued(pebble: Any, since: int = 0) -> list[tuple[str, ...]]:
    """
    The names of every certificate Pebble issued after log offset ``since``
    (one tuple per certificate), asked from its management interface.
    """
    context = ssl.create_default_context(cafile=pebble.ca_file)
    issued = []
    for serial in re.findall(r"Issued certificate serial (\w+)", pebble.log_text()[since:]):
        import urllib.request

        with urllib.request.urlopen(
            f"{pebble.mgmt_url}/cert-status-by-serial/{serial}", context=context, timeout=10
        ) as response:
            status = json.loads(response.read())
        cert = x509.load_pem_x509_certificate(status["Certificate"].encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        issued.append(tuple(sorted(san.get_values_for_type(x509.DNSName))))
    return issued


def pebble_order_count(pebble: Any, since: int = 0) -> int:
    """How many orders Pebble created after log offset ``since``."""
    return len(re.findall(r"Added order ", pebble.log_text()[since:]))


class ClusterTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        from tests.harness.pebble import PebbleUnavailable, shared_pebble
        from tests.harness.postgres import PostgresUnavailable, shared_postgres

        try:
            self.postgres = shared_postgres()
            self.pebble = shared_pebble()
        except (PostgresUnavailable, PebbleUnavailable) as e:
            raise SkipTest(str(e))
        self.db = self.postgres.new_database()
        self.addCleanup(self.postgres.drop_database, self.db)
        self.workdir = Path(tempfile.mkdtemp(prefix="txacme-cluster-"))
        roots = self.workdir / "roots.pem"
        roots.write_bytes(b"".join(self.pebble.roots()))
        self.roots = str(roots)
        self.nodes: list[Node] = []
        self.addCleanup(self._stop_nodes)

    def _stop_nodes(self) -> None:
        import shutil

        for node in self.nodes:
            node.stop()
        if os.environ.get("TXACME_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_node(self, node_id: str, *extra: str) -> Node:
        args = [
            "--db",
            self.db,
            "--directory",
            self.pebble.directory_url,
            "--ca-file",
            self.pebble.ca_file,
            *extra,
        ]
        node = Node(node_id, args, self.workdir)
        self.nodes.append(node)
        return node

    def store(self) -> Any:
        from txacme.stores.postgres import PostgresStore

        store = PostgresStore(self.db, node_id="test", reactor=reactor)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def test_cluster(self) -> Any:
        """
        Twenty names over three nodes, one order each; a renewal spreads to every
        node; a node killed holding a lock is taken over once its lease lapses.
        """
        prefix = uuid.uuid4().hex[:8]
        names = [f"n{i}-{prefix}.cluster.test" for i in range(NAME_COUNT)]
        stalled = f"stalled-{prefix}.cluster.test"
        store = self.store()
        yield store.start()

        # A node takes the lock of one name and stalls; SIGKILL it while it holds it.
        yield store.mark_wanted(stalled)
        doomed = self.start_node("doomed", "--stall", "--lease-ttl", "3")
        yield threads.deferToThread(doomed.wait_ready)
        yield threads.deferToThread(doomed.wait_line, "STALLING")
        holder = yield store.holder(stalled)
        self.assertIsNotNone(holder)
        self.assertEqual(holder[:2], ("doomed", 1))
        doomed.kill()

        log_start = len(self.pebble.log_text())
        started = time.monotonic()
        # Node 0 listens where the validator connects: up first, or the first
        # orders of the others would be validated against a closed port.
        node0 = self.start_node(
            "node0",
            "--tls-port",
            str(self.pebble.tls_port),
            "--http-port",
            str(self.pebble.http_port),
        )
        yield threads.deferToThread(node0.wait_ready)
        cluster = [
            node0,
            self.start_node("node1", "--challenges", "http-01"),
            self.start_node("node2", "--challenges", "tls-alpn-01"),
        ]
        for node in cluster[1:]:
            yield threads.deferToThread(node.wait_ready)
        # Names wanted now are heard of by every node at once: they compete.
        for name in names:
            yield store.mark_wanted(name)

        # Every name (and the stalled one, once its lease lapsed) is stored.
        wanted = [*names, stalled]
        while True:
            entries = yield store.as_dict()
            if all(entries.get(n) for n in wanted):
                break
            if time.monotonic() - started > 90:
                self.fail("not all names were issued:\n" + self._logs())
            yield deferLater(reactor, 0.2, lambda: None)
        elapsed = time.monotonic() - started

        # Exactly one order per name: as many orders as certificates, one each.
        issued = yield threads.deferToThread(pebble_issued, self.pebble, log_start)
        self.assertEqual(sorted(issued), sorted((n,) for n in wanted), self._logs())
        self.assertEqual(pebble_order_count(self.pebble, log_start), len(wanted))

        # The lock of the killed node lapsed and a later holder (every other node
        # takes it once: the first orders, the others find the certificate) finished.
        rows = self.postgres.execute(
            self.db, "SELECT fence FROM txacme_locks WHERE name = %s", (stalled,)
        )
        self.assertGreaterEqual(rows[0][0], 2)
        rows = self.postgres.execute(
            self.db, "SELECT updated_by FROM txacme_certificates WHERE name = %s", (stalled,)
        )
        self.assertIn(rows[0][0], ["node0", "node1", "node2"])

        # Work was spread, and the validator always reached node 0: orders of the
        # other nodes were answered from the challenge records.
        stored_by = dict(
            self.postgres.execute(self.db, "SELECT name, updated_by FROM txacme_certificates")
        )
        by_node = {n.node_id: sum(1 for v in stored_by.values() if v == n.node_id) for n in cluster}
        self.assertGreater(by_node["node1"] + by_node["node2"], 0, by_node)
        answered_for_others = len(re.findall(r"started by node[12]", cluster[0].log_text()))
        self.assertGreater(answered_for_others, 0, self._logs())

        # Each node serves every certificate, as stored.
        serials = {}
        for name in names[:5]:
            entry = entries[name]
            cert = x509.load_pem_x509_certificate(entry[1].as_bytes())
            serials[name] = cert.serial_number
            for node in cluster:
                served = yield threads.deferToThread(
                    served_serial, node.ports["tls"], name, self.roots
                )
                self.assertEqual(served, cert.serial_number, (node.node_id, name))

        # A renewal written by node 1 is served by nodes 0 and 2 without restart.
        renewed = names[0]
        log_start = len(self.pebble.log_text())
        status, body = yield threads.deferToThread(
            control_get, cluster[1].ports["control"], f"/issue?name={renewed}"
        )
        self.assertEqual(status, 200, body)
        new_serial = int(body, 16)
        self.assertNotEqual(new_serial, serials[renewed])
        for node in (cluster[0], cluster[2]):
            deadline = time.monotonic() + 10
            while True:
                served = yield threads.deferToThread(
                    served_serial, node.ports["tls"], renewed, self.roots
                )
                if served == new_serial:
                    break
                if time.monotonic() > deadline:
                    self.fail(f"{node.node_id} still serves the old certificate")
                yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(pebble_order_count(self.pebble, log_start), 1)
        print(
            f"\n{len(wanted)} names over {NODE_COUNT} nodes in {elapsed:.1f} s; stored by {by_node}"
        )

    def _logs(self) -> str:
        return "\n".join(f"== {n.node_id}\n{n.log_text()[-6000:]}" for n in self.nodes)


if __name__ == "__main__":
    node_main(sys.argv[1:])
