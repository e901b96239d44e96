"""
The example Grafana dashboard (``docs/examples/grafana-dashboard.json``): it
has the panels the documentation promises, every query names only metrics
and labels :mod:`txacme.reporting.metrics` exports, and every query is valid
PromQL (checked by ``promtool check rules`` on a file of recording rules made
from the queries).
"""

from __future__ import annotations

import json
import os

import yaml
from twisted.trial.unittest import TestCase

from tests.test_alerts import EXAMPLES, check_expression, exported, run_promtool

DASHBOARD = os.path.join(EXAMPLES, "grafana-dashboard.json")

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}
"""Grafana's variables, replaced by values Prometheus accepts."""


def load() -> dict[str, object]:
    with open(DASHBOARD, encoding="utf-8") as f:
        data: dict[str, object] = json.load(f)
    return data


def queries(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    found = []
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


class DashboardTests(TestCase):
    def test_panels(self) -> None:
        dashboard = load()
        titles = [p["title"] for p in dashboard["panels"]]  # type: ignore[attr-defined]
        for expected in (
            "Certificates: expiry and planned renewal",
            "Renewals and failures",
            "ACME requests by endpoint and status",
            "On-demand requests (handshakes for names without a certificate)",
        ):
            self.assertIn(expected, titles)
        ids = [p["id"] for p in dashboard["panels"]]  # type: ignore[attr-defined]
        self.assertEqual(len(ids), len(set(ids)))

    def test_names(self) -> None:
        """Every query names only what the exporter exports."""
        names = exported()
        found = queries(load())
        self.assertGreater(len(found), 10)
        for title, expr in found:
            self.assertEqual(check_expression(expr, names), [], title)
        variable = load()["templating"]["list"][1]  # type: ignore[index]
        self.assertEqual(check_expression(variable["definition"], names), [])

    def test_promql(self) -> None:
        """Every query parses (``promtool check rules`` on them as recording rules)."""
        rules = []
        for i, (_, expr) in enumerate(queries(load())):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:query_{i}", "expr": expr})
        path = os.path.abspath(self.mktemp() + ".yml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        result = run_promtool("check", "rules", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(f"SUCCESS: {len(rules)} rules found", result.stdout)
