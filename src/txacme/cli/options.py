"""
The ``txacme`` command line's options: the argument parser, the certificate
authority options checked (:class:`CAOptions`), server names, endpoint
descriptions and revocation reasons.

May import the core modules and :mod:`txacme.protocol`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import attrs

from txacme import __version__, errors
from txacme.certificates import check_ca_file
from txacme.challenges.dnspersist01 import DRAFT
from txacme.cli.failures import UsageError
from txacme.keys import KEY_TYPES
from txacme.names import normalize_server_name
from txacme.protocol.client import EAB
from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY

__all__ = [
    "ACCOUNT_KEY_FILE",
    "REVOCATION_REASONS",
    "CAOptions",
    "build_parser",
    "ca_options",
    "endpoint_description",
    "revocation_reason",
    "server_names",
]

ACCOUNT_KEY_FILE = "client.key"
"""The account key's file name in the certificate directory."""

#: RFC 5280 CRLReason codes accepted by ``revoke --reason`` (names or numbers).
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}


def _env_default(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument(
        "-C",
        "--cert-dir",
        metavar="DIR",
        default=_env_default("TXACME_CERT_DIR"),
        help="the certificate directory (default: $TXACME_CERT_DIR)",
    )
    group.add_argument(
        "--store",
        metavar="URL",
        default=_env_default("TXACME_STORE"),
        help="keep the certificates in this store instead of the directory, as the "
        "endpoints' store= option: postgresql://... or a directory (default: $TXACME_STORE)",
    )
    group.add_argument(
        "--store-key-file",
        metavar="FILE",
        default=_env_default("TXACME_STORE_KEY_FILE"),
        help="the key sealing the private keys in a PostgreSQL --store "
        "(default: $TXACME_STORE_KEY_FILE)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what happens to standard error (-vv: with every ACME request)",
    )


def _add_ca(parser: argparse.ArgumentParser, *, certificates: bool) -> None:
    group = parser.add_argument_group("certificate authority")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--directory",
        metavar="URL",
        default=_env_default("TXACME_DIRECTORY"),
        help="the CA's ACME directory URL (default: $TXACME_DIRECTORY)",
    )
    choice.add_argument(
        "--le", action="store_true", help="Let's Encrypt (as the le: endpoint prefix)"
    )
    choice.add_argument(
        "--lets", action="store_true", help="Let's Encrypt staging (as the lets: prefix)"
    )
    group.add_argument(
        "--ca-file",
        metavar="PEM",
        default=_env_default("TXACME_CA_FILE"),
        help="trust only these certificates for the CA's HTTPS "
        "(default: $TXACME_CA_FILE, else the system's)",
    )
    group.add_argument("--email", metavar="ADDRESS", help="the account's contact address")
    group.add_argument("--eab-kid", metavar="KID", help="external account binding key id")
    group.add_argument(
        "--eab-hmac-file",
        metavar="FILE",
        help="file holding the external account binding MAC key (base64url)",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="seconds allowed for each request to the CA (default: 30)",
    )
    if certificates:
        certs = parser.add_argument_group("certificates")
        certs.add_argument(
            "--key-type",
            default="ec256",
            help=f"type of new certificate keys: {', '.join(KEY_TYPES)} (default: ec256)",
        )
        certs.add_argument("--profile", metavar="NAME", help="the ACME profile to ask for")
        certs.add_argument(
            "--preferred-chain",
            metavar="ISSUER",
            help="the issuer common name of the chain to prefer among the CA's alternates "
            "(as preferred_chain= on the endpoint string)",
        )
        certs.add_argument(
            "--deploy-hook",
            metavar="COMMAND",
            help="run COMMAND (split like a shell command line, no shell) after each "
            "certificate is stored; see the deploy hooks documentation",
        )
        certs.add_argument(
            "--deploy-hook-timeout",
            metavar="SECONDS",
            type=float,
            default=60.0,
            help="kill the deploy hook after this many seconds (default: 60)",
        )
        certs.add_argument(
            "--concurrency",
            metavar="N",
            type=int,
            default=4,
            help="names issued at the same time (default: 4)",
        )
        answer = parser.add_argument_group(
            "challenges (at least one)",
            "The listeners run only while the command runs.",
        )
        answer.add_argument(
            "--http01",
            metavar="ENDPOINT",
            help="answer http-01 on this endpoint, e.g. tcp:80 (a bare number means tcp:N)",
        )
        answer.add_argument(
            "--tls-alpn",
            metavar="ENDPOINT",
            help="answer tls-alpn-01 on this endpoint, e.g. tcp:443",
        )
        answer.add_argument(
            "--dns",
            metavar="PROVIDER",
            help="answer dns-01 through this provider: rfc2136 or lexicon",
        )
        answer.add_argument(
            "--dns-option",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            help="a dns-01 option as in endpoint strings, e.g. dns_server=192.0.2.53 (repeatable)",
        )
        answer.add_argument(
            "--dns-challenge",
            choices=("dns-01", "dns-account-01", "dns-persist-01"),
            default="dns-01",
            help="the DNS challenge --dns answers (default: dns-01); dns-persist-01 "
            "without --dns only checks the persistent record",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``txacme`` command."""
    parser = argparse.ArgumentParser(
        prog="txacme",
        description="Inspect and manage ACME certificates in a txacme certificate directory.",
        epilog="Exit status: 0 ok, 1 failed, 2 usage error, 3 needs attention "
        "(status --check), 4 temporary failure (try again later).",
    )
    parser.add_argument("--version", action="version", version=f"txacme {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    status = commands.add_parser(
        "status",
        help="show every certificate, its renewal plan and last error",
        description="Show the certificates of the directory: names, issuer, key type, "
        "expiry, the planned renewal and why, and the last error. Without CA options "
        "nothing is sent over the network; with them, the CA's renewal information (ARI) "
        "is asked for.",
    )
    status.add_argument("names", nargs="*", metavar="NAME", help="only these names")
    status.add_argument("--json", action="store_true", help="print JSON for programs")
    status.add_argument(
        "--html",
        metavar="FILE",
        help="also write the status page (one self-contained HTML file) to FILE ('-': "
        "standard output, instead of the table)",
    )
    status.add_argument(
        "--check",
        action="store_true",
        help="exit with 3 when a certificate needs attention",
    )
    _add_common(status)
    _add_ca(status, certificates=False)

    issue = commands.add_parser(
        "issue",
        help="obtain certificates for new names",
        description="Add NAMEs to the directory and obtain a certificate for each. A name "
        "that already has a valid certificate is left alone (see renew --force).",
    )
    issue.add_argument("names", nargs="+", metavar="NAME", help="server names to add")
    _add_common(issue)
    _add_ca(issue, certificates=True)

    renew = commands.add_parser(
        "renew",
        help="renew the certificates that are due",
        description="Renew the certificates that are due (by the CA's renewal information "
        "when it offers it, else by their lifetime), revoked or missing.",
    )
    renew.add_argument("names", nargs="*", metavar="NAME", help="only these names")
    renew.add_argument("--force", action="store_true", help="renew even if not due")
    _add_common(renew)
    _add_ca(renew, certificates=True)

    revoke = commands.add_parser(
        "revoke",
        help="revoke the certificate of a name",
        description="Revoke the certificate stored for NAME. The file stays in place; "
        "`txacme renew` then replaces it.",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument(
        "--reason",
        default="unspecified",
        help="RFC 5280 reason: " + ", ".join(REVOCATION_REASONS) + " (or its number)",
    )
    revoke.add_argument(
        "--certificate-key",
        action="store_true",
        help="sign with the certificate's own key instead of the account key",
    )
    _add_common(revoke)
    _add_ca(revoke, certificates=False)

    account = commands.add_parser(
        "account",
        help="show, create, roll over or deactivate the ACME account",
        description="Manage the ACME account whose key is client.key in the directory.",
    )
    actions = account.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="show the account")
    show.add_argument("--json", action="store_true", help="print JSON for programs")
    create = actions.add_parser("create", help="create the account (and client.key)")
    rollover = actions.add_parser("rollover", help="replace the account key")
    deactivate = actions.add_parser("deactivate", help="deactivate the account for good")
    deactivate.add_argument(
        "--yes", action="store_true", help="confirm: deactivation cannot be undone"
    )
    for sub in (show, create, rollover, deactivate):
        _add_common(sub)
        _add_ca(sub, certificates=False)
    for sub in (create, rollover):
        sub.add_argument(
            "--account-key-type",
            choices=KEY_TYPES,
            help="type of the new account key (default: ec256, or the old key's type)",
        )
    _add_persist_record(commands)
    return parser


def _add_persist_record(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add the ``persist-record`` sub-command (:mod:`txacme.cli.persist`)."""
    parser = commands.add_parser(
        "persist-record",
        help="print the dns-persist-01 TXT record to publish for a name",
        description=f"Print the persistent validation record ({DRAFT}) naming the CA "
        "and this directory's account, to publish once in the name's DNS zone.",
    )
    parser.add_argument("name", metavar="NAME", help="the name (*.example.com: a wildcard)")
    parser.add_argument(
        "--wildcard",
        action="store_true",
        help="add policy=wildcard: also valid for *.NAME and NAME's subdomains",
    )
    parser.add_argument(
        "--until",
        metavar="DATE",
        help="add persistUntil: 2027-12-31, an ISO 8601 time with a zone, or UNIX seconds",
    )
    parser.add_argument(
        "--issuer",
        metavar="DOMAIN",
        help="the CA's issuer domain name (default: the directory's first caaIdentities)",
    )
    _add_common(parser)
    _add_ca(parser, certificates=False)


@attrs.frozen
class CAOptions:
    """The certificate authority options, checked."""

    directory_url: str | None
    ca_file: str | None
    email: str | None
    eab: EAB | None
    timeout: float

    def require(self) -> str:
        """The directory URL, or a usage error saying how to give one."""
        if self.directory_url is None:
            raise UsageError(
                "choose the CA: --le (Let's Encrypt), --lets (Let's Encrypt staging) "
                "or --directory URL"
            )
        return self.directory_url


def ca_options(args: argparse.Namespace) -> CAOptions:
    """The certificate authority options of ``args``, checked."""
    url: str | None = None
    if args.le:
        url = LETSENCRYPT_DIRECTORY
    elif args.lets:
        url = LETSENCRYPT_STAGING_DIRECTORY
    elif args.directory:
        url = args.directory
        if not url.startswith("https://"):
            raise UsageError(f"--directory {url!r}: an ACME directory URL starts with https://")
    ca_file = args.ca_file
    if ca_file is not None:
        from_env = ca_file == os.environ.get("TXACME_CA_FILE")
        what = "$TXACME_CA_FILE" if from_env else "--ca-file"
        try:
            check_ca_file(ca_file, what)
        except errors.ConfigurationError as e:
            raise UsageError(str(e))
    email = args.email
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise UsageError(f"--email {email!r}: not an e-mail address")
    if not args.timeout > 0 or args.timeout == float("inf"):
        raise UsageError(f"--timeout {args.timeout!r}: must be a positive number of seconds")
    eab: EAB | None = None
    if bool(args.eab_kid) != bool(args.eab_hmac_file):
        raise UsageError("external account binding needs both --eab-kid and --eab-hmac-file")
    if args.eab_kid:
        try:
            with open(args.eab_hmac_file, encoding="ascii") as f:
                hmac_key = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not ASCII text"
            raise UsageError(f"--eab-hmac-file {args.eab_hmac_file!r}: cannot read ({reason})")
        try:
            eab = EAB(args.eab_kid, hmac_key)  # type: ignore[arg-type]
        except errors.ConfigurationError as e:
            raise UsageError(f"--eab-hmac-file {args.eab_hmac_file!r}: {e}")
    return CAOptions(url, ca_file, email, eab, float(args.timeout))


def server_names(values: Sequence[str]) -> list[str]:
    """The canonical forms of the ``NAME`` arguments, without repeats."""
    result: list[str] = []
    for value in values:
        try:
            name = normalize_server_name(value)
        except errors.InvalidServerName as e:
            raise UsageError(f"NAME {value!r}: {e.reason}")
        if name not in result:
            result.append(name)
    return result


def endpoint_description(option: str, value: str) -> str:
    """The endpoint description of a listener option (a bare number means ``tcp:N``)."""
    value = value.strip()
    if value.isdigit():
        value = f"tcp:{value}"
    if not value:
        raise UsageError(f"{option}: needs an endpoint description, e.g. tcp:80")
    check_endpoint_description(option, value)
    return value


def check_endpoint_description(option: str, description: str) -> None:
    """
    A usage error, in one line, for a server endpoint description Twisted cannot
    use (an unknown type, a port out of range, a bad keyword...).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    head, _, rest = description.partition(":")
    if head in ("tcp", "tcp6", "ssl") and rest:
        port = rest.split(":", 1)[0]
        if "=" not in port and not (port.isdigit() and 0 <= int(port) <= 65535):
            raise UsageError(f"{option} {description!r}: port {port!r} is not 0-65535")
    try:
        serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    except Exception as e:
        reason = str(e) or type(e).__name__
        raise UsageError(f"{option} {description!r} is not a usable endpoint: {reason}")


def revocation_reason(value: str) -> tuple[int, str]:
    """The RFC 5280 reason code and name of ``revoke --reason`` (a name or a number)."""
    if value.isdigit():
        code = int(value)
        for name, number in REVOCATION_REASONS.items():
            if number == code:
                return code, name
        raise UsageError(f"--reason {value}: not an RFC 5280 reason code")
    folded = value.replace("-", "").replace("_", "").lower()
    for name, number in REVOCATION_REASONS.items():
        if name.lower() == folded:
            return number, name
    raise UsageError(f"--reason {value!r}: use one of {', '.join(REVOCATION_REASONS)}")
