"""
Endpoint strings for a cluster and for on-demand issuance, end to end: two
``acme:`` endpoints share one PostgreSQL store (``store=postgresql://...``); only
the first listens where Pebble's validator connects, so a name the second node
orders is validated through the challenge records in the database. On-demand
(``on_demand=``) issues an allowed name at its first handshake.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.harness.pebble import start_pebble
from tests.harness.postgres import shared_postgres
from tests.harness.twistd import quote
from tests.test_cluster import pebble_order_count
from tests.test_endpoint_pebble import PAGE, dns_names, fetch, site


class ClusterEndpointTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.postgres = shared_postgres()
        self.database = self.postgres.new_database()
        self.addCleanup(self.postgres.drop_database, self.database)
        self.pebble = start_pebble()
        self.addCleanup(self.pebble.stop)
        self.work = Path(tempfile.mkdtemp(prefix="txacme-cluster-endpoint-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.roots = self.work / "roots.pem"
        self.roots.write_bytes(b"".join(self.pebble.roots()))

    def description(self, node: str, port: int, extra: str = "") -> str:
        certs = self.work / node
        certs.mkdir(exist_ok=True)
        return (
            f"acme:{quote(str(certs))}:tcp:{port}:interface=127.0.0.1"
            f":directory={quote(self.pebble.directory_url)}:ca_file={quote(self.pebble.ca_file)}"
            f":store={quote(self.database)}:store_node_id={node}{extra}"
        )

    @inlineCallbacks
    def listen(self, description: str) -> Any:
        port = yield serverFromString(reactor, description).listen(site())
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_two_nodes_one_database_and_on_demand(self) -> Any:
        front = yield self.listen(self.description("front", self.pebble.tls_port))
        back = yield self.listen(
            self.description("back", 0, ":on_demand=*.example.test:on_demand_rate=5")
        )
        # The back node cannot be reached by the validator: the front node
        # answers the tls-alpn-01 challenge it finds in the database.
        result = yield threads.deferToThread(
            fetch, back.getHost().port, "shop.example.test", str(self.roots)
        )
        self.assertEqual(dns_names(result["cert"]), ["shop.example.test"])
        self.assertEqual(result["body"], PAGE)
        # The front node learns of the new certificate by notification.
        for _ in range(100):
            try:
                served = yield threads.deferToThread(
                    fetch, front.getHost().port, "shop.example.test", str(self.roots)
                )
                break
            except OSError:
                yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(served["cert"], result["cert"])
        # One order for the name, whichever node asked.
        # (Orders Pebble created, not requests: a badNonce retry repeats the POST.)
        self.assertEqual(pebble_order_count(self.pebble), 1, self.pebble.log_text()[-3000:])
        # A name the policy does not allow is never ordered.
        with self.assertRaises(OSError):
            yield threads.deferToThread(
                fetch, back.getHost().port, "elsewhere.test", str(self.roots)
            )
        self.assertEqual(pebble_order_count(self.pebble), 1)
