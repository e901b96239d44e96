"""
The operator's command line: ``txacme`` (or ``python -m txacme``).

It works on a certificate directory, the one an ``le:`` / ``lets:`` /
``acme:`` endpoint uses::

    txacme status   -C /srv/www/certs [NAME...] [--json] [--check]
    txacme issue    -C /srv/www/certs --le --http01 tcp:80 NAME...
    txacme renew    -C /srv/www/certs --le --http01 tcp:80 [NAME...] [--force]
    txacme revoke   -C /srv/www/certs --le NAME [--reason keyCompromise]
    txacme account  show|create|rollover|deactivate -C /srv/www/certs --le

Decisions
---------

Challenges.
    A running server owns port 443 (and often 80), so the command line cannot
    answer ``tls-alpn-01`` on it. ``issue`` and ``renew`` therefore take
    explicit ways to answer: ``--http01 ENDPOINT`` and ``--tls-alpn ENDPOINT``
    listen only while the command runs (``tcp:80``, ``tcp:443``, or a port a
    proxy forwards to), and ``--dns PROVIDER`` with ``--dns-option KEY=VALUE``
    answers ``dns-01`` with the same options as the endpoint strings. At least
    one is required. A server that runs an ``le:`` endpoint on the directory
    renews its own certificates; the command line is for inspection, for
    directories shared through ``txsni:``, and for one-off operations.

One certificate per name.
    Like the endpoint, each ``NAME`` gets its own ``NAME.pem`` holding a
    certificate for that name only. ``issue`` first creates the empty entry, so
    a failed attempt still leaves the wish recorded for a running server.

Stores.
    The certificates live in the directory unless ``--store URL`` names
    another store, as the endpoints' ``store=`` option does
    (:func:`txacme.stores.url.store_from_url`): ``postgresql://...`` for a
    cluster's database (with ``--store-key-file`` when its private keys are
    sealed), or another directory. ``--cert-dir`` is still needed: the
    account key and the state file stay there.

State.
    Each attempt, success, failure and revocation is written to
    ``.txacme-state.json`` in the directory (:mod:`txacme.reporting.state`), which the
    endpoint also keeps up to date; ``status`` reads it for the last error and
    for the renewal time the running server planned.

Output.
    Results go to standard output, one line per name, errors to standard
    error. Progress (a spinner with what each name is waiting for) is shown
    only when standard error is a terminal; piped or under cron the command
    prints only what happened, and ``renew`` with nothing due prints nothing.

Exit status.
    ``0`` success; ``1`` the operation failed (the CA refused, validation
    failed...); ``2`` bad command line or input, nothing was done; ``3``
    ``status --check`` found a certificate that needs attention; ``4`` the CA
    could not be reached, timed out, rate-limited us or failed internally: try
    again later; ``130`` interrupted. With several names, ``1`` wins over
    ``4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import IO, Any

import attrs
import pem
from cryptography import x509
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txacme import __version__, errors
from txacme.reporting.state import NameRecord, RevocationRecord, StateFile, error_record

log = Logger()

__all__ = [
    "EXIT_ATTENTION",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TEMPORARY",
    "EXIT_USAGE",
    "REVOCATION_REASONS",
    "UsageError",
    "build_parser",
    "main",
]

EXIT_OK = 0
"""Everything asked for was done."""
EXIT_FAILURE = 1
"""The operation failed: the CA refused, validation failed, a file could not be written."""
EXIT_USAGE = 2
"""Bad command line or input (an option, a name, a file); nothing was done."""
EXIT_ATTENTION = 3
"""``status --check``: a certificate is missing, damaged, expired, revoked, in its
emergency window, or its last renewal failed."""
EXIT_TEMPORARY = 4
"""The CA could not be reached, timed out, rate-limited us or failed internally."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C)."""

ACCOUNT_KEY_FILE = "client.key"
KEY_TYPES = ("ec256", "ec384", "rsa2048", "rsa3072", "rsa4096")

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

_ATTENTION_STATES = frozenset(
    {"damaged", "missing", "expired", "revoked", "emergency", "failing"}
)


class UsageError(errors.ConfigurationError):
    """A bad command line: an option, a name or a file given by the user."""


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


class UI:
    """
    Where the command writes: results to ``out``, errors and progress to
    ``err``. Progress is drawn only when ``err`` is a terminal.
    """

    SPINNER = "|/-\\"

    def __init__(
        self,
        out: IO[str],
        err: IO[str],
        *,
        quiet: bool = False,
        progress: bool | None = None,
        clock: Any = None,
    ) -> None:
        self.out = out
        self.err = err
        self.quiet = quiet
        if progress is None:
            progress = _is_terminal(err) and not quiet
        self.progress_enabled = progress
        self._clock = clock
        self._active: dict[str, tuple[str, float]] = {}
        self._drawn = False
        self._tick = 0
        self._loop: LoopingCall | None = None

    # -- lines ---------------------------------------------------------------

    def result(self, text: str) -> None:
        """A result line on standard output (not with ``--quiet``)."""
        if not self.quiet:
            self._write(self.out, text)

    def error(self, text: str) -> None:
        """An error line on standard error (always)."""
        self._write(self.err, text)

    def hint(self, text: str) -> None:
        """Something only a person at a terminal needs (standard error)."""
        if self.progress_enabled:
            self._write(self.err, text)

    def _write(self, stream: IO[str], text: str) -> None:
        self._clear()
        stream.write(text + "\n")
        stream.flush()
        self._draw()

    # -- progress ------------------------------------------------------------

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return float(self._clock.seconds())

    def step(self, name: str, text: str) -> None:
        """Show that ``name`` is now doing ``text``."""
        if not self.progress_enabled:
            return
        previous = self._active.get(name)
        self._active[name] = (text, previous[1] if previous else self._now())
        if self._loop is None:
            self._loop = LoopingCall(self._redraw)
            self._loop.clock = self._clock
            self._loop.start(0.2, now=False)
        self._redraw()

    def done(self, name: str) -> None:
        """``name`` has finished (its result line follows)."""
        if self._active.pop(name, None) is not None and not self._active:
            self.stop()

    def stop(self) -> None:
        """Remove the progress line."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._active.clear()
        self._clear()

    def _redraw(self) -> None:
        self._tick += 1
        self._clear()
        self._draw()

    def _clear(self) -> None:
        if self._drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._drawn = False

    def _draw(self) -> None:
        if not self.progress_enabled or not self._active:
            return
        now = self._now()
        parts = [
            f"{name}: {text} ({now - started:.0f}s)"
            for name, (text, started) in self._active.items()
        ]
        width = shutil.get_terminal_size((80, 24)).columns
        line = f"{self.SPINNER[self._tick % len(self.SPINNER)]} " + "; ".join(parts)
        if len(line) > width - 1:
            line = line[: max(width - 4, 10)] + "..."
        self.err.write(line)
        self.err.flush()
        self._drawn = True


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Times and certificates
# ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _short_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def _relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    if span < 90:
        text = f"{span:.0f}s"
    elif span < 5400:
        text = f"{span / 60:.0f}m"
    elif span < 2 * 86400:
        text = f"{span / 3600:.0f}h"
    else:
        text = f"{span / 86400:.0f}d"
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def _first_certificate(pem_objects: Sequence[Any]) -> x509.Certificate | None:
    for obj in pem_objects:
        if isinstance(obj, pem.Certificate):
            return x509.load_pem_x509_certificate(obj.as_bytes())
    return None


def _issuer(certificate: x509.Certificate) -> str:
    for oid in (x509.NameOID.COMMON_NAME, x509.NameOID.ORGANIZATION_NAME):
        values = certificate.issuer.get_attributes_for_oid(oid)
        if values:
            value = values[0].value
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return certificate.issuer.rfc4514_string()


def _key_type(certificate: x509.Certificate) -> str:
    from txacme.keys import key_type_of

    try:
        return key_type_of(certificate.public_key())
    except errors.UnsupportedKeyType:
        return "other"


def _serial(certificate: x509.Certificate) -> str:
    return f"{certificate.serial_number:x}"


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


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
        help="trust only these certificates for the CA's HTTPS (default: the system's)",
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
            help="a dns-01 option as in endpoint strings, e.g. dns_server=192.0.2.53 "
            "(repeatable)",
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
    return parser


@attrs.frozen
class CAOptions:
    """The certificate authority options, checked."""

    directory_url: str | None
    ca_file: str | None
    email: str | None
    eab: Any
    timeout: float

    def require(self) -> str:
        """The directory URL, or a usage error saying how to give one."""
        if self.directory_url is None:
            raise UsageError(
                "choose the CA: --le (Let's Encrypt), --lets (Let's Encrypt staging) "
                "or --directory URL"
            )
        return self.directory_url


def _ca_options(args: argparse.Namespace) -> CAOptions:
    from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY

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
    if ca_file is not None and not os.path.isfile(ca_file):
        raise UsageError(f"--ca-file {ca_file!r}: no such file")
    email = args.email
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise UsageError(f"--email {email!r}: not an e-mail address")
    if not args.timeout > 0 or args.timeout == float("inf"):
        raise UsageError(f"--timeout {args.timeout!r}: must be a positive number of seconds")
    eab = None
    if bool(args.eab_kid) != bool(args.eab_hmac_file):
        raise UsageError("external account binding needs both --eab-kid and --eab-hmac-file")
    if args.eab_kid:
        from txacme.protocol.client import EAB

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


def _names(values: Sequence[str]) -> list[str]:
    from txacme.names import normalize_server_name

    result: list[str] = []
    for value in values:
        try:
            name = normalize_server_name(value)
        except errors.InvalidServerName as e:
            raise UsageError(f"NAME {value!r}: {e.reason}")
        if name not in result:
            result.append(name)
    return result


def _endpoint_description(option: str, value: str) -> str:
    value = value.strip()
    if value.isdigit():
        return f"tcp:{value}"
    if not value:
        raise UsageError(f"{option}: needs an endpoint description, e.g. tcp:80")
    return value


# ---------------------------------------------------------------------------
# The context of one command
# ---------------------------------------------------------------------------


class Command:
    """What every command needs: the directory, its store and state, the UI."""

    def __init__(self, reactor: Any, args: argparse.Namespace, ui: UI) -> None:
        self.reactor = reactor
        self.args = args
        self.ui = ui
        cert_dir = args.cert_dir
        if not cert_dir:
            raise UsageError("give the certificate directory: --cert-dir DIR (or $TXACME_CERT_DIR)")
        if not os.path.isdir(cert_dir):
            raise UsageError(f"--cert-dir {cert_dir!r}: not an existing directory")
        self.cert_dir = cert_dir
        self.state = StateFile.for_directory(cert_dir)
        self.key_path = os.path.join(cert_dir, ACCOUNT_KEY_FILE)
        self.ca = _ca_options(args)
        self._clients: list[Any] = []
        self._stoppers: list[Callable[[], object]] = []
        # Last: nothing after this may fail, or the store would not be closed.
        self.store, self.where = _open_store(reactor, args, cert_dir)

    # -- the client ----------------------------------------------------------------

    def account_key(self, *, create: bool, key_type: str = "ec256") -> Any:
        """The account key as a JWK: ``client.key``, created when asked to."""
        from txacme.keys import generate_private_key, jwk_for, load_or_create_client_key

        if create or os.path.exists(self.key_path):
            return load_or_create_client_key(self.key_path, key_type)
        return jwk_for(generate_private_key())  # throw-away: nothing is signed with it

    async def client(self, key: Any) -> Any:
        """A client for the chosen CA (closed when the command ends)."""
        from txacme.protocol.client import Client

        url = self.ca.require()
        self.ui.step("CA", f"fetching {url}")
        try:
            client = await Client.from_url(
                self.reactor, url, key, ca_file=self.ca.ca_file, timeout=self.ca.timeout
            )
        except errors.ConfigurationError:
            raise
        except Exception as e:
            raise _Failed(
                f"cannot use the ACME directory {url}: {_describe(e)}", _exit_code(e)
            )
        finally:
            self.ui.done("CA")
        self._clients.append(client)
        return client

    async def close(self) -> None:
        """Stop the listeners, close the clients and the store."""
        from twisted.internet.defer import maybeDeferred

        for stop in reversed(self._stoppers):
            try:
                await maybeDeferred(stop)
            except Exception:
                log.failure("stopping a challenge listener")
        self._stoppers.clear()
        for client in self._clients:
            try:
                await client.close()
            except Exception:
                log.failure("closing the ACME client")
        self._clients.clear()
        close = getattr(self.store, "close", None)
        if close is not None:
            try:
                await maybeDeferred(close)
            except Exception:
                log.failure("closing the certificate store")

    # -- entries -------------------------------------------------------------------

    async def entries(
        self,
    ) -> dict[str, list[pem.AbstractPEMObject] | errors.ConfigurationError]:
        """
        Every entry of the store, by name. In a directory, damaged files give
        the error instead of being left out (``status`` shows them); other
        stores log and leave out damaged entries.
        """
        from txacme.names import normalize_server_name
        from txacme.stores.directory import DEFAULT_NAME, DirectoryStore, load_entry

        result: dict[str, list[pem.AbstractPEMObject] | errors.ConfigurationError] = {}
        if not isinstance(self.store, DirectoryStore):
            try:
                found = await self.store.as_dict()
            except errors.ConfigurationError as e:
                raise _Failed(f"cannot read the store {self.where}: {e}")
            except Exception as e:
                raise _Failed(f"cannot read the store {self.where}: {_describe(e)}")
            for name in sorted(found):
                result[name] = list(found[name])
            return result
        directory = self.store.path.path
        self.store.remove_stale_temporary_files()
        for filename in sorted(os.listdir(directory)):
            if not filename.endswith(".pem") or filename.startswith("."):
                continue
            stem = filename[: -len(".pem")]
            if stem == DEFAULT_NAME:
                continue
            try:
                if normalize_server_name(stem) != stem:
                    continue
            except errors.InvalidServerName:
                continue
            path = os.path.join(directory, filename)
            if not os.path.isfile(path):
                continue
            try:
                result[stem] = load_entry(path)
            except FileNotFoundError:
                continue
            except errors.ConfigurationError as e:
                result[stem] = e
        return result

    async def selected(
        self, names: Sequence[str]
    ) -> dict[str, list[pem.AbstractPEMObject] | errors.ConfigurationError]:
        """The entries of ``names`` (all when empty); an unknown name is a usage error."""
        wanted = _names(names)
        entries = await self.entries()
        if not wanted:
            return entries
        unknown = [n for n in wanted if n not in entries]
        if unknown:
            from txacme.stores.directory import DirectoryStore

            entry = f"{unknown[0]}.pem" if isinstance(self.store, DirectoryStore) else "for it"
            raise UsageError(f"NAME {unknown[0]!r}: no entry {entry} in {self.where}")
        return {n: entries[n] for n in wanted}

    # -- responders ----------------------------------------------------------------

    async def responders(self) -> list[Any]:
        """Start the challenge listeners the options ask for; their responders."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.error import CannotListenError

        args = self.args
        if not (args.http01 or args.tls_alpn or args.dns):
            raise UsageError(
                "say how to answer challenges: --http01 tcp:80, --tls-alpn tcp:443 "
                "or --dns PROVIDER"
            )
        if args.dns_option and not args.dns:
            raise UsageError("--dns-option needs --dns PROVIDER")
        if args.key_type not in KEY_TYPES:
            raise UsageError(f"--key-type {args.key_type!r}: use one of {', '.join(KEY_TYPES)}")
        if args.concurrency < 1:
            raise UsageError(f"--concurrency {args.concurrency}: must be at least 1")
        responders: list[Any] = []
        if args.dns:
            from txacme.challenges.dnsproviders import dns01_responder_from_options

            options = {"dns": args.dns}
            for item in args.dns_option:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise UsageError(f"--dns-option {item!r}: expected KEY=VALUE")
                options[key.strip()] = value
            try:
                responders.append(dns01_responder_from_options(options, clock=self.reactor))
            except errors.ConfigurationError as e:
                raise UsageError(f"--dns {args.dns}: {e}")
        listeners: list[tuple[str, str, Any, Any]] = []
        if args.http01:
            from twisted.web.server import Site

            from txacme.challenges.http01 import HTTP01Responder, http01_root

            http = HTTP01Responder()
            site = Site(http01_root(http))  # type: ignore[no-untyped-call]
            site.noisy = False
            listeners.append(("--http01", _endpoint_description("--http01", args.http01), site,
                              http))
        if args.tls_alpn:
            from twisted.internet.protocol import Factory, Protocol

            from txacme.challenges.tlsalpn01 import TLSALPN01Responder
            from txacme.serving.tls import (
                CertificateIndex,
                SNIConnectionCreator,
                tls_server_factory,
            )

            alpn = TLSALPN01Responder()
            creator = SNIConnectionCreator(CertificateIndex(), challenges=alpn.registry)
            factory = tls_server_factory(creator, Factory.forProtocol(Protocol))
            factory.noisy = False
            listeners.append(
                ("--tls-alpn", _endpoint_description("--tls-alpn", args.tls_alpn), factory, alpn)
            )
        endpoints = []
        for option, description, factory, responder in listeners:
            try:
                endpoint = serverFromString(self.reactor, description)  # type: ignore[no-untyped-call]
            except (ValueError, TypeError, KeyError) as e:
                raise UsageError(f"{option} {description!r}: not an endpoint description ({e})")
            endpoints.append((option, description, endpoint, factory, responder))
        for option, description, endpoint, factory, responder in endpoints:
            try:
                port = await endpoint.listen(factory)
            except CannotListenError as e:
                raise _Failed(f"{option} {description}: cannot listen ({e.socketError})")
            self._stoppers.append(port.stopListening)
            responders.append(responder)
        return [_ProgressResponder(r, self.ui) for r in responders]


def _open_store(reactor: Any, args: argparse.Namespace, cert_dir: str) -> tuple[Any, str]:
    """The store the options name (default: the directory) and how to name it to the user."""
    from txacme.stores.directory import DirectoryStore
    from txacme.stores.url import redact_url, store_from_url

    url = getattr(args, "store", None)
    key_file = getattr(args, "store_key_file", None)
    if not url:
        if key_file:
            raise UsageError(
                f"--store-key-file {key_file!r} (or $TXACME_STORE_KEY_FILE) needs --store URL"
            )
        return DirectoryStore(cert_dir), cert_dir
    shown = redact_url(url)
    try:
        store = store_from_url(url, reactor=reactor, **({"key_file": key_file} if key_file else {}))
    except errors.ConfigurationError as e:
        reason = str(e)
        if shown in reason:
            raise UsageError(f"--store: {reason}")
        raise UsageError(f"--store {shown!r}: {reason}")
    if isinstance(store, DirectoryStore):
        return store, store.path.path
    return store, shown


class _Failed(errors.TxACMEError):
    """A failure whose message is complete as it is."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


@attrs.define
class _ProgressResponder:
    """Wraps a responder to show the validation step."""

    inner: Any
    ui: UI

    @property
    def challenge_type(self) -> str:
        """The wrapped responder's challenge type."""
        return str(self.inner.challenge_type)

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> Any:
        """Start the wrapped responder and show it."""
        self.ui.step(server_name, f"answering {self.challenge_type}")
        return self.inner.start_responding(server_name, challenge, response)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> Any:
        """Stop the wrapped responder."""
        self.ui.step(server_name, "finishing")
        return self.inner.stop_responding(server_name, challenge, response)


# ---------------------------------------------------------------------------
# Failures and exit codes
# ---------------------------------------------------------------------------


def _is_temporary(error: BaseException) -> bool:
    from twisted.internet import error as net_error
    from twisted.web import _newclient

    if isinstance(error, errors.IssuanceFailed):
        return False
    if isinstance(
        error,
        (errors.ACMETimeout, errors.RateLimited, errors.ServerInternal, errors.BadNonce),
    ):
        return True
    if isinstance(error, errors.ACMEProblem):
        return error.status is not None and error.status >= 500
    return isinstance(
        error,
        (
            net_error.ConnectError,
            net_error.DNSLookupError,
            net_error.TimeoutError,
            net_error.ConnectionLost,
            _newclient.ResponseNeverReceived,
            _newclient.RequestTransmissionFailed,
            _newclient.RequestNotSent,
        ),
    )


def _describe(error: BaseException) -> str:
    """A one-line description of ``error`` for the operator."""
    from twisted.web import _newclient

    problem: errors.ACMEProblem | None = None
    if isinstance(error, errors.ACMEProblem):
        problem = error
    elif isinstance(error, errors.IssuanceFailed) and error.problem is not None:
        return f"{error.problem.code}: {error.problem.detail or error}"
    if problem is not None:
        text = f"{problem.code}: {problem.detail or problem}"
        if problem.retry_after is not None:
            text += f" (retry after {problem.retry_after:.0f} s)"
        return text
    if isinstance(error, errors.TxACMEError):
        return str(error)
    if isinstance(error, _newclient.ResponseNeverReceived | _newclient.RequestTransmissionFailed):
        reasons = "; ".join(
            str(f.value) for f in getattr(error, "reasons", []) if f.value is not None
        )
        return f"no answer from the CA ({reasons or type(error).__name__})"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _exit_code(error: BaseException) -> int:
    if isinstance(error, errors.ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, _Failed):
        return error.code
    return EXIT_TEMPORARY if _is_temporary(error) else EXIT_FAILURE


def _combine(codes: Sequence[int]) -> int:
    failures = [c for c in codes if c != EXIT_OK]
    if not failures:
        return EXIT_OK
    if EXIT_FAILURE in failures or EXIT_USAGE in failures:
        return EXIT_FAILURE
    return max(failures)


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------


def _status_of(
    name: str,
    entry: list[pem.AbstractPEMObject] | errors.ConfigurationError,
    record: NameRecord,
    ari: Any,
    ari_error: str | None,
    now: datetime,
) -> dict[str, Any]:
    from txacme.issuing.policy import certificate_names, plan_renewal

    row: dict[str, Any] = {"name": name}
    if isinstance(entry, errors.ConfigurationError):
        row.update(state="damaged", attention=True, error=str(entry))
        certificate = None
    else:
        certificate = _first_certificate(entry)
    plan = None
    if not isinstance(entry, errors.ConfigurationError):
        plan = plan_renewal(name, certificate, now, ari)
    if certificate is not None:
        row.update(
            names=sorted(certificate_names(certificate)),
            issuer=_issuer(certificate),
            key_type=_key_type(certificate),
            serial=_serial(certificate),
            not_before=_iso(certificate.not_valid_before_utc),
            not_after=_iso(certificate.not_valid_after_utc),
        )
    if plan is not None:
        due_at, reason, source = plan.due_at, str(plan.reason), "ari" if ari else "policy"
        if (
            ari is None
            and certificate is not None
            and record.scheduled_at is not None
            and record.scheduled_reason == "ari"
            and certificate.not_valid_before_utc
            <= record.scheduled_at
            < certificate.not_valid_after_utc
            and plan.reason == "lifetime"
        ):
            due_at, reason, source = record.scheduled_at, "ari", "service"
        row.update(
            renewal_at=_iso(due_at),
            renewal_reason=reason,
            renewal_source=source,
            emergency_at=_iso(plan.emergency_at),
            due=due_at <= now,
        )
    if ari_error is not None:
        row["ari_error"] = ari_error
    row["last_attempt"] = _iso(record.last_attempt)
    row["last_success"] = _iso(record.last_success)
    row["last_error"] = record.last_error.to_json() if record.last_error else None
    revoked = (
        record.revoked is not None
        and certificate is not None
        and record.revoked.serial == _serial(certificate)
    )
    row["revoked"] = record.revoked.to_json() if revoked and record.revoked else None
    if "state" not in row:
        if certificate is None:
            state = "missing"
        elif now >= certificate.not_valid_after_utc:
            state = "expired"
        elif revoked:
            state = "revoked"
        elif plan is not None and plan.emergency_at is not None and now >= plan.emergency_at:
            state = "emergency"
        elif record.last_error is not None:
            state = "failing"
        elif row.get("due"):
            state = "due"
        else:
            state = "ok"
        row["state"] = state
        row["attention"] = state in _ATTENTION_STATES
    return row


async def _fetch_ari(
    command: Command, entries: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    infos: dict[str, Any] = {}
    problems: dict[str, str] = {}
    if command.ca.directory_url is None:
        return infos, problems
    client = await command.client(command.account_key(create=False))
    if not client.supports_ari:
        return infos, problems
    now = _utcnow()
    for name, entry in entries.items():
        if isinstance(entry, errors.ConfigurationError):
            continue
        certificate = _first_certificate(entry)
        if certificate is None or certificate.not_valid_after_utc <= now:
            continue
        command.ui.step(name, "asking for renewal information")
        try:
            infos[name] = await client.renewal_info(certificate)
        except Exception as e:
            problems[name] = _describe(e)
        finally:
            command.ui.done(name)
    return infos, problems


async def cmd_status(command: Command) -> int:
    """``txacme status``."""
    args = command.args
    entries = await command.selected(args.names)
    infos, ari_errors = await _fetch_ari(command, entries)
    records = command.state.read()
    now = _utcnow()
    rows = [
        _status_of(
            name, entry, records.get(name, NameRecord(name)), infos.get(name),
            ari_errors.get(name), now,
        )
        for name, entry in entries.items()
    ]
    attention = [row for row in rows if row["attention"]]
    if args.json:
        document = {
            "cert_dir": os.path.abspath(command.cert_dir),
            "store": command.where if command.args.store else None,
            "now": _iso(now),
            "certificates": rows,
        }
        command.ui.result(json.dumps(document, indent=2))
    elif not rows:
        command.ui.result(f"no certificate entries in {command.where}")
    else:
        command.ui.result(_table(rows, now))
    if args.check and attention:
        return EXIT_ATTENTION
    return EXIT_OK


def _table(rows: Sequence[dict[str, Any]], now: datetime) -> str:
    def parse(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))

    header = ["NAME", "STATE", "ISSUER", "KEY", "NOT AFTER", "RENEWAL", "WHY", "LAST ERROR"]
    lines = [header]
    for row in rows:
        not_after = parse(row.get("not_after"))
        renewal = parse(row.get("renewal_at"))
        error = row.get("last_error")
        if row["state"] == "damaged":
            last = row.get("error", "")
        elif error:
            last = f"{_short_time(parse(error['at']))} {error['problem'].rsplit(':', 1)[-1]}: "
            last += error["detail"]
        else:
            last = "-"
        if len(last) > 60:
            last = last[:57] + "..."
        why = row.get("renewal_reason", "-")
        if row.get("renewal_source") == "service":
            why += " (server)"
        lines.append(
            [
                row["name"],
                row["state"],
                row.get("issuer", "-"),
                row.get("key_type", "-"),
                f"{_short_time(not_after)} ({_relative(not_after, now)})" if not_after else "-",
                (
                    "now"
                    if row.get("due")
                    else f"{_short_time(renewal)} ({_relative(renewal, now)})"
                    if renewal
                    else "-"
                ),
                why,
                last,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# ---------------------------------------------------------------------------
# issue and renew
# ---------------------------------------------------------------------------


async def _start_client(command: Command, *, create_account: bool = True) -> Any:
    key = command.account_key(create=True)
    client = await command.client(key)
    command.ui.step("account", "checking the account")
    try:
        if create_account:
            await client.start(email=command.ca.email, eab=command.ca.eab)
        else:
            await client.lookup_account()
    finally:
        command.ui.done("account")
    return client


async def _obtain(
    command: Command, client: Any, responders: list[Any], name: str, replaces: str | None
) -> int:
    from txacme.issuing.order import obtain_certificate

    args = command.args
    now = _utcnow()
    previous = command.state.get(name)
    _record(command, lambda: command.state.record_attempt(name, now))
    command.ui.step(name, "ordering")
    try:
        issued = await obtain_certificate(
            client,
            [name],
            responders,
            key_type=args.key_type,
            profile=args.profile,
            replaces=replaces,
        )
        command.ui.step(name, "storing")
        await command.store.store(name, issued.pem_objects)
    except Exception as e:
        command.ui.done(name)
        attempt = previous.last_error.attempt + 1 if previous.last_error else 1
        record = error_record(e, _utcnow(), attempt)
        _record(command, lambda: command.state.record_failure(name, record))
        command.ui.error(f"{name}: failed: {_describe(e)}")
        if not isinstance(e, errors.TxACMEError):
            log.failure(
                "obtaining a certificate for {name}", Failure(), name=name  # type: ignore[no-untyped-call]
            )
        return _exit_code(e)
    command.ui.done(name)
    _record(command, lambda: command.state.record_success(name, _utcnow(), issued.not_after))
    command.ui.result(
        f"{name}: obtained, valid until {_short_time(issued.not_after)} "
        f"(serial {_serial(issued.certificate)})"
    )
    return EXIT_OK


def _record(command: Command, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as e:
        command.ui.error(f"warning: cannot write {command.state.path}: {e.strerror}")


async def _obtain_all(
    command: Command, client: Any, responders: list[Any], todo: dict[str, str | None]
) -> int:
    semaphore = DeferredSemaphore(command.args.concurrency)

    def one(name: str) -> Deferred[int]:
        return Deferred.fromCoroutine(_obtain(command, client, responders, name, todo[name]))

    from twisted.internet.defer import gatherResults

    codes: list[int] = await gatherResults([semaphore.run(one, name) for name in todo])
    return _combine(codes)


async def cmd_issue(command: Command) -> int:
    """``txacme issue NAME...``."""
    names = _names(command.args.names)
    command.ca.require()
    responders = await command.responders()
    entries = await command.entries()
    now = _utcnow()
    todo: dict[str, str | None] = {}
    for name in names:
        entry = entries.get(name)
        if isinstance(entry, errors.ConfigurationError):
            raise UsageError(f"NAME {name!r}: {entry}")
        certificate = _first_certificate(entry) if entry else None
        if certificate is not None and certificate.not_valid_after_utc > now:
            command.ui.result(
                f"{name}: already has a certificate valid until "
                f"{_short_time(certificate.not_valid_after_utc)}; "
                f"use `txacme renew --force {name}` to replace it"
            )
            continue
        mark_wanted = getattr(command.store, "mark_wanted", None)
        if mark_wanted is not None:
            await mark_wanted(name)
        todo[name] = None
    if not todo:
        return EXIT_OK
    client = await _start_client(command)
    return await _obtain_all(command, client, responders, todo)


async def cmd_renew(command: Command) -> int:
    """``txacme renew [NAME...] [--force]``."""
    from txacme.issuing.policy import ari_certificate_id, plan_renewal

    args = command.args
    entries = await command.selected(args.names)
    command.ca.require()
    if not entries:
        command.ui.hint(f"no certificate entries in {command.where}")
        return EXIT_OK
    for name, entry in entries.items():
        if isinstance(entry, errors.ConfigurationError):
            command.ui.error(f"{name}: skipped: {entry}")
    usable = {n: e for n, e in entries.items() if not isinstance(e, errors.ConfigurationError)}
    responders = await command.responders()
    client = await _start_client(command)
    records = command.state.read()
    now = _utcnow()
    todo: dict[str, str | None] = {}
    for name, entry in usable.items():
        certificate = _first_certificate(entry)
        ari = None
        live = certificate is not None and certificate.not_valid_after_utc > now
        if live and certificate is not None and client.supports_ari:
            command.ui.step(name, "asking for renewal information")
            try:
                ari = await client.renewal_info(certificate)
            except Exception as e:
                command.ui.hint(f"{name}: no renewal information ({_describe(e)})")
            finally:
                command.ui.done(name)
        plan = plan_renewal(name, certificate, now, ari)
        record = records.get(name)
        revoked = (
            certificate is not None
            and record is not None
            and record.revoked is not None
            and record.revoked.serial == _serial(certificate)
        )
        if args.force or revoked or plan.due_at <= now:
            replaces = plan.replaces
            if replaces is None and certificate is not None and not revoked:
                replaces = ari_certificate_id(certificate) if client.supports_ari else None
            todo[name] = replaces
        else:
            command.ui.hint(
                f"{name}: not due until {_short_time(plan.due_at)} ({plan.reason})"
            )
    codes = [EXIT_FAILURE for e in entries.values() if isinstance(e, errors.ConfigurationError)]
    if todo:
        codes.append(await _obtain_all(command, client, responders, todo))
    return _combine(codes)


# ---------------------------------------------------------------------------
# revoke
# ---------------------------------------------------------------------------


def _reason(value: str) -> tuple[int, str]:
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


async def cmd_revoke(command: Command) -> int:
    """``txacme revoke NAME``."""
    from cryptography.hazmat.primitives import serialization

    args = command.args
    [name] = _names([args.name])
    code, reason = _reason(args.reason)
    entries = await command.selected([name])
    entry = entries[name]
    if isinstance(entry, errors.ConfigurationError):
        raise UsageError(f"NAME {name!r}: {entry}")
    certificate = _first_certificate(entry)
    if certificate is None:
        raise UsageError(
            f"NAME {name!r}: its entry in {command.where} holds no certificate to revoke"
        )
    command.ca.require()
    key: Any = None
    if args.certificate_key:
        for obj in entry:
            if isinstance(obj, pem.PrivateKey):
                key = serialization.load_pem_private_key(obj.as_bytes(), password=None)
        client = await command.client(command.account_key(create=False))
    else:
        if not os.path.exists(command.key_path):
            raise UsageError(
                f"no account key {command.key_path}: revoke with --certificate-key instead"
            )
        client = await _start_client(command, create_account=False)
    command.ui.step(name, "revoking")
    try:
        await client.revoke(certificate, code, key=key)
    except errors.AlreadyRevoked:
        command.ui.result(f"{name}: already revoked (serial {_serial(certificate)})")
    else:
        command.ui.result(f"{name}: revoked (serial {_serial(certificate)}, {reason})")
    finally:
        command.ui.done(name)
    revocation = RevocationRecord(serial=_serial(certificate), at=_utcnow(), reason=reason)
    _record(command, lambda: command.state.record_revocation(name, revocation))
    command.ui.hint(f"run `txacme renew {name}` to replace it")
    return EXIT_OK


# ---------------------------------------------------------------------------
# account
# ---------------------------------------------------------------------------


def _thumbprint(key: Any) -> str:
    import base64

    from cryptography.hazmat.primitives import hashes

    digest = key.thumbprint(hash_function=hashes.SHA256)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _account_key_type(key: Any) -> str:
    from txacme.keys import key_type_of

    try:
        return key_type_of(getattr(key.key, "_wrapped", key.key))
    except errors.UnsupportedKeyType:
        return "other"


def _account_summary(command: Command, client: Any) -> dict[str, Any]:
    account = client.account
    body = account.body
    status = getattr(body, "status", None)
    return {
        "url": account.uri,
        "status": str(status) if status is not None else None,
        "contact": list(body.contact or ()),
        "key_file": command.key_path,
        "key_type": _account_key_type(client.key),
        "thumbprint": _thumbprint(client.key),
        "directory": client.directory_url,
        "terms_of_service": client.terms_of_service,
    }


def _print_account(command: Command, summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        command.ui.result(f"{key.replace('_', ' ').ljust(width)}  {value if value else '-'}")


async def cmd_account(command: Command) -> int:
    """``txacme account show|create|rollover|deactivate``."""
    action = command.args.action
    command.ca.require()
    if action == "create":
        return await _account_create(command)
    if not os.path.exists(command.key_path):
        raise _Failed(
            f"no account key {command.key_path}: create the account with `txacme account create`"
        )
    client = await command.client(command.account_key(create=False))
    command.ui.step("account", "looking the account up")
    try:
        await client.lookup_account()
    except errors.AccountDoesNotExist:
        raise _Failed(
            f"the CA knows no account for {command.key_path}: "
            "create it with `txacme account create`"
        )
    finally:
        command.ui.done("account")
    if action == "show":
        summary = _account_summary(command, client)
        if command.args.json:
            command.ui.result(json.dumps(summary, indent=2))
        else:
            _print_account(command, summary)
        return EXIT_OK
    if action == "rollover":
        return await _account_rollover(command, client)
    return await _account_deactivate(command, client)


async def _account_create(command: Command) -> int:
    key_type = command.args.account_key_type or "ec256"
    existed = os.path.exists(command.key_path)
    key = command.account_key(create=True, key_type=key_type)
    if not existed:
        command.ui.result(f"created the account key {command.key_path} ({key_type})")
    client = await command.client(key)
    command.ui.step("account", "creating the account")
    try:
        try:
            await client.lookup_account()
            created = False
        except errors.AccountDoesNotExist:
            await client.new_account(command.ca.email, eab=command.ca.eab)
            created = True
        if not created and command.ca.email:
            contacts = set(client.account.body.contact or ())
            if f"mailto:{command.ca.email}" not in contacts:
                await client.update_account(command.ca.email)
    finally:
        command.ui.done("account")
    verb = "created" if created else "already exists"
    command.ui.result(f"account {client.account.uri} {verb}")
    if created and client.terms_of_service:
        command.ui.hint(f"(you agreed to the CA's terms of service: {client.terms_of_service})")
    return EXIT_OK


async def _account_rollover(command: Command, client: Any) -> int:
    from txacme.keys import generate_private_key, jwk_for, private_key_pem
    from txacme.stores.directory import write_entry

    new_path = command.key_path + ".new"
    if os.path.exists(new_path):
        raise _Failed(
            f"{new_path} exists: an earlier rollover was interrupted. If `txacme account "
            f"show` fails with the current key, move {new_path} to {command.key_path}; "
            f"otherwise remove it"
        )
    key_type = command.args.account_key_type or _account_key_type(client.key)
    if key_type not in KEY_TYPES:
        key_type = "ec256"
    new_key = generate_private_key(key_type)
    # Keep the new key on disk before the CA switches to it.
    write_entry(new_path, private_key_pem(new_key))
    command.ui.step("account", "rolling the key over")
    try:
        await client.change_key(jwk_for(new_key))
    except BaseException:
        os.unlink(new_path)
        raise
    finally:
        command.ui.done("account")
    os.replace(new_path, command.key_path)
    command.ui.result(
        f"account {client.account.uri}: new {key_type} key in {command.key_path} "
        f"(thumbprint {_thumbprint(client.key)})"
    )
    return EXIT_OK


async def _account_deactivate(command: Command, client: Any) -> int:
    if not command.args.yes:
        raise UsageError(
            "account deactivate cannot be undone: add --yes to confirm "
            f"(account {client.account.uri})"
        )
    command.ui.step("account", "deactivating")
    try:
        await client.deactivate_account()
    finally:
        command.ui.done("account")
    retired = command.key_path + ".deactivated"
    os.replace(command.key_path, retired)
    command.ui.result(
        f"account {client.account.uri} deactivated; its key was moved to {retired}"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


_COMMANDS: dict[str, Callable[[Command], Any]] = {
    "status": cmd_status,
    "issue": cmd_issue,
    "renew": cmd_renew,
    "revoke": cmd_revoke,
    "account": cmd_account,
}


def _start_logging(verbosity: int, stream: IO[str]) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    if verbosity <= 0:
        observers: list[Any] = [lambda event: None]
    else:
        level = LogLevel.info if verbosity == 1 else LogLevel.debug
        observers = [
            FilteringLogObserver(
                textFileLogObserver(stream),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)


async def run(reactor: Any, args: argparse.Namespace, ui: UI) -> int:
    """Run the parsed command; its exit status."""
    command = Command(reactor, args, ui)
    try:
        code: int = await _COMMANDS[args.command](command)
        return code
    finally:
        ui.stop()
        await command.close()


def _fail(ui: UI, error: BaseException) -> int:
    code = _exit_code(error)
    if isinstance(error, errors.ConfigurationError):
        ui.error(f"txacme: error: {error}")
    elif isinstance(error, _Failed):
        ui.error(f"txacme: {error}")
    else:
        ui.error(f"txacme: failed: {_describe(error)}")
    if code == EXIT_TEMPORARY:
        ui.error("txacme: this looks temporary: try again later")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``txacme`` command with ``argv`` (default: ``sys.argv[1:]``).

    :return: the exit status (see the ``EXIT_*`` constants).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    ui = UI(sys.stdout, sys.stderr, quiet=args.quiet)
    _start_logging(args.verbose, sys.stderr)
    from twisted.internet import reactor

    outcome: list[object] = []

    def finish(result: object) -> None:
        outcome.append(result)
        if reactor.running:
            reactor.stop()

    def start() -> None:
        Deferred.fromCoroutine(run(reactor, args, ui)).addBoth(finish)

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        ui.stop()
        ui.error("txacme: interrupted")
        return EXIT_INTERRUPTED
    result = outcome[0]
    if isinstance(result, Failure):
        error = result.value
        assert error is not None
        code = _fail(ui, error)
        if not isinstance(error, errors.TxACMEError) and not _is_temporary(error):
            if args.verbose:
                result.printTraceback(file=sys.stderr)  # type: ignore[no-untyped-call]
            else:
                ui.error("txacme: (run with -v for the traceback)")
        return code
    assert isinstance(result, int)
    return result
