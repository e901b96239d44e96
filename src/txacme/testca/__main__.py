"""
``python -m txacme.testca``: serve a TestCA until stdin closes or SIGTERM.

Prints one JSON line on stdout once listening: ``directory_url``, ``base_url``,
``https_ca_file``, ``root_file``, ``roots_file``, ``eab_keys``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from twisted.internet import defer, protocol, stdio
from twisted.python.failure import Failure

from txacme.testca._model import Profile
from txacme.testca._server import TestCA


class _StopOnEOF(protocol.Protocol):
    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._reactor.running:
            self._reactor.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse options, start the CA, run the reactor."""
    parser = argparse.ArgumentParser(prog="python -m txacme.testca", description=__doc__)
    parser.add_argument("--options", default="{}", help="TestCA keyword options as JSON")
    parser.add_argument("--port", type=int, help="HTTPS port on 127.0.0.1")
    parser.add_argument("--http01-port", type=int, help="where http-01 validation connects")
    parser.add_argument("--tlsalpn01-port", type=int, help="where tls-alpn-01 validation connects")
    args = parser.parse_args(argv)
    options: dict[str, Any] = json.loads(args.options)
    for name in ("port", "http01_port", "tlsalpn01_port"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if isinstance(options.get("dns_server"), list):
        options["dns_server"] = tuple(options["dns_server"])
    if isinstance(options.get("profiles"), dict):
        options["profiles"] = {
            name: Profile(str(p["description"]), datetime.timedelta(seconds=float(p["lifetime"])))
            for name, p in options["profiles"].items()
        }

    from twisted.internet import reactor

    r: Any = reactor

    def started(ca: TestCA) -> None:
        r.addSystemEventTrigger("before", "shutdown", ca.stop)
        info = {
            "directory_url": ca.directory_url,
            "base_url": ca.base_url,
            "https_ca_file": ca.https_ca_file,
            "root_file": ca.root_file,
            "roots_file": ca.roots_file,
            "eab_keys": ca.eab_keys,
        }
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        stdio.StandardIO(_StopOnEOF(r))  # type: ignore[no-untyped-call]

    def failed(failure: Failure) -> None:
        sys.stderr.write(f"TestCA failed to start: {failure.getErrorMessage()}\n")
        r.stop()

    def go() -> None:
        d: defer.Deferred[TestCA] = defer.maybeDeferred(TestCA.start, r, **options)
        d.addCallbacks(started, failed)

    r.callWhenRunning(go)
    r.run()


if __name__ == "__main__":
    main()
