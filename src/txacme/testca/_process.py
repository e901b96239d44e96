"""
Run a :class:`~txacme.testca.TestCA` in a child process, for tests that do not
run a Twisted reactor (plain pytest functions, clients in other languages).
"""

from __future__ import annotations

import datetime
import json
import os
import selectors
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar

from cryptography import x509

from txacme.errors import ConfigurationError

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TestCAProcess:
    """
    A :class:`~txacme.testca.TestCA` serving from a child Python process.

    ``TestCAProcess.start(**options)`` takes the same keyword options as
    :class:`~txacme.testca.TestCA` (JSON-compatible ones: numbers, strings,
    lists, ``dns_server`` as ``[host, port]``, ``profiles`` as ``{name:
    {"description": ..., "lifetime": seconds}}``) and returns once the CA listens.
    Use it as a context manager, or call :meth:`stop`. The control methods talk
    to the CA's loopback management resources (``/testca/...``).
    """

    __test__: ClassVar[bool] = False

    def __init__(self, process: subprocess.Popen[str], info: Mapping[str, Any]) -> None:
        self._process = process
        self.info = dict(info)
        #: The ACME directory URL.
        self.directory_url: str = info["directory_url"]
        #: ``https://127.0.0.1:<port>``.
        self.base_url: str = info["base_url"]
        #: PEM file of the CA of the server's HTTPS certificate (trust it).
        self.https_ca_file: str = info["https_ca_file"]
        #: PEM file of the issuing root.
        self.root_file: str = info["root_file"]
        #: PEM file of every root (default first).
        self.roots_file: str = info["roots_file"]
        #: ``{kid: base64url HMAC key}`` for external account binding.
        self.eab_keys: dict[str, str] = dict(info.get("eab_keys", {}))
        with open(self.root_file, "rb") as f:
            #: PEM of the issuing root.
            self.root_pem: bytes = f.read()
        self._ssl = ssl.create_default_context(cafile=self.https_ca_file)

    @classmethod
    def start(
        cls, *, timeout: float = 30.0, python: str = sys.executable, **options: Any
    ) -> TestCAProcess:
        """Start ``python -m txacme.testca`` with ``options``; wait until it listens."""
        try:
            encoded = json.dumps(options)
        except TypeError as e:
            raise ConfigurationError(f"TestCAProcess options must be JSON-compatible: {e}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [_SOURCE_ROOT, env.get("PYTHONPATH", "")] if p
        )
        # stderr goes to a file: a pipe nobody reads could fill up and block the child.
        errors = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [python, "-m", "txacme.testca", "--options", encoded],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        line = process.stdout.readline() if ready else ""
        if not line:
            process.kill()
            process.communicate()
            errors.seek(0)
            err = errors.read().decode("utf-8", "replace")
            errors.close()
            raise RuntimeError(f"the TestCA process did not start: {err[-2000:]}")
        errors.close()
        return cls(process, json.loads(line))

    def __enter__(self) -> TestCAProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child process with SIGTERM (it deletes its PEM files)."""
        if self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    # -- control ------------------------------------------------------------

    def _call(self, method: str, action: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/testca/{action}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=10) as response:
                payload: bytes = response.read()
                ctype = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raise ConfigurationError(f"TestCA refused {action}: {e.read().decode()[:500]}")
        return json.loads(payload) if ctype.startswith("application/json") else payload

    def now(self) -> datetime.datetime:
        """The CA's clock."""
        value = self._call("GET", "now")["now"]
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))

    def advance(self, seconds: float | datetime.timedelta) -> None:
        """Move the CA's clock forward."""
        if isinstance(seconds, datetime.timedelta):
            seconds = seconds.total_seconds()
        self._call("POST", "advance", {"seconds": seconds})

    def fail_next(
        self,
        problem_type: str,
        detail: str = "injected by TestCA.fail_next",
        *,
        endpoint: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        """See :meth:`TestCA.fail_next`."""
        self._call(
            "POST",
            "fail-next",
            {
                "type": problem_type,
                "detail": detail,
                "endpoint": endpoint,
                "status": status,
                "retry_after": retry_after,
                "count": count,
            },
        )

    def delay_next(self, seconds: float, *, endpoint: str | None = None, count: int = 1) -> None:
        """See :meth:`TestCA.delay_next`."""
        self._call("POST", "delay-next", {"seconds": seconds, "endpoint": endpoint, "count": count})

    def set_renewal_window(
        self,
        cert: x509.Certificate | bytes | str,
        start: datetime.datetime,
        end: datetime.datetime,
        explanation_url: str | None = None,
    ) -> None:
        """See :meth:`TestCA.set_renewal_window`."""
        self._call(
            "POST",
            "renewal-window",
            {
                "cert_id": _cert_id(cert),
                "start": start.isoformat(),
                "end": end.isoformat(),
                "explanation_url": explanation_url,
            },
        )

    def certificate_status(self, cert: x509.Certificate | bytes | str) -> dict[str, Any]:
        """``{"revoked", "revocation_reason", "replaced_by", "renewal_window"}`` of ``cert``."""
        status: dict[str, Any] = self._call("POST", "certificate", {"cert_id": _cert_id(cert)})
        return status

    def configure(self, **settings: Any) -> None:
        """Change ``http01_port``, ``tlsalpn01_port``, ``retry_after``,
        ``bad_nonce_rate`` or ``forbidden_names`` (a list) while running."""
        self._call("POST", "settings", settings)

    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far (as :class:`RequestRecord` dictionaries)."""
        records: list[dict[str, Any]] = self._call("GET", "requests")
        return records


def _cert_id(cert: x509.Certificate | bytes | str) -> str:
    from txacme.testca._model import cert_id_of

    return cert_id_of(cert)


def pytest_fixture(
    *, scope: str = "function", name: str | None = None, **options: Any
) -> Callable[..., Iterator[TestCAProcess]]:
    """
    Make a pytest fixture yielding a running :class:`TestCAProcess`::

        # conftest.py
        from txacme import testca
        acme_ca = testca.pytest_fixture(http01_port=5002)

    (In a ``conftest.py``, do not import the function under its own name: pytest
    takes every ``pytest_*`` name there for a hook, and stops on an unknown one.)

    :param scope: the pytest fixture scope.
    :param name: the fixture name (default: the variable it is assigned to).
    :param options: :class:`~txacme.testca.TestCA` options (JSON-compatible).
    """
    import pytest

    def fixture() -> Iterator[TestCAProcess]:
        with TestCAProcess.start(**options) as ca:
            yield ca

    decorated: Callable[..., Iterator[TestCAProcess]] = pytest.fixture(
        scope=scope,
        name=name,  # type: ignore[call-overload]
    )(fixture)
    return decorated
