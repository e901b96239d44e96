"""
``txacme persist-record NAME [--wildcard] [--until DATE]``: print the
``dns-persist-01`` TXT record (draft-ietf-acme-dns-persist) that lets the
configured CA validate ``NAME`` for the directory's account, in zone-file form,
for the domain owner to publish once.

The issuer domain name is ``--issuer`` when given, else the first of the
directory's ``caaIdentities`` (the draft lets CAs draw their
``issuer-domain-names`` from it). The account must exist (``txacme account
create``). A ``*.`` name implies ``--wildcard``.
"""

from __future__ import annotations

import argparse

from txacme import errors
from txacme.challenges.dnspersist01 import directory_issuers, record_value, validation_name
from txacme.cli.context import Command
from txacme.cli.failures import EXIT_OK, CommandFailed, UsageError
from txacme.config.dns import parse_persist_until
from txacme.names import normalize_server_name


async def cmd_persist_record(command: Command) -> int:
    """``txacme persist-record``."""
    args: argparse.Namespace = command.args
    text = args.name.strip()
    wildcard = bool(args.wildcard)
    if text.startswith("*."):
        wildcard, text = True, text[2:]
    try:
        name = normalize_server_name(text)
    except errors.InvalidServerName as e:
        raise UsageError(f"{args.name!r}: {e.reason}")
    try:
        until = parse_persist_until(args.until, "--until") if args.until else None
    except errors.ConfigurationError as e:
        raise UsageError(str(e))
    command.ca.require()
    client = await command.existing_account()
    assert client.account is not None
    issuer = (args.issuer or "").strip().lower().rstrip(".")
    if not issuer:
        identities = directory_issuers(client.directory)
        if not identities:
            raise CommandFailed("the CA lists no caaIdentities: give its issuer with --issuer")
        issuer = identities[0]
    try:
        value = record_value(issuer, client.account.uri, wildcard=wildcard, persist_until=until)
    except errors.ConfigurationError as e:
        raise UsageError(str(e))
    command.ui.result(f'{validation_name(name)}. IN TXT "{value}"')
    return EXIT_OK


__all__ = ["cmd_persist_record"]
