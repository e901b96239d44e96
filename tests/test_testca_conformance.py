"""
Conformance of :class:`txacme.testca.TestCA`, proved by ACME clients we did not
write: the ``acme`` package's synchronous ``ClientV2`` (run in a thread while the
reactor serves the CA) and lego (a Go client, run as a subprocess) - and by our
own :mod:`txacme.protocol.client` / :mod:`txacme.issuing.order`.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import josepy as jose
from acme import challenges, crypto_util, messages
from acme import client as acme_client
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_testca import TokenResource, listen_http01, verify_chain
from txacme.testca import TestCA, cert_id

R: Any = reactor
T = TypeVar("T")
LEGO = shutil.which("lego")


def in_thread(f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Run blocking client code in the reactor's thread pool."""
    return threads.deferToThread(f, *args, **kwargs)


def publish(tokens: TokenResource, token: str, value: str) -> None:
    """Set an http-01 answer from a client thread, through the reactor thread."""
    threads.blockingCallFromThread(R, tokens.tokens.__setitem__, token, value.encode())


# -- the acme package's client ---------------------------------------------------


class _ReplacingOrder(messages.NewOrder):
    """acme 5.9's ``NewOrder`` has ``profile`` but no ARI ``replaces`` field."""

    replaces: str = jose.field("replaces", omitempty=True)


class ReplacingClientV2(acme_client.ClientV2):
    """``ClientV2`` with a ``new_order`` that can send ``replaces`` (RFC 9773)."""

    def new_order_replacing(self, csr_pem: bytes, replaces: str) -> messages.OrderResource:
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, _ = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names
        ]
        response = self._post(
            self.directory["newOrder"],
            _ReplacingOrder(identifiers=identifiers, replaces=replaces),
        )
        body = messages.Order.from_json(response.json())
        authorizations = [
            self._authzr_from_response(self._post_as_get(url), uri=url)
            for url in body.authorizations
        ]
        return messages.OrderResource(
            body=body,
            uri=response.headers.get("Location"),
            authorizations=authorizations,
            csr_pem=csr_pem,
        )


def _pem_key(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


def acme_client_for(ca: TestCA, key: jose.JWK, alg: Any = jose.ES256) -> ReplacingClientV2:
    net = acme_client.ClientNetwork(key, alg=alg, verify_ssl=ca.https_ca_file)
    directory = acme_client.ClientV2.get_directory(ca.directory_url, net)
    return ReplacingClientV2(directory, net)


def answer_http01(
    client: acme_client.ClientV2, order: messages.OrderResource, tokens: TokenResource
) -> None:
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue
        for challb in authz.body.challenges:
            if isinstance(challb.chall, challenges.HTTP01):
                response, validation = challb.response_and_validation(client.net.key)
                publish(tokens, challb.chall.encode("token"), validation)
                client.answer_challenge(challb, response)


class AcmeClientTests(unittest.TestCase):
    """The ``acme`` package's ``ClientV2`` against the TestCA."""

    async def test_obtain_renew_revoke(self) -> None:
        """Obtain, ask ARI, renew with ``replaces``, revoke by account and by certificate key."""
        tokens, port = listen_http01(self)
        ca = await TestCA.start_for_test(self, R, http01_port=port, reuse_authorizations=True)
        account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        first_key = ec.generate_private_key(ec.SECP256R1())

        def obtain() -> dict[str, Any]:
            client = acme_client_for(ca, account_key)
            client.new_account(
                messages.NewRegistration.from_data(
                    email="ops@example.com", terms_of_service_agreed=True
                )
            )
            csr = crypto_util.make_csr(_pem_key(first_key), ["x.test", "www.x.test"])
            order = client.new_order(csr)
            answer_http01(client, order, tokens)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=30)
            done = client.poll_and_finalize(order, deadline)
            chain = done.fullchain_pem.encode()
            renew_at, _ = client.renewal_time(chain)
            window = threads.blockingCallFromThread(R, ca.renewal_window, chain)
            # Renew: a new order that replaces the first certificate.
            replaced = cert_id(x509.load_pem_x509_certificate(chain))
            second_key = ec.generate_private_key(ec.SECP256R1())
            csr2 = crypto_util.make_csr(_pem_key(second_key), ["x.test", "www.x.test"])
            renewal = client.new_order_replacing(csr2, replaced)
            answer_http01(client, renewal, tokens)
            renewed = client.poll_and_finalize(renewal, deadline).fullchain_pem.encode()
            # acme turns every 409 into ConflictError; the CA's record says which.
            try:
                client.new_order_replacing(csr2, replaced)
            except acme_errors.ConflictError:
                second_replace = "conflict"
            else:
                second_replace = None
            # Revoke the renewed certificate with the account key...
            renewed_cert = x509.load_pem_x509_certificate(renewed)
            client.revoke(renewed_cert, 4)
            after_revocation, _ = client.renewal_time(renewed)
            # ... and the first one with its own key (jwk-signed, no account).
            cert_key_net = acme_client.ClientNetwork(
                jose.JWKEC(key=first_key), alg=jose.ES256, verify_ssl=ca.https_ca_file
            )
            by_key = acme_client.ClientV2(client.directory, cert_key_net)
            by_key.revoke(x509.load_pem_x509_certificate(chain), 1)
            return {
                "chain": chain,
                "renew_at": renew_at,
                "window": window,
                "order_url": done.uri,
                "renewal_url": renewal.uri,
                "renewed": renewed,
                "second_replace": second_replace,
                "after_revocation": after_revocation,
            }

        result = await in_thread(obtain)
        chain, renewed = result["chain"], result["renewed"]
        verify_chain(chain, ca.root_pem, "www.x.test", ca.now())
        verify_chain(renewed, ca.root_pem, "x.test", ca.now())
        start, end = result["window"]
        self.assertGreater(start, ca.now())
        self.assertTrue(start <= result["renew_at"] <= end, (start, result["renew_at"], end))
        first = ca.record_for(chain)
        self.assertEqual(first.replaced_by, result["renewal_url"])
        self.assertEqual(result["second_replace"], "conflict")
        conflict = next(r for r in ca.requests if r.status == 409)
        self.assertEqual(conflict.problem, "urn:ietf:params:acme:error:alreadyReplaced")
        self.assertEqual(first.revocation_reason, 1)
        self.assertEqual(ca.record_for(renewed).revocation_reason, 4)
        self.assertLessEqual(result["after_revocation"], ca.now())
        # The renewal reused the valid authorizations: no second validation.
        self.assertEqual(len(tokens.hosts), 2)
        # Every POST carried a nonce the CA accepted and every fetch was POST-as-GET.
        problems = [r.problem for r in ca.requests if r.problem]
        self.assertEqual(problems, ["urn:ietf:params:acme:error:alreadyReplaced"])
        fetches = [r for r in ca.requests if r.endpoint in ("order", "authz", "cert")]
        self.assertTrue(fetches and all(r.post_as_get for r in fetches))

    async def test_eab_and_key_types(self) -> None:
        """External account binding, and ES384 / RS256 account keys."""
        ca = await TestCA.start_for_test(self, R, eab_required=True)
        ((kid, hmac_key),) = ca.eab_keys.items()

        def register() -> list[str]:
            codes = []
            key = jose.JWKEC(key=ec.generate_private_key(ec.SECP384R1()))
            client = acme_client_for(ca, key, jose.ES384)
            eab_required = client.external_account_required()
            try:
                client.new_account(messages.NewRegistration.from_data(email="a@example.com"))
            except messages.Error as error:
                codes.append(error.code)
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(),
                kid=kid,
                hmac_key=hmac_key,
                directory=client.directory,
            )
            regr = client.new_account(
                messages.NewRegistration.from_data(
                    email="a@example.com", external_account_binding=eab
                )
            )
            codes.append(regr.body.status)
            rsa_key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
            rsa_client = acme_client_for(ca, rsa_key, jose.RS256)
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=rsa_key.public_key(),
                kid=kid,
                hmac_key=hmac_key,
                directory=rsa_client.directory,
            )
            rsa_client.new_account(messages.NewRegistration.from_data(external_account_binding=eab))
            csr = crypto_util.make_csr(
                _pem_key(ec.generate_private_key(ec.SECP256R1())), ["x.test"]
            )
            order = rsa_client.new_order(csr)
            codes.append(order.body.status.name)
            codes.append(str(eab_required))
            return codes

        codes = await in_thread(register)
        self.assertEqual(codes, ["externalAccountRequired", "valid", "pending", "True"])


# -- lego ----------------------------------------------------------------------------


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.done: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if isinstance(reason.value, ProcessDone):
            self.done.callback(0)
        elif isinstance(reason.value, ProcessTerminated):
            self.done.callback(reason.value.exitCode if reason.value.exitCode is not None else -1)
        else:
            self.done.errback(reason)


async def run_process(
    argv: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[int, bytes, bytes]:
    """Run a subprocess from the reactor; kill it after ``timeout`` seconds."""
    collect = _Collect()
    transport = R.spawnProcess(collect, argv[0], list(argv), env=env)

    def kill() -> None:
        transport.signalProcess("KILL")

    call = R.callLater(timeout, kill)
    try:
        code = await collect.done
    finally:
        if call.active():
            call.cancel()
    return code, collect.out, collect.err


class LegoTests(unittest.TestCase):
    """lego (a Go ACME client) against the TestCA."""

    def setUp(self) -> None:
        if LEGO is None:
            if os.environ.get("CI"):
                self.fail("lego is not installed (apt-get install -y lego)")
            raise unittest.SkipTest("lego is not installed (apt-get install -y lego)")

    async def _lego(self, ca: TestCA, home: str, *args: str) -> bytes:
        assert LEGO is not None
        argv = [
            LEGO,
            "--server",
            ca.directory_url,
            "--email",
            "ops@example.com",
            "--accept-tos",
            "--domains",
            "x.test",
            "--path",
            home,
            "--key-type",
            "ec256",
            *args,
        ]
        env = {
            "LEGO_CA_CERTIFICATES": ca.https_ca_file,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
        }
        code, out, err = await run_process(argv, env, timeout=30)
        self.assertEqual(code, 0, err.decode(errors="replace")[-3000:])
        return err

    def _home(self) -> str:
        home = tempfile.mkdtemp(prefix="txacme-lego-")
        self.addCleanup(shutil.rmtree, home, True)
        return home

    async def test_http01_obtain_and_revoke(self) -> None:
        """lego obtains a certificate over http-01, then revokes it."""
        port = _free_port()
        ca = await TestCA.start_for_test(self, R, http01_port=port)
        home = self._home()
        await self._lego(ca, home, "--http", "--http.port", f"127.0.0.1:{port}", "run")
        with open(os.path.join(home, "certificates", "x.test.crt"), "rb") as f:
            chain = f.read()
        verify_chain(chain, ca.root_pem, "x.test", ca.now())
        self.assertFalse(ca.is_revoked(chain))
        await self._lego(ca, home, "--http", "--http.port", f"127.0.0.1:{port}", "revoke")
        self.assertTrue(ca.is_revoked(chain))

    async def test_tlsalpn01_obtain(self) -> None:
        """lego obtains a certificate over tls-alpn-01."""
        port = _free_port()
        ca = await TestCA.start_for_test(self, R, tlsalpn01_port=port, retry_after=1)
        home = self._home()
        await self._lego(ca, home, "--tls", "--tls.port", f"127.0.0.1:{port}", "run")
        with open(os.path.join(home, "certificates", "x.test.crt"), "rb") as f:
            chain = f.read()
        verify_chain(chain, ca.root_pem, "x.test", ca.now())
        challenge_posts = [r for r in ca.requests if r.endpoint == "challenge"]
        self.assertEqual(len(challenge_posts), 1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- our own client ----------------------------------------------------------------------


class TxacmeClientTests(unittest.TestCase):
    """:mod:`txacme.protocol.client` and :mod:`txacme.issuing.order` against the TestCA."""

    async def _client(self, ca: TestCA) -> Any:
        from txacme.keys import generate_private_key, jwk_for
        from txacme.protocol.client import Client

        client = await Client.from_url(
            R, ca.directory_url, jwk_for(generate_private_key()), ca_file=ca.https_ca_file
        )
        self.addCleanup(client.close)
        await client.start(email="ops@example.com")
        return client

    def _http01(self, port: int = 0) -> tuple[Any, int]:
        from twisted.web.server import Site

        from txacme.challenges import HTTP01Responder, http01_root

        responder = HTTP01Responder()
        site = Site(http01_root(responder))
        site.noisy = False
        listening = R.listenTCP(port, site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return responder, int(listening.getHost().port)

    async def test_obtain_ari_renew_revoke(self) -> None:
        """Obtain (preferring the alternate chain), follow ARI, renew with replaces, revoke."""
        from txacme.issuing.order import obtain_certificate
        from txacme.protocol.ari import ari_cert_id

        responder, port = self._http01()
        ca = await TestCA.start_for_test(
            self, R, http01_port=port, retry_after=0, alternate_chains=1
        )
        client = await self._client(ca)
        self.assertTrue(client.supports_ari)
        self.assertEqual(set(client.profiles), {"classic", "shortlived"})
        alternate_root = x509.load_pem_x509_certificate(ca.root_pems[1])
        alternate_cn = alternate_root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[
            0
        ].value
        issued = await obtain_certificate(
            client,
            ["x.test", "www.x.test"],
            [responder],
            profile="shortlived",
            preferred_chain=str(alternate_cn),
        )
        self.assertEqual(
            issued.not_after - issued.not_before, datetime.timedelta(hours=160, seconds=-1)
        )
        pem_chain = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in [issued.certificate, *issued.chain]
        )
        verify_chain(pem_chain, ca.root_pems[1], "www.x.test", ca.now())
        self.assertEqual(responder.active_tokens(), frozenset())

        info = await client.renewal_info(issued.certificate)
        start, end = ca.renewal_window(issued.certificate)
        self.assertEqual(
            (info.start, info.end), (start.replace(microsecond=0), end.replace(microsecond=0))
        )
        ca.request_renewal(issued.certificate)
        urgent = await client.renewal_info(issued.certificate)
        self.assertLessEqual(urgent.end, ca.now())

        renewed = await obtain_certificate(
            client, ["x.test", "www.x.test"], [responder], replaces=ari_cert_id(issued.certificate)
        )
        record = ca.record_for(issued.certificate)
        self.assertEqual(record.replaced_by, renewed.order_url)
        await client.revoke(renewed.certificate, 4)
        self.assertEqual(ca.record_for(renewed.certificate).revocation_reason, 4)

    async def test_tlsalpn01(self) -> None:
        """Our tls-alpn-01 responder behind the SNI connection creator validates."""
        from twisted.internet.protocol import Factory, Protocol

        from txacme.challenges import TLSALPN01Responder
        from txacme.issuing.order import obtain_certificate
        from txacme.serving.tls import CertificateIndex, SNIConnectionCreator, tls_server_factory

        responder = TLSALPN01Responder()
        creator = SNIConnectionCreator(CertificateIndex(), challenges=responder.registry)
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        listening = R.listenTCP(0, tls_server_factory(creator, factory), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        ca = await TestCA.start_for_test(
            self, R, tlsalpn01_port=listening.getHost().port, retry_after=0
        )
        client = await self._client(ca)
        issued = await obtain_certificate(client, ["x.test", "127.0.0.1"], [responder])
        self.assertEqual(len(ca.certificates), 1)
        self.assertEqual(ca.certificates[0].certificate, issued.certificate)
        validated = {r.endpoint for r in ca.requests}
        self.assertIn("challenge", validated)

    async def test_faults(self) -> None:
        """badNonce is retried by our client; rateLimited surfaces with its Retry-After."""
        from txacme.errors import RateLimited
        from txacme.issuing.order import obtain_certificate

        responder, port = self._http01()
        ca = await TestCA.start_for_test(self, R, http01_port=port, retry_after=0)
        client = await self._client(ca)
        ca.fail_next("badNonce", endpoint="newOrder")
        issued = await obtain_certificate(client, ["x.test"], [responder])
        self.assertEqual([r.status for r in ca.requests if r.endpoint == "newOrder"], [400, 201])
        ca.fail_next("rateLimited", "too many certificates", endpoint="newOrder", retry_after=60)
        with self.assertRaises(RateLimited) as caught:
            await obtain_certificate(client, ["x.test"], [responder])
        self.assertEqual(caught.exception.retry_after, 60)
        self.assertIn("too many certificates", str(caught.exception))
        del issued


# -- the example of docs/testing.rst, run as written ----------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.rst"


def _documented_example() -> dict[str, Any]:
    """Execute the ``# test_hello.py`` code block of docs/testing.rst as a module."""
    text = DOCS.read_text(encoding="utf-8")
    block = text[text.index("   # test_hello.py") :].splitlines()
    lines = []
    for line in block:
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
    exec(compile("\n".join(lines), str(DOCS), "exec"), namespace)
    return namespace


if DOCS.exists():
    DocumentedExampleTests = _documented_example()["HelloOverHTTPSTests"]
