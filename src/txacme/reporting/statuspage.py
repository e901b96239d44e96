"""
The status of every certificate, for a person (one HTML page) and a program (JSON).

This module owns the status rows (:func:`status_of`: names, issuer, key type,
expiry, the renewal plan and why, the last error), the JSON document that
``txacme status --json`` prints and ``/status.json`` serves
(:func:`status_document`), the page that ``txacme status --html`` writes and
``/status`` serves (:func:`render_status_page`), and the ``twisted.web``
resources of the metrics listener (:class:`LiveStatus`).

Decisions
---------

One self-contained page.
    No script, font, image or style sheet is fetched: the style is inline, the
    timeline an inline SVG, and the ``Content-Security-Policy`` forbids
    anything else. The page works offline, from a file, and on a phone.

Everything from outside is escaped.
    Names, issuers, problem types and details come from certificates and CAs;
    every one goes through :func:`html.escape` before it reaches the page.

The urgent first.
    Rows are ordered expired, emergency, damaged, missing, revoked, failing,
    due, ok; then by expiry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from html import escape
from typing import TypedDict, cast

import pem
from cryptography import x509
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txacme import errors
from txacme.certificates import certificate_names, first_certificate
from txacme.formats import format_time, parse_time
from txacme.interfaces import EntryStore, ICertificateStore
from txacme.issuing.events import EventSource
from txacme.issuing.policy import RenewalInfoLike, RenewalPlan, plan_renewal
from txacme.keys import key_type_of
from txacme.logs import Logger
from txacme.reporting.state import Change, NameRecord, StateFile, StateRecorder

log = Logger()

__all__ = [
    "ATTENTION_STATES",
    "CONTENT_SECURITY_POLICY",
    "STATE_ORDER",
    "Entry",
    "LiveStatus",
    "MemoryState",
    "StatusRow",
    "certificate_serial",
    "ordered",
    "render_status_page",
    "status_document",
    "status_of",
]

Entry = list[pem.AbstractPEMObject] | errors.ConfigurationError
"""A store entry: its PEM objects, or the error that makes it unreadable."""

ATTENTION_STATES = frozenset({"damaged", "missing", "expired", "revoked", "emergency", "failing"})
"""The states that need a person (``txacme status --check`` exits with 3)."""

STATE_ORDER = ("expired", "emergency", "damaged", "missing", "revoked", "failing", "due", "ok")
"""The states, most urgent first: the order of the page."""

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The page fetches nothing: inline style only."""


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


# -- rows -------------------------------------------------------------------------


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
    ari: RenewalInfoLike | None,
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
    ari: RenewalInfoLike | None,
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
    if revoked and plan is not None:  # a revoked certificate is replaced at once
        row["renewal_at"] = format_time(now)
        row["renewal_reason"] = "revoked"
        row["renewal_source"] = "policy"
        row["due"] = True
    if "state" not in row:
        state = _state_of(certificate, plan, record, revoked, bool(row.get("due")), now)
        row["state"] = state
        row["attention"] = state in ATTENTION_STATES
    return row


def status_document(
    rows: Sequence[StatusRow],
    now: datetime,
    *,
    cert_dir: str | None = None,
    store: str | None = None,
) -> dict[str, object]:
    """The JSON document of ``txacme status --json`` and ``/status.json``."""
    return {"cert_dir": cert_dir, "store": store, "now": format_time(now), "certificates": rows}


def _sort_key(row: StatusRow) -> tuple[int, str, str]:
    state = row.get("state", "ok")
    rank = STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)
    return (rank, row.get("not_after") or "", row.get("name", ""))


def ordered(rows: Iterable[StatusRow]) -> list[StatusRow]:
    """The rows, most urgent first (:data:`STATE_ORDER`), then by expiry and name."""
    return sorted(rows, key=_sort_key)


# -- the page -------------------------------------------------------------------

_STYLE = """
:root{--ok:#1b7f3b;--due:#8a6d00;--warn:#b35900;--bad:#b00020;--ink:#1d2330;--mute:#5c6473;
--line:#d9dde5;--bg:#f6f7f9}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
header,main{max-width:60rem;margin:0 auto;padding:0 1rem}
header{padding-top:1rem}
h1{font-size:1.35rem;margin:.2rem 0}
.meta{color:var(--mute);font-size:.9rem;margin:0 0 .6rem}
.summary{display:flex;flex-wrap:wrap;gap:.4rem;padding:0;margin:.4rem 0 1rem;list-style:none}
.summary li{padding:.15rem .6rem;border-radius:1rem;background:#fff;border:1px solid var(--line)}
section.cert{background:#fff;border:1px solid var(--line);border-left:.45rem solid var(--ok);
border-radius:.5rem;padding:.75rem 1rem;margin:0 0 .9rem;overflow-wrap:anywhere}
section.cert h2{font-size:1.1rem;margin:0 0 .3rem;display:flex;flex-wrap:wrap;gap:.5rem;
align-items:center}
.badge{font-size:.75rem;font-weight:600;text-transform:uppercase;letter-spacing:.04em;
color:#fff;background:var(--ok);border-radius:.25rem;padding:.05rem .4rem}
section.s-due{border-left-color:var(--due)} .s-due .badge{background:var(--due)}
section.s-failing,section.s-revoked,section.s-missing,section.s-damaged{
border-left-color:var(--warn)}
.s-failing .badge,.s-revoked .badge,.s-missing .badge,.s-damaged .badge{background:var(--warn)}
section.s-emergency,section.s-expired{border-left-color:var(--bad);background:#fff0f1}
.s-emergency .badge,.s-expired .badge{background:var(--bad)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .9rem;margin:.4rem 0}
dt{color:var(--mute)} dd{margin:0}
.bar{position:relative;height:.8rem;background:#e8ebf0;border-radius:.4rem;margin:.5rem 0 .2rem;
overflow:hidden}
.bar .used{position:absolute;left:0;top:0;bottom:0;background:var(--ok)}
.s-due .bar .used{background:var(--due)}
.s-failing .bar .used,.s-revoked .bar .used{background:var(--warn)}
.s-emergency .bar .used,.s-expired .bar .used{background:var(--bad)}
.bar .mark{position:absolute;top:0;bottom:0;width:2px;background:var(--ink)}
.bar .emerg{position:absolute;top:0;bottom:0;right:0;background:repeating-linear-gradient(
45deg,rgba(176,0,32,.25) 0 4px,transparent 4px 8px)}
.barlabel{font-size:.8rem;color:var(--mute)}
.error{border-top:1px dashed var(--line);margin-top:.5rem;padding-top:.4rem}
.error code{color:var(--bad)}
code{font:.85em ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.timeline{background:#fff;border:1px solid var(--line);border-radius:.5rem;padding:.5rem;
margin:0 0 1rem;overflow-x:auto}
.timeline svg{display:block;width:100%;min-width:34rem;height:auto}
.legend{font-size:.8rem;color:var(--mute);margin:.3rem 0 0}
footer{max-width:60rem;margin:0 auto;padding:0 1rem 2rem;color:var(--mute);font-size:.8rem}
@media (max-width:40rem){body{font-size:14px}dl{grid-template-columns:1fr}dt{margin-top:.3rem}}
"""

_STATE_COLOURS = {
    "expired": "#b00020",
    "emergency": "#b00020",
    "damaged": "#b35900",
    "missing": "#b35900",
    "revoked": "#b35900",
    "failing": "#b35900",
    "due": "#8a6d00",
    "ok": "#1b7f3b",
}

_STATE_WORDS = {
    "expired": "expired",
    "emergency": "emergency window",
    "damaged": "damaged entry",
    "missing": "no certificate yet",
    "revoked": "revoked",
    "failing": "renewal failing",
    "due": "renewal due",
    "ok": "ok",
}

TIMELINE_DAYS = 90
"""How far ahead the timeline reaches, at least."""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _relative(moment: datetime, now: datetime) -> str:
    seconds = (moment - now).total_seconds()
    past = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 48 * 3600:
        text = f"{seconds / 3600:.0f} h"
    else:
        text = f"{seconds / 86400:.0f} days"
    return f"{text} ago" if past else f"in {text}"


def _when(value: object, now: datetime) -> str:
    moment = parse_time(value)
    if moment is None:
        return "-"
    stamp = moment.strftime("%Y-%m-%d %H:%M UTC")
    iso = _e(format_time(moment))
    return f'<time datetime="{iso}">{_e(stamp)}</time> ({_relative(moment, now)})'


def _lifetime(row: StatusRow, now: datetime) -> str:
    start, end = parse_time(row.get("not_before")), parse_time(row.get("not_after"))
    if start is None or end is None or end <= start:
        return ""
    total = (end - start).total_seconds()

    def at(moment: datetime) -> float:
        return min(max((moment - start).total_seconds() / total, 0.0), 1.0) * 100

    used = at(now)
    parts = [f'<div class="used" style="width:{used:.1f}%"></div>']
    emergency = parse_time(row.get("emergency_at"))
    if emergency is not None:
        parts.append(f'<div class="emerg" style="left:{at(emergency):.1f}%"></div>')
    renewal = parse_time(row.get("renewal_at"))
    if renewal is not None:
        parts.append(
            f'<div class="mark" style="left:{at(renewal):.1f}%" title="planned renewal"></div>'
        )
    label = (
        f"{used:.0f}% of the lifetime used ({(end - start).days} days)"
        + ("; hatched: the emergency window" if emergency is not None else "")
        + ("; line: the planned renewal" if renewal is not None else "")
    )
    return (
        f'<div class="bar" role="img" aria-label="{_e(label)}">{"".join(parts)}</div>'
        f'<div class="barlabel">{_e(label)}</div>'
    )


def _plan(row: StatusRow, now: datetime) -> str:
    if "renewal_at" not in row:
        return "-"
    reason = row.get("renewal_reason", "")
    source = row.get("renewal_source", "")
    why = {
        "ari": "in the CA's renewal window (ARI)",
        "lifetime": "a third of the lifetime left",
        "missing": "no certificate yet",
        "names": "the names changed",
        "emergency": "emergency window",
        "expired": "expired",
        "revoked": "revoked",
        "ca_changed": "issued by another CA than the configured one",
    }.get(reason, reason)
    if source == "service":
        why += ", as planned by the running server"
    when = "now" if row.get("due") else _when(row.get("renewal_at"), now)
    return f"{when}: {_e(why)}"


def _error(row: StatusRow, now: datetime) -> str:
    if row.get("state") == "damaged":
        return (
            '<div class="error"><strong>Unreadable entry:</strong> '
            f"{_e(row.get('error', ''))}</div>"
        )
    error = row.get("last_error")
    if not error:
        return ""
    retry = error.get("retry_at")
    lines = [
        '<div class="error"><strong>Last error</strong> '
        f"{_when(error.get('at'), now)}, attempt {_e(error.get('attempt', 1))}"
        + (" (emergency)" if error.get("emergency") else ""),
        f"<br><code>{_e(error.get('problem', ''))}</code>",
        f"<br>{_e(error.get('detail', ''))}",
    ]
    if retry:
        lines.append(f"<br>Next attempt: {_when(retry, now)}")
    lines.append("</div>")
    return "".join(lines)


def _card(row: StatusRow, now: datetime) -> str:
    state = str(row.get("state", "ok"))
    names = row.get("names") or []
    items: list[tuple[str, str]] = []
    if names:
        items.append(("Names", ", ".join(_e(n) for n in names)))
    for label, key in (("Issuer", "issuer"), ("Key", "key_type"), ("Serial", "serial")):
        if key in row:
            items.append((label, _e(row[key])))  # type: ignore[literal-required]
    if row.get("not_after"):
        items.append(("Not after", _when(row.get("not_after"), now)))
    items.append(("Renewal", _plan(row, now)))
    if row.get("emergency_at"):
        items.append(("Emergency from", _when(row.get("emergency_at"), now)))
    if row.get("last_success"):
        items.append(("Last success", _when(row.get("last_success"), now)))
    if row.get("ari_error"):
        items.append(("ARI", _e(row.get("ari_error"))))
    revoked = row.get("revoked")
    if revoked:
        items.append(("Revoked", f"{_when(revoked.get('at'), now)} {_e(revoked.get('reason'))}"))
    details = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in items)
    return (
        f'<section class="cert s-{_e(state)}" data-name="{_e(row.get("name", ""))}" '
        f'data-state="{_e(state)}">'
        f'<h2><span class="name">{_e(row.get("name", ""))}</span>'
        f'<span class="badge">{_e(_STATE_WORDS.get(state, state))}</span></h2>'
        f"{_lifetime(row, now)}<dl>{details}</dl>{_error(row, now)}</section>"
    )


def _timeline(rows: Sequence[StatusRow], now: datetime) -> str:
    dated = [r for r in rows if parse_time(r.get("not_after"))]
    if not dated:
        return ""
    horizon = now + timedelta(days=TIMELINE_DAYS)
    latest = max(parse_time(r.get("not_after")) or now for r in dated)
    if latest > horizon:
        horizon = min(latest, now + timedelta(days=400))
    span = (horizon - now).total_seconds()
    width, left, right, row_h, top = 640.0, 150.0, 12.0, 22.0, 24.0
    plot = width - left - right
    height = top + row_h * len(dated) + 8

    def x(moment: datetime) -> float:
        frac = min(max((moment - now).total_seconds() / span, 0.0), 1.0)
        return left + frac * plot

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        'role="img" aria-labelledby="tl-title" font-family="system-ui,sans-serif" '
        'font-size="11">',
        '<title id="tl-title">Expiries (squares) and planned renewals (circles)</title>',
    ]
    weeks = int(span // (7 * 86400))
    step = 1 if weeks <= 16 else 4
    for week in range(0, weeks + 1, step):
        gx = x(now + timedelta(weeks=week))
        out.append(
            f'<line x1="{gx:.1f}" y1="{top - 6:.0f}" x2="{gx:.1f}" y2="{height - 4:.0f}" '
            'stroke="#e3e6ec"/>'
        )
        out.append(
            f'<text x="{gx:.1f}" y="{top - 10:.0f}" text-anchor="middle" fill="#5c6473">'
            f"{'now' if week == 0 else f'+{week}w'}</text>"
        )
    for i, row in enumerate(dated):
        y = top + row_h * i + row_h / 2
        colour = _STATE_COLOURS.get(str(row.get("state")), "#5c6473")
        name = str(row.get("name", ""))
        shown = name if len(name) <= 22 else name[:21] + "\u2026"
        out.append(
            f'<text x="{left - 12:.0f}" y="{y + 4:.1f}" text-anchor="end" fill="#1d2330">'
            f"{_e(shown)}</text>"
        )
        not_after = parse_time(row.get("not_after")) or now
        renewal = parse_time(row.get("renewal_at"))
        emergency = parse_time(row.get("emergency_at"))
        out.append(
            f'<line x1="{left:.0f}" y1="{y:.1f}" x2="{x(not_after):.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="3" stroke-opacity=".35"/>'
        )
        if emergency is not None and emergency < not_after:
            out.append(
                f'<line x1="{x(emergency):.1f}" y1="{y:.1f}" x2="{x(not_after):.1f}" '
                f'y2="{y:.1f}" stroke="#b00020" stroke-width="5" stroke-opacity=".5">'
                f"<title>{_e(name)}: emergency window</title></line>"
            )
        if renewal is not None:
            out.append(
                f'<circle cx="{x(renewal):.1f}" cy="{y:.1f}" r="5" fill="#fff" '
                f'stroke="{colour}" stroke-width="2"><title>{_e(name)}: renewal '
                f"{_e(format_time(renewal))}</title></circle>"
            )
        out.append(
            f'<rect x="{x(not_after) - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
            f'fill="{colour}"><title>{_e(name)}: expires {_e(format_time(not_after))}'
            "</title></rect>"
        )
    out.append("</svg>")
    return (
        '<div class="timeline">' + "".join(out) + '<p class="legend">The coming '
        f"{(horizon - now).days} days: a square marks the expiry, a circle the planned "
        "renewal, red the emergency window.</p></div>"
    )


def render_status_page(document: Mapping[str, object], title: str = "txacme status") -> str:
    """
    The status page: one self-contained HTML document for ``document`` (the
    output of :func:`status_document`), urgent certificates first.
    """
    now = parse_time(document.get("now")) or datetime.now(timezone.utc)
    raw = document.get("certificates")
    rows = ordered(raw if isinstance(raw, list) else [])
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get("state"))] = counts.get(str(row.get("state")), 0) + 1
    summary = "".join(
        f'<li style="border-color:{_STATE_COLOURS.get(s, "#d9dde5")}">'
        f"{counts[s]} {_e(_STATE_WORDS.get(s, s))}</li>"
        for s in sorted(counts, key=lambda s: STATE_ORDER.index(s) if s in STATE_ORDER else 99)
    )
    where = document.get("store") or document.get("cert_dir")
    meta = f"{len(rows)} certificate{'s' if len(rows) != 1 else ''}"
    if where:
        meta += f" in {_e(where)}"
    meta += f", as of {_e(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}"
    cards = "".join(_card(row, now) for row in rows) or "<p>No certificate entries.</p>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="color-scheme" content="light">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>{_e(title)}</h1><p class="meta">{meta}</p>'
        f'<ul class="summary">{summary}</ul></header>'
        f"<main>{_timeline(rows, now)}{cards}</main>"
        "<footer>Generated by txacme. The same data as JSON: <code>/status.json</code> "
        "or <code>txacme status --json</code>.</footer></body></html>\n"
    )


# -- live, on the metrics listener -------------------------------------------------------


class MemoryState(StateFile):
    """A :class:`StateFile` kept in memory only: what the running service has seen."""

    def __init__(self) -> None:
        super().__init__("<memory>")
        self._records: dict[str, NameRecord] = {}

    def __repr__(self) -> str:
        return "MemoryState()"

    def read(self) -> dict[str, NameRecord]:
        """Every record, by name."""
        return dict(self._records)

    def update(self, changes: Mapping[str, Change]) -> None:
        """Apply ``changes`` in memory."""
        for name, change in changes.items():
            self._records[name] = change(self._records.get(name, NameRecord(name)))


def _entry(pem_objects: list[pem.AbstractPEMObject]) -> Entry:
    try:
        first_certificate(pem_objects)
    except ValueError as e:
        return errors.ConfigurationError(f"unreadable certificate: {e}")
    return pem_objects


class LiveStatus:
    """
    The status of a running service's certificates, for ``/status`` and
    ``/status.json`` (:meth:`resources`).

    :param store: the service's certificate store, read at each request.
    :param clock: the reactor's time.
    :param state: the state file the service's recorder keeps (its history
        survives restarts); by default the events seen since :meth:`attach`.
    """

    def __init__(
        self, store: ICertificateStore, clock: IReactorTime, state: StateFile | None = None
    ) -> None:
        self.store = store
        self._clock = clock
        self._memory: StateRecorder | None = None
        if state is None:
            self._memory = StateRecorder(MemoryState(), clock)
            state = self._memory.state
        self.state = state

    def attach(self, service: EventSource) -> Callable[[], None]:
        """Follow ``service``'s events (when keeping state in memory)."""
        if self._memory is None:
            return lambda: None
        return self._memory.attach(service)

    def document(self) -> Deferred[dict[str, object]]:
        """The status document now."""
        if self._memory is not None:
            self._memory.flush()
        now = datetime.fromtimestamp(self._clock.seconds(), tz=timezone.utc)

        def build(entries: dict[str, list[pem.AbstractPEMObject]]) -> dict[str, object]:
            records = self.state.read()
            rows = [
                status_of(
                    name, _entry(objs or []), records.get(name, NameRecord(name)), None, None, now
                )
                for name, objs in sorted(entries.items())
            ]
            return status_document(rows, now)

        return maybeDeferred(cast(EntryStore, self.store).as_dict).addCallback(build)

    def resources(self) -> dict[bytes, Resource]:
        """The children to mount: ``status`` (HTML) and ``status.json``."""
        return {
            b"status": _StatusResource(self, html=True),
            b"status.json": _StatusResource(self, html=False),
        }


class _StatusResource(Resource):
    """``/status`` or ``/status.json``."""

    isLeaf = True

    def __init__(self, status: LiveStatus, html: bool) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self.status = status
        self.html = html

    def render_GET(self, request: Request) -> object:  # noqa: N802
        def write(document: dict[str, object]) -> None:
            if self.html:
                body = render_status_page(document).encode("utf-8")
                kind = b"text/html; charset=utf-8"
                request.setHeader(  # type: ignore[no-untyped-call]
                    b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")
                )
            else:
                body = json.dumps(document, indent=2).encode("utf-8") + b"\n"
                kind = b"application/json"
            request.setHeader(b"content-type", kind)  # type: ignore[no-untyped-call]
            request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
            request.setHeader(  # type: ignore[no-untyped-call]
                b"x-content-type-options", b"nosniff"
            )
            request.write(body)  # type: ignore[no-untyped-call]
            request.finish()  # type: ignore[no-untyped-call]

        def failed(failure: Failure) -> None:
            log.failure("could not build the status page", failure)
            request.setResponseCode(500)
            request.setHeader(  # type: ignore[no-untyped-call]
                b"content-type", b"text/plain; charset=utf-8"
            )
            request.write(  # type: ignore[no-untyped-call]
                b"the status could not be read; see the server's log\n"
            )
            request.finish()  # type: ignore[no-untyped-call]

        self.status.document().addCallbacks(write, failed)
        return NOT_DONE_YET
