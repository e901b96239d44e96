"""
The test CA as a service (``python -m txacme.testca`` until signalled) and by RFC
8555: http-01 redirects (section 8.3), ``subproblems`` for several bad identifiers
(section 6.7.1), an IP address sent as a DNS name, human error texts. Each is
checked with our clients (the raw client of ``test_testca`` and
:mod:`txacme.protocol.client`) and with clients we did not write (the ``acme``
package's ``ClientV2`` in-process; lego against ``python -m txacme.testca``).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import josepy as jose
from acme import challenges, messages
from acme import client as acme_client
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File

from tests.test_testca import (
    CATestCase,
    TokenResource,
    _ServerTLS,
    alpn_certificate,
    listen_http01,
    verify_chain,
)
from tests.test_testca_conformance import (
    LEGO,
    acme_client_for,
    in_thread,
    publish,
    run_process,
)
from txacme.testca import TestCA, TestCAProcess, free_port
from txacme.testca._validation import MAX_HTTP01_REDIRECTS

R: Any = reactor
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# -- servers for redirect tests ----------------------------------------------------------


class Redirector(Resource):
    """Answers every GET with ``code`` to ``target(path)``; records Host headers."""

    isLeaf = True

    def __init__(self, target: Any, code: int = 302) -> None:
        super().__init__()
        self.target = target
        self.code = code
        self.hosts: list[str] = []

    def render_GET(self, request: Any) -> bytes:
        self.hosts.append(request.getHeader("host"))
        request.setResponseCode(self.code)
        request.setHeader("location", self.target(request.path.decode()))
        return b""


def listen(test: unittest.TestCase, resource: Resource, tls: bool = False) -> int:
    """Serve ``resource`` over HTTP (or HTTPS with a self-signed certificate) on loopback."""
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    if tls:
        key, cert = alpn_certificate("central.test", "unused")
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        port = R.listenSSL(0, site, _ServerTLS(ctx), interface="127.0.0.1")
    else:
        port = R.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)


def to_central(path: str) -> str:
    """http://x.test/.well-known/... -> https://central.test/acme/... (port 443)."""
    return "https://central.test/acme/" + path.rsplit("/", 1)[1]


class CentralTokens(TokenResource):
    """A TokenResource that serves ``/acme/<token>``."""

    def render_GET(self, request: Any) -> bytes:
        self.hosts.append(request.getHeader("host"))
        token = request.path.decode().rsplit("/", 1)[1]
        if request.path.decode().startswith("/acme/") and token in self.tokens:
            return self.tokens[token]
        request.setResponseCode(404)
        return b"not found"


# -- our raw client -----------------------------------------------------------------------


class RedirectTests(CATestCase):
    """http-01 follows redirects (RFC 8555 section 8.3), within ports and hops."""

    async def _validate(self, ca: TestCA, client: Any, tokens: TokenResource) -> dict[str, Any]:
        order = await client.new_order("x.test")
        challenge = await client.challenge(order, "http-01")
        tokens.tokens[challenge["token"]] = client.key_authorization(challenge["token"]).encode()
        await client.post(challenge["url"], {})
        await ca.idle()
        result: dict[str, Any] = (await client.post(challenge["url"])).json()
        return result

    async def test_http_to_https_on_443(self) -> None:
        """A redirect to https on port 443 goes to the CA's port-443 stand-in, unverified."""
        central = CentralTokens()
        https_port = listen(self, central, tls=True)
        redirector = Redirector(to_central, code=301)
        ca, client = await self.start_ca(
            http01_port=listen(self, redirector), tlsalpn01_port=https_port
        )
        await client.new_account()
        result = await self._validate(ca, client, central)
        self.assertEqual(result["status"], "valid", result)
        self.assertEqual(redirector.hosts, ["x.test"])
        self.assertEqual(central.hosts, ["central.test"])

    async def test_relative_and_configured_port(self) -> None:
        """A relative Location, then a target naming the http01 port itself, both work."""
        tokens, port = listen_http01(self)
        second = Redirector(lambda path: f"http://other.test:{port}{path.removeprefix('/hop')}")
        first = Redirector(lambda path: "/hop" + path, code=308)
        root = Resource()
        root.putChild(b".well-known", first)
        root.putChild(b"hop", second)
        # the token server listens on the configured tls-alpn-01 port, named explicitly
        ca, client = await self.start_ca(http01_port=listen(self, root), tlsalpn01_port=port)
        await client.new_account()
        result = await self._validate(ca, client, tokens)
        self.assertEqual(result["status"], "valid", result)
        self.assertEqual(tokens.hosts, [f"other.test:{port}"])

    async def test_refused_port(self) -> None:
        """A redirect to a port that is neither 80/443 nor configured is a connection problem."""
        redirector = Redirector(lambda path: "http://x.test:8080" + path)
        ca, client = await self.start_ca(http01_port=listen(self, redirector))
        await client.new_account()
        result = await self._validate(ca, client, TokenResource())
        self.assertEqual(result["status"], "invalid")
        self.assertEqual(result["error"]["type"], "urn:ietf:params:acme:error:connection")
        self.assertIn("http://x.test:8080/.well-known/acme-challenge/", result["error"]["detail"])
        self.assertIn(f"ports 80, 443, {ca.tlsalpn01_port}", result["error"]["detail"])

    async def test_bounded_hops(self) -> None:
        """A redirect loop fails after MAX_HTTP01_REDIRECTS hops, with a human message."""
        redirector = Redirector(lambda path: path)
        ca, client = await self.start_ca(http01_port=listen(self, redirector))
        await client.new_account()
        result = await self._validate(ca, client, TokenResource())
        self.assertEqual(result["status"], "invalid")
        self.assertEqual(len(redirector.hosts), MAX_HTTP01_REDIRECTS + 1)
        self.assertIn(f"more than {MAX_HTTP01_REDIRECTS} redirects", result["error"]["detail"])

    async def test_not_http(self) -> None:
        """Redirects to other schemes are refused."""
        redirector = Redirector(lambda path: "ftp://x.test/token")
        ca, client = await self.start_ca(http01_port=listen(self, redirector))
        await client.new_account()
        result = await self._validate(ca, client, TokenResource())
        self.assertEqual(result["error"]["type"], "urn:ietf:params:acme:error:connection")
        self.assertIn("http or https URLs only", result["error"]["detail"])


class IdentifierProblemTests(CATestCase):
    """Several bad identifiers give one problem with subproblems (RFC 8555 section 6.7.1)."""

    async def test_subproblems(self) -> None:
        """Every bad identifier has its subproblem; same types share the top-level type."""
        ca, client = await self.start_ca()
        await client.new_account()
        ca.forbidden_names.add("blocked.test")
        reply = await client.new_order("bad_name.test", "ok.test", "blocked.test", "localhost")
        self.assertEqual(reply.problem, "rejectedIdentifier")
        doc = reply.json()
        self.assertIn("3 of the 4 identifiers were refused", doc["detail"])
        self.assertEqual(
            [(s["type"].rsplit(":", 1)[1], s["identifier"]["value"]) for s in doc["subproblems"]],
            [
                ("rejectedIdentifier", "bad_name.test"),
                ("rejectedIdentifier", "blocked.test"),
                ("rejectedIdentifier", "localhost"),
            ],
        )
        mixed = await client.post(
            client.directory["newOrder"],
            {
                "identifiers": [
                    {"type": "email", "value": "a@x.test"},
                    {"type": "dns", "value": "blocked.test"},
                ]
            },
        )
        self.assertEqual(mixed.problem, "malformed")
        self.assertEqual(
            [s["identifier"]["type"] for s in mixed.json()["subproblems"]], ["email", "dns"]
        )
        single = await client.new_order("blocked.test", "ok.test")
        self.assertEqual(single.problem, "rejectedIdentifier")
        self.assertNotIn("subproblems", single.json())
        self.assertEqual(single.json()["identifier"]["value"], "blocked.test")

    async def test_ip_as_dns(self) -> None:
        """An IP address sent as a DNS identifier is named as an IP address."""
        ca, client = await self.start_ca()
        await client.new_account()
        for value in ("192.0.2.1", "::1", "[2001:db8::1]"):
            reply = await client.post(
                client.directory["newOrder"],
                {"identifiers": [{"type": "dns", "value": value}]},
            )
            self.assertEqual(reply.problem, "rejectedIdentifier", value)
            self.assertIn(
                'an IP address, not a DNS name (send it with type "ip")', reply.json()["detail"]
            )
            self.assertNotIn("numeric", reply.json()["detail"])

    async def test_not_after_text(self) -> None:
        """The notAfter problem names the lifetime in words, not as a timedelta."""
        ca, client = await self.start_ca()
        await client.new_account()
        late = (ca.now() + datetime.timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
        reply = await client.new_order("x.test", notAfter=late)
        self.assertEqual(reply.problem, "malformed")
        detail = reply.json()["detail"]
        self.assertIn("at most 90 days later (the 'classic' profile's lifetime)", detail)
        self.assertNotIn("0:00:00", detail)
        short = await client.new_order("x.test", notAfter=late, profile="shortlived")
        self.assertIn("at most 160 hours later", short.json()["detail"])


# -- our protocol client --------------------------------------------------------------------


class TxacmeClientTests(unittest.TestCase):
    """:mod:`txacme.protocol.client` and :mod:`txacme.issuing.order` see the new behaviours."""

    async def _client(self, ca: TestCA) -> Any:
        from txacme.keys import generate_private_key, jwk_for
        from txacme.protocol.client import Client

        client = await Client.from_url(
            R, ca.directory_url, jwk_for(generate_private_key()), ca_file=ca.https_ca_file
        )
        self.addCleanup(client.close)
        await client.start(email="ops@example.com")
        return client

    async def test_redirect_to_central_https(self) -> None:
        """Our HTTP01Responder behind an HTTPS server that the http-01 port redirects to."""
        from txacme.challenges import HTTP01Responder, http01_root
        from txacme.issuing.order import obtain_certificate

        responder = HTTP01Responder()
        https_port = listen(self, http01_root(responder), tls=True)
        redirector = Redirector(lambda path: "https://central.test" + path)
        ca = await TestCA.start_for_test(
            self,
            R,
            http01_port=listen(self, redirector),
            tlsalpn01_port=https_port,
            retry_after=0,
            challenge_types=["http-01"],
        )
        client = await self._client(ca)
        issued = await obtain_certificate(client, ["x.test", "www.x.test"], [responder])
        self.assertEqual(sorted(redirector.hosts), ["www.x.test", "x.test"])
        self.assertEqual(ca.certificates[0].certificate, issued.certificate)

    async def test_subproblems(self) -> None:
        """Our client's ACMEProblem carries one subproblem per refused identifier."""
        from txacme.errors import ACMEProblem

        ca = await TestCA.start_for_test(self, R, retry_after=0)
        ca.forbidden_names.update({"a.test", "b.test"})
        client = await self._client(ca)
        with self.assertRaises(ACMEProblem) as caught:
            await client.new_order(["a.test", "ok.test", "b.test"])
        problem = caught.exception
        self.assertTrue(problem.type.endswith(":rejectedIdentifier"), problem.type)
        self.assertEqual(
            [s.identifier for s in problem.subproblems],
            [{"type": "dns", "value": "a.test"}, {"type": "dns", "value": "b.test"}],
        )


# -- the acme package's ClientV2 ------------------------------------------------------------


class _TimedOrder(messages.NewOrder):
    """``NewOrder`` with ``notAfter`` (acme 5.9 has no such field)."""

    not_after: str = jose.field("notAfter", omitempty=True)


def _csr(names: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class AcmeClientTests(unittest.TestCase):
    """The ``acme`` package's ``ClientV2`` sees the same behaviours."""

    async def _client(self, ca: TestCA) -> acme_client.ClientV2:
        key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))

        def register() -> acme_client.ClientV2:
            client = acme_client_for(ca, key)
            client.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            return client

        return await in_thread(register)

    async def test_redirect(self) -> None:
        """ClientV2 obtains a certificate whose http-01 answer sits behind an https redirect."""
        central = CentralTokens()
        https_port = listen(self, central, tls=True)
        redirector = Redirector(to_central)
        ca = await TestCA.start_for_test(
            self, R, http01_port=listen(self, redirector), tlsalpn01_port=https_port
        )
        client = await self._client(ca)
        csr = _csr(["x.test"])

        def obtain() -> messages.OrderResource:
            order = client.new_order(csr)
            for authz in order.authorizations:
                for challb in authz.body.challenges:
                    if isinstance(challb.chall, challenges.HTTP01):
                        response, validation = challb.response_and_validation(client.net.key)
                        publish(central, challb.chall.encode("token"), validation)
                        client.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=20)
            return client.poll_and_finalize(order, deadline)

        done = await in_thread(obtain)
        verify_chain(done.fullchain_pem.encode(), ca.root_pem, "x.test", ca.now())
        self.assertEqual(central.hosts, ["central.test"])

    async def _refused(self, ca: TestCA, send: Any) -> messages.Error:
        client = await self._client(ca)
        try:
            await in_thread(send, client)
        except messages.Error as error:
            return error
        except acme_errors.Error as error:  # pragma: no cover - reported below
            self.fail(f"not a problem document: {error!r}")
        self.fail("the order was accepted")

    async def test_subproblems_and_ip_as_dns(self) -> None:
        """ClientV2 parses subproblems; the IP sent as a DNS name is named as such."""
        ca = await TestCA.start_for_test(self, R)
        ca.forbidden_names.add("blocked.test")
        error = await self._refused(
            ca, lambda c: c.new_order(_csr(["blocked.test", "192.0.2.7", "ok.test"]))
        )
        self.assertEqual(error.code, "rejectedIdentifier")
        subs = error.subproblems or ()
        self.assertEqual(
            [s.identifier.value for s in subs if s.identifier], ["blocked.test", "192.0.2.7"]
        )
        self.assertIn("an IP address, not a DNS name", str(subs[1].detail))
        self.assertIn("192.0.2.7", str(error))

    async def test_not_after_text(self) -> None:
        """ClientV2 gets the notAfter problem in words."""
        ca = await TestCA.start_for_test(self, R)
        late = (ca.now() + datetime.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="x.test")]

        def send(client: acme_client.ClientV2) -> None:
            client._post(
                client.directory["newOrder"], _TimedOrder(identifiers=identifiers, not_after=late)
            )

        error = await self._refused(ca, send)
        self.assertEqual(error.code, "malformed")
        self.assertIn("at most 90 days later", str(error.detail))


# -- python -m txacme.testca as a service ----------------------------------------------------


def _start_module(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-m", "txacme.testca", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: str, process: subprocess.Popen[str]) -> dict[str, Any]:
    for _ in range(300):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                info: dict[str, Any] = json.load(f)
            return info
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no info file; stderr: {process.communicate()[1][-2000:]}")


class ServiceTests(unittest.TestCase):
    """``python -m txacme.testca`` runs with stdin at end-of-file until signalled."""

    def _serve_until(self, stop: signal.Signals) -> None:
        home = tempfile.mkdtemp(prefix="txacme-testca-service-")
        self.addCleanup(shutil.rmtree, home, True)
        info_file = os.path.join(home, "ca.json")
        process = _start_module("--port", str(free_port()), "--info-file", info_file)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        info = _wait_for(info_file, process)
        # stdin is /dev/null (at EOF from the start): the CA must still be up and serving
        ca = TestCAProcess(process, info)
        self.assertIsNone(process.poll())
        self.assertLessEqual(ca.now(), datetime.datetime.now(datetime.timezone.utc))
        self.assertTrue(os.path.exists(info["https_ca_file"]))
        process.send_signal(stop)
        out, err = process.communicate(timeout=20)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(json.loads(out.splitlines()[0]), info)
        self.assertIn(f"TestCA listening on {info['base_url']}", err)
        self.assertIn(info["directory_url"], err)
        self.assertFalse(os.path.exists(info["https_ca_file"]))
        self.assertFalse(os.path.exists(info_file))

    def test_sigterm(self) -> None:
        """SIGTERM stops it cleanly: exit status 0, PEM files and info file removed."""
        self._serve_until(signal.SIGTERM)

    def test_sigint(self) -> None:
        """So does SIGINT (Ctrl-C)."""
        self._serve_until(signal.SIGINT)


class LegoServiceTests(unittest.TestCase):
    """lego against ``python -m txacme.testca`` in a subprocess."""

    def setUp(self) -> None:
        if LEGO is None:
            if os.environ.get("CI"):
                self.fail("lego is not installed (apt-get install -y lego)")
            raise unittest.SkipTest("lego is not installed (apt-get install -y lego)")
        self.home = tempfile.mkdtemp(prefix="txacme-lego-")
        self.addCleanup(shutil.rmtree, self.home, True)

    async def _lego(self, ca: TestCAProcess, *args: str) -> tuple[int, str]:
        assert LEGO is not None
        argv = [LEGO, "--server", ca.directory_url, "--email", "ops@example.com"]
        argv += ["--accept-tos", "--path", self.home, "--key-type", "ec256", *args]
        env = {
            "LEGO_CA_CERTIFICATES": ca.https_ca_file,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
        }
        code, _, err = await run_process(argv, env, timeout=30)
        return code, err.decode(errors="replace")

    async def test_webroot_behind_https_redirect(self) -> None:
        """lego's webroot files, served over HTTPS behind a redirect, validate."""
        webroot = os.path.join(self.home, "webroot")
        os.makedirs(os.path.join(webroot, ".well-known", "acme-challenge"))
        redirector = Redirector(lambda path: "https://central.test" + path)
        http_port = listen(self, redirector)
        https_port = listen(self, File(webroot), tls=True)
        ca = TestCAProcess.start(http01_port=http_port, tlsalpn01_port=https_port)
        self.addCleanup(ca.stop)
        code, err = await self._lego(
            ca, "--domains", "x.test", "--http", "--http.webroot", webroot, "run"
        )
        self.assertEqual(code, 0, err[-3000:])
        with open(os.path.join(self.home, "certificates", "x.test.crt"), "rb") as f:
            verify_chain(f.read(), ca.root_pem, "x.test", ca.now())
        self.assertEqual(redirector.hosts, ["x.test"])

    async def test_subproblems(self) -> None:
        """lego reports each refused identifier."""
        ca = TestCAProcess.start()
        self.addCleanup(ca.stop)
        ca.configure(forbidden_names=["a.test", "b.test"])
        code, err = await self._lego(
            ca,
            "--domains",
            "a.test",
            "--domains",
            "b.test",
            "--domains",
            "ok.test",
            "--http",
            "--http.port",
            f"127.0.0.1:{free_port()}",
            "run",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("rejectedIdentifier", err)
        self.assertIn("'a.test': forbidden", err)
        self.assertIn("'b.test': forbidden", err)


# -- the service examples of docs/testing.rst, run as written ---------------------------------

DOCS = os.path.join(os.path.dirname(SRC), "docs", "testing.rst")


def _doc_block(language: str, first_line: str) -> str:
    """The ``code-block`` of ``language`` in docs/testing.rst that contains ``first_line``."""
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    for block in text.split(f".. code-block:: {language}\n\n")[1:]:
        lines = []
        for line in block.splitlines():
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        if any(first_line in line for line in lines):
            return "\n".join(lines)
    raise AssertionError(f"no {language} block with {first_line!r} in {DOCS}")


def _wait_gone(path: str) -> None:
    for _ in range(200):
        if not os.path.exists(path):
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} was not removed")


class DocumentedServiceTests(unittest.TestCase):
    """The CI step and the systemd unit of docs/testing.rst work."""

    def setUp(self) -> None:
        self.home = tempfile.mkdtemp(prefix="txacme-testca-docs-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
            PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        )

    def _check_serving(self, directory_url: str, ca_bundle: str) -> None:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=ca_bundle)
        with urllib.request.urlopen(directory_url, context=context, timeout=10) as response:
            self.assertIn("newOrder", json.load(response))

    def test_ci_steps(self) -> None:
        """The start step leaves a CA serving and its environment set; the stop step stops it."""
        yaml = _doc_block("yaml", "name: Start the test CA")
        start = yaml.split("run: |\n", 1)[1].split("- name:", 1)[0]
        stop = yaml.rsplit("run: ", 1)[1]
        port = str(free_port())
        script = "\n".join(line.removeprefix("  ") for line in start.splitlines())
        script = script.replace("14000", port)
        github_env = os.path.join(self.home, "github_env")
        env = dict(self.env, RUNNER_TEMP=self.home, GITHUB_ENV=github_env)
        subprocess.run(["bash", "-e", "-c", script], env=env, check=True, timeout=60)
        with open(os.path.join(self.home, "testca.pid")) as f:
            pid = int(f.read())
        self.addCleanup(lambda: os.path.exists(f"/proc/{pid}") and os.kill(pid, signal.SIGKILL))
        with open(github_env) as f:
            exported = dict(line.split("=", 1) for line in f.read().splitlines())
        self.assertEqual(exported["ACME_DIRECTORY"], f"https://127.0.0.1:{port}/directory")
        self._check_serving(exported["ACME_DIRECTORY"], exported["ACME_CA_BUNDLE"])
        subprocess.run(["bash", "-e", "-c", stop], env=env, check=True, timeout=30)
        _wait_gone(exported["ACME_CA_BUNDLE"])
        _wait_gone(os.path.join(self.home, "testca", "ca.json"))

    def test_systemd_unit(self) -> None:
        """The unit's ExecStart serves, exports its files and stops cleanly on SIGTERM."""
        import shlex

        unit = _doc_block("ini", "[Service]")
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        port = str(free_port())
        runtime = os.path.join(self.home, "run")
        command = (
            exec_start.removeprefix("ExecStart=")
            .replace("/opt/txacme/bin/python", sys.executable)
            .replace("/run/txacme-testca", runtime)
            .replace("14000", port)
        )
        process = subprocess.Popen(
            shlex.split(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        info = _wait_for(os.path.join(runtime, "ca.json"), process)
        self.assertEqual(info["https_ca_file"], os.path.join(runtime, "https-ca.pem"))
        self.assertEqual(os.stat(info["root_file"]).st_mode & 0o777, 0o644)
        self._check_serving(f"https://127.0.0.1:{port}/directory", info["https_ca_file"])
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(sorted(os.listdir(runtime)), [])


def test_start_failure_exit_status() -> None:
    """A CA that cannot start says why and exits with status 1."""
    process = _start_module("--options", '{"default_profile": "nope"}')
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    assert out == ""
    assert "TestCA failed to start: default_profile 'nope'" in err
