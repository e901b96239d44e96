"""
Secrets: account and certificate keys, EAB MAC keys and TSIG secrets never
appear in logs, error messages or ``repr()``; key files are private; the
``tls-alpn-01`` challenge certificate is only served to ``acme-tls/1``.

The log checks capture every ``twisted.logger`` event of a whole issuance
against Pebble (external account binding required), render each one (message,
every field's ``repr()``, failure tracebacks), and look for the key material
in every spelling: PEM, the base64 of the DER inside it, base64url (JWK ``d``,
EAB key), standard base64, and hex / decimal private numbers.
"""

from __future__ import annotations

import base64
import os
import ssl
import stat
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pem
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.harness.logcapture import captured_logs
from tests.harness.pebble import free_port, start_pebble
from tests.harness.tlsclient import BARE_GET, tls_exchange
from tests.harness.twistd import quote
from txacme.certificates import certificate_names
from txacme.challenges.tlsalpn01 import ACME_TLS_1, ID_PE_ACME_IDENTIFIER, TLSALPN01Registry
from txacme.config.dns import dns01_responder_from_options
from txacme.config.endpoint import parse_endpoint_string_parts
from txacme.keys import generate_private_key, load_or_create_client_key, private_key_pem
from txacme.protocol.client import EAB
from txacme.serving.tls import CertificateIndex, SNIConnectionCreator
from txacme.stores.directory import DirectoryStore
from txacme.testing import make_pem_objects

PAGE = b"secret page\n"
TSIG_SECRET = base64.b64encode(b"tsig secret bytes for the tests!").decode()
NAME = "secret.example"


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/plain"))
    return Site(root)


def render(events: Iterable[LogEvent]) -> str:
    """Every event as text: the message, each field's repr, tracebacks."""
    parts = []
    for event in events:
        parts.append(formatEvent(event))
        for key, value in event.items():
            if isinstance(value, Failure):
                parts.append(value.getTraceback())
                parts.append(repr(value.value))
                parts.append(str(value.value))
            else:
                parts.append(f"{key}={value!r}")
    return "\n".join(parts)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_forms(key: Any) -> dict[str, str]:
    """Spellings of a private key that must never be shown."""
    pem_text = private_key_pem(key).decode()
    body = "".join(line for line in pem_text.splitlines() if not line.startswith("-----"))
    forms = {"pem": pem_text, "pem-line": body[64:128], "der-b64": body[:60]}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        secret = key.private_numbers().private_value
    elif isinstance(key, rsa.RSAPrivateKey):
        secret = key.private_numbers().d
    else:  # pragma: no cover
        raise TypeError(type(key))
    raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
    forms.update(
        {
            "b64url": b64url(raw),
            "b64": base64.b64encode(raw).decode(),
            "hex": raw.hex(),
            "HEX": raw.hex().upper(),
            "hex-int": f"{secret:x}",
            "decimal": str(secret),
        }
    )
    return forms


def secret_forms(raw: bytes, given: str) -> dict[str, str]:
    return {
        "as given": given,
        "b64url": b64url(raw),
        "b64": base64.b64encode(raw).decode(),
        "hex": raw.hex(),
        "bytes repr": repr(raw)[2:-1],
    }


def fetch(port: int, name: str) -> bytes:
    return tls_exchange(port, name, request=BARE_GET).data


class SecretsNeverShownTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.pebble = start_pebble(eab=True)
        self.addCleanup(self.pebble.stop)

    def certs(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        with open(os.path.join(path, NAME + ".pem"), "wb"):
            pass
        return path

    def description(self, certs: str, kid: str, hmac: str, *extra: str) -> str:
        return ":".join(
            [
                f"acme:{quote(certs)}:tcp:{self.pebble.tls_port}:interface=127.0.0.1",
                f"directory={quote(self.pebble.directory_url)}",
                f"ca_file={quote(self.pebble.ca_file)}",
                f"eab_kid={kid}",
                f"eab_hmac={hmac}",
                "email=ops@secret.example",
                "timeout=5",
                *extra,
            ]
        )

    async def run_endpoint(self, description: str) -> tuple[Any, str]:
        """Listen on the endpoint, fetch a page, stop; return it and everything shown."""
        with captured_logs() as events:
            endpoint = serverFromString(reactor, description)
            port = await endpoint.listen(site())
            try:
                page = await deferToThread(fetch, self.pebble.tls_port, NAME)
            except (OSError, ssl.SSLError) as e:
                page = repr(e).encode()
            shown = [
                render(events),
                repr(endpoint),
                repr(endpoint.service),
                repr(endpoint.cert_store),
                repr(endpoint.eab),
                str(endpoint.eab),
                repr(endpoint.responders),
                repr(page),
            ]
            for state in endpoint.service._states.values():
                shown.append(repr(state))
            await port.stopListening()
        shown.append(render(events))
        return endpoint, "\n".join(shown)

    def assert_hidden(self, text: str, secrets: dict[str, dict[str, str]]) -> None:
        for what, forms in secrets.items():
            for form, value in forms.items():
                self.assertTrue(value)
                self.assertNotIn(value, text, f"{what} shown as {form}")

    def test_full_issuance_with_eab(self) -> Deferred[None]:
        """
        An ``acme:`` endpoint string with EAB obtains a certificate over
        tls-alpn-01 and serves it; nothing logged or shown holds the account
        key, the certificate key or the EAB MAC key.
        """
        certs = self.certs()
        kid, hmac = "kid-1", self.pebble.eab_keys["kid-1"]

        async def check() -> None:
            _, shown = await self.run_endpoint(self.description(certs, kid, hmac))
            entry = await DirectoryStore(certs).get(NAME)
            self.assertEqual(len(entry), 3)
            account = load_or_create_client_key(os.path.join(certs, "client.key"))
            certificate_key = serialization.load_pem_private_key(entry[0].as_bytes(), None)
            self.assertIn("obtained a certificate", shown)
            self.assertIn("secret page", shown)
            raw_hmac = base64.urlsafe_b64decode(hmac + "=" * (-len(hmac) % 4))
            self.assert_hidden(
                shown,
                {
                    "account key": key_forms(account.key._wrapped),
                    "certificate key": key_forms(certificate_key),
                    "EAB MAC key": secret_forms(raw_hmac, hmac),
                },
            )

        return Deferred.fromCoroutine(check())

    def test_failures_with_wrong_eab_and_tsig(self) -> Deferred[None]:
        """
        The failure paths: a wrong EAB MAC key (the CA refuses the account),
        then a dns-01 RFC 2136 update signed with a TSIG key that fails (no
        server): the errors are logged and shown, the secrets are not.
        """
        wrong_hmac = self.pebble.eab_keys["kid-2"]
        dead = free_port()

        async def check() -> None:
            _, shown_eab = await self.run_endpoint(
                self.description(self.certs(), "kid-1", wrong_hmac)
            )
            self.assertIn("failed", shown_eab)
            _, shown_tsig = await self.run_endpoint(
                self.description(
                    self.certs(),
                    "kid-2",
                    self.pebble.eab_keys["kid-2"],
                    "challenge=dns-01",
                    "dns=rfc2136",
                    f"dns_server=127.0.0.1\\:{dead}",
                    f"dns_resolvers=127.0.0.1\\:{dead}",
                    "dns_zone=example",
                    "tsig_key_name=txacme-test",
                    f"tsig_secret={TSIG_SECRET}",
                    "propagation_timeout=1",
                )
            )
            self.assertIn("failed", shown_tsig)
            raw_hmac = base64.urlsafe_b64decode(wrong_hmac + "=" * (-len(wrong_hmac) % 4))
            self.assert_hidden(
                shown_eab + shown_tsig,
                {
                    "EAB MAC key": secret_forms(raw_hmac, wrong_hmac),
                    "TSIG secret": secret_forms(base64.b64decode(TSIG_SECRET), TSIG_SECRET),
                },
            )

        d = Deferred.fromCoroutine(check())
        return d.addBoth(lambda r: (self.flushLoggedErrors(), r)[1])


class SecretReprTests(SynchronousTestCase):
    def test_repr_and_errors_hide_secrets(self) -> None:
        """The objects that hold secrets, and the errors about them, never show them."""
        hmac = b64url(b"0123456789abcdef0123456789abcdef")
        eab = EAB("kid-x", hmac)
        config = parse_endpoint_string_parts(
            "acme",
            None,
            ["/certs", "tcp", "443"],
            {
                "directory": "https://ca.example/dir",
                "eab_kid": "kid-x",
                "eab_hmac": hmac,
                "challenge": "dns-01",
                "dns": "rfc2136",
                "dns_server": "127.0.0.1",
                "tsig_key_name": "k",
                "tsig_secret": TSIG_SECRET,
            },
        )
        shown = [repr(eab), str(eab), repr(config), str(config)]
        for bad in (
            {"eab_kid": "kid-x", "eab_hmac": hmac, "key": "dsa"},
            {"eab_hmac": hmac},
            {"tsig_secret": TSIG_SECRET},
        ):
            try:
                parse_endpoint_string_parts(
                    "acme",
                    None,
                    ["/certs", "tcp", "443"],
                    {"directory": "https://ca.example/dir", **bad},
                )
            except ValueError as e:
                shown.append(str(e))
            else:
                self.fail(f"accepted {bad}")
        for options in (
            {"dns": "rfc2136", "tsig_secret": TSIG_SECRET},
            {
                "dns": "rfc2136",
                "dns_server": "127.0.0.1",
                "tsig_key_name": "k",
                "tsig_secret": TSIG_SECRET + "!",
            },
            {
                "dns": "rfc2136",
                "dns_server": "127.0.0.1",
                "tsig_key_name": "k",
                "tsig_secret": TSIG_SECRET,
                "tsig_algorithm": "md4",
            },
        ):
            try:
                dns01_responder_from_options(options, clock=Clock())
            except ValueError as e:
                shown.append(str(e))
            else:
                self.fail(f"accepted {options}")
        responder = dns01_responder_from_options(
            {
                "dns": "rfc2136",
                "dns_server": "127.0.0.1",
                "tsig_key_name": "k",
                "tsig_secret": TSIG_SECRET,
            },
            clock=Clock(),
        )
        shown += [repr(responder), str(responder), repr(vars(responder))]
        try:
            EAB("kid-x", hmac + "!")
        except ValueError as e:
            shown.append(str(e))
        text = "\n".join(shown)
        self.assertNotIn(hmac, text)
        self.assertNotIn(TSIG_SECRET, text)


class KeyFileModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)

    def mode(self, *parts: str) -> int:
        return stat.S_IMODE(os.stat(os.path.join(self.directory, *parts)).st_mode)

    def test_created_0600_even_with_umask_0(self) -> None:
        """client.key, certificate entries and wanted (empty) entries are 0600."""
        load_or_create_client_key(os.path.join(self.directory, "client.key"))
        store = DirectoryStore(self.directory)
        now = datetime.now(timezone.utc)
        entry = make_pem_objects([NAME], now, now + timedelta(days=90))
        self.successResultOf(store.store(NAME, entry))
        self.assertTrue(self.successResultOf(store.mark_wanted("wanted.example")))
        self.assertEqual(self.mode("client.key"), 0o600)
        self.assertEqual(self.mode(NAME + ".pem"), 0o600)
        self.assertEqual(self.mode("wanted.example.pem"), 0o600)

    def test_readable_existing_keys_warn(self) -> None:
        """
        A group- or world-readable client.key, or certificate entry (it holds
        a private key), is warned about, naming the file; once per file.
        """
        key_path = os.path.join(self.directory, "client.key")
        with open(key_path, "wb") as f:
            f.write(private_key_pem(generate_private_key()))
        os.chmod(key_path, 0o644)
        entry_path = os.path.join(self.directory, NAME + ".pem")
        now = datetime.now(timezone.utc)
        with open(entry_path, "wb") as f:
            f.write(
                b"".join(
                    o.as_bytes() for o in make_pem_objects([NAME], now, now + timedelta(days=9))
                )
            )
        os.chmod(entry_path, 0o640)
        with captured_logs() as events:
            load_or_create_client_key(key_path)
            store = DirectoryStore(self.directory)
            self.successResultOf(store.as_dict())
            self.successResultOf(store.as_dict())
            self.successResultOf(store.get(NAME))
        warnings = [formatEvent(e) for e in events if e.get("log_level").name == "warn"]
        self.assertEqual(len([w for w in warnings if key_path in w]), 1, warnings)
        self.assertEqual(len([w for w in warnings if entry_path in w]), 1, warnings)
        self.assertTrue(all("chmod 600" in w for w in warnings), warnings)
        # Nothing to warn about once it is private.
        os.chmod(entry_path, 0o600)
        with captured_logs() as events:
            self.successResultOf(DirectoryStore(self.directory).as_dict())
        self.assertEqual([e for e in events if e.get("log_level").name == "warn"], [])


# -- tls-alpn-01 only with acme-tls/1 ------------------------------------------------------


class _TLSProtocol:
    """What a connection creator sees of Twisted's TLS protocol."""

    factory = None


def _entry(name: str) -> list[pem.AbstractPEMObject]:
    now = datetime.now(timezone.utc)
    return make_pem_objects([name], now - timedelta(days=1), now + timedelta(days=60))


def memory_handshake(
    creator: SNIConnectionCreator, sni: bytes, alpn: list[bytes] | None, version: int
) -> tuple[x509.Certificate | None, bytes | None]:
    """A handshake over memory BIOs: the certificate served and the protocol negotiated."""
    server = creator.serverConnectionForTLS(_TLSProtocol())
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(version)
    context.set_max_proto_version(version)
    if alpn is not None:
        context.set_alpn_protos(alpn)
    client = SSL.Connection(context, None)
    client.set_tlsext_host_name(sni)
    client.set_connect_state()
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, connection in (("client", client), ("server", server)):
            if done[side]:
                continue
            try:
                connection.do_handshake()
                done[side] = True
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return None, None
        for source, target in ((client, server), (server, client)):
            try:
                target.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            break
    if not all(done.values()):
        return None, None
    return client.get_peer_certificate(as_cryptography=True), client.get_alpn_proto_negotiated()


_names = certificate_names


def _is_challenge(certificate: x509.Certificate | None) -> bool:
    if certificate is None:
        return False
    try:
        certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return False
    return True


class ChallengeOnlyWithAcmeTLSTests(SynchronousTestCase):
    """
    With challenges pending for ``both.example`` (which also has an ordinary
    certificate) and ``bare.example`` (which has none), the challenge
    certificate is served exactly when the client offers only ``acme-tls/1``,
    and then ``acme-tls/1`` is negotiated; under TLS 1.2 and 1.3 alike.
    """

    def setUp(self) -> None:
        index = CertificateIndex()
        for name in ("both.example", "plain.example"):
            index.update(name, _entry(name))
        self.registry = TLSALPN01Registry()
        for name in ("both.example", "bare.example"):
            self.registry.add(name, "token." + "x" * 43)
        self.creator = SNIConnectionCreator(
            index, challenges=self.registry, acceptable_protocols=[b"http/1.1", b"h2"]
        )

    @settings(max_examples=150, deadline=None)
    @given(
        sni=st.sampled_from([b"both.example", b"bare.example", b"plain.example", b"BOTH.example"]),
        alpn=st.none()
        | st.lists(
            st.sampled_from([ACME_TLS_1, b"h2", b"http/1.1", b"acme-tls/2", b"x"]),
            unique=True,
            min_size=1,
            max_size=3,
        ),
        version=st.sampled_from([SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION]),
    )
    def test_challenge_certificate_only_for_acme_tls(
        self, sni: bytes, alpn: list[bytes] | None, version: int
    ) -> None:
        certificate, negotiated = memory_handshake(self.creator, sni, alpn, version)
        pending = self.registry.lookup(sni.decode().lower()) is not None
        challenge = _is_challenge(certificate)
        self.assertEqual(challenge, pending and alpn == [ACME_TLS_1], (certificate, negotiated))
        self.assertEqual(negotiated == ACME_TLS_1, challenge)
        if sni.lower() == b"bare.example" and certificate is not None and not challenge:
            # The placeholder that lets the handshake reach ALPN: it names nothing.
            self.assertEqual(_names(certificate), [], "a name without a certificate got one")
