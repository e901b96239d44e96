"""
tls-alpn-01 end to end: Pebble's validator connects over loopback to a
listener served by SNIConnectionCreator and validates the challenge
certificate; the issued certificate is then served by the same listener.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.policies import WrappingFactory

from tests.test_client_pebble import PebbleCase, close_all, inline, verify_chain
from tests.test_tls import AppFactory, TLSServerMixin, shared_ca
from txacme import errors
from txacme.challenges.tlsalpn01 import TLSALPN01Responder
from txacme.issuing.order import IssuedCertificate, obtain_certificate
from txacme.serving.tls import CertificateIndex, SNIConnectionCreator, tls_server_factory


class TLSALPN01PebbleTests(TLSServerMixin, PebbleCase):
    def serve_tls(
        self, index: CertificateIndex, responder: TLSALPN01Responder | None, **kwargs: Any
    ) -> tuple[SNIConnectionCreator, AppFactory]:
        """Listen on Pebble's tls-alpn-01 port with a creator over ``index``."""
        creator = SNIConnectionCreator(
            index,
            challenges=responder.registry if responder is not None else None,
            acceptable_protocols=[b"http/1.1"],
            **kwargs,
        )
        app = AppFactory()
        factory = WrappingFactory(tls_server_factory(creator, app))
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            self.pebble.tls_port, factory, interface="127.0.0.1", backlog=512
        )

        async def stop() -> None:
            await port.stopListening()
            await close_all(factory)

        self.addCleanup(lambda: inline(stop)())
        self.port = self.pebble.tls_port
        return creator, app

    async def issue(
        self, names: list[str], responder: TLSALPN01Responder, **kwargs: Any
    ) -> IssuedCertificate:
        client = await self.client()
        await client.start()
        return await obtain_certificate(client, names, [responder], **kwargs)

    async def check_served(
        self, index: CertificateIndex, issued: IssuedCertificate, sni: bytes
    ) -> None:
        """Store the certificate in the index; the next handshake serves it."""
        for name in issued.names:
            self.assertTrue(index.update(name, issued.pem_objects))
        outcome = await self.connect(sni, [b"http/1.1"], payload=b"hello")
        self.assertEqual(outcome.certificate, issued.certificate)
        self.assertEqual(outcome.chain[1:], issued.chain)
        self.assertEqual(outcome.protocol, b"http/1.1")
        self.assertEqual(outcome.received, b"hello")

    @inline
    async def test_new_name(self) -> None:
        """
        A name with no certificate yet (the placeholder path): Pebble validates,
        the application never sees data, the new certificate is served next.
        """
        index = CertificateIndex()
        responder = TLSALPN01Responder()
        _, app = self.serve_tls(index, responder)
        issued = await self.issue(["tls-alpn.example"], responder)
        verify_chain(self.pebble, issued, "tls-alpn.example")
        self.assertEqual(len(responder.registry), 0)
        self.assertGreaterEqual(app.made, 1)  # the validator's connections
        self.assertEqual(app.received, [])
        await self.check_served(index, issued, b"tls-alpn.example")

    @inline
    async def test_renewal_over_tls12_with_rsa_certificate(self) -> None:
        """
        A name already served with an RSA certificate, by a TLS 1.2-only server:
        the challenge certificate swapped in by the ALPN callback must have an
        RSA key too. Pebble validates it.
        """
        name = "renew.example"
        index = CertificateIndex()
        index.update(name, shared_ca().issue([name], key_type="rsa2048"))
        responder = TLSALPN01Responder()
        self.serve_tls(
            index,
            responder,
            context_factory=lambda: CertificateOptions(
                raiseMinimumTo=TLSVersion.TLSv1_2, lowerMaximumSecurityTo=TLSVersion.TLSv1_2
            ).getContext(),
        )
        issued = await self.issue([name], responder, key_type="ec256")
        verify_chain(self.pebble, issued, name)
        await self.check_served(index, issued, name.encode())
        self.assertIn("TLSv1.2", (await self.connect(name.encode())).version or "")

    @inline
    async def test_several_names_and_a_default(self) -> None:
        """Three names in one order (nine validations at once), with a default certificate."""
        names = ["a.multi.example", "b.multi.example", "c.multi.example"]
        index = CertificateIndex()
        index.set_default(shared_ca().issue(["default.example"], key_type="ec384"))
        responder = TLSALPN01Responder()
        _, app = self.serve_tls(index, responder)
        issued = await self.issue(names, responder)
        for name in names:
            verify_chain(self.pebble, issued, name)
        self.assertEqual(app.received, [])
        await self.check_served(index, issued, b"c.multi.example")

    @inline
    async def test_ip_address(self) -> None:
        """RFC 8738: an IP identifier, asked for by its reverse-DNS name."""
        index = CertificateIndex()
        responder = TLSALPN01Responder()
        self.serve_tls(index, responder)
        issued = await self.issue(["127.0.0.1"], responder)
        verify_chain(self.pebble, issued, "127.0.0.1")
        await self.check_served(index, issued, b"1.0.0.127.in-addr.arpa")

    @inline
    async def test_not_answering_fails(self) -> None:
        """A listener that does not consult the registry: validation fails."""
        index = CertificateIndex()
        index.update("nope.example", shared_ca().issue(["nope.example"]))
        responder = TLSALPN01Responder()
        self.serve_tls(index, None)
        with self.assertRaises(errors.IssuanceFailed) as raised:
            await self.issue(["nope.example"], responder)
        self.assertIsNotNone(raised.exception.problem)
        self.assertEqual(len(responder.registry), 0)
