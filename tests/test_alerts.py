"""
The example alert rules (``docs/examples/prometheus-alerts.yml``): ``promtool
check rules`` and ``promtool test rules`` (Debian's ``prometheus`` package)
pass, and every metric and label the rules and their test series use is one
:mod:`txacme.reporting.metrics` exports. Also the helpers that name what the
exporter exports, which ``tests/test_dashboard.py`` shares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import yaml
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from txacme.issuing.events import Emergency, Failed, Obtained, Obtaining, RenewalScheduled
from txacme.protocol.client import Exchange
from txacme.reporting.metrics import Metrics

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "examples")
RULES = os.path.join(EXAMPLES, "prometheus-alerts.yml")
RULE_TESTS = os.path.join(EXAMPLES, "prometheus-alerts.test.yml")

SCRAPE_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds to every scraped series."""


class _Counts:
    issued = 1
    refused = 2
    limited = 3


def exported() -> dict[str, frozenset[str]]:
    """
    Every series name the exporter produces, with its label names: a fresh
    :class:`Metrics` on its own registry, fed one of each event.
    """
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = Metrics(registry, clock=Clock())
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    metrics.observe(RenewalScheduled("a.example", now, "lifetime"))
    metrics.observe(Obtaining("a.example", ("a.example",), "lifetime", 1))
    metrics.observe(Obtained("a.example", ("a.example",), now + timedelta(days=90), 1.0))
    metrics.observe(Obtaining("a.example", ("a.example",), "lifetime", 1))
    failure = Failure(ConnectionError("down"))
    metrics.observe(Failed("a.example", "connection", "down", 1, now, failure))
    metrics.observe(Emergency("a.example", None, failure))
    metrics.observe_exchange(Exchange("newOrder", "POST", "https://ca.example/order", 201, 0.1))
    metrics.observe_on_demand(_Counts())
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


_SELECTOR = re.compile(r"\b(txacme_[A-Za-z0-9_]+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_expression(expr: str, names: dict[str, frozenset[str]]) -> list[str]:
    """What ``expr`` names that the exporter does not export (empty: all good)."""
    problems = []
    used: set[str] = set()
    for metric, matchers in _SELECTOR.findall(expr):
        if metric not in names:
            problems.append(f"{metric} is not exported")
            continue
        known = names[metric] | SCRAPE_LABELS
        used |= known
        for label in _MATCHER.findall(matchers or ""):
            if label not in known:
                problems.append(f"{metric} has no label {label!r}")
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            if label not in used:
                problems.append(f"no metric of {expr!r} has the label {label!r}")
    if not _SELECTOR.search(expr):
        problems.append(f"{expr!r} names no txacme metric")
    return problems


def promtool() -> str:
    """The ``promtool`` command; fails loudly when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError(
            "the alert-rule tests need promtool: "
            "apt-get install -y --no-install-recommends prometheus"
        )
    return path


def run_promtool(*args: str, cwd: str = EXAMPLES) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


class AlertRuleTests(TestCase):
    def test_exported(self) -> None:
        """The helper sees every family, with its labels."""
        names = exported()
        self.assertEqual(names["txacme_certificate_failures"], {"name"})
        self.assertEqual(names["txacme_acme_requests_total"], {"endpoint", "method", "status"})
        self.assertIn("le", names["txacme_issuance_duration_seconds_bucket"])
        self.assertEqual(names["txacme_on_demand_requests_total"], {"outcome"})

    def test_check_rules(self) -> None:
        result = run_promtool("check", "rules", RULES)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS: 5 rules found", result.stdout)

    def test_rule_tests(self) -> None:
        result = run_promtool("test", "rules", RULE_TESTS)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout)

    def test_names(self) -> None:
        """The rules and their test series name only what txacme exports."""
        names = exported()
        with open(RULES, encoding="utf-8") as f:
            rules = yaml.safe_load(f)
        alerts = [r for g in rules["groups"] for r in g["rules"]]
        self.assertEqual(
            {r["alert"] for r in alerts},
            {
                "TxacmeCertificateExpired",
                "TxacmeCertificateInEmergencyWindow",
                "TxacmeRenewalFailing",
                "TxacmeCAUnreachable",
                "TxacmeOnDemandRefusalsSpiking",
            },
        )
        for rule in alerts:
            self.assertEqual(check_expression(rule["expr"], names), [], rule["alert"])
        with open(RULE_TESTS, encoding="utf-8") as f:
            tests = yaml.safe_load(f)
        series = [s["series"] for t in tests["tests"] for s in t["input_series"]]
        self.assertGreater(len(series), 10)
        for one in series:
            self.assertEqual(check_expression(one, names), [], one)

    def test_checker(self) -> None:
        """The name check catches a wrong name or label."""
        names = exported()
        self.assertEqual(
            check_expression('txacme_certificate_expiry{name="x"}', names),
            ["txacme_certificate_expiry is not exported"],
        )
        self.assertEqual(
            check_expression('txacme_certificate_failures{domain="x"}', names),
            ["txacme_certificate_failures has no label 'domain'"],
        )
        self.assertTrue(check_expression("sum by (domain) (txacme_certificate_failures)", names))
