"""
Unit tests of the dns-01 responder base: TXT values, CNAME following, zone
discovery, the propagation check (with a fake DNS and a Clock), record
bookkeeping, and the options factory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
from typing import Any

from acme import challenges
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWKEC
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txacme.challenges.dns01 import (
    DNS01Responder,
    DNSPropagationTimeout,
    DNSPythonLookup,
    txt_value,
    validation_name,
)
from txacme.challenges.dnsproviders import (
    DNSError,
    DNSUpdateError,
    IDNSProvider,
    Nameserver,
    parse_nameserver,
)
from txacme.challenges.dnsproviders.rfc2136 import RFC2136Provider, TSIGKey, read_tsig_key_file
from txacme.config.dns import dns01_responder_from_options
from txacme.errors import ACMETimeout, ConfigurationError
from txacme.interfaces import IResponder

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

NS1 = Nameserver("192.0.2.1", 53, name="ns1.example.test")
NS1_V6 = Nameserver("2001:db8::1", 53, name="ns1.example.test")
NS2 = Nameserver("192.0.2.2", 53, name="ns2.example.test")


class Response:
    """Stands in for acme's KeyAuthorizationChallengeResponse."""

    def __init__(self, token: str) -> None:
        self.key_authorization = f"{token}.thumbprint"


class FakeDNS:
    """
    A DNS world: zones with name servers, CNAMEs, and per-server views of the
    TXT records (a server that "lags" keeps an old copy until it catches up).
    """

    def __init__(self) -> None:
        self.zones: dict[str, list[Nameserver]] = {
            "example.test": [NS1, NS2],
            "delegated.test": [NS2],
        }
        self.cnames: dict[str, str] = {}
        self.primary: dict[str, list[str]] = {}
        self.lagging: dict[Nameserver, dict[str, list[str]]] = {}
        self.failing: dict[Nameserver, str] = {}
        self.queries: list[tuple[Nameserver, str]] = []
        self.held: list[tuple[Deferred[set[str]], set[str]]] | None = None
        self.lookups: list[tuple[str, str]] = []

    def lag(self, server: Nameserver) -> None:
        self.lagging[server] = {k: list(v) for k, v in self.primary.items()}

    def catch_up(self, server: Nameserver) -> None:
        del self.lagging[server]

    def resolve_cname(self, name: str) -> Deferred[str]:
        self.lookups.append(("CNAME", name))
        while name in self.cnames:
            name = self.cnames[name]
        return succeed(name)

    def find_zone(self, name: str) -> Deferred[str]:
        self.lookups.append(("SOA", name))
        labels = name.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.zones:
                return succeed(".".join(labels[i:]))
        return fail(DNSError(f"no DNS zone (SOA record) found for {name}"))

    def authoritative_servers(self, zone: str) -> Deferred[list[Nameserver]]:
        self.lookups.append(("NS", zone))
        return succeed(list(self.zones[zone]))

    def query_txt(self, server: Nameserver, name: str) -> Deferred[set[str]]:
        self.queries.append((server, name))
        if server in self.failing:
            return fail(DNSError(self.failing[server]))
        data = self.lagging.get(server, self.primary)
        if self.held is not None:
            d: Deferred[set[str]] = Deferred()
            self.held.append((d, set(data.get(name, []))))
            return d
        return succeed(set(data.get(name, [])))

    def release(self) -> None:
        assert self.held is not None
        held, self.held[:] = list(self.held), []
        for d, values in held:
            d.callback(values)


@implementer(IDNSProvider)
class FakeProvider:
    """Writes into the FakeDNS primary; can be told to hold or fail its calls."""

    def __init__(self, dns: FakeDNS) -> None:
        self.dns = dns
        self.calls: list[tuple[str, str, str, str]] = []
        self.hold: list[Deferred[None]] | None = None
        self.fail_add: Exception | None = None

    def _finish(self, apply: Any) -> Deferred[None]:
        if self.hold is not None:
            d: Deferred[None] = Deferred()
            d.addCallback(lambda _: apply())
            self.hold.append(d)
            return d
        apply()
        return succeed(None)

    def add_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        self.calls.append(("add", zone, fqdn, value))
        if self.fail_add is not None:
            return fail(self.fail_add)
        return self._finish(lambda: self.dns.primary.setdefault(fqdn, []).append(value))

    def remove_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        self.calls.append(("remove", zone, fqdn, value))
        return self._finish(lambda: self.dns.primary[fqdn].remove(value))


class TXTValueTests(TestCase):
    """The TXT value and the validation name."""

    def test_empty_vector(self) -> None:
        """SHA-256 of the empty string, base64url without padding."""
        self.assertEqual(txt_value(""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU")

    def test_fixed_vector(self) -> None:
        self.assertEqual(
            txt_value("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8Kh"),
            base64.urlsafe_b64encode(
                hashlib.sha256(
                    b"evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8Kh"
                ).digest()
            )
            .rstrip(b"=")
            .decode(),
        )

    def test_matches_acme_library(self) -> None:
        """Agrees with the acme package's own dns-01 validation for a real key."""
        key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        chall = challenges.DNS01(token=os.urandom(32))
        response = chall.response(key)
        self.assertEqual(txt_value(response.key_authorization), chall.validation(key))
        self.assertEqual(len(txt_value(response.key_authorization)), 43)
        self.assertEqual(txt_value(response.key_authorization.encode()), chall.validation(key))

    def test_validation_name(self) -> None:
        self.assertEqual(validation_name("example.test"), "_acme-challenge.example.test")
        self.assertEqual(validation_name("*.Example.TEST."), "_acme-challenge.example.test")


class ResponderTests(TestCase):
    """DNS01Responder against a fake DNS, with a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeDNS()
        self.provider = FakeProvider(self.dns)
        self.responder = DNS01Responder(
            self.provider, lookup=self.dns, clock=self.clock, propagation_timeout=30
        )

    def start(self, name: str, token: str) -> tuple[Deferred[None], Response]:
        response = Response(token)
        return self.responder.start_responding(name, None, response), response

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IResponder, self.responder))
        self.assertTrue(verifyObject(IDNSProvider, RFC2136Provider("127.0.0.1", None)))
        self.assertEqual(self.responder.challenge_type, "dns-01")

    def test_visible_at_once(self) -> None:
        d, response = self.start("example.test", "tok")
        self.assertNoResult(d)  # the first check runs on the next reactor turn
        self.clock.advance(0)
        self.successResultOf(d)
        value = txt_value(response.key_authorization)
        self.assertEqual(
            self.provider.calls, [("add", "example.test", "_acme-challenge.example.test", value)]
        )
        self.assertEqual(
            sorted(self.dns.queries, key=str),
            [(NS1, "_acme-challenge.example.test"), (NS2, "_acme-challenge.example.test")],
        )

    def test_appears_late(self) -> None:
        """A server that lags is polled, with backoff, until it shows the record."""
        self.dns.lag(NS2)
        d, _ = self.start("example.test", "tok")
        self.clock.advance(0)
        self.assertNoResult(d)
        self.clock.pump([0.25, 0.5, 1.0])
        self.assertNoResult(d)
        self.assertEqual(len([q for q in self.dns.queries if q[0] == NS2]), 4)
        # Backoff: nothing is asked before the next delay (2 s) is over.
        self.clock.advance(1.9)
        self.assertEqual(len([q for q in self.dns.queries if q[0] == NS2]), 4)
        self.dns.catch_up(NS2)
        self.clock.advance(0.1)
        self.successResultOf(d)

    def test_never_appears(self) -> None:
        """The timeout names the record and the servers that lacked it, and cleans up."""
        self.dns.lag(NS2)
        self.dns.failing[NS1] = "answered REFUSED"
        d, response = self.start("www.example.test", "tok")
        self.clock.advance(0)
        for _ in range(40):
            self.clock.advance(1)
        failure = self.failureResultOf(d, DNSPropagationTimeout)
        error = failure.value
        self.assertIsInstance(error, ACMETimeout)
        self.assertEqual(error.fqdn, "_acme-challenge.www.example.test")
        self.assertEqual(error.value, txt_value(response.key_authorization))
        self.assertEqual(
            error.lacking,
            {
                "ns1.example.test": "192.0.2.1:53 answered REFUSED",
                "ns2.example.test": "192.0.2.2:53 answered without it",
            },
        )
        self.assertIn("_acme-challenge.www.example.test", str(error))
        self.assertIn("ns2.example.test: 192.0.2.2:53 answered without it", str(error))
        self.assertIn("after 30s", str(error))
        # It gave up at the deadline, not one backoff step later.
        self.assertEqual(self.clock.seconds(), 40)
        self.assertEqual([c[0] for c in self.provider.calls], ["add", "remove"])
        self.assertEqual(self.dns.primary["_acme-challenge.www.example.test"], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A later stop_responding (issuance always calls it) does nothing more.
        self.successResultOf(self.responder.stop_responding("www.example.test", None, response))
        self.assertEqual(len(self.provider.calls), 2)

    def test_timeout_exact_deadline(self) -> None:
        self.dns.lag(NS1)
        d, _ = self.start("example.test", "tok")
        self.clock.advance(0)
        self.clock.advance(29.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, DNSPropagationTimeout)

    def test_any_address_of_a_name_server(self) -> None:
        """An NS host counts as up to date when one of its addresses has the value."""
        self.dns.zones["example.test"] = [NS1, NS1_V6]
        self.dns.failing[NS1_V6] = "Network is unreachable"
        d, _ = self.start("example.test", "tok")
        self.clock.advance(0)
        self.successResultOf(d)

    def test_cname_delegation(self) -> None:
        """The record is written where the CNAME chain ends, in that zone."""
        self.dns.cnames["_acme-challenge.www.example.test"] = "www.acme.delegated.test"
        d, response = self.start("www.example.test", "tok")
        self.clock.advance(0)
        self.successResultOf(d)
        value = txt_value(response.key_authorization)
        self.assertEqual(
            self.provider.calls, [("add", "delegated.test", "www.acme.delegated.test", value)]
        )
        self.assertEqual(self.dns.queries, [(NS2, "www.acme.delegated.test")])
        self.successResultOf(self.responder.stop_responding("www.example.test", None, response))
        self.assertEqual(
            self.provider.calls[-1], ("remove", "delegated.test", "www.acme.delegated.test", value)
        )

    def test_no_cname_following(self) -> None:
        self.dns.cnames["_acme-challenge.www.example.test"] = "www.acme.delegated.test"
        responder = DNS01Responder(
            self.provider, lookup=self.dns, clock=self.clock, follow_cname=False
        )
        d = responder.start_responding("www.example.test", None, Response("t"))
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(
            self.provider.calls[0][1:3], ("example.test", "_acme-challenge.www.example.test")
        )

    def test_zone_override(self) -> None:
        responder = DNS01Responder(
            self.provider, lookup=self.dns, clock=self.clock, zone="Example.test."
        )
        d = responder.start_responding("a.b.example.test", None, Response("t"))
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.provider.calls[0][1], "example.test")
        self.assertNotIn("SOA", [kind for kind, _ in self.dns.lookups])

    def test_zone_override_outside(self) -> None:
        responder = DNS01Responder(
            self.provider, lookup=self.dns, clock=self.clock, zone="other.test"
        )
        d = responder.start_responding("example.test", None, Response("t"))
        error = self.failureResultOf(d, ConfigurationError).value
        self.assertIn("dns_zone='other.test'", str(error))
        self.assertEqual(self.provider.calls, [])

    def test_no_zone(self) -> None:
        d, _ = self.start("host.unknown", "tok")
        self.assertIn("no DNS zone", str(self.failureResultOf(d, DNSError).value))
        self.assertEqual(self.provider.calls, [])

    def test_wildcard_and_base_in_one_pass(self) -> None:
        """Two values at one name coexist, are checked in the same rounds, and are
        removed one at a time."""
        d1, r1 = self.start("example.test", "wild")  # *.example.test's authorization
        d2, r2 = self.start("example.test", "base")
        fqdn = "_acme-challenge.example.test"
        v1, v2 = txt_value(r1.key_authorization), txt_value(r2.key_authorization)
        self.assertEqual(sorted(self.dns.primary[fqdn]), sorted([v1, v2]))
        self.clock.advance(0)
        self.successResultOf(d1)
        self.successResultOf(d2)
        # One query per server for both records.
        self.assertEqual(len(self.dns.queries), 2)
        self.successResultOf(self.responder.stop_responding("example.test", None, r1))
        self.assertEqual(self.dns.primary[fqdn], [v2])
        self.successResultOf(self.responder.stop_responding("example.test", None, r2))
        self.assertEqual(self.dns.primary[fqdn], [])

    def test_later_record_restarts_backoff(self) -> None:
        self.dns.lag(NS2)
        d1, _ = self.start("a.example.test", "one")
        self.clock.pump([0, 0.25, 0.5, 1.0, 2.0])
        asked = len(self.dns.queries)
        self.dns.catch_up(NS2)
        d2, _ = self.start("b.example.test", "two")
        self.clock.advance(0)
        self.assertGreater(len(self.dns.queries), asked)
        self.successResultOf(d1)
        self.successResultOf(d2)

    def test_record_added_during_a_round(self) -> None:
        """A record that arrives while queries are in flight is asked about right
        after that round, not after a backoff delay."""
        self.dns.held = []
        d1, _ = self.start("a.example.test", "one")
        self.clock.advance(0)
        self.assertEqual(len(self.dns.held), 2)  # the round for a.example.test is in flight
        d2, _ = self.start("b.example.test", "two")
        self.dns.release()
        self.successResultOf(d1)
        self.assertNoResult(d2)
        self.clock.advance(0)
        self.assertEqual(
            sorted(name for _, name in self.dns.queries[2:]), ["_acme-challenge.b.example.test"] * 2
        )
        self.dns.release()
        self.successResultOf(d2)

    def test_stop_unknown_is_noop(self) -> None:
        self.successResultOf(self.responder.stop_responding("example.test", None, Response("x")))
        self.assertEqual(self.provider.calls, [])

    def test_same_challenge_twice(self) -> None:
        d1, response = self.start("example.test", "tok")
        d2 = self.responder.start_responding("example.test", None, response)
        self.failureResultOf(d2, DNSError)
        self.clock.advance(0)
        self.successResultOf(d1)

    def test_stop_while_adding(self) -> None:
        """A stop during the provider's add removes the record once the add is done."""
        self.provider.hold = []
        d, response = self.start("example.test", "tok")
        stopped = self.responder.stop_responding("example.test", None, response)
        self.assertNoResult(stopped)
        self.provider.hold.pop(0).callback(None)  # the add completes
        self.failureResultOf(d, CancelledError)
        self.provider.hold.pop(0).callback(None)  # the removal completes
        self.successResultOf(stopped)
        self.assertEqual([c[0] for c in self.provider.calls], ["add", "remove"])
        self.assertEqual(self.dns.primary["_acme-challenge.example.test"], [])

    def test_cancel_while_waiting(self) -> None:
        """Cancelling start_responding removes the record and stops polling."""
        self.dns.lag(NS1)
        d, _ = self.start("example.test", "tok")
        self.clock.advance(0)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual([c[0] for c in self.provider.calls], ["add", "remove"])
        self.clock.advance(100)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_while_adding_waits_for_the_add(self) -> None:
        self.provider.hold = []
        d, _ = self.start("example.test", "tok")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual([c[0] for c in self.provider.calls], ["add"])
        self.provider.hold.pop(0).callback(None)
        self.assertEqual([c[0] for c in self.provider.calls], ["add", "remove"])
        self.provider.hold.pop(0).callback(None)
        self.assertEqual(self.dns.primary["_acme-challenge.example.test"], [])

    def test_add_fails(self) -> None:
        self.provider.fail_add = DNSUpdateError("refused")
        d, response = self.start("example.test", "tok")
        self.failureResultOf(d, DNSUpdateError)
        self.assertEqual([c[0] for c in self.provider.calls], ["add"])
        self.successResultOf(self.responder.stop_responding("example.test", None, response))
        self.assertEqual([c[0] for c in self.provider.calls], ["add"])
        self.assertEqual(self.responder._records, {})

    def test_bad_response(self) -> None:
        class Bad:
            key_authorization = b"bytes"

        self.failureResultOf(
            self.responder.start_responding("example.test", None, Bad()), ConfigurationError
        )

    def test_bad_timeout(self) -> None:
        self.assertRaises(
            ConfigurationError,
            DNS01Responder,
            self.provider,
            lookup=self.dns,
            propagation_timeout=0,
            clock=self.clock,
        )


class NameserverTests(TestCase):
    """Parsing ``address[:port]``."""

    def test_forms(self) -> None:
        self.assertEqual(parse_nameserver("127.0.0.1"), Nameserver("127.0.0.1", 53))
        self.assertEqual(parse_nameserver("127.0.0.1:5353"), Nameserver("127.0.0.1", 5353))
        self.assertEqual(parse_nameserver("[::1]:5353"), Nameserver("::1", 5353))
        self.assertEqual(parse_nameserver("[::1]"), Nameserver("::1", 53))
        self.assertEqual(parse_nameserver("2001:db8::1"), Nameserver("2001:db8::1", 53))
        self.assertEqual(str(Nameserver("::1", 53, name="ns")), "ns ([::1]:53)")

    def test_bad(self) -> None:
        for text in ("ns1.example.test", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x", ""):
            with self.subTest(text=text):
                error = self.assertRaises(ConfigurationError, parse_nameserver, text, "dns_server")
                self.assertIn("dns_server=", str(error))


class TSIGKeyTests(TestCase):
    """TSIG keys: loading, validation, and keeping the secret out of sight."""

    def write(self, text: str, mode: int = 0o600) -> str:
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        os.write(fd, text.encode())
        os.close(fd)
        os.chmod(path, mode)
        return path

    def test_repr_hides_secret(self) -> None:
        key = TSIGKey("txacme", SECRET)
        for text in (repr(key), str(key), repr(RFC2136Provider("127.0.0.1:53", key))):
            self.assertNotIn(SECRET, text)
            self.assertIn("txacme", text)
        self.assertRaises(TypeError, __import__("pickle").dumps, key)

    def test_bad_secret_not_echoed(self) -> None:
        error = self.assertRaises(ConfigurationError, TSIGKey, "k", "not base64 secret!")
        self.assertNotIn("not base64 secret", str(error))

    def test_bad_algorithm_and_name(self) -> None:
        error = self.assertRaises(ConfigurationError, TSIGKey, "k", SECRET, "hmac-sha999")
        self.assertIn("tsig_algorithm='hmac-sha999'", str(error))
        error = self.assertRaises(ConfigurationError, TSIGKey, "bad name", SECRET)
        self.assertIn("tsig_key_name=", str(error))

    def test_bind_file(self) -> None:
        path = self.write(
            f'key "other" {{ algorithm hmac-sha512; secret "{SECRET}"; }};\n'
            f'key "txacme." {{\n\talgorithm hmac-sha384;\n\tsecret "{SECRET}";\n}};\n'
        )
        key = read_tsig_key_file(path, "txacme")
        self.assertEqual((key.name, key.algorithm), ("txacme", "hmac-sha384"))
        error = self.assertRaises(ConfigurationError, read_tsig_key_file, path)
        self.assertIn("several keys", str(error))
        error = self.assertRaises(ConfigurationError, read_tsig_key_file, path, "nope")
        self.assertIn("no key named 'nope'", str(error))
        error = self.assertRaises(
            ConfigurationError, read_tsig_key_file, path, "txacme", "hmac-sha256"
        )
        self.assertIn("disagrees", str(error))

    def test_knot_file(self) -> None:
        path = self.write(
            f"# hmac-sha256:txacme:{SECRET}\nkey:\n  - id: txacme\n"
            f"    algorithm: hmac-sha256\n    secret: {SECRET}\n"
        )
        key = read_tsig_key_file(path)
        self.assertEqual((key.name, key.algorithm), ("txacme", "hmac-sha256"))

    def test_bare_and_pdns(self) -> None:
        bare = self.write(SECRET + "\n")
        self.assertRaises(ConfigurationError, read_tsig_key_file, bare)
        key = read_tsig_key_file(bare, "k", "hmac-sha512")
        self.assertEqual((key.name, key.algorithm), ("k", "hmac-sha512"))
        pdns = self.write(f"txacme. hmac-sha256. {SECRET}\n")
        self.assertEqual(read_tsig_key_file(pdns).name, "txacme")

    def test_unreadable_or_garbage(self) -> None:
        error = self.assertRaises(ConfigurationError, read_tsig_key_file, "/nonexistent/key")
        self.assertIn("tsig_secret_file='/nonexistent/key'", str(error))
        garbage = self.write("hello there\nworld\n")
        self.assertRaises(ConfigurationError, read_tsig_key_file, garbage)
        bad = self.write('key "k" { algorithm hmac-sha256; secret "%%%%"; };')
        error = self.assertRaises(ConfigurationError, read_tsig_key_file, bad)
        self.assertIn("tsig_secret_file=", str(error))
        self.assertNotIn("%%%%", str(error))

    def test_group_readable_warns(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path = self.write(f'key "k" {{ algorithm hmac-sha256; secret "{SECRET}"; }};', 0o644)
        read_tsig_key_file(path)
        self.assertTrue(any("chmod 600" in e.get("log_format", "") for e in events))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)


class OptionsTests(TestCase):
    """dns01_responder_from_options."""

    def key_file(self) -> str:
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        os.write(fd, f'key "txacme" {{ algorithm hmac-sha256; secret "{SECRET}"; }};'.encode())
        os.close(fd)
        return path

    def options(self, **extra: str) -> dict[str, str]:
        base = {
            "dns": "rfc2136",
            "dns_server": "127.0.0.1:5353",
            "tsig_secret_file": self.key_file(),
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v != "-"}

    def assertOptionError(self, options: dict[str, str], *needles: str) -> ConfigurationError:
        error = self.assertRaises(
            ConfigurationError, dns01_responder_from_options, options, clock=Clock()
        )
        for needle in needles:
            self.assertIn(needle, str(error))
        return error

    def test_full(self) -> None:
        responder = dns01_responder_from_options(
            self.options(
                dns_zone="Example.test",
                dns_resolvers="127.0.0.1:5353,[::1]:5354",
                propagation_timeout="7.5",
                dns_ttl="30",
            ),
            clock=Clock(),
        )
        assert isinstance(responder, DNS01Responder)
        self.assertTrue(verifyObject(IResponder, responder))
        self.assertEqual(responder.zone, "example.test")
        self.assertEqual(responder.propagation_timeout, 7.5)
        provider = responder.provider
        assert isinstance(provider, RFC2136Provider)
        self.assertEqual(provider.server, Nameserver("127.0.0.1", 5353))
        self.assertEqual(provider.ttl, 30)
        assert provider.key is not None
        self.assertEqual((provider.key.name, provider.key.algorithm), ("txacme", "hmac-sha256"))
        lookup = responder.lookup
        assert isinstance(lookup, DNSPythonLookup)
        expected = (Nameserver("127.0.0.1", 5353), Nameserver("::1", 5354))
        self.assertEqual(lookup.resolvers, expected)
        self.assertEqual(lookup.check_servers, expected)
        self.assertNotIn(SECRET, repr(responder))

    def test_endpoint_entry_point(self) -> None:
        """The endpoint parser's import path builds the same responder."""
        from txacme.config import dns

        responder = dns.dns01_responder_from_options(self.options(), clock=Clock())
        self.assertIsInstance(responder, DNS01Responder)

    def test_errors_name_the_option(self) -> None:
        self.assertOptionError(self.options(dns="route66"), "dns='route66'")
        self.assertOptionError(self.options(dns_server="-"), "dns_server=")
        self.assertOptionError(self.options(dns_server="ns1.example.test"), "dns_server=")
        self.assertOptionError(self.options(dns_server="127.0.0.1:99999"), "dns_server=")
        self.assertOptionError(self.options(propagation_timeout="soon"), "propagation_timeout=")
        self.assertOptionError(self.options(propagation_timeout="-1"), "propagation_timeout=")
        self.assertOptionError(self.options(dns_ttl="1.5"), "dns_ttl=")
        self.assertOptionError(self.options(dns_resolvers="resolver.test"), "dns_resolvers=")
        self.assertOptionError(self.options(dns_zone="bad zone"), "dns_zone=")
        self.assertOptionError(self.options(dns_serve="x"), "dns_serve", "not an option")
        self.assertOptionError(self.options(tsig_secret_file="-"), "tsig_secret_file=")
        self.assertOptionError(self.options(tsig_algorithm="hmac-sha512"), "tsig_algorithm=")
        self.assertOptionError(
            self.options(dns_lexicon_provider="x"), "dns_lexicon_provider", "dns=rfc2136"
        )

    def test_inline_secret(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        responder = dns01_responder_from_options(
            self.options(tsig_secret_file="-", tsig_secret=SECRET, tsig_key_name="k"),
            clock=Clock(),
        )
        self.assertTrue(any("prefer tsig_secret_file" in e.get("log_format", "") for e in events))
        self.assertNotIn(SECRET, repr(responder))
        for event in events:
            self.assertNotIn(SECRET, repr(event))
        error = self.assertOptionError(
            self.options(tsig_secret=SECRET, tsig_key_name="k"), "not both"
        )
        self.assertNotIn(SECRET, str(error))
        self.assertOptionError(
            self.options(tsig_secret_file="-", tsig_secret=SECRET), "tsig_key_name"
        )
        error = self.assertOptionError(
            self.options(tsig_secret_file="-", tsig_secret="sec ret!", tsig_key_name="k"),
            "not valid base64",
        )
        self.assertNotIn("sec ret!", str(error))

    def test_lexicon_options(self) -> None:
        self.assertOptionError({"dns": "lexicon"}, "dns_lexicon_provider=")
        self.assertOptionError(
            {"dns": "lexicon", "dns_lexicon_provider": "no-such"}, "dns_lexicon_provider="
        )
        self.assertOptionError(
            {"dns": "lexicon", "dns_lexicon_provider": "ddns", "dns_server": "127.0.0.1"},
            "dns_server",
            "dns=lexicon",
        )
