"""
Execute the Python examples of documentation pages: each page's blocks in order
in one namespace, as a reader pasting them into one file would (``python -m
tests.harness.docexec`` reads a JSON request on stdin, prints JSON results; one
process for every page).

The namespace starts with the names the pages use without defining them (the
"fixtures"): ``reactor``, ``store`` (a MemoryStore), ``key``, ``client_creator``
(a client of the test CA), ``sub_endpoint`` (TCP on a free loopback port),
``site``, ``root`` (a web resource), ``service`` (an AcmeIssuingService over ``store``), ``index``,
``creator``, ``url``, ``token``. Absolute paths under ``/srv``, ``/etc`` and
``/var`` are moved under the page's ``root`` directory (their parents
created, a few files the examples read written first), and the well-known
ports (80, 443, 5223, 9100) replaced by free ones. The reactor runs while
the blocks execute, so top-level ``await`` works; every listening port is
closed at the end.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from typing import Any

PATH = re.compile(r"""(?<![\w:/.])(/(?:srv|etc|var)/[^\s"'),]*)""")

TSIG_KEY = (
    'key "txacme" {\n\talgorithm hmac-sha256;\n'
    '\tsecret "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw==";\n};\n'
)


def relocate(source: str, root: str) -> str:
    """Move the absolute paths of ``source`` under ``root``; prepare what they need."""

    def move(match: re.Match[str]) -> str:
        path = root + match.group(1)
        if path.endswith("/"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if path.endswith("tsig.key") and not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(TSIG_KEY)
            elif path.endswith("-token") and not os.path.exists(path):
                with open(path, "w") as f:
                    f.write("example-token\n")
            elif "." not in os.path.basename(path) and "certs" in path:
                os.makedirs(path, exist_ok=True)
        return path

    source = PATH.sub(move, source)
    # Well-known ports: a free one instead.
    source = re.sub(r"listenTCP\((80|443|5223|9100),", "listenTCP(0,", source)
    return re.sub(r"\btcp:(80|443|5223|9100)\b", "tcp:0", source)


async def run(reactor: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Run each page of the request in a namespace of its own; one result per block."""
    results = []
    for page in request["pages"]:
        os.chdir(page["root"])
        results += await run_page(reactor, request["ca"], page["root"], page["blocks"])
    return results


async def run_page(
    reactor: Any, ca: dict[str, str], root: str, blocks: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Execute one page's ``blocks`` in order in one namespace of fixtures."""
    import ast

    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from txacme import AcmeIssuingService, Client
    from txacme.keys import generate_private_key, jwk_for
    from txacme.serving.index import CertificateIndex
    from txacme.serving.tls import SNIConnectionCreator
    from txacme.testing import MemoryStore

    key = jwk_for(generate_private_key())

    def client_creator() -> Any:
        return Client.from_url(reactor, ca["directory_url"], key, ca_file=ca["https_ca_file"])

    store = MemoryStore()
    index = CertificateIndex()
    namespace: dict[str, Any] = {
        "__name__": "__docexample__",
        "reactor": reactor,
        "store": store,
        "key": key,
        "client_creator": client_creator,
        "sub_endpoint": TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        "site": Site(Resource()),
        "root": Resource(),
        "service": AcmeIssuingService(store, client_creator, reactor, []),
        "index": index,
        "creator": SNIConnectionCreator(index),
        "url": "postgresql://txacme@127.0.0.1:1/txacme",
        "token": "example-token",
    }
    results = []
    for block in blocks:
        source = relocate(block["source"], root)
        try:
            code = compile(source, block["where"], "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            outcome = eval(code, namespace)  # noqa: S307 - the documentation's own example
            if outcome is not None and hasattr(outcome, "__await__"):
                await ensureDeferred(outcome)
            # Let anything the block started take its first step.
            pause: Deferred[None] = Deferred()
            reactor.callLater(0.05, pause.callback, None)
            await pause
        except BaseException:
            results.append({"where": block["where"], "error": traceback.format_exc()})
        else:
            results.append({"where": block["where"], "error": None})
    for port in list(reactor.getReaders()):
        if hasattr(port, "stopListening"):
            await port.stopListening()
    return results


def main() -> None:
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    request = json.load(sys.stdin)
    sys.path.insert(0, request["examples"])

    async def go(reactor: Any) -> None:
        results = await run(reactor, request)
        sys.stdout.write(json.dumps(results) + "\n")
        sys.stdout.flush()

    react(lambda reactor: ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
