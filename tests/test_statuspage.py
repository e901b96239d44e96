"""
The status page and its JSON twin (:mod:`txacme.reporting.statuspage`): rows,
ordering, escaping of hostile certificate and CA text, ``/status`` and
``/status.json`` on the metrics listener, ``txacme status --html``, and the page
in a real browser (Debian's headless Chromium), which saves the screenshot of
``docs/images/status-page.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any

import pem
import treq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.test_cli import run_cli
from txacme.errors import ConfigurationError
from txacme.issuing.events import Failed, RenewalScheduled, ServiceEvent
from txacme.reporting.metrics import serve_metrics
from txacme.reporting.state import ErrorRecord, NameRecord, StateFile
from txacme.reporting.statuspage import (
    CONTENT_SECURITY_POLICY,
    LiveStatus,
    StatusRow,
    ordered,
    render_status_page,
    status_document,
    status_of,
)
from txacme.stores.directory import DirectoryStore
from txacme.testing import MemoryStore, make_certificate

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENSHOT = os.path.join(HERE, os.pardir, "docs", "images", "status-page.png")

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
HOSTILE_ISSUER = 'Evil <script>alert("issuer")</script> CA'
HOSTILE_DETAIL = 'Rate limited <img src=x onerror="alert(1)"> & "quoted"'
HOSTILE_PROBLEM = "urn:ietf:params:acme:error:rateLimited<b>bold</b>"
ERROR_URN = "urn:ietf:params:acme:error:rateLimited"


def _entry(
    names: list[str], not_before: datetime, days: int, issuer_cn: str = "Test Issuer R1"
) -> list[pem.AbstractPEMObject]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_certificate([], ca=True, common_name=issuer_cn, key=ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_certificate(
        names, not_before, not_before + timedelta(days=days), key=key, issuer=(ca_key, ca)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return [*pem.parse(key_pem), *pem.parse(cert.public_bytes(serialization.Encoding.PEM))]


def sample_entries() -> dict[str, list[pem.AbstractPEMObject]]:
    """Five entries: fine, due soon, in its emergency window, expired, no certificate yet."""
    return {
        "www.example.com": _entry(["www.example.com", "example.com"], NOW - timedelta(days=5), 90),
        "api.example.com": _entry(["api.example.com"], NOW - timedelta(days=40), 90),
        "shop.example.net": _entry(
            ["shop.example.net"], NOW - timedelta(days=80), 90, issuer_cn=HOSTILE_ISSUER
        ),
        "old.example.org": _entry(["old.example.org"], NOW - timedelta(days=91), 90),
        "new.example.org": [],
    }


def sample_records() -> dict[str, NameRecord]:
    """A failing renewal with hostile problem text for the emergency certificate."""
    error = ErrorRecord(
        at=NOW - timedelta(hours=2),
        problem=HOSTILE_PROBLEM,
        detail=HOSTILE_DETAIL,
        attempt=4,
        retry_at=NOW + timedelta(hours=1),
        emergency=True,
    )
    api_error = ErrorRecord(
        at=NOW - timedelta(hours=5), problem=ERROR_URN, detail="too many orders", attempt=2
    )
    return {
        "shop.example.net": NameRecord("shop.example.net", last_error=error),
        "api.example.com": NameRecord("api.example.com", last_error=api_error),
    }


def sample_document(damaged: bool = True) -> dict[str, object]:
    entries: dict[str, Any] = dict(sample_entries())
    if damaged:
        entries["bad<x>.example"] = ConfigurationError("bad<x>.example.pem: <not PEM>")
    records = sample_records()
    rows = [
        status_of(name, entry, records.get(name, NameRecord(name)), None, None, NOW)
        for name, entry in sorted(entries.items())
    ]
    return status_document(rows, NOW, cert_dir="/srv/www/certs")


class _Text(HTMLParser):
    """The text and element names of a page, to check what a browser would show."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> _Text:
    parser = _Text()
    parser.feed(page)
    return parser


class RowTests(TestCase):
    def test_states(self) -> None:
        rows = {r["name"]: r for r in sample_document()["certificates"]}  # type: ignore[attr-defined]
        self.assertEqual(
            {n: r["state"] for n, r in rows.items()},
            {
                "www.example.com": "ok",
                "api.example.com": "failing",
                "shop.example.net": "emergency",
                "old.example.org": "expired",
                "new.example.org": "missing",
                "bad<x>.example": "damaged",
            },
        )
        shop = rows["shop.example.net"]
        self.assertEqual(shop["issuer"], HOSTILE_ISSUER)
        self.assertEqual(shop["last_error"]["detail"], HOSTILE_DETAIL)

    def test_order(self) -> None:
        rows: list[StatusRow] = sample_document()["certificates"]  # type: ignore[assignment]
        self.assertEqual(
            [r["name"] for r in ordered(rows)],
            [
                "old.example.org",
                "shop.example.net",
                "bad<x>.example",
                "new.example.org",
                "api.example.com",
                "www.example.com",
            ],
        )

    def test_json(self) -> None:
        document = sample_document()
        again = json.loads(json.dumps(document))
        self.assertEqual(again, document)
        self.assertEqual(again["now"], "2026-03-01T12:00:00Z")


class PageTests(TestCase):
    def setUp(self) -> None:
        self.page = render_status_page(sample_document())

    def test_escaped(self) -> None:
        """Nothing from a certificate or a CA becomes markup."""
        for raw in ("<script", "<img", "<b>", "<x>", "<not PEM>", 'onerror="'):
            self.assertNotIn(raw, self.page)
        text = "".join(parsed(self.page).text)
        for hostile in (HOSTILE_ISSUER, HOSTILE_DETAIL, HOSTILE_PROBLEM, "bad<x>.example"):
            self.assertIn(hostile, text)
        tags = set(parsed(self.page).tags)
        self.assertFalse(tags & {"script", "img", "b", "x", "iframe", "link", "object"})

    def test_self_contained(self) -> None:
        """No external resource: no link, script, src or URL other than the SVG namespace."""
        urls = re.findall(r"https?://[^\"' <]+", self.page)
        self.assertEqual(set(urls), {"http://www.w3.org/2000/svg"})
        attrs = {name for name, _ in parsed(self.page).attrs}
        self.assertFalse(attrs & {"src", "href", "srcset", "action"})
        self.assertIn(CONTENT_SECURITY_POLICY, self.page)
        self.assertIn('name="viewport"', self.page)

    def test_order_and_content(self) -> None:
        sections = re.findall(r'<section class="cert s-(\w+)" data-name="([^"]*)"', self.page)
        self.assertEqual(
            sections[:2], [("expired", "old.example.org"), ("emergency", "shop.example.net")]
        )
        self.assertEqual(sections[-1], ("ok", "www.example.com"))
        self.assertIn("emergency window", self.page)
        self.assertIn("<dt>Key</dt><dd>ec256</dd>", self.page)
        self.assertIn("<svg", self.page)
        self.assertIn('class="bar"', self.page)
        self.assertIn("Next attempt", self.page)
        self.assertIn("attempt 4", self.page)

    def test_empty(self) -> None:
        page = render_status_page(status_document([], NOW))
        self.assertIn("No certificate entries", page)
        self.assertNotIn("<svg", page)


class _Service:
    """An event source the test drives."""

    def __init__(self) -> None:
        self.subscribers: list[Any] = []

    def subscribe(self, callback: Any) -> Any:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def emit(self, event: ServiceEvent) -> None:
        for callback in list(self.subscribers):
            callback(event)


class ListenerTests(TestCase):
    """``/status`` and ``/status.json`` on the listener of :func:`serve_metrics`."""

    def test_served(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._served())

    async def _served(self) -> None:
        store = MemoryStore()
        for name, objects in sample_entries().items():
            if objects:
                await store.store(name, objects)
        service = _Service()
        port = await serve_metrics(reactor, "tcp:0:interface=127.0.0.1", service, store=store)
        self.addCleanup(port.stopListening)
        service.emit(RenewalScheduled("api.example.com", NOW, "lifetime"))
        service.emit(
            Failed(
                "api.example.com",
                "urn:ietf:params:acme:error:connection",
                "<CA down>",
                2,
                NOW + timedelta(minutes=10),
                Failure(ConnectionError("<CA down>")),
            )
        )
        pool = HTTPConnectionPool(reactor, persistent=False)
        base = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
        response = await treq.get(base + "/status.json", pool=pool)
        self.assertEqual(response.code, 200)
        document = json.loads(await response.text())
        rows = {r["name"]: r for r in document["certificates"]}
        self.assertEqual(set(rows), set(sample_entries()) - {"new.example.org"})
        self.assertEqual(
            rows["api.example.com"]["last_error"]["problem"],
            "urn:ietf:params:acme:error:connection",
        )
        response = await treq.get(base + "/status", pool=pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-security-policy"), [CONTENT_SECURITY_POLICY]
        )
        page = await response.text()
        self.assertIn("&lt;CA down&gt;", page)
        self.assertNotIn("<CA down>", page)
        self.assertIn("www.example.com", page)
        metrics = await (await treq.get(base + "/metrics", pool=pool)).text()
        self.assertIn("txacme_certificate_not_after_timestamp_seconds", metrics)

    def test_state_file(self) -> None:
        """With the endpoint's state file, its history is shown."""
        directory = self.mktemp()
        os.makedirs(directory)
        state = StateFile.for_directory(directory)
        state.record_failure("x.example", sample_records()["api.example.com"].last_error)  # type: ignore[arg-type]
        store = MemoryStore()
        self.successResultOf(store.store("x.example", sample_entries()["www.example.com"]))
        clock = Clock()
        clock.advance(NOW.timestamp())
        live = LiveStatus(store, clock, state)
        document = self.successResultOf(live.document())
        (row,) = document["certificates"]  # type: ignore[misc]
        self.assertEqual(row["state"], "failing")


class CommandTests(TestCase):
    """``txacme status --html FILE`` writes the page from a directory, with the JSON's data."""

    def test_html(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        store = DirectoryStore(directory)
        entries = sample_entries()
        for name in ("www.example.com", "shop.example.net"):
            self.successResultOf(store.store(name, entries[name]))
        StateFile.for_directory(directory).record_failure(
            "shop.example.net",
            sample_records()["shop.example.net"].last_error,  # type: ignore[arg-type]
        )
        out = os.path.join(directory, "status.html")
        result = run_cli("status", "-C", directory, "--json", "--html", out)
        self.assertEqual(result.returncode, 0, result.stderr)
        document = json.loads(result.stdout)
        with open(out, encoding="utf-8") as f:
            page = f.read()
        self.assertEqual(page, render_status_page(document))
        self.assertIn("shop.example.net", page)
        self.assertNotIn("<script", page)
        self.assertIn("&lt;script&gt;", page)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        "the browser test needs Chromium: apt-get install -y --no-install-recommends chromium"
    )


def _run_chromium(page_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="txacme-chromium-")
    try:
        return subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                *args,
                "file://" + page_path,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _console_errors(stderr: str) -> list[str]:
    """
    Chromium's console messages: the page has no script, so any message (an
    error, a blocked resource, a CSP violation) is a failure.
    """
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line or "Uncaught" in line or "violates the following" in line
    ]


class BrowserTests(TestCase):
    """The page in headless Chromium: shown, ordered, escaped, without console errors."""

    def test_chromium(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        page_path = os.path.abspath(os.path.join(directory, "status.html"))
        with open(page_path, "w", encoding="utf-8") as f:
            f.write(render_status_page(sample_document()))

        dom = _run_chromium(page_path, "--dump-dom")
        self.assertEqual(dom.returncode, 0, dom.stderr[-2000:])
        self.assertEqual(_console_errors(dom.stderr), [])
        text = "".join(parsed(dom.stdout).text)
        for name in sample_entries():
            self.assertIn(name, text)
        names = re.findall(r'<section class="cert s-\w+" data-name="([^"]*)"', dom.stdout)
        self.assertEqual(names[:2], ["old.example.org", "shop.example.net"])
        self.assertIn(HOSTILE_ISSUER, text)
        self.assertIn(HOSTILE_DETAIL, text)
        tags = set(parsed(dom.stdout).tags)
        self.assertFalse(tags & {"script", "img", "b", "x"})

        # The detector sees what it must: a script error and a blocked resource.
        bad = os.path.abspath(os.path.join(directory, "bad.html"))
        with open(bad, "w", encoding="utf-8") as f:
            f.write(
                f'<!DOCTYPE html><meta http-equiv="Content-Security-Policy" '
                f'content="{CONTENT_SECURITY_POLICY}"><img src="http://192.0.2.1/x.png">'
                "<script>throw new Error('bad')</script>"
            )
        self.assertNotEqual(_console_errors(_run_chromium(bad, "--dump-dom").stderr), [])

        shot = os.path.join(directory, "page.png")
        taken = _run_chromium(page_path, f"--screenshot={shot}", "--window-size=1000,1500")
        self.assertEqual(taken.returncode, 0, taken.stderr[-2000:])
        self.assertEqual(_console_errors(taken.stderr), [])
        with open(shot, "rb") as f:
            png = f.read()
        self.assertTrue(png.startswith(b"\x89PNG"))
        self.assertGreater(len(png), 10_000)
        if os.environ.get("TXACME_SAVE_SCREENSHOT"):  # to refresh docs/images
            os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)
