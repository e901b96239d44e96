"""Tests for txacme.names: server name validation and canonical form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from txacme.errors import ConfigurationError, InvalidServerName
from txacme.names import (
    is_ip_address,
    is_wildcard,
    normalize_server_name,
    wildcard_for,
)

GOOD = [
    ("example.com", "example.com"),
    ("Example.COM", "example.com"),
    ("WWW.EXAMPLE.COM", "www.example.com"),
    ("localhost", "localhost"),
    ("a", "a"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("0.example.com", "0.example.com"),
    ("123abc.com", "123abc.com"),
    ("example.123abc", "example.123abc"),
    ("*.example.com", "*.example.com"),
    ("*.EXAMPLE.com", "*.example.com"),
    ("*.localhost", "*.localhost"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("127.0.0.1", "127.0.0.1"),
    ("192.0.2.255", "192.0.2.255"),
    ("::1", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
]

BAD = [
    ("", "empty"),
    (".", "trailing dot"),
    ("..", ""),
    ("example.com.", "trailing dot"),
    (".example.com", "empty label"),
    ("a..b", "empty label"),
    ("../x", "'/'"),
    ("../../etc/passwd", "'/'"),
    ("a/b", "'/'"),
    ("a\\b", "'\\\\'"),
    ("..\\x", "'\\\\'"),
    ("a\x00b", "'\\x00'"),
    ("example.com\x00.evil", "'\\x00'"),
    (" example.com", "characters"),
    ("example.com ", "characters"),
    ("exa mple.com", "characters"),
    ("example.com\n", "characters"),
    ("exa_mple.com", "characters"),
    ("_acme-challenge.example.com", "characters"),
    ("-example.com", "starts or ends with '-'"),
    ("example-.com", "starts or ends with '-'"),
    ("example.-com", "starts or ends with '-'"),
    ("bücher.example", "punycode"),
    ("пример.рф", "punycode"),
    ("example.com\u3002evil", "punycode"),
    ("a" * 64 + ".com", "longer than 63"),
    (".".join(["a" * 63] * 4), "longer than 253"),
    ("a." * 127 + "com", "longer than 253"),
    ("*", "wildcard needs a name"),
    ("*.", "trailing dot"),
    ("**.example.com", "'*'"),
    ("*example.com", "'*'"),
    ("w*.example.com", "'*'"),
    ("www.*.example.com", "'*'"),
    ("*.*.example.com", "'*'"),
    ("example.*", "'*'"),
    ("xn--.example", "starts or ends"),
    ("xn--a-ecp.example", "punycode"),
    ("xn--zzzzzzzzzzzzzz.example", "punycode"),
    ("xn--a.example", "punycode"),
    ("1.2.3", "all digits"),
    ("1.2.3.999", "all digits"),
    ("01.2.3.4", "all digits"),
    ("256.0.0.1", "all digits"),
    ("example.com:443", "characters"),
    ("[::1]", "characters"),
    ("fe80::1%eth0", "characters"),
    ("::1%1", "characters"),
    ("*.127.0.0.1", "all digits"),
    ("http://example.com", ""),
    ("user@example.com", "characters"),
]


class NormalizeServerNameTests(TestCase):
    """normalize_server_name accepts canonical names and refuses everything else."""

    def test_good(self) -> None:
        for name, expected in GOOD:
            self.assertEqual(normalize_server_name(name), expected, name)

    def test_idempotent(self) -> None:
        for _name, expected in GOOD:
            self.assertEqual(normalize_server_name(expected), expected)

    def test_bad(self) -> None:
        for name, fragment in BAD:
            with self.assertRaises(InvalidServerName, msg=repr(name)) as caught:
                normalize_server_name(name)
            self.assertIn(fragment, str(caught.exception), repr(name))
            self.assertEqual(caught.exception.name, name)
            self.assertIn(repr(name)[:50], str(caught.exception))

    def test_is_configuration_error(self) -> None:
        self.assertRaises(ConfigurationError, normalize_server_name, "a/b")
        self.assertRaises(ValueError, normalize_server_name, "a/b")

    def test_not_str(self) -> None:
        for value in [b"example.com", None, 42, ["example.com"]]:
            with self.assertRaises(InvalidServerName) as caught:
                normalize_server_name(value)  # type: ignore[arg-type]
            self.assertIn("must be a str", str(caught.exception))

    def test_punycode_suggested(self) -> None:
        with self.assertRaises(InvalidServerName) as caught:
            normalize_server_name("bücher.example")
        self.assertIn("xn--bcher-kva.example", str(caught.exception))

    def test_length_limit_exact(self) -> None:
        name = ".".join(["a" * 63] * 3 + ["b" * 61])
        self.assertEqual(len(name), 253)
        self.assertEqual(normalize_server_name(name), name)
        self.assertRaises(InvalidServerName, normalize_server_name, name + "b")

    def test_huge(self) -> None:
        self.assertRaises(InvalidServerName, normalize_server_name, "a" * 100_000)
        self.assertRaises(InvalidServerName, normalize_server_name, "a." * 50_000 + "com")

    @given(st.text(max_size=80))
    def test_arbitrary_text_safe_as_file_name(self, text: str) -> None:
        """
        Whatever is accepted is canonical, ASCII, and free of path syntax.
        """
        try:
            name = normalize_server_name(text)
        except InvalidServerName:
            return
        self.assertEqual(normalize_server_name(name), name)
        self.assertTrue(name.isascii())
        for bad in ["/", "\\", "\x00", ".."]:
            self.assertNotIn(bad, name)
        self.assertFalse(name.startswith("."))
        self.assertEqual(name, name.lower())

    @given(
        st.lists(
            st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True),
            min_size=1,
            max_size=5,
        ).filter(lambda labels: not labels[-1].isdigit())
    )
    def test_valid_dns_names(self, labels: list[str]) -> None:
        name = ".".join(labels)
        self.assertEqual(normalize_server_name(name), name.lower())
        self.assertEqual(normalize_server_name("*." + name), "*." + name.lower())

    @given(st.ip_addresses())
    def test_ip_addresses(self, address: object) -> None:
        text = str(address)
        self.assertEqual(normalize_server_name(text), text)
        self.assertEqual(normalize_server_name(text.upper()), text)
        self.assertTrue(is_ip_address(text))


class HelperTests(TestCase):
    """is_ip_address, is_wildcard and wildcard_for."""

    def test_is_ip_address(self) -> None:
        for value in ["127.0.0.1", "::1", "2001:db8::1", "::ffff:1.2.3.4"]:
            self.assertTrue(is_ip_address(value), value)
        for value in ["example.com", "1.2.3", "fe80::1%eth0", "[::1]", "", b"127.0.0.1", None]:
            self.assertFalse(is_ip_address(value), value)

    def test_is_wildcard(self) -> None:
        self.assertTrue(is_wildcard("*.example.com"))
        self.assertFalse(is_wildcard("example.com"))
        self.assertFalse(is_wildcard("::1"))

    def test_wildcard_for(self) -> None:
        self.assertEqual(wildcard_for("www.example.com"), "*.example.com")
        self.assertEqual(wildcard_for("example.com"), "*.com")
        self.assertIsNone(wildcard_for("localhost"))
        self.assertIsNone(wildcard_for("*.example.com"))
        self.assertIsNone(wildcard_for("127.0.0.1"))
        self.assertIsNone(wildcard_for("::1"))
