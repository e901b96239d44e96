"""
The dns-lexicon bridge: its contract with a fake lexicon provider, and lexicon's
real ``ddns`` (RFC 2136) provider against BIND.

Lexicon's ``ddns`` provider always sends to port 53, so that test runs BIND on
127.0.0.1:53; it needs root (as CI has) and a free port 53, and is skipped
otherwise.
"""

from __future__ import annotations

import os
import socket
import threading
from argparse import ArgumentParser
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from txacme.challenges.dns01 import (
    DNS01Responder,
    DNSPythonLookup,
    txt_value,
)
from txacme.challenges.dnsproviders import DNSUpdateError, IDNSProvider, Nameserver
from txacme.config.dns import dns01_responder_from_options
from txacme.errors import ConfigurationError

try:
    import lexicon  # noqa: F401
    from lexicon.interfaces import Provider as LexiconBase
except ImportError:  # pragma: no cover - lexicon is an optional extra
    raise SkipTest("dns-lexicon is not installed (pip install txacme[lexicon])")

from txacme.challenges.dnsproviders.lexicon import LexiconProvider, load_lexicon_provider_class

TOKEN = "s3cr3t-t0ken-value"


class MemoryProvider(LexiconBase):  # type: ignore[misc]
    """A lexicon provider keeping records in a class-level list (a test double)."""

    records: list[tuple[str, str, str, str]] = []  # (domain, type, name, content)
    threads: list[str] = []
    configs: list[dict[str, Any]] = []
    fail_with: Exception | None = None

    @staticmethod
    def get_nameservers() -> list[str]:
        return []

    @staticmethod
    def configure_parser(parser: ArgumentParser) -> None:
        parser.add_argument("--auth-token")

    def authenticate(self) -> None:
        MemoryProvider.threads.append(threading.current_thread().name)
        MemoryProvider.configs.append(
            {
                "domain": self.domain,
                "ttl": self._get_lexicon_option("ttl"),
                "auth_token": self._get_provider_option("auth_token"),
                "region": self._get_provider_option("region"),
            }
        )
        if MemoryProvider.fail_with is not None:
            raise MemoryProvider.fail_with

    def create_record(self, rtype: str, name: str, content: str) -> bool:
        record = (self.domain, rtype, name, content)
        if record not in self.records:
            self.records.append(record)
        return True

    def list_records(self, rtype: Any = None, name: Any = None, content: Any = None) -> Any:
        return []

    def update_record(
        self, identifier: Any = None, rtype: Any = None, name: Any = None, content: Any = None
    ) -> bool:
        return False

    def delete_record(
        self, identifier: Any = None, rtype: Any = None, name: Any = None, content: Any = None
    ) -> bool:
        self.records[:] = [
            r
            for r in self.records
            if not (r[1] == rtype and r[2] == name and (content is None or r[3] == content))
        ]
        return True


class ContractTests(TestCase):
    """LexiconProvider against a fake lexicon provider class."""

    def setUp(self) -> None:
        MemoryProvider.records = []
        MemoryProvider.threads = []
        MemoryProvider.configs = []
        MemoryProvider.fail_with = None
        self.provider = LexiconProvider(
            "memory", {"auth_token": TOKEN}, ttl=42, provider_class=MemoryProvider
        )

    async def test_add_remove(self) -> None:
        self.assertTrue(verifyObject(IDNSProvider, self.provider))
        name = "_acme-challenge.example.test"
        await self.provider.add_txt_record("example.test", name, "one")
        await self.provider.add_txt_record("example.test", name, "two")
        self.assertEqual(
            MemoryProvider.records,
            [("example.test", "TXT", name, "one"), ("example.test", "TXT", name, "two")],
        )
        await self.provider.remove_txt_record("example.test", name, "one")
        self.assertEqual(MemoryProvider.records, [("example.test", "TXT", name, "two")])
        # Each call ran off the reactor thread, with txacme's zone, TTL and options.
        self.assertNotIn(threading.main_thread().name, MemoryProvider.threads)
        self.assertEqual(
            MemoryProvider.configs[0],
            {"domain": "example.test", "ttl": 42, "auth_token": TOKEN, "region": None},
        )

    async def test_environment(self) -> None:
        os.environ["LEXICON_MEMORY_REGION"] = "moon-1"
        self.addCleanup(os.environ.pop, "LEXICON_MEMORY_REGION")
        await self.provider.add_txt_record("example.test", "x.example.test", "v")
        self.assertEqual(MemoryProvider.configs[-1]["region"], "moon-1")
        no_env = LexiconProvider("memory", {}, use_env=False, provider_class=MemoryProvider)
        await no_env.add_txt_record("example.test", "x.example.test", "v")
        self.assertIsNone(MemoryProvider.configs[-1]["region"])

    async def test_errors_are_redacted(self) -> None:
        MemoryProvider.fail_with = RuntimeError(f"401 for https://api.test/?token={TOKEN}")
        with self.assertRaises(DNSUpdateError) as caught:
            await self.provider.add_txt_record("example.test", "x.example.test", "v")
        message = str(caught.exception)
        self.assertIn("lexicon memory: add of TXT x.example.test", message)
        self.assertIn("<redacted>", message)
        self.assertNotIn(TOKEN, message)
        self.assertNotIn(TOKEN, repr(self.provider))

    async def test_with_responder(self) -> None:
        """The bridge behind DNS01Responder (fake DNS view of the fake provider)."""

        class View:
            def resolve_cname(self, name: str) -> Deferred[str]:
                return succeed(name)

            def find_zone(self, name: str) -> Deferred[str]:
                return succeed("example.test")

            def authoritative_servers(self, zone: str) -> Deferred[list[Nameserver]]:
                return succeed([Nameserver("192.0.2.1")])

            def query_txt(self, server: Nameserver, name: str) -> Deferred[set[str]]:
                return succeed({r[3] for r in MemoryProvider.records if r[2] == name})

        responder = DNS01Responder(self.provider, lookup=View(), poll_interval=0.01, clock=reactor)

        class Response:
            key_authorization = "tok.thumb"

        await responder.start_responding("example.test", None, Response())
        self.assertEqual(MemoryProvider.records[0][3], txt_value("tok.thumb"))
        await responder.stop_responding("example.test", None, Response())
        self.assertEqual(MemoryProvider.records, [])


class LoadingTests(TestCase):
    """Finding lexicon providers by name."""

    def test_known(self) -> None:
        self.assertTrue(issubclass(load_lexicon_provider_class("ddns"), LexiconBase))

    def test_unknown_or_bad(self) -> None:
        for name in ("no_such_provider", "../etc", "Cloudflare"):
            error = self.assertRaises(ConfigurationError, load_lexicon_provider_class, name)
            self.assertIn("dns_lexicon_provider=", str(error))

    def test_options(self) -> None:
        responder = dns01_responder_from_options(
            {
                "dns": "lexicon",
                "dns_lexicon_provider": "ddns",
                "dns_lexicon_auth_token": TOKEN,
                "dns_lexicon_ddns_server": "127.0.0.1",
                "dns_ttl": "30",
            },
            clock=reactor,
        )
        assert isinstance(responder, DNS01Responder)
        provider = responder.provider
        assert isinstance(provider, LexiconProvider)
        self.assertEqual(provider.provider_name, "ddns")
        self.assertEqual(provider.ttl, 30)
        self.assertEqual(provider._options, {"auth_token": TOKEN, "ddns_server": "127.0.0.1"})
        self.assertNotIn(TOKEN, repr(responder))


class DDNSAgainstBindTests(TestCase):
    """Lexicon's own ``ddns`` provider, through the bridge, against BIND."""

    async def test_add_remove_and_issue_check(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("lexicon's ddns provider needs a server on port 53 (run as root)")
        from tests.harness.bind import BindUnavailable, start_bind

        address = "127.0.0.1"
        if not _port_free(address, 53):
            raise SkipTest(f"{address}:53 is taken: lexicon's ddns provider needs port 53")
        try:
            bind = start_bind(address=address, port=53)
        except BindUnavailable as e:
            raise SkipTest(f"cannot run BIND on {address}:53: {e}")
        self.addCleanup(bind.stop)
        before = bind.zone_records("example.test")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        responder = dns01_responder_from_options(
            {
                "dns": "lexicon",
                "dns_lexicon_provider": "ddns",
                "dns_lexicon_ddns_server": address,
                "dns_lexicon_auth_token": f"hmac-sha256:{bind.key_name}:{bind.key_secret}",
                "dns_resolvers": bind.server,
            },
            clock=reactor,
        )
        assert isinstance(responder, DNS01Responder)
        assert isinstance(responder.lookup, DNSPythonLookup)
        responder._check._first = 0.02

        class Response:
            def __init__(self, key_authorization: str) -> None:
                self.key_authorization = key_authorization

        wild, apex = Response("wild.thumb"), Response("apex.thumb")
        await responder.start_responding("example.test", None, wild)
        await responder.start_responding("example.test", None, apex)
        name = "_acme-challenge.example.test"
        self.assertEqual(bind.txt(name), {txt_value("wild.thumb"), txt_value("apex.thumb")})
        await responder.stop_responding("example.test", None, wild)
        self.assertEqual(bind.txt(name), {txt_value("apex.thumb")})
        await responder.stop_responding("example.test", None, apex)
        self.assertEqual(bind.zone_records("example.test"), before)
        for event in events:
            self.assertNotIn(bind.key_secret, formatEvent(event) + repr(event))


def _port_free(address: str, port: int) -> bool:
    """Whether ``port`` is free for both UDP and TCP on ``address`` right now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True
