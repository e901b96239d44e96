"""
``txacme status``: one row per certificate (its names, issuer, key, expiry, the
planned renewal and why, the last error), as a table or JSON, and whether any
needs attention.

May import anything in the library (the command line is the top layer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import TypedDict

from cryptography import x509

from txacme import errors
from txacme.certificates import certificate_names, first_certificate
from txacme.cli.context import Command, Entries, Entry
from txacme.cli.failures import EXIT_ATTENTION, EXIT_OK, describe
from txacme.cli.ui import relative_time, short_time
from txacme.formats import format_time, parse_time
from txacme.issuing.policy import RenewalPlan, plan_renewal
from txacme.keys import key_type_of
from txacme.protocol.client import RenewalInfo
from txacme.reporting.state import NameRecord

__all__ = ["StatusRow", "certificate_serial", "cmd_status", "status_of", "status_table"]

_ATTENTION_STATES = frozenset(
    {"damaged", "missing", "expired", "revoked", "emergency", "failing"}
)


class StatusRow(TypedDict, total=False):
    """One certificate in ``txacme status`` (its JSON form)."""

    name: str
    state: str
    attention: bool
    error: str
    names: list[str]
    issuer: str
    key_type: str
    serial: str
    not_before: str | None
    not_after: str | None
    renewal_at: str | None
    renewal_reason: str
    renewal_source: str
    emergency_at: str | None
    due: bool
    ari_error: str
    last_attempt: str | None
    last_success: str | None
    last_error: dict[str, object] | None
    revoked: dict[str, object] | None


def _issuer(certificate: x509.Certificate) -> str:
    for oid in (x509.NameOID.COMMON_NAME, x509.NameOID.ORGANIZATION_NAME):
        values = certificate.issuer.get_attributes_for_oid(oid)
        if values:
            value = values[0].value
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return certificate.issuer.rfc4514_string()


def _key_type(certificate: x509.Certificate) -> str:
    try:
        return key_type_of(certificate.public_key())
    except errors.UnsupportedKeyType:
        return "other"


def certificate_serial(certificate: x509.Certificate) -> str:
    """The serial number in lower-case hexadecimal, as the state file records it."""
    return f"{certificate.serial_number:x}"


def _describe_certificate(row: StatusRow, certificate: x509.Certificate) -> None:
    row["names"] = sorted(certificate_names(certificate))
    row["issuer"] = _issuer(certificate)
    row["key_type"] = _key_type(certificate)
    row["serial"] = certificate_serial(certificate)
    row["not_before"] = format_time(certificate.not_valid_before_utc)
    row["not_after"] = format_time(certificate.not_valid_after_utc)


def _describe_plan(
    row: StatusRow,
    plan: RenewalPlan,
    certificate: x509.Certificate | None,
    record: NameRecord,
    ari: RenewalInfo | None,
    now: datetime,
) -> None:
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
        # The running server's plan came from ARI, which a reader without the CA cannot know.
        due_at, reason, source = record.scheduled_at, "ari", "service"
    row["renewal_at"] = format_time(due_at)
    row["renewal_reason"] = reason
    row["renewal_source"] = source
    row["emergency_at"] = format_time(plan.emergency_at)
    row["due"] = due_at <= now


def _state_of(
    certificate: x509.Certificate | None,
    plan: RenewalPlan | None,
    record: NameRecord,
    revoked: bool,
    due: bool,
    now: datetime,
) -> str:
    if certificate is None:
        return "missing"
    if now >= certificate.not_valid_after_utc:
        return "expired"
    if revoked:
        return "revoked"
    if plan is not None and plan.emergency_at is not None and now >= plan.emergency_at:
        return "emergency"
    if record.last_error is not None:
        return "failing"
    if due:
        return "due"
    return "ok"


def status_of(
    name: str,
    entry: Entry,
    record: NameRecord,
    ari: RenewalInfo | None,
    ari_error: str | None,
    now: datetime,
) -> StatusRow:
    """The status row of one store entry (damaged, or its PEM objects)."""
    row: StatusRow = {"name": name}
    certificate = None
    plan = None
    if isinstance(entry, errors.ConfigurationError):
        row["state"] = "damaged"
        row["attention"] = True
        row["error"] = str(entry)
    else:
        certificate = first_certificate(entry)
        plan = plan_renewal(name, certificate, now, ari)
    if certificate is not None:
        _describe_certificate(row, certificate)
    if plan is not None:
        _describe_plan(row, plan, certificate, record, ari, now)
    if ari_error is not None:
        row["ari_error"] = ari_error
    row["last_attempt"] = format_time(record.last_attempt)
    row["last_success"] = format_time(record.last_success)
    row["last_error"] = record.last_error.to_json() if record.last_error else None
    revoked = (
        record.revoked is not None
        and certificate is not None
        and record.revoked.serial == certificate_serial(certificate)
    )
    row["revoked"] = record.revoked.to_json() if revoked and record.revoked else None
    if "state" not in row:
        state = _state_of(certificate, plan, record, revoked, bool(row.get("due")), now)
        row["state"] = state
        row["attention"] = state in _ATTENTION_STATES
    return row


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
    infos, ari_errors = await _fetch_ari(command, entries)
    records = command.state.read()
    now = command.now()
    rows = [
        status_of(
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
            "now": format_time(now),
            "certificates": rows,
        }
        command.ui.result(json.dumps(document, indent=2))
    elif not rows:
        command.ui.result(f"no certificate entries in {command.where}")
    else:
        command.ui.result(status_table(rows, now))
    if args.check and attention:
        return EXIT_ATTENTION
    return EXIT_OK


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
