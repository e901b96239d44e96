"""
dns-persist-01 and dns-account-01: the records, the message types, the
responders, and issuance end to end through txacme.testca, offline (its own DNS
server) and against a real BIND updated over RFC 2136.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from acme import challenges, messages
from josepy.jwk import JWKEC
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests.harness.bind import Bind, BindUnavailable, start_bind
from txacme.challenges.dns01 import DNSPythonLookup
from txacme.challenges.dnsaccount01 import (
    DNSAccount01,
    DNSAccount01Responder,
    DNSAccount01Response,
    account_label,
)
from txacme.challenges.dnsaccount01 import validation_name as account_name
from txacme.challenges.dnspersist01 import (
    DNSPersist01,
    DNSPersist01Responder,
    DNSPersist01Response,
    PersistRecordMissing,
    parse_record,
    record_matches,
    record_value,
)
from txacme.challenges.dnsproviders import IDNSProvider, Nameserver
from txacme.challenges.dnsproviders.rfc2136 import RFC2136Provider, TSIGKey
from txacme.errors import ConfigurationError, IssuanceFailed
from txacme.interfaces import IResponder
from txacme.issuing.order import challenge_response, obtain_certificate
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client
from txacme.testca import TestCA
from txacme.testca._dns import TestDNSServer

ACCOUNT = "https://ca.example/acme/acct/1"


class RecordTests(TestCase):
    """The record and label formats."""

    def test_account_label_vector(self) -> None:
        # The example of draft-ietf-acme-dns-account-label.
        self.assertEqual(
            account_label("https://example.com/acme/acct/ExampleAccount"), "_ujmmovf2vn55tgye"
        )
        self.assertEqual(
            account_name("*.Example.org.", "https://example.com/acme/acct/ExampleAccount"),
            "_ujmmovf2vn55tgye._acme-challenge.example.org",
        )

    def test_record_value(self) -> None:
        self.assertEqual(record_value("ca.example", ACCOUNT), f"ca.example; accounturi={ACCOUNT}")
        until = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        self.assertEqual(
            record_value("ca.example", ACCOUNT, wildcard=True, persist_until=until),
            f"ca.example; accounturi={ACCOUNT}; policy=wildcard; persistUntil=1767225600",
        )
        for bad in ("CA.example", "ca.example.", ""):
            self.assertRaises(ConfigurationError, record_value, bad, ACCOUNT)
        self.assertRaises(ConfigurationError, record_value, "ca.example", "a;b")
        self.assertRaises(
            ConfigurationError,
            record_value,
            "ca.example",
            ACCOUNT,
            persist_until=datetime.datetime(2026, 1, 1),
        )

    def test_parse(self) -> None:
        record = parse_record(f"  CA.Example. ;AccountURI={ACCOUNT} ;Policy=WildCard; x-new=1")
        assert record is not None
        self.assertEqual(record.issuer_domain_name, "ca.example")
        self.assertEqual(record.account_uri, ACCOUNT)
        self.assertTrue(record.wildcard)
        self.assertIsNone(record.persist_until)
        self.assertIsNone(parse_record("; accounturi=x"))
        self.assertIsNone(parse_record("ca.example; accounturi"))
        self.assertIsNone(parse_record("ca.example; accounturi=a; AccountURI=b"))

    def test_matches(self) -> None:
        def ok(text: str, wildcard: bool = False, now: float = 100) -> bool:
            return record_matches(
                text, ["ca.example", "ca2.example"], ACCOUNT, wildcard=wildcard, now=now
            )

        base = f"ca.example; accounturi={ACCOUNT}"
        self.assertTrue(ok(base))
        self.assertTrue(ok(f"ca2.example; accounturi={ACCOUNT}"))
        self.assertFalse(ok(f"other.example; accounturi={ACCOUNT}"))
        self.assertFalse(ok("ca.example; accounturi=https://ca.example/acme/acct/2"))
        self.assertFalse(ok("ca.example"))
        self.assertFalse(ok(base, wildcard=True))
        self.assertTrue(ok(base + "; policy=wildcard", wildcard=True))
        self.assertFalse(ok(base + "; policy=other", wildcard=True))
        self.assertTrue(ok(base + "; persistUntil=100"))
        self.assertFalse(ok(base + "; persistUntil=99"))
        self.assertFalse(ok(base + "; persistUntil=soon"))


class MessageTests(TestCase):
    """The message types, registered with acme."""

    def test_persist_challenge(self) -> None:
        body = messages.ChallengeBody.from_json(
            {
                "type": "dns-persist-01",
                "url": "https://ca.example/chall/1",
                "status": "pending",
                "issuer-domain-names": ["authority.example", "ca.example.net"],
            }
        )
        self.assertIsInstance(body.chall, DNSPersist01)
        self.assertEqual(body.chall.issuer_domain_names, ("authority.example", "ca.example.net"))
        self.assertIsNone(body.chall.problem)
        key = jwk_for(generate_private_key())
        response = challenge_response(body.chall, key, account_uri=ACCOUNT, wildcard=True)
        assert isinstance(response, DNSPersist01Response)
        self.assertEqual(response.to_json(), {})
        self.assertEqual((response.account_uri, response.wildcard), (ACCOUNT, True))

    def test_malformed_persist_challenge(self) -> None:
        for names in ([], [f"ca{i}.example" for i in range(11)], ["CA.example"], ["ca.example."]):
            chall = challenges.Challenge.from_json(
                {
                    "type": "dns-persist-01",
                    "url": "u",
                    "status": "pending",
                    "issuer-domain-names": names,
                }
            )
            self.assertIsInstance(chall, DNSPersist01)
            self.assertIsNotNone(chall.problem, names)

    async def test_malformed_is_not_answered(self) -> None:
        chall = challenges.Challenge.from_json(
            {"type": "dns-persist-01", "url": "u", "status": "pending", "issuer-domain-names": []}
        )
        responder = DNSPersist01Responder(clock=reactor)
        with self.assertRaises(Exception) as caught:
            await responder.start_responding(
                "example.test", chall, DNSPersist01Response(account_uri=ACCOUNT)
            )
        self.assertIn("issuer-domain-names is empty", str(caught.exception))

    def test_account_challenge(self) -> None:
        chall = challenges.Challenge.from_json(
            {"type": "dns-account-01", "url": "u", "status": "pending", "token": "a" * 43}
        )
        self.assertIsInstance(chall, DNSAccount01)
        key = jwk_for(generate_private_key())
        assert isinstance(key, JWKEC)
        response = challenge_response(chall, key, account_uri=ACCOUNT)
        assert isinstance(response, DNSAccount01Response)
        self.assertEqual(response.to_json(), {})
        self.assertEqual(response.account_uri, ACCOUNT)
        self.assertEqual(response.key_authorization, chall.key_authorization(key))


@implementer(IResponder)
class Claiming:
    """Claims a record is in place without looking: lets the CA side be tested."""

    def __init__(self, challenge_type: str) -> None:
        self.challenge_type = challenge_type

    def start_responding(self, server_name: str, challenge: object, response: object) -> None:
        return None

    def stop_responding(self, server_name: str, challenge: object, response: object) -> None:
        return None


async def new_client(ca: TestCA) -> Client:
    client = await Client.from_url(
        reactor, ca.directory_url, jwk_for(generate_private_key()), ca_file=ca.https_ca_file
    )
    await client.start()
    return client


class OfflineTests(TestCase):
    """The test CA and the responders with the test CA's own DNS server."""

    async def prepare(self) -> None:
        self.dns = await TestDNSServer.start()
        self.addCleanup(self.dns.stop)
        self.ca = await TestCA.start_for_test(
            self,
            dns_server=self.dns.address,
            challenge_types=["dns-persist-01"],
            issuer_domain_names=["testca.invalid", "ca2.testca.invalid"],
        )
        self.client = await new_client(self.ca)
        self.addCleanup(self.client.close)
        server = Nameserver(*self.dns.address)
        self.lookup = DNSPythonLookup([server], check_servers=[server], timeout=2)

    async def test_issue_with_a_published_record(self) -> None:
        await self.prepare()
        assert self.client.account is not None
        account = self.client.account.uri
        self.dns.set_txt(
            "_validation-persist.host.test", f"ca2.testca.invalid; accounturi={account}"
        )
        responder = DNSPersist01Responder(lookup=self.lookup, zone="test", clock=reactor)
        issued = await obtain_certificate(self.client, ["host.test"], [responder])
        self.assertEqual(issued.names, ["host.test"])
        self.assertEqual(responder.published, 0)

    async def test_missing_record_prints_it(self) -> None:
        await self.prepare()
        assert self.client.account is not None
        responder = DNSPersist01Responder(lookup=self.lookup, zone="test", clock=reactor)
        with self.assertRaises(PersistRecordMissing) as caught:
            await obtain_certificate(self.client, ["host.test"], [responder])
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn(
            f'_validation-persist.host.test. IN TXT "testca.invalid; '
            f'accounturi={self.client.account.uri}"',
            message,
        )


class _Recording:
    """An RFC 2136 provider that counts its calls."""

    def __init__(self, real: IDNSProvider) -> None:
        self.real = real
        self.calls: list[tuple[str, str, str]] = []

    def add_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        self.calls.append(("add", fqdn, value))
        return self.real.add_txt_record(zone, fqdn, value)

    def remove_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        self.calls.append(("remove", fqdn, value))
        return self.real.remove_txt_record(zone, fqdn, value)


Recording = implementer(IDNSProvider)(_Recording)


class BindBase(TestCase):
    """A private BIND per test, the RFC 2136 provider and lookups for it."""

    def setUp(self) -> None:
        try:
            self.bind: Bind = start_bind()
        except BindUnavailable as e:
            raise SkipTest(str(e))
        self.addCleanup(self.bind.stop)
        self.server = Nameserver(self.bind.address, self.bind.port)
        self.key = TSIGKey(self.bind.key_name, self.bind.key_secret, self.bind.algorithm)
        self.provider = Recording(RFC2136Provider(self.server, self.key))
        self.lookup = DNSPythonLookup([self.server], check_servers=[self.server], timeout=2)

    def serial(self) -> int:
        answer = self.bind.query("example.test", "SOA").answer
        return int(answer[0][0].serial)

    async def ca(self, types: list[str], **options: Any) -> TestCA:
        return await TestCA.start_for_test(
            self,
            dns_server=(self.bind.address, self.bind.port),
            challenge_types=types,
            **options,
        )

    async def client(self, ca: TestCA) -> Client:
        client = await new_client(ca)
        self.addCleanup(client.close)
        return client

    def persist(self, **kwargs: Any) -> DNSPersist01Responder:
        kwargs.setdefault("lookup", self.lookup)
        return DNSPersist01Responder(poll_interval=0.02, clock=reactor, **kwargs)


class BindTests(BindBase):
    """End to end: txacme.testca validating through a real BIND."""

    async def test_published_once_serves_three_issuances(self) -> None:
        ca = await self.ca(["dns-persist-01"])
        client = await self.client(ca)
        responder = self.persist(provider=self.provider, wildcard_policy=True)
        before = self.serial()
        first = await obtain_certificate(client, ["example.test"], [responder])
        self.assertEqual(len(self.provider.calls), 1)
        after_first = self.serial()
        self.assertEqual(after_first, before + 1)
        # Renewal (a new order: the CA validates the record again) and a second
        # certificate, for the wildcard and the apex: no DNS update at all.
        renewed = await obtain_certificate(client, ["example.test"], [responder])
        second = await obtain_certificate(
            client, ["*.example.test", "example.test"], [responder], key_type="rsa2048"
        )
        self.assertEqual(self.serial(), after_first)
        self.assertEqual(len(self.provider.calls), 1)
        self.assertEqual(self.provider.calls[0][0], "add")
        self.assertEqual(responder.published, 1)
        assert client.account is not None
        self.assertEqual(
            self.bind.txt("_validation-persist.example.test"),
            {f"testca.invalid; accounturi={client.account.uri}; policy=wildcard"},
        )
        self.assertEqual(len({first.url, renewed.url, second.url}), 3)
        self.assertEqual(sorted(second.names), ["*.example.test", "example.test"])
        # The three validations were done, each for its own order.
        persist_validations = [
            c for a in ca._authzs.values() for c in a.challenges if c.status == "valid"
        ]
        self.assertEqual(len(persist_validations), 4)

    async def test_other_account_or_ca_refused(self) -> None:
        ca = await self.ca(["dns-persist-01"])
        other_ca = await self.ca(["dns-persist-01"], issuer_domain_names=["other-ca.test"])
        owner = await self.client(ca)
        stranger = await self.client(ca)
        assert owner.account is not None and stranger.account is not None
        self.bind.update(
            "example.test",
            add=[
                (
                    "_validation-persist.example.test",
                    f"testca.invalid; accounturi={owner.account.uri}",
                )
            ],
        )
        # The client side refuses to answer for another account...
        with self.assertRaises(PersistRecordMissing) as caught:
            await obtain_certificate(stranger, ["example.test"], [self.persist()])
        self.assertIn(stranger.account.uri, str(caught.exception))
        # ...and the CA refuses it when a client answers anyway.
        with self.assertRaises(IssuanceFailed) as failed:
            await obtain_certificate(stranger, ["example.test"], [Claiming("dns-persist-01")])
        self.assertIn("none names testca.invalid and this account", str(failed.exception))
        # Another CA ignores the record: it names testca.invalid.
        other_client = await self.client(other_ca)
        with self.assertRaises(IssuanceFailed) as failed:
            await obtain_certificate(other_client, ["example.test"], [Claiming("dns-persist-01")])
        self.assertIn("other-ca.test", str(failed.exception))
        # The owner is fine, with no DNS update.
        serial = self.serial()
        issued = await obtain_certificate(owner, ["example.test"], [self.persist()])
        self.assertEqual(issued.names, ["example.test"])
        self.assertEqual(self.serial(), serial)

    async def test_wildcard_needs_policy(self) -> None:
        ca = await self.ca(["dns-persist-01"])
        client = await self.client(ca)
        assert client.account is not None
        self.bind.update(
            "example.test",
            add=[
                (
                    "_validation-persist.example.test",
                    f"testca.invalid; accounturi={client.account.uri}",
                )
            ],
        )
        with self.assertRaises(PersistRecordMissing) as caught:
            await obtain_certificate(client, ["*.example.test"], [self.persist()])
        self.assertIn("policy=wildcard", str(caught.exception))
        with self.assertRaises(IssuanceFailed) as failed:
            await obtain_certificate(client, ["*.example.test"], [Claiming("dns-persist-01")])
        self.assertIn("policy=wildcard", str(failed.exception))
        # The apex alone is fine; with a provider the wildcard record is added.
        await obtain_certificate(client, ["example.test"], [self.persist()])
        responder = self.persist(provider=self.provider)
        issued = await obtain_certificate(client, ["*.example.test"], [responder])
        self.assertEqual(issued.names, ["*.example.test"])
        self.assertEqual([c[0] for c in self.provider.calls], ["add"])
        self.assertIn("policy=wildcard", self.provider.calls[0][2])

    async def test_persist_until(self) -> None:
        ca = await self.ca(["dns-persist-01"])
        client = await self.client(ca)
        assert client.account is not None
        now = int(ca.now().timestamp())
        self.bind.update(
            "example.test",
            add=[
                (
                    "_validation-persist.example.test",
                    f"testca.invalid; accounturi={client.account.uri}; persistUntil={now - 10}",
                )
            ],
        )
        with self.assertRaises(IssuanceFailed) as failed:
            await obtain_certificate(client, ["example.test"], [Claiming("dns-persist-01")])
        self.assertIn("persistUntil", str(failed.exception))
        with self.assertRaises(PersistRecordMissing):
            await obtain_certificate(client, ["example.test"], [self.persist()])

    async def test_two_accounts_at_once(self) -> None:
        """dns-account-01: two accounts validate one name concurrently, each at its label."""
        ca = await self.ca(["dns-account-01"])
        one, two = await self.client(ca), await self.client(ca)
        assert one.account is not None and two.account is not None
        zone_before = self.bind.zone_records("example.test")
        responders = [
            DNSAccount01Responder(
                self.provider, lookup=self.lookup, poll_interval=0.02, clock=reactor
            )
            for _ in range(2)
        ]
        issued = await gatherResults(
            [
                obtain_certificate(c, ["*.example.test", "example.test"], [r])
                for c, r in zip((one, two), responders, strict=True)
            ],
            consumeErrors=True,
        )
        self.assertEqual(
            [sorted(i.names) for i in issued], [["*.example.test", "example.test"]] * 2
        )
        names = {c[1] for c in self.provider.calls}
        self.assertEqual(
            names,
            {
                account_name("example.test", one.account.uri),
                account_name("example.test", two.account.uri),
            },
        )
        adds = [c for c in self.provider.calls if c[0] == "add"]
        removes = [c for c in self.provider.calls if c[0] == "remove"]
        self.assertEqual(len(adds), 4)
        self.assertEqual(sorted(adds), sorted(("add",) + r[1:] for r in removes))
        self.assertEqual(self.bind.zone_records("example.test"), zone_before)


class OnDemandBindTests(BindBase):
    """on_demand=persist: the published record is the permission."""

    async def test_allowed_by_record_refused_without(self) -> None:
        from txacme.issuing.ondemand import OnDemandIssuer
        from txacme.issuing.persistpolicy import PersistOnDemandPolicy
        from txacme.serving.index import CertificateIndex

        ca = await self.ca(["dns-persist-01"])
        client = await self.client(ca)
        assert client.account is not None
        account_uri = client.account.uri
        self.bind.update(
            "example.test",
            add=[
                (
                    "_validation-persist.www.example.test",
                    f"testca.invalid; accounturi={account_uri}",
                )
            ],
        )
        identity_calls = []

        def identity() -> Deferred[tuple[str, list[str]]]:
            identity_calls.append(1)
            d: Deferred[tuple[str, list[str]]] = Deferred()
            d.callback((account_uri, ["testca.invalid"]))
            return d

        policy = PersistOnDemandPolicy(identity, lookup=self.lookup, clock=reactor)
        responder = self.persist()
        issued_names: list[str] = []

        async def issue(name: str) -> Any:
            issued_names.append(name)
            return await obtain_certificate(client, [name], [responder])

        index = CertificateIndex()
        issuer: Any = OnDemandIssuer(policy, issue, index, rate=10, clock=reactor)  # type: ignore[arg-type]
        self.addCleanup(issuer.stop)
        orders_before = len(ca._orders_by_id)
        self.assertFalse(await issuer.request("api.example.test"))
        self.assertFalse(await issuer.request("*.example.test"))
        self.assertEqual(len(ca._orders_by_id), orders_before)
        self.assertTrue(await issuer.request("www.example.test"))
        self.assertEqual(issued_names, ["www.example.test"])
        self.assertIsNotNone(index.find("www.example.test"))
        self.assertEqual(len(ca._orders_by_id), orders_before + 1)
        # A record for another account is no permission.
        self.bind.update(
            "example.test",
            add=[
                (
                    "_validation-persist.api2.example.test",
                    "testca.invalid; accounturi=https://elsewhere.test/acct/9",
                )
            ],
        )
        self.assertFalse(await issuer.request("api2.example.test"))
        self.assertEqual(identity_calls, [1])


class ConfigTests(TestCase):
    """challenge=dns-persist-01 / dns-account-01 in endpoint strings."""

    def test_responders(self) -> None:
        from txacme.config.responders import challenge_responders

        built = challenge_responders(
            ["dns-persist-01", "dns-account-01"],
            dns_options={
                "dns": "rfc2136",
                "dns_server": "127.0.0.1:5353",
                "tsig_key_name": "key.test",
                "tsig_secret": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                "dns_persist_wildcard": "yes",
                "dns_persist_until": "2027-12-31",
                "dns_persist_issuer": "CA.example",
            },
            clock=reactor,
        )
        persist = built.dns_persist01
        assert isinstance(persist, DNSPersist01Responder)
        self.assertIsNotNone(persist.provider)
        self.assertTrue(persist.wildcard_policy)
        self.assertEqual(persist.persist_until, 1830297599)
        self.assertEqual(persist.issuer_domain_name, "ca.example")
        self.assertIsInstance(built.dns_account01, DNSAccount01Responder)
        self.assertEqual(built.dns_responders(), [persist, built.dns_account01])
        # Without dns= the persist responder only checks.
        only = challenge_responders(["dns-persist-01"], dns_options={}, clock=reactor)
        assert isinstance(only.dns_persist01, DNSPersist01Responder)
        self.assertIsNone(only.dns_persist01.provider)

    def test_bad_options(self) -> None:
        from txacme.config.responders import challenge_responders

        for options, text in [
            ({"dns_persist_until": "tomorrow"}, "dns_persist_until='tomorrow'"),
            ({"dns_persist_wildcard": "maybe"}, "dns_persist_wildcard"),
            ({"dns_server": "127.0.0.1"}, "dns_server"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                challenge_responders(["dns-persist-01"], dns_options=options, clock=reactor)
            self.assertIn(text, str(caught.exception))

    def test_endpoint_string(self) -> None:
        from tests.test_endpoint_parsing import parse

        config = parse("lets:/tmp/certs:tcp:443:challenge=dns-persist-01:on_demand=persist")
        self.assertEqual(config.challenges, ("dns-persist-01",))
        self.assertEqual(config.on_demand, ("persist",))
        config = parse("lets:/tmp/certs:tcp:443:challenge=dns-persist-01:dns_persist_wildcard=yes")
        self.assertEqual(config.dns_options, {"dns_persist_wildcard": "yes"})
        with self.assertRaises(ConfigurationError) as caught:
            parse("lets:/tmp/certs:tcp:443:challenge=dns-account-01")
        self.assertIn("challenge=dns-account-01 needs dns=", str(caught.exception))


class CLITests(BindBase):
    """``txacme persist-record`` and ``issue --dns-challenge dns-persist-01``, as processes."""

    timeout = 300

    def test_persist_record_then_issue(self) -> None:
        import os

        from tests.test_cli import run_cli
        from txacme.testca import TestCAProcess

        ca = TestCAProcess.start(
            dns_server=[self.bind.address, self.bind.port],
            challenge_types=["dns-persist-01"],
            issuer_domain_names=["persist.testca.invalid"],
        )
        self.addCleanup(ca.stop)
        cert_dir = os.path.abspath(self.mktemp())
        os.makedirs(cert_dir)
        common = ["-C", cert_dir, "--directory", ca.directory_url, "--ca-file", ca.https_ca_file]

        def txacme(*args: str, expect: int = 0) -> str:
            result = run_cli(*args, *common)
            self.assertEqual(result.returncode, expect, (result.stdout, result.stderr))
            return result.stdout + result.stderr

        txacme("account", "create")
        # The directory lists no such issuer: caaIdentities is testca.invalid.
        line = txacme(
            "persist-record",
            "www.example.test",
            "--until",
            "2099-12-31",
            "--issuer",
            "persist.testca.invalid",
        ).strip()
        prefix = '_validation-persist.www.example.test. IN TXT "persist.testca.invalid; accounturi='
        self.assertTrue(line.startswith(prefix), line)
        self.assertTrue(line.endswith('; persistUntil=4102444799"'), line)
        wildcard = txacme("persist-record", "*.example.test").strip()
        self.assertIn("_validation-persist.example.test. IN TXT", wildcard)
        self.assertIn("testca.invalid; accounturi=", wildcard)
        self.assertIn("; policy=wildcard", wildcard)
        value = line.split(" IN TXT ", 1)[1].strip('"')
        self.bind.update("example.test", add=[("_validation-persist.www.example.test", value)])
        serial = self.serial()
        dns = [
            "--dns-challenge",
            "dns-persist-01",
            "--dns-option",
            f"dns_resolvers={self.bind.server}",
        ]
        out = txacme("issue", *dns, "www.example.test")
        self.assertIn("www.example.test", out)
        self.assertTrue(os.path.exists(os.path.join(cert_dir, "www.example.test.pem")))
        # No record for this name: the command fails and prints the record to create.
        out = txacme("issue", *dns, "api.example.test", expect=1)
        self.assertIn('_validation-persist.api.example.test. IN TXT "persist.testca.invalid;', out)
        self.assertEqual(self.serial(), serial)
        self.assertIn("persist-record", run_cli("--help").stdout)


class EndpointTests(BindBase):
    """An ``acme:`` endpoint string with challenge=dns-persist-01 and on_demand=persist."""

    timeout = 120

    async def test_endpoint_string(self) -> None:
        import os
        import ssl

        from twisted.internet import threads
        from twisted.internet.endpoints import serverFromString

        from tests.test_endpoint_dns01 import quote
        from tests.test_endpoint_pebble import PAGE, dns_names, fetch, site
        from txacme.keys import load_or_create_client_key

        ca = await self.ca(["dns-persist-01"])
        certs = os.path.abspath(self.mktemp())
        os.makedirs(certs)
        roots = os.path.join(certs, "..", "roots.pem")
        with open(roots, "wb") as f:
            f.write(ca.root_pem)
        # The account of the endpoint's key, created beforehand so the owner of
        # the names can publish records naming it.
        key = load_or_create_client_key(os.path.join(certs, "client.key"))
        client = await Client.from_url(reactor, ca.directory_url, key, ca_file=ca.https_ca_file)
        self.addCleanup(client.close)
        await client.start()
        assert client.account is not None
        value = f"testca.invalid; accounturi={client.account.uri}"
        self.bind.update(
            "example.test",
            add=[
                ("_validation-persist.static.example.test", value),
                ("_validation-persist.shop.example.test", value),
            ],
        )
        serial = self.serial()
        with open(os.path.join(certs, "static.example.test.pem"), "wb"):
            pass
        description = (
            f"acme:{quote(certs)}:tcp:0:interface=127.0.0.1"
            f":directory={quote(ca.directory_url)}:ca_file={quote(ca.https_ca_file)}"
            f":challenge=dns-persist-01:dns_resolvers={quote(self.bind.server)}"
            f":on_demand=persist"
        )
        endpoint = serverFromString(reactor, description)
        port = await endpoint.listen(site())
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        # The configured name was issued at start, against the published record.
        static = await threads.deferToThread(fetch, number, "static.example.test", roots)
        self.assertEqual(dns_names(static["cert"]), ["static.example.test"])
        # On demand: allowed by the record...
        shop = await threads.deferToThread(fetch, number, "shop.example.test", roots)
        self.assertEqual(dns_names(shop["cert"]), ["shop.example.test"])
        self.assertEqual(shop["body"], PAGE)
        # ...refused without one: no certificate for that name.
        with self.assertRaises((ssl.SSLError, OSError)):
            await threads.deferToThread(fetch, number, "nope.example.test", roots)
        self.assertFalse(os.path.exists(os.path.join(certs, "nope.example.test.pem")))
        # No DNS update by txacme at all.
        self.assertEqual(self.serial(), serial)


class PersistPolicyLimitTests(TestCase):
    """on_demand=persist checks records within the on-demand ask limits."""

    def test_limited_before_any_query(self) -> None:
        """A new name beyond the rate is refused with no DNS query; answers are reused."""
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        from tests.test_dns01 import FakeDNS
        from txacme.issuing.persistpolicy import PersistOnDemandPolicy

        dns = FakeDNS()
        zones: list[str] = []
        find_zone = dns.find_zone

        def counted(name: str) -> Any:
            zones.append(name)
            return find_zone(name)

        dns.find_zone = counted  # type: ignore[method-assign]
        dns.primary["_validation-persist.a.example.test"] = [f"ca.example; accounturi={ACCOUNT}"]
        clock = Clock()
        clock.advance(1000)
        policy = PersistOnDemandPolicy(
            lambda: succeed((ACCOUNT, ["ca.example"])),
            lookup=dns,
            ask_rate=1,
            ask_concurrency=5,
            clock=clock,
        )
        self.assertTrue(self.successResultOf(policy.decide("a.example.test")))
        self.assertFalse(self.successResultOf(policy.decide("b.example.test")))
        self.assertEqual(len(zones), 1)
        self.assertEqual(policy.ask_limited, 1)
        self.assertTrue(self.successResultOf(policy.decide("a.example.test")))
        self.assertEqual(len(zones), 1)
        clock.advance(1.5)
        self.assertFalse(self.successResultOf(policy.decide("b.example.test")))
        self.assertEqual(len(zones), 2)
        self.assertEqual(policy.ask_limited, 1)


class PersistResponderUnitTests(TestCase):
    """DNSPersist01Responder with a fake DNS (two name servers, one lagging)."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from tests.test_dns01 import NS1, FakeDNS, FakeProvider

        self.dns = FakeDNS()
        self.provider = FakeProvider(self.dns)
        self.clock = Clock()
        self.clock.advance(1000)
        self.ns1 = NS1
        self.challenge = DNSPersist01(issuer_domain_names=("ca.example", "ca2.example"))

    def responder(self, **kwargs: Any) -> DNSPersist01Responder:
        return DNSPersist01Responder(lookup=self.dns, clock=self.clock, **kwargs)

    def start(self, responder: DNSPersist01Responder, name: str, wildcard: bool = False) -> Any:
        response = DNSPersist01Response(account_uri=ACCOUNT, wildcard=wildcard)
        return responder.start_responding(name, self.challenge, response)

    def test_present_everywhere(self) -> None:
        self.dns.primary["_validation-persist.www.example.test"] = [
            "other.example; accounturi=x",
            f"ca2.example; accounturi={ACCOUNT}",
        ]
        responder = self.responder(provider=self.provider)
        self.successResultOf(self.start(responder, "www.example.test"))
        self.assertEqual(self.provider.calls, [])
        self.assertIsNone(responder.stop_responding("www.example.test", None, None))

    def test_lagging_server_publishes_and_waits(self) -> None:
        """A record one name server lacks is published, and awaited at both."""
        from tests.test_dns01 import NS2

        self.dns.lag(NS2)
        self.dns.primary["_validation-persist.www.example.test"] = [
            f"ca.example; accounturi={ACCOUNT}"
        ]
        responder = self.responder(provider=self.provider, persist_until=5000)
        d = self.start(responder, "www.example.test")
        value = f"ca.example; accounturi={ACCOUNT}; persistUntil=5000"
        self.assertEqual(
            self.provider.calls,
            [("add", "example.test", "_validation-persist.www.example.test", value)],
        )
        self.assertNoResult(d)
        self.dns.catch_up(NS2)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(responder.published, 1)

    def test_expired_and_wildcard(self) -> None:
        self.dns.primary["_validation-persist.example.test"] = [
            f"ca.example; accounturi={ACCOUNT}; persistUntil=999"
        ]
        failure = self.failureResultOf(self.start(self.responder(), "example.test"))
        self.assertIsInstance(failure.value, PersistRecordMissing)
        self.dns.primary["_validation-persist.example.test"] = [f"ca.example; accounturi={ACCOUNT}"]
        self.successResultOf(self.start(self.responder(), "example.test"))
        failure = self.failureResultOf(self.start(self.responder(), "example.test", True))
        self.assertIn("policy=wildcard", str(failure.value))
        # The preferred issuer is used when the challenge offers it.
        responder = self.responder(provider=self.provider, issuer_domain_name="ca2.example")
        self.start(responder, "example.test", True)
        self.assertEqual(
            self.provider.calls[0][3], f"ca2.example; accounturi={ACCOUNT}; policy=wildcard"
        )

    def test_one_publication_for_concurrent_starts(self) -> None:
        """The wildcard and the apex of one order: one lock per name, one record."""
        self.provider.hold = []
        responder = self.responder(provider=self.provider, wildcard_policy=True)
        first = self.start(responder, "example.test", True)
        second = self.start(responder, "example.test")
        self.assertEqual(len(self.provider.calls), 1)
        for d in list(self.provider.hold):
            d.callback(None)
        self.clock.advance(1)
        self.successResultOf(first)
        self.clock.advance(1)
        self.successResultOf(second)
        self.assertEqual(len(self.provider.calls), 1)

    def test_too_long_for_one_string(self) -> None:
        long_account = "https://ca.example/" + "a" * 250
        responder = self.responder(provider=self.provider)
        response = DNSPersist01Response(account_uri=long_account)
        failure = self.failureResultOf(
            responder.start_responding("www.example.test", self.challenge, response)
        )
        self.assertIn("over 255 bytes", str(failure.value))
        self.assertEqual(self.provider.calls, [])

    def test_no_zone_without_provider(self) -> None:
        failure = self.failureResultOf(self.start(self.responder(), "host.nowhere"))
        self.assertIsInstance(failure.value, PersistRecordMissing)
        self.assertIn('_validation-persist.host.nowhere. IN TXT "ca.example;', str(failure.value))


@pytest.mark.optional_interop("acme.sh")
class AcmeShInteropTests(BindBase):
    """
    The test CA's dns-persist-01 against another client: acme.sh (which has
    ``--dns-persist``), when ``acme.sh`` is on ``PATH`` or ``TXACME_ACMESH``
    names it. acme.sh is not packaged by Debian, so the suite leaves this test
    out (and says so) unless ``TXACME_ACMESH`` is set; see docs/testing.rst.
    """

    timeout = 300

    def test_acme_sh(self) -> None:
        import os
        import re
        import shutil
        import subprocess

        from txacme.testca import TestCAProcess

        script = os.environ.get("TXACME_ACMESH") or shutil.which("acme.sh")
        if not script:
            raise SkipTest("acme.sh is not installed (set TXACME_ACMESH to its path)")
        ca = TestCAProcess.start(
            dns_server=[self.bind.address, self.bind.port],
            challenge_types=["dns-persist-01"],
            retry_after=0,
        )
        self.addCleanup(ca.stop)
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        common = [
            "--home",
            home,
            "--config-home",
            home,
            "--server",
            ca.directory_url,
            "--ca-bundle",
            ca.https_ca_file,
        ]

        def acme_sh(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k != "ACME_DIRECTORY"}
            env["NO_COLOR"] = "1"
            return subprocess.run(
                ["sh", script, *args, *common],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                stdin=subprocess.DEVNULL,
            )

        self.assertEqual(acme_sh("--register-account", "-m", "ops@example.test").returncode, 0)
        made = acme_sh("--make-dns-persist-value", "--dns-persist-wildcard", "-d", "example.test")
        plain = re.sub(r"\x1b\[[0-9;]*m", "", made.stdout + made.stderr)
        found = re.search(r'persist value :"([^"]+)"', plain)
        assert found is not None, plain
        value = found.group(1)
        self.assertRegex(value, r"^testca\.invalid; accounturi=https://\S+; policy=wildcard$")
        # Without the record the test CA refuses; with it, it issues.
        refused = acme_sh("--issue", "--dns-persist", "-d", "example.test")
        self.assertNotEqual(refused.returncode, 0)
        self.bind.update("example.test", add=[("_validation-persist.example.test", value)])
        issued = acme_sh("--issue", "--dns-persist", "-d", "*.example.test", "-d", "example.test")
        self.assertEqual(issued.returncode, 0, issued.stdout[-2000:])
