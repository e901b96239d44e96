"""
``txacme status``: one row per certificate (its names, issuer, key, expiry, the
planned renewal and why, the last error), as a table or JSON, optionally the
status page (``--html FILE``), and whether any needs attention. The rows, the
JSON document and the page are :mod:`txacme.reporting.statuspage`'s, shared
with the ``/status`` page of the metrics listener.

May import anything in the library (the command line is the top layer).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime

from txacme import errors
from txacme.certificates import first_certificate
from txacme.cli.context import Command, Entries
from txacme.cli.failures import (
    EXIT_ATTENTION,
    EXIT_FAILURE,
    EXIT_OK,
    CommandFailed,
    UsageError,
    describe,
    exit_code,
)
from txacme.cli.ui import relative_time, short_time
from txacme.formats import parse_time
from txacme.protocol.client import RenewalInfo
from txacme.reporting.state import NameRecord
from txacme.reporting.statuspage import (
    StatusRow,
    certificate_serial,
    render_status_page,
    status_document,
    status_of,
)

__all__ = ["StatusRow", "certificate_serial", "cmd_status", "status_of", "status_table"]


async def _fetch_ari(
    command: Command, entries: Entries
) -> tuple[dict[str, RenewalInfo], dict[str, str]]:
    infos: dict[str, RenewalInfo] = {}
    problems: dict[str, str] = {}
    if command.ca.directory_url is None:
        return infos, problems
    client = await command.client(command.account_key(create=False))
    if not client.supports_ari:
        return infos, problems
    now = command.now()
    for name, entry in entries.items():
        if isinstance(entry, errors.ConfigurationError):
            continue
        certificate = first_certificate(entry)
        if certificate is None or certificate.not_valid_after_utc <= now:
            continue
        command.ui.step(name, "asking for renewal information")
        try:
            infos[name] = await client.renewal_info(certificate)
        except Exception as e:
            problems[name] = describe(e)
        finally:
            command.ui.done(name)
    return infos, problems


async def cmd_status(command: Command) -> int:
    """``txacme status``."""
    args = command.args
    entries = await command.selected(args.names)
    ca_failure: BaseException | None = None
    try:
        infos, ari_errors = await _fetch_ari(command, entries)
    except Exception as e:  # the local table is printed all the same
        infos, ari_errors, ca_failure = {}, {}, e
    records = command.state.read()
    now = command.now()
    rows = [
        status_of(
            name,
            entry,
            records.get(name, NameRecord(name)),
            infos.get(name),
            ari_errors.get(name),
            now,
        )
        for name, entry in entries.items()
    ]
    attention = [row for row in rows if row["attention"]]
    document = status_document(
        rows,
        now,
        cert_dir=os.path.abspath(command.cert_dir),
        store=command.where if command.args.store else None,
    )
    html = getattr(args, "html", None)
    if html:
        _write_page(html, render_status_page(document))
    if html == "-" and not args.json:
        pass  # the page is the output
    elif args.json:
        command.ui.result(json.dumps(document, indent=2))
    elif not rows:
        command.ui.result(f"no certificate entries in {command.where}")
    else:
        command.ui.result(status_table(rows, now))
    if args.check and attention:
        code = EXIT_ATTENTION
    else:
        code = EXIT_OK
    if ca_failure is not None:
        # After the table: the CA's state is reported apart from the certificates'.
        untrusted, line = _ca_problem(command, ca_failure)
        command.ui.error(f"CA: {line}")
        if code == EXIT_OK:
            # Untrusted is a setting to fix (--ca-file), not a passing trouble.
            code = EXIT_FAILURE if untrusted else exit_code(ca_failure)
    return code


def _ca_problem(command: Command, error: BaseException) -> tuple[bool, str]:
    """One line: the directory and why it could not be asked (unreachable, untrusted...)."""
    text = str(error) if isinstance(error, CommandFailed) else describe(error)
    url = command.ca.directory_url or ""
    if url and url not in text:
        text = f"{url}: {text}"
    lowered = text.lower()
    if isinstance(error, errors.CAUntrusted) or isinstance(error.__cause__, errors.CAUntrusted):
        untrusted = True
    else:  # a failure already worded by the CLI
        untrusted = "certificate verify" in lowered or "untrusted" in lowered
    if untrusted:
        fix = "give the CA's certificate with --ca-file or $TXACME_CA_FILE"
        return True, f"untrusted: {text} ({fix})"
    return False, f"unreachable: {text}; renewal information was not checked"


def _write_page(path: str, page: str) -> None:
    """Write the page to ``path`` (``-``: standard output)."""
    if path == "-":
        sys.stdout.write(page)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise UsageError(f"--html {path!r}: cannot write it: {e.strerror}")


def _last_error_cell(row: StatusRow) -> str:
    error = row.get("last_error")
    if row["state"] == "damaged":
        last = row.get("error", "")
    elif error:
        code = str(error["problem"]).rsplit(":", 1)[-1]
        last = f"{short_time(parse_time(error['at']))} {code}: {error['detail']}"
    else:
        last = "-"
    if len(last) > 60:
        last = last[:57] + "..."
    return last


def _when_cell(moment: datetime | None, now: datetime) -> str:
    return f"{short_time(moment)} ({relative_time(moment, now)})" if moment else "-"


def status_table(rows: Sequence[StatusRow], now: datetime) -> str:
    """The rows as a table for a person."""
    header = ["NAME", "STATE", "ISSUER", "KEY", "NOT AFTER", "RENEWAL", "WHY", "LAST ERROR"]
    lines = [header]
    for row in rows:
        why = row.get("renewal_reason", "-")
        if row.get("renewal_source") == "service":
            why += " (server)"
        renewal = parse_time(row.get("renewal_at"))
        lines.append(
            [
                row["name"],
                row["state"],
                row.get("issuer", "-"),
                row.get("key_type", "-"),
                _when_cell(parse_time(row.get("not_after")), now),
                "now" if row.get("due") else _when_cell(renewal, now),
                why,
                _last_error_cell(row),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
