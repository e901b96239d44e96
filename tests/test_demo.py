"""The README's first command keeps working: the demo script with each local CA."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

import txacme

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "scripts", "demo.py")


def run_demo(ca: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(txacme.__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, env.get("PYTHONPATH")] if p)
    return subprocess.run(
        [sys.executable, DEMO, "--ca", ca],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


class DemoTests(TestCase):
    def check(self, ca: str, ca_name: str) -> None:
        result = run_demo(ca)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(ca_name, result.stdout)
        self.assertIn("names:   demo.example.test", result.stdout)
        self.assertIn("chain verified against the CA's root: yes", result.stdout)
        self.assertIn("Hello from twistd web over txacme", result.stdout)

    def test_demo_with_pebble(self) -> None:
        self.check("pebble", "Pebble")

    def test_demo_with_txacme_test_ca(self) -> None:
        """Without Pebble the demo still works, on txacme's own test CA."""
        self.check("testca", "txacme.testca")
