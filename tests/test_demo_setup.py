"""
scripts/_setup.sh installs only when needed for the demo, always for the tests; scripts/demo.py
removes what it started when stopped by SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

import txacme

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "scripts", "_setup.sh")

# Stands for the virtualenv's python: records each pip command instead of running it.
FAKE_PYTHON = '#!/bin/sh\necho "$@" >> "$(dirname "$0")/../calls"\n'


class InstallVirtualenvTests(TestCase):
    def setUp(self) -> None:
        self.tree = os.path.abspath(self.mktemp())
        for name in [
            "pyproject.toml",
            "setup.py",
            "LICENSE",
            "README.rst",
            "src/txacme/a.py",
            "twisted/plugins/p.py",
        ]:
            path = os.path.join(self.tree, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(name)
        self.venv = os.path.join(self.tree, "venv")
        os.makedirs(os.path.join(self.venv, "bin"))
        python = os.path.join(self.venv, "bin", "python")
        with open(python, "w") as f:
            f.write(FAKE_PYTHON)
        os.chmod(python, 0o755)

    def install(self, *args: str) -> list[str]:
        """Run install_virtualenv with args; the pip commands it ran."""
        calls = os.path.join(self.venv, "calls")
        if os.path.exists(calls):
            os.remove(calls)
        subprocess.run(
            ["bash", "-c", f'set -euo pipefail; . {SETUP}; install_virtualenv "$@"', "-", *args],
            cwd=self.tree,
            env=dict(os.environ, TXACME_VENV=self.venv),
            check=True,
            capture_output=True,
            timeout=60,
        )
        if not os.path.exists(calls):
            return []
        with open(calls) as f:
            return [line for line in f.read().splitlines() if "--upgrade pip" not in line]

    def test_demo_installs_only_a_changed_tree(self) -> None:
        self.assertEqual(len(self.install("test", "--if-changed")), 2)
        self.assertEqual(self.install("test", "--if-changed"), [])
        with open(os.path.join(self.tree, "src", "txacme", "a.py"), "a") as f:
            f.write("# edited\n")
        self.assertEqual(len(self.install("test", "--if-changed")), 2)
        self.assertEqual(self.install("test", "--if-changed"), [])
        os.remove(os.path.join(self.tree, "twisted", "plugins", "p.py"))
        self.assertEqual(len(self.install("test", "--if-changed")), 2)

    def test_extras_must_be_covered(self) -> None:
        """A stamp for test,dev,all serves a request for test; one for test does not serve dev."""
        self.install("test,dev,all")
        self.assertEqual(self.install("test", "--if-changed"), [])
        self.assertEqual(len(self.install("dev", "--if-changed")), 0)
        self.install("test")
        self.assertEqual(len(self.install("dev", "--if-changed")), 2)

    def test_tests_always_install(self) -> None:
        """scripts/test installs even when the stamp matches: CI never tests an old copy."""
        self.install("test,dev,all")
        calls = self.install("test,dev,all")
        self.assertEqual(len(calls), 2)
        self.assertIn(".[test,dev,all]", calls[0])
        self.assertIn("--force-reinstall", calls[1])


class DemoSignalTests(TestCase):
    def test_sigterm_removes_everything(self) -> None:
        """SIGTERM while twistd runs: exit 130, twistd and the CA stopped, the directory gone."""
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(txacme.__file__))
        env["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, env.get("PYTHONPATH")] if p)
        demo = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--ca", "testca"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert demo.stdout is not None
        line = ""
        while "Running: twistd" not in line:
            line = demo.stdout.readline()
            self.assertTrue(line, "the demo ended before starting twistd")
        work = re.search(r"--path (\S+)/site", line)
        assert work is not None
        time.sleep(0.2)  # let twistd start: SIGTERM must stop it, not race its start
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=60)
        self.assertEqual(demo.returncode, 130, err)
        self.assertIn("interrupted", err)
        self.assertFalse(os.path.exists(work.group(1)))
        left = subprocess.run(["pgrep", "-f", work.group(1)], capture_output=True, text=True)
        self.assertEqual(left.stdout, "")
