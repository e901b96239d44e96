"""The shared core helpers: txacme.certificates and txacme.formats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from twisted.trial.unittest import TestCase

from txacme.certificates import (
    certificate_names,
    covers,
    first_certificate,
    validate_pem_objects,
)
from txacme.errors import ConfigurationError
from txacme.formats import b64url, b64url_decode, format_time, is_token, parse_time
from txacme.testing import make_certificate, make_pem_objects


class CertificateNamesTests(TestCase):
    def test_dns_names_lowered_then_addresses_compressed(self) -> None:
        """DNS names come lower-cased and first, IP addresses compressed after them."""
        cert = make_certificate(["Example.TEST", "www.example.test", "2001:db8:0:0::1"])
        wanted = ["example.test", "www.example.test", "2001:db8::1"]
        self.assertEqual(certificate_names(cert), wanted)

    def test_covers_exact_wildcard_and_address(self) -> None:
        """A wildcard covers one label below it only; an address matches in any spelling."""
        cert = make_certificate(["*.example.test", "192.0.2.1", "2001:db8::1"])
        self.assertTrue(covers(cert, "www.example.test"))
        self.assertFalse(covers(cert, "example.test"))
        self.assertFalse(covers(cert, "a.b.example.test"))
        self.assertTrue(covers(cert, "192.0.2.1"))
        self.assertTrue(covers(cert, "2001:db8:0::1"))
        self.assertFalse(covers(cert, "192.0.2.2"))

    def test_first_certificate(self) -> None:
        """The first certificate of an entry is parsed; an entry without one gives None."""
        objects = make_pem_objects(["a.example.test"])
        first = first_certificate(objects)
        assert first is not None
        self.assertEqual(certificate_names(first), ["a.example.test"])
        self.assertIsNone(first_certificate([o for o in objects if "KEY" in o.as_text()]))


class ValidatePemObjectsTests(TestCase):
    def test_valid_entry(self) -> None:
        """A key and its certificate pass and come back as a list."""
        objects = make_pem_objects(["a.example.test"])
        self.assertEqual(validate_pem_objects(tuple(objects), "a.example.test"), list(objects))

    def test_mismatched_key_names_the_source(self) -> None:
        """A key that is not the certificate's is refused with the source in the message."""
        one = make_pem_objects(["a.example.test"])
        two = make_pem_objects(["b.example.test"])
        keys = [o for o in two if "KEY" in o.as_text()]
        certs = [o for o in one if "CERTIFICATE" in o.as_text()]
        with self.assertRaises(ConfigurationError) as caught:
            validate_pem_objects(keys + certs, "mixed.pem")
        self.assertIn("mixed.pem", str(caught.exception))
        self.assertIn("does not match", str(caught.exception))

    def test_not_a_list(self) -> None:
        """A bare string is not an entry."""
        with self.assertRaises(ConfigurationError):
            validate_pem_objects("-----BEGIN", "x")


class FormatTests(TestCase):
    def test_b64url_round_trip(self) -> None:
        """Unpadded base64url decodes with or without its padding."""
        for data in (b"a", b"ab", b"abc", bytes(range(256))):
            text = b64url(data)
            self.assertNotIn("=", text)
            self.assertEqual(b64url_decode(text), data)
            self.assertEqual(b64url_decode(text + "=" * (-len(text) % 4)), data)
        for bad in ("a+b/", ""):
            with self.assertRaises(ValueError):
                b64url_decode(bad)

    def test_is_token(self) -> None:
        """Tokens are non-empty base64url strings; nothing else is."""
        self.assertTrue(is_token("abc-_DEF123"))
        for bad in ("", "a/b", "a.b", "../x", "a b", None, b"abc"):
            self.assertFalse(is_token(bad), bad)

    def test_time_round_trip(self) -> None:
        """Times are written in UTC with a Z and read back equal; naive times are UTC."""
        moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
        self.assertEqual(format_time(moment), "2026-01-02T01:04:05Z")
        self.assertEqual(parse_time(format_time(moment)), moment)
        self.assertEqual(format_time(datetime(2026, 1, 2)), "2026-01-02T00:00:00Z")
        self.assertIsNone(format_time(None))
        self.assertIsNone(parse_time("yesterday"))
        self.assertIsNone(parse_time(3))


class OptionTests(TestCase):
    def test_parse_number(self) -> None:
        """Numbers parse from text or as given; bounds and kinds are enforced, naming the option."""
        from txacme.formats import parse_number

        self.assertEqual(parse_number("ttl", "2.5"), 2.5)
        self.assertEqual(parse_number("ttl", 3), 3.0)
        self.assertEqual(parse_number("size", "4", integer=True), 4)
        self.assertIsInstance(parse_number("size", "4", integer=True), int)
        self.assertEqual(parse_number("n", "0", minimum=None), 0)
        for value, kwargs, fragment in [
            ("x", {}, "is not a number"),
            ("1.5", {"integer": True}, "is not an integer"),
            ("0", {}, "must be above 0"),
            ("nan", {}, "finite"),
            ("inf", {}, "finite"),
            ("11", {"maximum": 10}, "at most 10"),
            (True, {}, "is not a number"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                parse_number("opt", value, what="store option ", **kwargs)
            self.assertIn("store option opt=", str(caught.exception))
            self.assertIn(fragment, str(caught.exception))

    def test_parse_flag(self) -> None:
        """Yes/no words in any case, booleans as given, anything else refused."""
        from txacme.formats import parse_flag

        for text in ("yes", "TRUE", "on", "1", True):
            self.assertIs(parse_flag("listen", text), True)
        for text in ("no", "False", "off", "0", False):
            self.assertIs(parse_flag("listen", text), False)
        with self.assertRaises(ConfigurationError) as caught:
            parse_flag("listen", "maybe")
        self.assertIn("listen='maybe'", str(caught.exception))
