"""
The operator's command line: ``txacme`` (or ``python -m txacme``).

It works on a certificate directory, the one an ``le:`` / ``lets:`` /
``acme:`` endpoint uses::

    txacme status   -C /srv/www/certs [NAME...] [--json] [--html FILE] [--check]
    txacme issue    -C /srv/www/certs --le --http01 tcp:80 NAME...
    txacme renew    -C /srv/www/certs --le --http01 tcp:80 [NAME...] [--force]
    txacme revoke   -C /srv/www/certs --le NAME [--reason keyCompromise]
    txacme account  show|create|rollover|deactivate -C /srv/www/certs --le
    txacme persist-record -C /srv/www/certs --le NAME [--wildcard] [--until DATE]

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

The command is a package: :mod:`txacme.cli.options` (the parser and the CA
options), :mod:`txacme.cli.ui` (output and progress), :mod:`txacme.cli.failures`
(exit statuses), :mod:`txacme.cli.context` (the directory, store, client and
listeners of one command), :mod:`txacme.cli.status` (``status``) and this module
(``issue``, ``renew``, ``revoke``, ``account`` and :func:`main`).

May import anything in the library (the command line is the top layer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import IO

import pem
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWK
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from txacme import errors
from txacme.certificates import first_certificate
from txacme.cli.context import Command
from txacme.cli.failures import (
    EXIT_ATTENTION,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TEMPORARY,
    EXIT_USAGE,
    CommandFailed,
    UsageError,
    combine,
    describe,
    exit_code,
    is_temporary,
    report_failure,
)
from txacme.cli.options import (
    REVOCATION_REASONS,
    build_parser,
    revocation_reason,
    server_names,
)
from txacme.cli.persist import cmd_persist_record
from txacme.cli.status import certificate_serial, cmd_status
from txacme.cli.ui import UI, short_time
from txacme.formats import b64url
from txacme.interfaces import IResponder, WantedStore
from txacme.issuing.hooks import DeployHook, parse_hook_command
from txacme.issuing.order import obtain_certificate
from txacme.issuing.policy import plan_renewal
from txacme.issuing.provenance import IssuerRecords
from txacme.keys import (
    KEY_TYPES,
    PrivateKey,
    generate_private_key,
    jwk_for,
    key_type_of,
    private_key_pem,
    unwrap_jwk,
)
from txacme.logs import Logger, set_log_level
from txacme.protocol.ari import ari_certificate_id
from txacme.protocol.client import Client, RenewalInfo
from txacme.reporting.state import RevocationRecord, error_record
from txacme.stores.directory import DirectoryStore, write_entry

log = Logger()

__all__ = [
    "EXIT_ATTENTION",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TEMPORARY",
    "EXIT_USAGE",
    "REVOCATION_REASONS",
    "UI",
    "UsageError",
    "build_parser",
    "cmd_account",
    "cmd_issue",
    "cmd_renew",
    "cmd_revoke",
    "cmd_status",
    "combine",
    "exit_code",
    "main",
    "revocation_reason",
    "run",
]


# ---------------------------------------------------------------------------
# issue and renew
# ---------------------------------------------------------------------------


async def _start_client(command: Command, *, create_account: bool = True) -> Client:
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
    command: Command, client: Client, responders: list[IResponder], name: str, replaces: str | None
) -> int:
    args = command.args
    now = command.now()
    previous = command.state.get(name)
    try:
        previous_cert = first_certificate(await command.entry_store.get(name)) is not None
    except (KeyError, ValueError, errors.TxACMEError):
        previous_cert = False
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
            preferred_chain=args.preferred_chain,
        )
        command.ui.step(name, "storing")
        await command.entry_store.store(name, issued.pem_objects)
        _issuer_records(command).stored(name, list(issued.pem_objects))
    except Exception as e:
        command.ui.done(name)
        attempt = previous.last_error.attempt + 1 if previous.last_error else 1
        record = error_record(e, command.now(), attempt)
        _record(command, lambda: command.state.record_failure(name, record))
        command.ui.error(f"{name}: failed: {describe(e)}")
        if not isinstance(e, errors.TxACMEError):
            failure = Failure()  # type: ignore[no-untyped-call]
            log.failure("obtaining a certificate for {name}", failure, name=name)
        return exit_code(e)
    command.ui.done(name)
    _record(command, lambda: command.state.record_success(name, command.now(), issued.not_after))
    command.ui.result(
        f"{name}: obtained, valid until {short_time(issued.not_after)} "
        f"(serial {certificate_serial(issued.certificate)})"
    )
    return await _run_deploy_hook(command, name, "renewed" if previous_cert else "obtained")


def _issuer_records(command: Command) -> IssuerRecords:
    return IssuerRecords.in_directory(command.cert_dir, command.ca.require())


def deploy_hook(command: Command) -> DeployHook | None:
    """The ``--deploy-hook`` of ``issue``/``renew``, checked, or ``None``."""
    text = getattr(command.args, "deploy_hook", None)
    if not text:
        return None
    timeout = command.args.deploy_hook_timeout
    if not timeout > 0 or timeout == float("inf"):
        raise UsageError(f"--deploy-hook-timeout {timeout!r}: must be a positive number of seconds")
    try:
        argv = parse_hook_command(text, "--deploy-hook")
    except errors.ConfigurationError as e:
        raise UsageError(str(e))
    store = command.store
    pem_path = (
        (lambda name: os.path.join(store.path.path, name + ".pem"))
        if isinstance(store, DirectoryStore)
        else None
    )
    return DeployHook(command.reactor, argv, timeout=timeout, pem_path=pem_path)


async def _run_deploy_hook(command: Command, name: str, event: str) -> int:
    """Run the deploy hook (if any) and wait for it: the command's exit waits, no server does."""
    hook = deploy_hook(command)
    if hook is None:
        return EXIT_OK
    command.ui.step(name, "running the deploy hook")
    try:
        result = await hook.run(name, [name], event)
    finally:
        command.ui.done(name)
    if result.succeeded:
        return EXIT_OK
    how = (
        f"killed after {hook.timeout:g} s"
        if result.timed_out
        else f"exit status {result.exit_code}"
        if result.exit_code is not None
        else f"signal {result.signal}"
        if result.signal is not None
        else "could not start"
    )
    command.ui.error(f"{name}: the deploy hook failed ({how}); the certificate is stored")
    return EXIT_FAILURE


def _record(command: Command, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as e:
        command.ui.error(f"warning: cannot write {command.state.path}: {e.strerror}")


async def _obtain_all(
    command: Command, client: Client, responders: list[IResponder], todo: dict[str, str | None]
) -> int:
    semaphore = DeferredSemaphore(command.args.concurrency)

    def one(name: str) -> Deferred[int]:
        return Deferred.fromCoroutine(_obtain(command, client, responders, name, todo[name]))

    codes: list[int] = await gatherResults([semaphore.run(one, name) for name in todo])
    return combine(codes)


async def cmd_issue(command: Command) -> int:
    """``txacme issue NAME...``."""
    names = server_names(command.args.names)
    command.ca.require()
    deploy_hook(command)  # a bad hook is a usage error before anything is ordered
    responders = await command.responders()
    entries = await command.entries()
    now = command.now()
    todo: dict[str, str | None] = {}
    for name in names:
        entry = entries.get(name)
        if isinstance(entry, errors.ConfigurationError):
            raise UsageError(f"NAME {name!r}: {entry}")
        certificate = first_certificate(entry) if entry else None
        if certificate is not None and certificate.not_valid_after_utc > now:
            command.ui.result(
                f"{name}: already has a certificate valid until "
                f"{short_time(certificate.not_valid_after_utc)}; "
                f"use `txacme renew --force {name}` to replace it"
            )
            continue
        if isinstance(command.store, WantedStore):
            await command.store.mark_wanted(name)
        todo[name] = None
    if not todo:
        return EXIT_OK
    client = await _start_client(command)
    return await _obtain_all(command, client, responders, todo)


async def _renewal_info(
    command: Command,
    client: Client,
    name: str,
    certificate: x509.Certificate | None,
    now: datetime,
) -> RenewalInfo | None:
    """The CA's renewal information for a certificate live at ``now``, when it offers ARI."""
    live = certificate is not None and certificate.not_valid_after_utc > now
    if not (live and certificate is not None and client.supports_ari):
        return None
    command.ui.step(name, "asking for renewal information")
    try:
        return await client.renewal_info(certificate)
    except Exception as e:
        command.ui.hint(f"{name}: no renewal information ({describe(e)})")
        return None
    finally:
        command.ui.done(name)


async def _due(
    command: Command, client: Client, entries: dict[str, list[pem.AbstractPEMObject]]
) -> dict[str, str | None]:
    """The names to renew now (due, revoked, or all with ``--force``) and what each replaces."""
    records = command.state.read()
    issuers = _issuer_records(command)
    now = command.now()
    todo: dict[str, str | None] = {}
    for name, entry in entries.items():
        certificate = first_certificate(entry)
        other_ca = issuers.stale(name, certificate) if certificate is not None else None
        if other_ca is not None and not command.args.force:
            command.ui.result(f"{name}: renewing now: the certificate was {other_ca}")
            todo[name] = None
            continue
        ari = await _renewal_info(command, client, name, certificate, now)
        plan = plan_renewal(name, certificate, now, ari)
        record = records.get(name)
        revoked = (
            certificate is not None
            and record is not None
            and record.revoked is not None
            and record.revoked.serial == certificate_serial(certificate)
        )
        if command.args.force or revoked or plan.due_at <= now:
            replaces = plan.replaces
            if replaces is None and certificate is not None and not revoked:
                replaces = ari_certificate_id(certificate) if client.supports_ari else None
            todo[name] = replaces
        else:
            command.ui.hint(f"{name}: not due until {short_time(plan.due_at)} ({plan.reason})")
    return todo


async def cmd_renew(command: Command) -> int:
    """``txacme renew [NAME...] [--force]``."""
    entries = await command.selected(command.args.names)
    command.ca.require()
    deploy_hook(command)
    if not entries:
        command.ui.hint(f"no certificate entries in {command.where}")
        return EXIT_OK
    usable: dict[str, list[pem.AbstractPEMObject]] = {}
    for name, entry in entries.items():
        if isinstance(entry, errors.ConfigurationError):
            command.ui.error(f"{name}: skipped: {entry}")
        else:
            usable[name] = entry
    responders = await command.responders()
    client = await _start_client(command)
    todo = await _due(command, client, usable)
    codes = [EXIT_FAILURE for e in entries.values() if isinstance(e, errors.ConfigurationError)]
    if todo:
        codes.append(await _obtain_all(command, client, responders, todo))
    return combine(codes)


# ---------------------------------------------------------------------------
# revoke
# ---------------------------------------------------------------------------


def _certificate_key(obj: pem.AbstractPEMObject) -> PrivateKey:
    """The certificate's own private key, to sign its revocation."""
    key = serialization.load_pem_private_key(obj.as_bytes(), password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise errors.UnsupportedKeyType(
            f"unsupported key {type(key).__name__}: need an EC or RSA private key"
        )
    return key


async def cmd_revoke(command: Command) -> int:
    """``txacme revoke NAME``."""
    args = command.args
    [name] = server_names([args.name])
    code, reason = revocation_reason(args.reason)
    entries = await command.selected([name])
    entry = entries[name]
    if isinstance(entry, errors.ConfigurationError):
        raise UsageError(f"NAME {name!r}: {entry}")
    certificate = first_certificate(entry)
    if certificate is None:
        raise UsageError(
            f"NAME {name!r}: its entry in {command.where} holds no certificate to revoke"
        )
    command.ca.require()
    key: PrivateKey | None = None
    if args.certificate_key:
        for obj in entry:
            if isinstance(obj, pem.PrivateKey):
                key = _certificate_key(obj)
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
        command.ui.result(f"{name}: already revoked (serial {certificate_serial(certificate)})")
    else:
        command.ui.result(f"{name}: revoked (serial {certificate_serial(certificate)}, {reason})")
    finally:
        command.ui.done(name)
    revocation = RevocationRecord(
        serial=certificate_serial(certificate), at=command.now(), reason=reason
    )
    _record(command, lambda: command.state.record_revocation(name, revocation))
    command.ui.hint(f"run `txacme renew {name}` to replace it")
    return EXIT_OK


# ---------------------------------------------------------------------------
# account
# ---------------------------------------------------------------------------


def _account(client: Client) -> messages.RegistrationResource:
    """The client's account, which looking it up or creating it has set."""
    account = client.account
    assert account is not None
    return account


def _thumbprint(key: JWK) -> str:
    return b64url(key.thumbprint(hash_function=hashes.SHA256))


def _account_key_type(key: JWK) -> str:
    try:
        return key_type_of(unwrap_jwk(key))
    except errors.UnsupportedKeyType:
        return "other"


def _account_summary(command: Command, client: Client) -> dict[str, object]:
    account = _account(client)
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


def _print_account(command: Command, summary: dict[str, object]) -> None:
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
    client = await command.existing_account()
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
        change = "unchanged"
        if not created and command.ca.email:
            before = list(_account(client).body.contact or ())
            if f"mailto:{command.ca.email}" not in before:
                await client.update_account(command.ca.email)
                after = list(_account(client).body.contact or ())
                shown = ", ".join(c.removeprefix("mailto:") for c in before) or "none"
                now = ", ".join(c.removeprefix("mailto:") for c in after) or command.ca.email
                change = f"contact updated from {shown} to {now}"
    finally:
        command.ui.done("account")
    if created:
        command.ui.result(f"account {_account(client).uri} created")
    else:
        command.ui.result(f"account {_account(client).uri} exists; {change}")
    if created and client.terms_of_service:
        command.ui.hint(f"(you agreed to the CA's terms of service: {client.terms_of_service})")
    return EXIT_OK


async def _account_rollover(command: Command, client: Client) -> int:
    new_path = command.key_path + ".new"
    if os.path.exists(new_path):
        raise CommandFailed(
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
        f"account {_account(client).uri}: new {key_type} key in {command.key_path} "
        f"(thumbprint {_thumbprint(client.key)})"
    )
    return EXIT_OK


async def _account_deactivate(command: Command, client: Client) -> int:
    if not command.args.yes:
        raise UsageError(
            "account deactivate cannot be undone: add --yes to confirm "
            f"(account {_account(client).uri})"
        )
    command.ui.step("account", "deactivating")
    try:
        await client.deactivate_account()
    finally:
        command.ui.done("account")
    retired = command.key_path + ".deactivated"
    os.replace(command.key_path, retired)
    command.ui.result(f"account {_account(client).uri} deactivated; its key was moved to {retired}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


_COMMANDS: dict[str, Callable[[Command], Awaitable[int]]] = {
    "status": cmd_status,
    "issue": cmd_issue,
    "renew": cmd_renew,
    "revoke": cmd_revoke,
    "account": cmd_account,
    "persist-record": cmd_persist_record,
}


@implementer(ILogObserver)
class _Discard:
    """Drops every log event (without ``-v``)."""

    def __call__(self, event: LogEvent) -> None:
        pass


def _start_logging(verbosity: int, stream: IO[str]) -> None:
    observers: list[ILogObserver]
    if verbosity <= 0:
        observers = [_Discard()]
    else:
        level = LogLevel.info if verbosity == 1 else LogLevel.debug
        set_log_level(level)
        observers = [
            FilteringLogObserver(
                textFileLogObserver(stream),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)


async def run(reactor: IReactorTime, args: argparse.Namespace, ui: UI) -> int:
    """
    Run the parsed command on ``reactor`` (everything the command opens uses it);
    its exit status.
    """
    command = Command(reactor, args, ui)
    try:
        return await _COMMANDS[args.command](command)
    finally:
        ui.stop()
        await command.close()


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
    from twisted.internet import reactor  # the top of the program: the global reactor

    ui = UI(sys.stdout, sys.stderr, quiet=args.quiet, clock=reactor)
    _start_logging(args.verbose, sys.stderr)
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
        code = report_failure(ui, error)
        if not isinstance(error, errors.TxACMEError) and not is_temporary(error):
            if args.verbose:
                result.printTraceback(file=sys.stderr)  # type: ignore[no-untyped-call]
            else:
                ui.error("txacme: (run with -v for the traceback)")
        return code
    assert isinstance(result, int)
    return result
