"""
``twistd``-style endpoint strings with ``challenge=dns-01``: a wildcard
certificate obtained through RFC 2136 updates to a real BIND, validated by
Pebble (which resolves through that BIND), then served by SNI.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase

from tests.harness.bind import start_bind
from tests.harness.pebble import start_pebble
from tests.harness.twistd import quote
from tests.test_endpoint_pebble import PAGE, dns_names, fetch, site


class DNS01EndpointTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.bind = start_bind()
        self.addCleanup(self.bind.stop)
        self.pebble = start_pebble(dns_server=f"{self.bind.address}:{self.bind.port}")
        self.addCleanup(self.pebble.stop)
        self.work = Path(tempfile.mkdtemp(prefix="txacme-dns01-endpoint-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.certs = self.work / "certs"
        self.certs.mkdir()
        self.roots = self.work / "roots.pem"
        self.roots.write_bytes(b"".join(self.pebble.roots()))

    @inlineCallbacks
    def test_wildcard_from_endpoint_string(self) -> Any:
        (self.certs / "*.example.test.pem").write_bytes(b"")
        before = self.bind.zone_records("example.test")
        server = f"{self.bind.address}:{self.bind.port}"
        description = (
            f"acme:{quote(str(self.certs))}:tcp:0:interface=127.0.0.1"
            f":directory={quote(self.pebble.directory_url)}:ca_file={quote(self.pebble.ca_file)}"
            f":challenge=dns-01:dns=rfc2136:dns_server={quote(server)}"
            f":tsig_key_name={self.bind.key_name}:tsig_secret_file={quote(str(self.bind.key_file))}"
            f":dns_resolvers={quote(server)}"
        )
        endpoint = serverFromString(reactor, description)
        port = yield endpoint.listen(site())
        self.addCleanup(port.stopListening)
        self.assertGreater((self.certs / "*.example.test.pem").stat().st_size, 0)
        result = yield threads.deferToThread(
            fetch, port.getHost().port, "anything.example.test", str(self.roots)
        )
        self.assertEqual(dns_names(result["cert"]), ["*.example.test"])
        self.assertEqual(result["body"], PAGE)
        # The challenge records were removed: the zone is as it was.
        self.assertEqual(self.bind.zone_records("example.test"), before)
