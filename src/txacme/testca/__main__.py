"""
``python -m txacme.testca``: serve a TestCA until SIGINT or SIGTERM.

Once listening it prints one JSON line on stdout (``directory_url``,
``base_url``, ``https_ca_file``, ``root_file``, ``roots_file``, ``eab_keys``),
writes the same JSON to ``--info-file`` if given, and says where it listens on
stderr. ``--export-dir`` copies the public PEM files (``https-ca.pem``,
``root.pem``, ``roots.pem``) to a directory of your choice, readable by all, and
the JSON names those copies. Standard input is not read: the CA runs under
``nohup``, systemd or a CI background step. On a signal it stops and deletes its
PEM files, their copies and the info file; it exits with status 1 if it could
not start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from txacme.testca._model import Profile
from txacme.testca._server import TestCA


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as f:
        f.write(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Parse options, start the CA, run the reactor."""
    parser = argparse.ArgumentParser(prog="python -m txacme.testca", description=__doc__)
    parser.add_argument("--options", default="{}", help="TestCA keyword options as JSON")
    parser.add_argument("--port", type=int, help="HTTPS port on 127.0.0.1")
    parser.add_argument("--http01-port", type=int, help="where http-01 validation connects")
    parser.add_argument("--tlsalpn01-port", type=int, help="where tls-alpn-01 validation connects")
    parser.add_argument(
        "--info-file", help="write the JSON line here too once listening (removed on exit)"
    )
    parser.add_argument(
        "--export-dir", help="copy the public PEM files here (removed on exit); the JSON names them"
    )
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

    status = [0]
    written: list[str] = []

    def cleanup() -> None:
        for path in written:
            _remove(path)

    def started(ca: TestCA) -> None:
        r.addSystemEventTrigger("before", "shutdown", ca.stop)
        r.addSystemEventTrigger("after", "shutdown", cleanup)
        info: dict[str, Any] = {
            "directory_url": ca.directory_url,
            "base_url": ca.base_url,
            "https_ca_file": ca.https_ca_file,
            "root_file": ca.root_file,
            "roots_file": ca.roots_file,
            "eab_keys": ca.eab_keys,
        }
        if args.export_dir:
            os.makedirs(args.export_dir, exist_ok=True)
            for key in ("https_ca_file", "root_file", "roots_file"):
                copy = os.path.join(os.path.abspath(args.export_dir), os.path.basename(info[key]))
                with open(info[key], "rb") as f:
                    _write_atomically(copy, f.read())
                written.append(copy)
                info[key] = copy
        line = json.dumps(info) + "\n"
        if args.info_file:
            _write_atomically(args.info_file, line.encode("utf-8"))
            written.append(args.info_file)
        sys.stdout.write(line)
        sys.stdout.flush()
        sys.stderr.write(
            f"TestCA listening on {ca.base_url}: directory {ca.directory_url}, "
            f"HTTPS CA {info['https_ca_file']}; http-01 validates on "
            f"{ca.http01_host}:{ca.http01_port}, tls-alpn-01 on "
            f"{ca.tlsalpn01_host}:{ca.tlsalpn01_port}. Stop with SIGTERM or Ctrl-C.\n"
        )
        sys.stderr.flush()

    def failed(failure: Failure) -> None:
        sys.stderr.write(f"TestCA failed to start: {failure.getErrorMessage()}\n")
        status[0] = 1
        r.stop()

    def go() -> None:
        d: defer.Deferred[TestCA] = defer.maybeDeferred(TestCA.start, r, **options)
        d.addCallbacks(started, failed)

    r.callWhenRunning(go)
    r.run()
    if status[0]:
        sys.exit(status[0])


if __name__ == "__main__":
    main()
