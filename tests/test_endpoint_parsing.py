"""Endpoint strings: what ``le:``, ``lets:`` and ``acme:`` accept, and the errors for the rest."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints, interfaces
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from txacme.config.endpoint import EndpointConfig, parse_endpoint_string_parts
from txacme.config.plugin import ACMEServerParser
from txacme.errors import ConfigurationError
from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY


def parse(description: str) -> EndpointConfig:
    """Split a string the way Twisted does, then parse it the way our plugins do."""
    args, kwargs = endpoints._parse(description)  # type: ignore[attr-defined]
    prefix, *rest = args
    directory = {"le": LETSENCRYPT_DIRECTORY, "lets": LETSENCRYPT_STAGING_DIRECTORY}.get(prefix)
    return parse_endpoint_string_parts(prefix, directory, rest, kwargs)


class ParseTests(SynchronousTestCase):
    def test_le_defaults(self) -> None:
        config = parse("le:/srv/www/certs:tcp:443")
        self.assertEqual(config.directory_url, LETSENCRYPT_DIRECTORY)
        self.assertEqual(config.cert_dir, "/srv/www/certs")
        self.assertEqual(config.sub_endpoint, "tcp:443")
        self.assertEqual(config.key_type, "ec256")
        self.assertEqual(config.challenges, ("tls-alpn-01",))

    def test_lets_is_staging(self) -> None:
        self.assertEqual(parse("lets:/c:tcp:443").directory_url, LETSENCRYPT_STAGING_DIRECTORY)

    def test_sub_endpoint_keywords_stay_with_sub_endpoint(self) -> None:
        config = parse("le:/c:tcp:443:interface=127.0.0.1:email=a@example.com:backlog=100")
        self.assertEqual(config.sub_endpoint, "tcp:443:interface=127.0.0.1:backlog=100")
        self.assertEqual(config.email, "a@example.com")
        # The rebuilt description is one Twisted accepts.
        endpoints.serverFromString(object(), config.sub_endpoint)

    def test_escaped_colons_survive(self) -> None:
        config = parse("le:/c:unix:/tmp/sock\\:x:mode=600")
        self.assertEqual(endpoints._parse(config.sub_endpoint)[0], ["unix", "/tmp/sock:x"])

    def test_acme_needs_directory(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "directory="):
            parse("acme:/c:tcp:443")
        config = parse("acme:/c:tcp:443:directory=https\\://ca.test/dir")
        self.assertEqual(config.directory_url, "https://ca.test/dir")

    def test_directory_must_be_https(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "http://ca.test/dir"):
            parse("acme:/c:tcp:443:directory=http\\://ca.test/dir")

    def test_le_refuses_directory(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "takes no directory"):
            parse("le:/c:tcp:443:directory=https\\://ca.test/dir")

    def test_missing_parts(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "certificate directory"):
            parse("le:")
        with self.assertRaisesRegex(ConfigurationError, "sub-endpoint"):
            parse("le:/c")

    def test_bad_key_type_named(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "key='dsa1024'"):
            parse("le:/c:tcp:443:key=dsa1024")
        self.assertEqual(parse("le:/c:tcp:443:key=RSA3072").key_type, "rsa3072")

    def test_watch_mode(self) -> None:
        """watch= chooses how a directory is watched; anything else is named in the error."""
        self.assertEqual(parse("le:/c:tcp:443").watch, "auto")
        self.assertEqual(parse("le:/c:tcp:443:watch=scan").watch, "scan")
        with self.assertRaisesRegex(ConfigurationError, "watch='poll' must be one of"):
            parse("le:/c:tcp:443:watch=poll")

    def test_bad_numbers_named(self) -> None:
        for bad in ("timeout=abc", "timeout=-1", "timeout=nan", "check_interval=0"):
            with self.assertRaisesRegex(ConfigurationError, bad.split("=")[0]):
                parse(f"le:/c:tcp:443:{bad}")

    def test_bad_email(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "email="):
            parse("le:/c:tcp:443:email=nobody")

    def test_challenges(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "'tls-sni-01'"):
            parse("le:/c:tcp:443:challenge=tls-sni-01")
        with self.assertRaisesRegex(ConfigurationError, "http01="):
            parse("le:/c:tcp:443:challenge=http-01")
        config = parse("le:/c:tcp:443:challenge=http-01,tls-alpn-01:http01=tcp\\:80")
        self.assertEqual(config.challenges, ("http-01", "tls-alpn-01"))
        self.assertEqual(config.http01_endpoint, "tcp:80")

    def test_dns_options(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "dns="):
            parse("le:/c:tcp:443:challenge=dns-01")
        with self.assertRaisesRegex(ConfigurationError, "without challenge=dns-01"):
            parse("le:/c:tcp:443:dns=rfc2136")
        config = parse(
            "le:/c:tcp:443:challenge=dns-01:dns=rfc2136:dns_server=127.0.0.1\\:53:tsig_secret=s3cr3t"
        )
        self.assertEqual(config.dns_options["dns_server"], "127.0.0.1:53")
        self.assertEqual(config.sub_endpoint, "tcp:443")
        self.assertNotIn("s3cr3t", repr(config))
        config = parse(
            "le:/c:tcp:443:challenge=dns-01:dns=lexicon:dns_lexicon_provider=x"
            ":dns_lexicon_auth_token=t0k3n"
        )
        self.assertNotIn("t0k3n", repr(config))

    def test_eab(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "eab_kid= and eab_hmac="):
            parse("le:/c:tcp:443:eab_kid=kid-1")
        config = parse("le:/c:tcp:443:eab_kid=kid-1:eab_hmac=c2VjcmV0")
        self.assertEqual(config.eab_kid, "kid-1")
        self.assertNotIn("c2VjcmV0", repr(config))

    def test_eab_hmac_file(self) -> None:
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        os.write(fd, b"c2VjcmV0\n")
        os.close(fd)
        config = parse(f"le:/c:tcp:443:eab_kid=k:eab_hmac_file={path}")
        self.assertEqual(config.eab_hmac, "c2VjcmV0")
        with self.assertRaisesRegex(ConfigurationError, "eab_hmac_file='/nonexistent/x'"):
            parse("le:/c:tcp:443:eab_kid=k:eab_hmac_file=/nonexistent/x")

    def test_ca_file_must_exist(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "ca_file='/nonexistent.pem'"):
            parse("le:/c:tcp:443:ca_file=/nonexistent.pem")

    def test_alpn(self) -> None:
        self.assertEqual(parse("le:/c:tcp:443:alpn=h2,http/1.1").alpn, (b"h2", b"http/1.1"))
        with self.assertRaisesRegex(ConfigurationError, "acme-tls/1"):
            parse("le:/c:tcp:443:alpn=acme-tls/1")

    def test_metrics(self) -> None:
        config = parse("le:/c:tcp:443:metrics=tcp\\:9100\\:interface\\=127.0.0.1")
        self.assertEqual(config.metrics, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(config.sub_endpoint, "tcp:443")

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=80))
    def test_fuzzed_strings_give_clear_errors(self, text: str) -> None:
        """Any string either parses or raises ConfigurationError: never anything else."""
        try:
            args, kwargs = endpoints._parse("acme:" + text)  # type: ignore[attr-defined]
        except Exception:
            return  # Twisted's own splitter refused it before us.
        try:
            parse_endpoint_string_parts("acme", None, args[1:], kwargs)
        except ConfigurationError as e:
            self.assertTrue(str(e))


class PluginTests(SynchronousTestCase):
    def test_plugins_registered(self) -> None:
        """le:, lets: and acme: are found by Twisted's plugin system."""
        prefixes = {
            p.prefix: p
            for p in getPlugins(interfaces.IStreamServerEndpointStringParser)
            if isinstance(p, ACMEServerParser)
        }
        self.assertEqual(set(prefixes), {"le", "lets", "acme"})
        self.assertEqual(prefixes["le"].directory_url, LETSENCRYPT_DIRECTORY)
        self.assertIsNone(prefixes["acme"].directory_url)

    def test_serverfromstring_error_names_input(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "key='bogus'"):
            endpoints.serverFromString(object(), "le:/c:tcp:443:key=bogus")
