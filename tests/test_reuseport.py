"""
``reuse_port=yes``: txacme.serving.reuseport (two real listening ports on one
TCP port, both accepting; a plain bind refused) and the endpoint string keyword
(parsing, errors, and what endpoint_from_config builds from it).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import endpoints, reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txacme.config.endpoint import (
    EndpointConfig,
    endpoint_from_config,
    parse_endpoint_string_parts,
)
from txacme.errors import ConfigurationError
from txacme.serving import reuseport
from txacme.serving.reuseport import ReusePortEndpoint, reuse_port_endpoint
from txacme.stores.directory import DirectoryStore
from txacme.stores.dirlocks import CoordinatingDirectoryStore

DIRECTORY = "directory=https\\://ca.test/dir"


def parse(description: str) -> EndpointConfig:
    args, kwargs = endpoints._parse(description)  # type: ignore[attr-defined]
    prefix, *rest = args
    return parse_endpoint_string_parts(prefix, None, rest, kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Tagged(Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        self.transport.write(self.factory.tag)  # type: ignore[attr-defined]
        self.transport.loseConnection()


def tagged_factory(tag: bytes) -> Factory:
    factory = Factory.forProtocol(Tagged)
    factory.tag = tag  # type: ignore[attr-defined]
    return factory


class ReusePortEndpointTests(TestCase):
    @inlineCallbacks
    def test_two_listeners_share_a_port(self) -> Any:
        """Two listeners on one port both get connections; a plain bind is refused."""
        port = free_port()
        ports = []
        for tag in (b"A", b"B"):
            endpoint = ReusePortEndpoint(reactor, port, interface="127.0.0.1")
            listening = yield endpoint.listen(tagged_factory(tag))
            self.addCleanup(listening.stopListening)
            self.assertEqual(listening.getHost().port, port)
            ports.append(listening)
        with socket.socket() as plain, self.assertRaises(OSError):
            plain.bind(("127.0.0.1", port))
        seen: set[bytes] = set()
        for _ in range(64):
            reply = yield threads.deferToThread(_fetch, port)
            seen.add(reply)
            if seen == {b"A", b"B"}:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(seen, {b"A", b"B"})

    @inlineCallbacks
    def test_port_taken_without_reuse(self) -> Any:
        """A port held by a socket without SO_REUSEPORT: CannotListenError."""
        with socket.socket() as plain:
            plain.bind(("127.0.0.1", 0))
            plain.listen(1)
            endpoint = ReusePortEndpoint(reactor, plain.getsockname()[1], interface="127.0.0.1")
            yield self.assertFailure(endpoint.listen(tagged_factory(b"x")), CannotListenError)


def _fetch(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        return c.recv(16)


class KeywordTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txacme-reuseport-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_parsed(self) -> None:
        """reuse_port takes yes/no; it is txacme's keyword, not the sub-endpoint's."""
        config = parse(f"acme:/c:tcp:443:reuse_port=yes:{DIRECTORY}")
        self.assertTrue(config.reuse_port)
        self.assertEqual(config.sub_endpoint, "tcp:443")
        self.assertFalse(parse(f"acme:/c:tcp:443:{DIRECTORY}").reuse_port)
        self.assertFalse(parse(f"acme:/c:tcp:443:reuse_port=off:{DIRECTORY}").reuse_port)
        with self.assertRaisesRegex(ConfigurationError, "reuse_port"):
            parse(f"acme:/c:tcp:443:reuse_port=maybe:{DIRECTORY}")

    def test_unsupported_platform(self) -> None:
        """Where SO_REUSEPORT does not balance, one clear line names the platform."""
        self.patch(reuseport.sys, "platform", "darwin")
        with self.assertRaisesRegex(ConfigurationError, "^reuse_port=yes needs Linux .*darwin"):
            parse(f"acme:/c:tcp:443:reuse_port=yes:{DIRECTORY}")
        self.assertFalse(parse(f"acme:/c:tcp:443:{DIRECTORY}").reuse_port)

    def build(self, description: str) -> Any:
        return endpoint_from_config(reactor, parse(description))

    def test_builds_shared_listeners_and_coordinating_store(self) -> None:
        """Both the TLS port and http01= share their ports; the directory coordinates."""
        endpoint = self.build(
            f"acme:{self.dir}:tcp6:8443:interface=\\:\\:1:backlog=7:reuse_port=yes:{DIRECTORY}"
            ":challenge=http-01:http01=tcp\\:8080\\:interface\\=127.0.0.1"
        )
        self.assertIsInstance(endpoint.sub_endpoint, ReusePortEndpoint)
        self.assertEqual(
            (
                endpoint.sub_endpoint.port,
                endpoint.sub_endpoint.interface,
                endpoint.sub_endpoint.backlog,
                endpoint.sub_endpoint.family,
            ),
            (8443, "::1", 7, socket.AF_INET6),
        )
        self.assertIsInstance(endpoint.http01_endpoint, ReusePortEndpoint)
        self.assertEqual(
            (endpoint.http01_endpoint.port, endpoint.http01_endpoint.interface), (8080, "127.0.0.1")
        )
        self.assertIsInstance(endpoint.cert_store, CoordinatingDirectoryStore)
        self.assertTrue(endpoint.close_store)
        self.assertTrue(os.path.isdir(os.path.join(self.dir, ".txacme", "locks")))

    def test_without_reuse_port_nothing_changes(self) -> None:
        """No keyword: Twisted's endpoint and a plain DirectoryStore."""
        endpoint = self.build(f"acme:{self.dir}:tcp:8443:{DIRECTORY}")
        self.assertNotIsInstance(endpoint.sub_endpoint, ReusePortEndpoint)
        self.assertIs(type(endpoint.cert_store), DirectoryStore)
        self.assertFalse(os.path.exists(os.path.join(self.dir, ".txacme")))

    def test_other_sub_endpoints_refused(self) -> None:
        """unix:, ssl: and the like cannot share a port: a one-line error."""
        for sub in ("unix:/tmp/x.sock", "unix:/tmp/w.sock:mode=600"):
            with self.assertRaisesRegex(
                ConfigurationError, r"^reuse_port=yes needs a tcp: or tcp6: .*sub-endpoint"
            ):
                self.build(f"acme:{self.dir}:{sub}:reuse_port=yes:{DIRECTORY}")
        with self.assertRaisesRegex(ConfigurationError, "tcp: or tcp6: http01="):
            self.build(
                f"acme:{self.dir}:tcp:8443:reuse_port=yes:{DIRECTORY}:challenge=http-01"
                ":http01=unix\\:/tmp/y.sock"
            )

    def test_helper_refuses_non_tcp(self) -> None:
        """reuse_port_endpoint names the endpoint type it cannot share."""
        unix = endpoints.UNIXServerEndpoint(reactor, "/tmp/z.sock")
        with self.assertRaisesRegex(ConfigurationError, "UNIXServerEndpoint"):
            reuse_port_endpoint(reactor, unix, "thing")
