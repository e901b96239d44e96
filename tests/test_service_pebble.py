"""
End-to-end tests of AcmeIssuingService against Pebble: real orders, http-01
validated by Pebble over loopback, certificates stored in a DirectoryStore.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from tests.harness import chains
from tests.harness.pebble import pebble_or_skip
from txacme.challenges.http01 import HTTP01Responder, http01_root
from txacme.issuing.events import Failed, Obtained, ServiceEvent
from txacme.issuing.service import AcmeIssuingService
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client
from txacme.stores.directory import DirectoryStore


def verify_chain(pem_objects: list[Any], roots: list[bytes], names: list[str]) -> x509.Certificate:
    """
    Check that the stored entry is key + leaf + chain, that the chain verifies
    up to one of ``roots`` and that the leaf covers ``names``.
    """
    return chains.verify_entry(pem_objects, roots, names)


class ServicePebbleTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.pebble = pebble_or_skip()
        self.responder = HTTP01Responder()
        port = reactor.listenTCP(
            self.pebble.http_port, Site(http01_root(self.responder)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.clients: list[Client] = []
        self.account_key = jwk_for(generate_private_key())
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.store = DirectoryStore(self.directory)

    def client_creator(self) -> Deferred[Client]:
        def keep(client: Client) -> Client:
            self.clients.append(client)
            return client

        return Client.from_url(
            reactor, self.pebble.directory_url, self.account_key, ca_file=self.pebble.ca_file
        ).addCallback(keep)

    def make_service(
        self, responders: list[Any] | None = None, **kwargs: Any
    ) -> AcmeIssuingService:
        service = AcmeIssuingService(
            self.store,
            self.client_creator,
            reactor,
            [self.responder] if responders is None else responders,
            email="ops@service.example",
            **kwargs,
        )
        self.events: list[ServiceEvent] = []
        service.subscribe(self.events.append)
        self.addCleanup(self.close_clients)
        return service

    def close_clients(self) -> Deferred[Any]:
        return DeferredList([client.close() for client in self.clients])

    async def run_service(self, service: AcmeIssuingService) -> None:
        service.startService()
        try:
            await service.when_certs_valid()
        finally:
            await service.stopService()

    def test_issue_missing_at_start(self) -> Deferred[None]:
        """
        Empty entries are issued at start-up (one with an extra name), stored in
        the directory, and their chains verify against Pebble's root.
        """
        for name in ("svc-a.example", "svc-b.example"):
            with open(os.path.join(self.directory, name + ".pem"), "wb"):
                pass
        stored: list[str] = []
        service = self.make_service(
            names={"svc-a.example": ["www.svc-a.example"]},
            on_stored=lambda name, objects: stored.append(name),
        )

        async def check() -> None:
            await self.run_service(service)
            self.assertEqual(sorted(stored), ["svc-a.example", "svc-b.example"])
            entries = await self.store.as_dict()
            roots = self.pebble.roots()
            now = datetime.now(timezone.utc)
            a = verify_chain(
                entries["svc-a.example"], roots, ["svc-a.example", "www.svc-a.example"]
            )
            b = verify_chain(entries["svc-b.example"], roots, ["svc-b.example"])
            for cert in (a, b):
                self.assertTrue(cert.not_valid_before_utc <= now < cert.not_valid_after_utc)
            obtained = [e for e in self.events if isinstance(e, Obtained)]
            self.assertEqual(sorted(e.name for e in obtained), ["svc-a.example", "svc-b.example"])
            self.assertEqual(len(self.clients), 1)

        return Deferred.fromCoroutine(check())

    def test_issue_cert_replaces(self) -> Deferred[None]:
        """issue_cert replaces a valid certificate; concurrent calls share one order."""
        with open(os.path.join(self.directory, "svc-c.example.pem"), "wb"):
            pass
        service = self.make_service()

        async def check() -> None:
            service.startService()
            try:
                await service.when_certs_valid()
                first = (await self.store.get("svc-c.example"))[1].as_bytes()
                one, two = service.issue_cert("svc-c.example"), service.issue_cert("svc-c.example")
                issued_one, issued_two = await one, await two
                self.assertIs(issued_one, issued_two)
            finally:
                await service.stopService()
            entry = await self.store.get("svc-c.example")
            self.assertNotEqual(entry[1].as_bytes(), first)
            verify_chain(entry, self.pebble.roots(), ["svc-c.example"])
            self.assertEqual(sum(isinstance(e, Obtained) for e in self.events), 2)

        return Deferred.fromCoroutine(check())

    def test_failed_validation(self) -> Deferred[None]:
        """
        A responder Pebble cannot reach: the attempt fails with the CA's problem,
        the name backs off, panic is called, and the entry stays empty.
        """
        with open(os.path.join(self.directory, "svc-d.example.pem"), "wb"):
            pass
        panics: list[str] = []
        unreachable = HTTP01Responder()  # not served: Pebble finds no key authorization
        service = self.make_service([unreachable], panic=lambda failure, name: panics.append(name))

        async def check() -> None:
            await self.run_service(service)
            self.assertEqual(await self.store.get("svc-d.example"), [])
            [failed] = [e for e in self.events if isinstance(e, Failed)]
            self.assertEqual(failed.name, "svc-d.example")
            self.assertTrue(failed.problem.startswith("urn:ietf:params:acme:error:"), failed)
            self.assertIn("svc-d.example", failed.detail)
            self.assertEqual(panics, ["svc-d.example"])

        return Deferred.fromCoroutine(check())

    def test_stop_during_issuance(self) -> Deferred[None]:
        """
        Stopping the service while Pebble validates cancels the issuance: the
        responder is stopped again, nothing is stored, stopService fires.
        """
        with open(os.path.join(self.directory, "svc-e.example.pem"), "wb"):
            pass
        calls: list[str] = []
        stopped: Deferred[None] = Deferred()
        real = self.responder

        class StopOnStart:
            challenge_type = real.challenge_type

            def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
                calls.append("start")
                real.start_responding(server_name, challenge, response)
                reactor.callLater(0, lambda: service.stopService().chainDeferred(stopped))

            def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
                calls.append("stop")
                real.stop_responding(server_name, challenge, response)

        service = self.make_service([StopOnStart()])

        async def check() -> None:
            service.startService()
            await stopped
            self.assertEqual(calls, ["start", "stop"])
            self.successResultOf(service.when_certs_valid())
            self.assertEqual(await self.store.get("svc-e.example"), [])
            self.assertFalse([e for e in self.events if isinstance(e, (Obtained, Failed))])

        return Deferred.fromCoroutine(check())
