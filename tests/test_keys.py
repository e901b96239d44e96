"""Tests for txacme.keys: key generation, CSRs, JWKs and the account key file."""

from __future__ import annotations

import ipaddress
import os
import stat
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256, ES384, RS256
from josepy.jwk import JWKEC, JWKRSA
from twisted.logger import LogLevel
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from tests.harness.logcapture import capture_log
from txacme import keys
from txacme.errors import ConfigurationError, InvalidServerName, UnsupportedKeyType
from txacme.keys import (
    KEY_TYPES,
    generate_private_key,
    jwk_for,
    jws_algorithm,
    key_type_of,
    load_or_create_client_key,
    load_private_key_pem,
    make_csr,
    private_key_pem,
)
from txacme.testing import make_certificate

EXPECTED = {
    "ec256": (ec.EllipticCurvePrivateKey, 256, JWKEC, ES256),
    "ec384": (ec.EllipticCurvePrivateKey, 384, JWKEC, ES384),
    "rsa2048": (rsa.RSAPrivateKey, 2048, JWKRSA, RS256),
    "rsa3072": (rsa.RSAPrivateKey, 3072, JWKRSA, RS256),
    "rsa4096": (rsa.RSAPrivateKey, 4096, JWKRSA, RS256),
}

_KEY_CACHE: dict[str, Any] = {}


def cached_key(key_type: str) -> Any:
    """One key per type for the whole module: RSA 4096 generation is slow."""
    if key_type not in _KEY_CACHE:
        _KEY_CACHE[key_type] = generate_private_key(key_type)
    return _KEY_CACHE[key_type]


class GenerateTests(TestCase):
    """generate_private_key, key_type_of, PEM round trips and JWKs."""

    def test_key_types_listed(self) -> None:
        self.assertEqual(KEY_TYPES, ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096"))
        self.assertEqual(keys.DEFAULT_KEY_TYPE, "ec256")

    def test_every_type(self) -> None:
        for key_type, (cls, size, jwk_cls, alg) in EXPECTED.items():
            key = cached_key(key_type)
            self.assertIsInstance(key, cls)
            self.assertEqual(key.key_size, size)
            self.assertEqual(key_type_of(key), key_type)
            self.assertEqual(key_type_of(key.public_key()), key_type)
            if isinstance(key, rsa.RSAPrivateKey):
                self.assertEqual(key.public_key().public_numbers().e, 65537)
            data = private_key_pem(key)
            self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"), key_type)
            reloaded = load_private_key_pem(data, "test")
            self.assertEqual(private_key_pem(reloaded), data)
            self.assertEqual(key_type_of(reloaded), key_type)
            jwk = jwk_for(key)
            self.assertIsInstance(jwk, jwk_cls)
            self.assertEqual(jwk.thumbprint(), jwk_for(reloaded).thumbprint())
            self.assertIs(jws_algorithm(key), alg)
            self.assertIs(jws_algorithm(jwk), alg)
            # The JWK really signs with that algorithm and verifies.
            signature = alg.sign(jwk.key, b"payload")
            self.assertTrue(alg.verify(jwk.public_key().key, b"payload", signature))

    def test_default_is_ec256(self) -> None:
        key = generate_private_key()
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key_type_of(key), "ec256")

    def test_fresh_keys_differ(self) -> None:
        self.assertNotEqual(
            private_key_pem(generate_private_key()), private_key_pem(generate_private_key())
        )

    def test_unsupported_type(self) -> None:
        for value in ["rsa1024", "ec521", "ed25519", "EC256", "", "rsa", None, 256]:
            with self.assertRaises(UnsupportedKeyType) as caught:
                generate_private_key(value)  # type: ignore[arg-type]
            message = str(caught.exception)
            self.assertIn(repr(value), message)
            for allowed in KEY_TYPES:
                self.assertIn(allowed, message)
            self.assertIsInstance(caught.exception, ConfigurationError)

    def test_key_type_of_unsupported(self) -> None:
        self.assertRaises(UnsupportedKeyType, key_type_of, ec.generate_private_key(ec.SECP521R1()))
        self.assertRaises(UnsupportedKeyType, key_type_of, rsa.generate_private_key(65537, 1024))
        self.assertRaises(UnsupportedKeyType, key_type_of, ed25519.Ed25519PrivateKey.generate())
        self.assertRaises(UnsupportedKeyType, key_type_of, "ec256")

    def test_jws_algorithm_by_curve(self) -> None:
        """P-521 signs with ES512; another curve or a public key has no JWS algorithm."""
        p521 = ec.generate_private_key(ec.SECP521R1())
        self.assertEqual(jws_algorithm(p521).name, "ES512")
        self.assertEqual(jws_algorithm(JWKEC(key=p521)).name, "ES512")
        for key in (
            ec.generate_private_key(ec.SECP224R1()),
            ec.generate_private_key(ec.SECP256K1()),
            ec.generate_private_key(ec.SECP256R1()).public_key(),
        ):
            with self.assertRaises(UnsupportedKeyType):
                jws_algorithm(key)  # type: ignore[arg-type]
        self.assertIs(keys.unwrap_jwk(JWKEC(key=p521)), p521)

    def test_traditional_pem_loads(self) -> None:
        """Old txacme wrote ``BEGIN RSA PRIVATE KEY``; it still loads."""
        key = cached_key("rsa2048")
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self.assertTrue(data.startswith(b"-----BEGIN RSA PRIVATE KEY-----"))
        self.assertEqual(private_key_pem(load_private_key_pem(data, "old")), private_key_pem(key))

    def test_load_garbage(self) -> None:
        for data in [
            b"",
            b"garbage",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                load_private_key_pem(data, "/some/where.key")
            self.assertIn("/some/where.key", str(caught.exception))

    def test_load_certificate_is_not_a_key(self) -> None:
        key = cached_key("ec256")
        cert_pem = _self_signed(key).public_bytes(serialization.Encoding.PEM)
        with self.assertRaises(ConfigurationError) as caught:
            load_private_key_pem(cert_pem, "cert.pem")
        self.assertIn("cert.pem", str(caught.exception))

    def test_load_encrypted(self) -> None:
        data = cached_key("ec256").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        with self.assertRaises(ConfigurationError) as caught:
            load_private_key_pem(data, "enc.key")
        self.assertIn("enc.key", str(caught.exception))
        self.assertIn("encrypted", str(caught.exception))

    def test_load_unsupported_algorithm(self) -> None:
        data = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with self.assertRaises(UnsupportedKeyType) as caught:
            load_private_key_pem(data, "ed.key")
        self.assertIn("ed.key", str(caught.exception))

    def test_errors_do_not_leak_key_material(self) -> None:
        data = private_key_pem(cached_key("ec256"))
        broken = data.replace(b"-----END PRIVATE KEY-----", b"")
        with self.assertRaises(ConfigurationError) as caught:
            load_private_key_pem(broken, "x")
        body = data.splitlines()[1].decode()
        self.assertNotIn(body[:16], str(caught.exception))


def _self_signed(key: Any) -> x509.Certificate:
    return make_certificate(["test"], key=key)


def _sans(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        ext.get_values_for_type(x509.DNSName),
        [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)],
    )


def _cn(csr: x509.CertificateSigningRequest) -> list[str]:
    return [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


class CSRTests(TestCase):
    """make_csr."""

    def test_dns_and_ip(self) -> None:
        key = cached_key("ec256")
        csr = make_csr(key, ["Example.COM", "*.example.com", "127.0.0.1", "2001:DB8::1"])
        self.assertTrue(csr.is_signature_valid)
        self.assertEqual(
            _sans(csr), (["example.com", "*.example.com"], ["127.0.0.1", "2001:db8::1"])
        )
        self.assertEqual(_cn(csr), ["example.com"])
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertFalse(ext.critical)
        ips = ext.value.get_values_for_type(x509.IPAddress)
        self.assertEqual(
            ips, [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("2001:db8::1")]
        )
        self.assertEqual(
            csr.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def test_every_key_type_signs(self) -> None:
        for key_type in KEY_TYPES:
            csr = make_csr(cached_key(key_type), ["example.com"])
            self.assertTrue(csr.is_signature_valid, key_type)
        self.assertIsInstance(
            make_csr(cached_key("ec384"), ["example.com"]).signature_hash_algorithm, hashes.SHA384
        )
        self.assertIsInstance(
            make_csr(cached_key("rsa2048"), ["example.com"]).signature_hash_algorithm,
            hashes.SHA256,
        )

    def test_ip_only_has_no_cn(self) -> None:
        csr = make_csr(cached_key("ec256"), ["::1", "127.0.0.1"])
        self.assertEqual(_cn(csr), [])
        self.assertEqual(_sans(csr), ([], ["::1", "127.0.0.1"]))

    def test_cn_is_first_dns_name(self) -> None:
        csr = make_csr(cached_key("ec256"), ["127.0.0.1", "b.example", "a.example"])
        self.assertEqual(_cn(csr), ["b.example"])

    def test_long_first_name_no_cn(self) -> None:
        long_name = "a" * 60 + ".example.com"
        self.assertGreater(len(long_name), 64)
        csr = make_csr(cached_key("ec256"), [long_name, "short.example"])
        self.assertEqual(_cn(csr), [])
        self.assertEqual(_sans(csr)[0], [long_name, "short.example"])

    def test_cn_exactly_64(self) -> None:
        name = "a" * 52 + ".example.com"
        self.assertEqual(len(name), 64)
        self.assertEqual(_cn(make_csr(cached_key("ec256"), [name])), [name])

    def test_duplicates_dropped(self) -> None:
        csr = make_csr(cached_key("ec256"), ["example.com", "EXAMPLE.com", "::1", "0::1"])
        self.assertEqual(_sans(csr), (["example.com"], ["::1"]))

    def test_refuses_bad_input(self) -> None:
        key = cached_key("ec256")
        self.assertRaises(ConfigurationError, make_csr, key, [])
        self.assertRaises(ConfigurationError, make_csr, key, "example.com")
        self.assertRaises(InvalidServerName, make_csr, key, ["example.com", "a/b"])

    def test_pem_parses_back(self) -> None:
        csr = make_csr(cached_key("rsa2048"), ["example.com"])
        again = x509.load_pem_x509_csr(csr.public_bytes(serialization.Encoding.PEM))
        self.assertEqual(_sans(again), (["example.com"], []))


class ClientKeyTests(TestCase):
    """load_or_create_client_key."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "client.key")

    def test_created_0600_and_reloaded(self) -> None:
        jwk = load_or_create_client_key(self.path)
        self.assertIsInstance(jwk, JWKEC)
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(os.listdir(self.dir), ["client.key"])
        with open(self.path, "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN PRIVATE KEY-----"))
        again = load_or_create_client_key(self.path)
        self.assertEqual(again.thumbprint(), jwk.thumbprint())

    def test_created_0600_despite_umask(self) -> None:
        old = os.umask(0)
        try:
            load_or_create_client_key(self.path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_filepath_and_key_type(self) -> None:
        jwk = load_or_create_client_key(FilePath(self.path), key_type="rsa2048")
        self.assertIsInstance(jwk, JWKRSA)
        # The type only applies to a new key: the existing one is kept.
        again = load_or_create_client_key(self.path, key_type="ec384")
        self.assertEqual(again.thumbprint(), jwk.thumbprint())

    def test_pathlike(self) -> None:
        import pathlib

        jwk = load_or_create_client_key(pathlib.Path(self.path))
        self.assertEqual(load_or_create_client_key(self.path).thumbprint(), jwk.thumbprint())

    def test_unsupported_type_creates_nothing(self) -> None:
        self.assertRaises(UnsupportedKeyType, load_or_create_client_key, self.path, "rsa1024")
        self.assertFalse(os.path.exists(self.path))

    def test_existing_key_loaded(self) -> None:
        key = cached_key("ec384")
        with open(self.path, "wb") as f:
            f.write(private_key_pem(key))
        os.chmod(self.path, 0o600)
        self.assertEqual(
            load_or_create_client_key(self.path).thumbprint(), jwk_for(key).thumbprint()
        )

    def test_garbage_refused_untouched(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"not a key\n")
        os.chmod(self.path, 0o600)
        with self.assertRaises(ConfigurationError) as caught:
            load_or_create_client_key(self.path)
        self.assertIn(self.path, str(caught.exception))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"not a key\n")
        self.assertEqual(os.listdir(self.dir), ["client.key"])

    def test_empty_file_refused_untouched(self) -> None:
        open(self.path, "wb").close()
        with self.assertRaises(ConfigurationError) as caught:
            load_or_create_client_key(self.path)
        self.assertIn(self.path, str(caught.exception))
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_unreadable_refused(self) -> None:
        with open(self.path, "wb") as f:
            f.write(private_key_pem(cached_key("ec256")))
        os.chmod(self.path, 0)
        self.addCleanup(os.chmod, self.path, 0o600)
        if os.geteuid() == 0:
            # root reads any file: simulate the refusal instead.
            # (The key is opened with os.open, never following a link.)
            real_open = os.open
            denied = self.path

            def refuse(path: Any, *args: Any, **kwargs: Any) -> Any:
                if path == denied:
                    raise PermissionError(13, "Permission denied", path)
                return real_open(path, *args, **kwargs)

            self.patch(os, "open", refuse)
        with self.assertRaises(ConfigurationError) as caught:
            load_or_create_client_key(self.path)
        self.assertIn(self.path, str(caught.exception))
        self.assertIn("Permission denied", str(caught.exception))
        self.assertEqual(os.listdir(self.dir), ["client.key"])

    def test_directory_in_the_way(self) -> None:
        os.mkdir(self.path)
        with self.assertRaises(ConfigurationError) as caught:
            load_or_create_client_key(self.path)
        self.assertIn(self.path, str(caught.exception))

    def test_missing_parent(self) -> None:
        path = os.path.join(self.dir, "nope", "client.key")
        with self.assertRaises(ConfigurationError) as caught:
            load_or_create_client_key(path)
        self.assertIn(path, str(caught.exception))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "nope")))

    def test_warns_when_group_readable(self) -> None:
        load_or_create_client_key(self.path)
        os.chmod(self.path, 0o644)
        events = capture_log(self)
        load_or_create_client_key(self.path)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["path"], self.path)
        self.assertEqual(warnings[0]["mode"], "0o644")

    def test_no_warning_when_private(self) -> None:
        load_or_create_client_key(self.path)
        events = capture_log(self)
        load_or_create_client_key(self.path)
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])

    def test_creation_logs_no_key(self) -> None:
        events = capture_log(self)
        load_or_create_client_key(self.path)
        with open(self.path, "rb") as f:
            secret_line = f.read().splitlines()[1]
        for event in events:
            self.assertNotIn(secret_line.decode(), repr(event))
        self.assertTrue(any(e.get("path") == self.path for e in events))

    def test_lost_race_uses_winner(self) -> None:
        """
        If another process creates the file between our check and our link,
        its key is used and it is not overwritten.
        """
        winner = cached_key("ec384")
        real_link = os.link

        def racing_link(src: str, dst: str) -> None:
            with open(dst, "wb") as f:
                f.write(private_key_pem(winner))
            os.chmod(dst, 0o600)
            real_link(src, dst)

        self.patch(keys.os, "link", racing_link)
        jwk = load_or_create_client_key(self.path)
        self.assertEqual(jwk.thumbprint(), jwk_for(winner).thumbprint())
        self.assertEqual(os.listdir(self.dir), ["client.key"])

    def test_write_failure_leaves_nothing(self) -> None:
        def failing_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        self.patch(keys.os, "fsync", failing_fsync)
        with self.assertRaises(ConfigurationError) as caught:
            load_or_create_client_key(self.path)
        self.assertIn(self.path, str(caught.exception))
        self.assertEqual(os.listdir(self.dir), [])

    def test_no_hard_links(self) -> None:
        """On a filesystem without hard links the key is renamed into place."""

        def no_link(src: str, dst: str) -> None:
            raise OSError(1, "Operation not permitted")

        self.patch(keys.os, "link", no_link)
        jwk = load_or_create_client_key(self.path)
        self.assertEqual(os.listdir(self.dir), ["client.key"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(load_or_create_client_key(self.path).thumbprint(), jwk.thumbprint())
