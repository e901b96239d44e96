"""
RFC 2136 dynamic DNS update, signed with a TSIG key (RFC 8945).

Works with any primary name server that accepts signed updates: BIND
(``update-policy``), Knot DNS (``acl`` with ``action: update``), PowerDNS
(``TSIG-ALLOW-DNSUPDATE``), Windows DNS and others. Updates are sent over TCP to
one server (normally the zone's primary) with dnspython, in a thread, so the
reactor never blocks.

Each update adds or deletes exactly one TXT record (name and value): other
values at the same name stay, and nothing else in the zone is touched.

The secret is kept in a :class:`TSIGKey`, whose ``repr()`` and ``str()`` show
only the key's name and algorithm; the secret is never logged or put in an
error message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txacme.challenges.dnsproviders import (
    DNSUpdateError,
    IDNSProvider,
    Nameserver,
    RunInThread,
    default_run_in_thread,
    parse_nameserver,
)
from txacme.errors import ConfigurationError
from txacme.logs import Logger

log = Logger()

DEFAULT_ALGORITHM = "hmac-sha256"
"""The TSIG algorithm used when neither the option nor the key file names one."""

#: TSIG algorithms, by the names operators use, to their DNS names (RFC 8945).
ALGORITHMS = {
    "hmac-sha256": "hmac-sha256.",
    "hmac-sha384": "hmac-sha384.",
    "hmac-sha512": "hmac-sha512.",
    "hmac-sha224": "hmac-sha224.",
    "hmac-sha1": "hmac-sha1.",
    "hmac-md5": "hmac-md5.sig-alg.reg.int.",
}
_WEAK = {"hmac-sha1", "hmac-md5"}
_KEY_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}\Z")


def _algorithm(value: str, option: str) -> str:
    name = value.strip().lower().rstrip(".")
    if name == "hmac-md5.sig-alg.reg.int":
        name = "hmac-md5"
    if name not in ALGORITHMS:
        raise ConfigurationError(
            f"{option}={value!r}: unknown TSIG algorithm; use one of {', '.join(ALGORITHMS)}"
        )
    return name


class TSIGKey:
    """
    A TSIG key: its name, algorithm and base64 secret.

    :raises txacme.errors.ConfigurationError: for a bad name, an unknown
        algorithm or a secret that is not base64 (the message never shows the secret).
    """

    __slots__ = ("_secret", "algorithm", "name")

    def __init__(self, name: str, secret: str, algorithm: str = DEFAULT_ALGORITHM) -> None:
        if not isinstance(name, str) or not _KEY_NAME.match(name):
            raise ConfigurationError(f"tsig_key_name={name!r} is not a valid key name")
        self.name = name.rstrip(".")
        self.algorithm = _algorithm(algorithm, "tsig_algorithm")
        if self.algorithm in _WEAK:
            log.warn(
                "TSIG key {name} uses {algorithm}; prefer hmac-sha256",
                name=self.name,
                algorithm=self.algorithm,
            )
        secret = "".join(secret.split()) if isinstance(secret, str) else ""
        try:
            decoded = base64.b64decode(secret, validate=True) if _BASE64.match(secret) else b""
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise ConfigurationError(f"the TSIG secret of key {self.name!r} is not valid base64")
        self._secret = secret

    def __repr__(self) -> str:
        return f"TSIGKey(name={self.name!r}, algorithm={self.algorithm!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("TSIGKey cannot be pickled (it holds a secret)")

    def dnspython_key(self) -> Any:
        """The ``dns.tsig.Key`` to sign messages with (its repr shows the secret: keep it local)."""
        import dns.tsig

        return dns.tsig.Key(self.name + ".", self._secret, ALGORITHMS[self.algorithm])


def _parse_key_file(text: str) -> list[tuple[str | None, str | None, str]]:
    """``(name, algorithm, secret)`` of every key in a BIND, Knot or bare key file."""
    keys: list[tuple[str | None, str | None, str]] = []
    # BIND / tsig-keygen / ddns-confgen: key "name" { algorithm x; secret "y"; };
    for match in re.finditer(r'\bkey\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', text, re.DOTALL):
        body = match.group(2)
        algorithm = re.search(r'\balgorithm\s+"?([\w.-]+)"?\s*;', body)
        secret = re.search(r'\bsecret\s+"([^"]*)"\s*;', body)
        if secret:
            keys.append(
                (match.group(1), algorithm.group(1) if algorithm else None, secret.group(1))
            )
    if keys:
        return keys
    # Knot (keymgr -t): "- id: name", "algorithm: x", "secret: y" lines.
    name: str | None = None
    algorithm_name: str | None = None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lstrip("-").strip()
        field, sep, value = line.partition(":")
        if not sep:
            continue
        field, value = field.strip(), value.strip().strip('"')
        if field == "id":
            name, algorithm_name = value, None
        elif field == "algorithm":
            algorithm_name = value
        elif field == "secret":
            keys.append((name, algorithm_name, value))
    if keys:
        return keys
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) == 1:
        fields = lines[0].split()
        if len(fields) == 1:  # a bare base64 secret
            return [(None, None, fields[0])]
        if len(fields) == 3:  # "name algorithm secret" (e.g. pdnsutil list-tsig-keys)
            return [(fields[0].rstrip("."), fields[1], fields[2])]
    return []


def read_tsig_key_file(
    path: str, key_name: str | None = None, algorithm: str | None = None
) -> TSIGKey:
    """
    Load a TSIG key from a file.

    The file may be a BIND key file (as ``tsig-keygen`` writes it), Knot's
    ``keymgr -t`` output, a ``name algorithm secret`` line, or just the base64
    secret. The name and algorithm default to those in the file; when given,
    they select the key (a file may hold several) and must agree with it.

    :raises txacme.errors.ConfigurationError: naming ``tsig_secret_file`` (never
        showing the secret).
    """
    option = f"tsig_secret_file={path!r}"
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"{option}: cannot read it ({type(e).__name__}: {e.args[-1]})")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warn(
            "TSIG key file {path} is readable by group or others; chmod 600 it",
            path=path,
        )
    keys = _parse_key_file(text)
    if not keys:
        raise ConfigurationError(f"{option}: not a BIND or Knot key file, nor a base64 TSIG secret")
    if key_name is not None:
        wanted = key_name.rstrip(".")
        chosen = [k for k in keys if k[0] is None or k[0].rstrip(".") == wanted]
        if not chosen:
            raise ConfigurationError(f"{option}: holds no key named {wanted!r}")
    elif len(keys) > 1:
        raise ConfigurationError(f"{option}: holds several keys; choose one with tsig_key_name=")
    else:
        chosen = keys
    file_name, file_algorithm, secret = chosen[0]
    name = key_name or file_name
    if name is None:
        raise ConfigurationError(f"{option}: holds a bare secret; give tsig_key_name= too")
    if (
        algorithm is not None
        and file_algorithm is not None
        and (_algorithm(algorithm, "tsig_algorithm") != _algorithm(file_algorithm, option))
    ):
        raise ConfigurationError(
            f"tsig_algorithm={algorithm!r} disagrees with the key file ({file_algorithm})"
        )
    chosen_algorithm = algorithm or file_algorithm or DEFAULT_ALGORITHM
    try:
        return TSIGKey(name, secret, _algorithm(chosen_algorithm, "tsig_algorithm"))
    except ConfigurationError as e:
        raise ConfigurationError(f"{option}: {e}")


_RCODE_HINTS = {
    "REFUSED": "the server refused it: does the zone's update policy grant this key TXT updates?",
    "NOTAUTH": "the server is not authoritative for the zone, or rejected the TSIG key",
    "NOTZONE": "the name is outside the zone",
    "SERVFAIL": "the server failed to apply it",
}


@implementer(IDNSProvider)
class RFC2136Provider:
    """
    Adds and removes TXT records by RFC 2136 dynamic update.

    :param server: the server to send updates to (normally the zone's primary),
        as a :class:`~txacme.challenges.dnsproviders.Nameserver` or ``"address[:port]"``.
    :param key: the TSIG key; ``None`` sends unsigned updates, which only a
        server that authorizes updates by IP address accepts.
    :param ttl: the TTL of the records added.
    :param timeout: seconds to wait for the server's answer to one update.
    :param run_in_thread: how blocking calls leave the reactor thread.
    """

    def __init__(
        self,
        server: Nameserver | str,
        key: TSIGKey | None,
        *,
        ttl: int = 60,
        timeout: float = 10.0,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        try:
            import dns.update  # noqa: F401
        except ImportError:  # pragma: no cover - the tests install dnspython
            raise ConfigurationError("dns=rfc2136 needs dnspython: pip install 'txacme[dns]'")
        self.server = server if isinstance(server, Nameserver) else parse_nameserver(server)
        self.key = key
        self.ttl = ttl
        self.timeout = timeout
        self._run: RunInThread = run_in_thread or default_run_in_thread

    def __repr__(self) -> str:
        return f"RFC2136Provider(server={self.server.where!r}, key={self.key!r}, ttl={self.ttl})"

    def add_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        """Add one TXT value at ``fqdn`` (other values at that name stay)."""
        return self._run(lambda: self._update("add", zone, fqdn, value))

    def remove_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        """Delete the TXT record ``fqdn`` with ``value`` only."""
        return self._run(lambda: self._update("delete", zone, fqdn, value))

    def _update(self, action: str, zone: str, fqdn: str, value: str) -> None:
        """Build, sign and send one update; runs in a thread."""
        import dns.exception
        import dns.name
        import dns.query
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.rdtypes.ANY.TXT
        import dns.update

        what = f"{action} of TXT {fqdn} in zone {zone} at {self.server.where}"
        keyring = self.key.dnspython_key() if self.key is not None else None
        message = dns.update.UpdateMessage(dns.name.from_text(zone), keyring=keyring)
        del keyring
        rdata = dns.rdtypes.ANY.TXT.TXT(
            dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode("ascii")]
        )
        name = dns.name.from_text(fqdn)
        if action == "add":
            message.add(name, self.ttl, rdata)
        else:
            message.delete(name, rdata)
        try:
            response = dns.query.tcp(
                message, self.server.address, timeout=self.timeout, port=self.server.port
            )
        except dns.exception.Timeout:
            raise DNSUpdateError(f"{what}: no answer within {self.timeout:g}s")
        except OSError as e:
            raise DNSUpdateError(f"{what}: {e.strerror or e}")
        except dns.exception.DNSException as e:
            # TSIG verification problems (BADKEY, BADSIG, BADTIME) end up here.
            raise DNSUpdateError(f"{what}: {type(e).__name__}: {e}")
        rcode = dns.rcode.to_text(response.rcode())
        if rcode != "NOERROR":
            hint = _RCODE_HINTS.get(rcode, "")
            raise DNSUpdateError(f"{what} failed with {rcode}" + (f": {hint}" if hint else ""))
        log.debug("{what}: done", what=what)


__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "RFC2136Provider",
    "TSIGKey",
    "read_tsig_key_file",
]
