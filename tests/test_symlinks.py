"""
The store reads only its own files: a ``<name>.pem`` (or ``client.key``) that is
a symbolic link, to another service's key outside the directory or to another
entry inside it, is refused with one log line naming the file: not loaded, not
served, not overwritten, not issued; the in-process store, and a real
``twistd web --port acme:...`` serving TLS.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from twisted.logger import formatEvent

from tests.harness.logcapture import captured_logs
from tests.harness.processes import free_port
from tests.harness.tlsclient import tls_exchange
from tests.harness.twistd import quote, start_web
from txacme._files import NotOwnFile, read_own_file
from txacme.errors import ConfigurationError
from txacme.keys import load_or_create_client_key
from txacme.stores.directory import DirectoryStore, load_entry, write_entry
from txacme.testing import make_pem_objects


def _entry_bytes(name: str) -> bytes:
    return b"".join(o.as_bytes() for o in make_pem_objects([name]))


@pytest.fixture
def tree() -> Iterator[Path]:
    """``certs/`` (the store) and ``other/secret.pem``: another service's 0600 key and cert."""
    with tempfile.TemporaryDirectory(prefix="txacme-links-") as d:
        root = Path(d)
        (root / "certs").mkdir()
        (root / "other").mkdir()
        secret = root / "other" / "secret.pem"
        write_entry(str(secret), _entry_bytes("evil.example.test"))
        os.chmod(secret, 0o600)
        yield root


def _messages(events: list[Any]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_read_own_file_refuses_links(tree: Path) -> None:
    link = tree / "certs" / "evil.example.test.pem"
    link.symlink_to(tree / "other" / "secret.pem")
    with pytest.raises(NotOwnFile) as caught:
        read_own_file(str(link))
    assert str(link) in str(caught.value)
    assert "symbolic link" in str(caught.value)
    with pytest.raises(FileNotFoundError):
        read_own_file(str(tree / "certs" / "absent.pem"))


def test_fifo_refused_without_blocking(tree: Path) -> None:
    fifo = tree / "certs" / "fifo.example.test.pem"
    os.mkfifo(fifo)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        load_entry(str(fifo))


def test_store_refuses_link_outside(tree: Path) -> None:
    certs = tree / "certs"
    write_entry(str(certs / "good.example.test.pem"), _entry_bytes("good.example.test"))
    link = certs / "evil.example.test.pem"
    link.symlink_to(tree / "other" / "secret.pem")
    before = (tree / "other" / "secret.pem").read_bytes()
    store = DirectoryStore(str(certs))

    failures: list[Any] = []
    store.get("evil.example.test").addErrback(failures.append)
    assert failures and failures[0].check(ConfigurationError)
    assert str(link) in str(failures[0].value)

    with captured_logs() as events:
        entries: list[Any] = []
        store.as_dict().addCallback(entries.append)
    assert set(entries[0]) == {"good.example.test"}
    lines = [m for m in _messages(events) if "evil.example.test" in m]
    assert len(lines) == 1, lines
    assert str(link) in lines[0] and "symbolic link" in lines[0]

    # Not "issue this name": the link is never replaced by an empty entry.
    created: list[bool] = []
    store.mark_wanted("evil.example.test").addCallback(created.append)
    assert created == [False]
    assert link.is_symlink()
    assert (tree / "other" / "secret.pem").read_bytes() == before
    assert isinstance(store.scan()["evil.example.test"], ConfigurationError)


def test_store_never_replaces_a_link(tree: Path) -> None:
    """A certificate obtained for the name (on demand, say) is not written over the link."""
    link = tree / "certs" / "evil.example.test.pem"
    link.symlink_to(tree / "other" / "secret.pem")
    before = (tree / "other" / "secret.pem").read_bytes()
    failures: list[Any] = []
    store = DirectoryStore(str(tree / "certs"))
    store.store("evil.example.test", make_pem_objects(["evil.example.test"])).addErrback(
        failures.append
    )
    assert failures and failures[0].check(ConfigurationError)
    assert str(link) in str(failures[0].value)
    assert link.is_symlink()
    assert (tree / "other" / "secret.pem").read_bytes() == before


def test_store_refuses_link_inside(tree: Path) -> None:
    """A link to another entry of the same directory is refused too (the simple rule)."""
    certs = tree / "certs"
    write_entry(str(certs / "good.example.test.pem"), _entry_bytes("good.example.test"))
    (certs / "alias.example.test.pem").symlink_to("good.example.test.pem")
    with pytest.raises(ConfigurationError, match="symbolic link"):
        load_entry(str(certs / "alias.example.test.pem"))
    entries: list[Any] = []
    DirectoryStore(str(certs)).as_dict().addCallback(entries.append)
    assert set(entries[0]) == {"good.example.test"}


def test_client_key_link_refused(tree: Path) -> None:
    key_link = tree / "certs" / "client.key"
    key_link.symlink_to(tree / "other" / "secret.pem")
    with pytest.raises(ConfigurationError) as caught:
        load_or_create_client_key(str(key_link))
    assert str(key_link) in str(caught.value) and "symbolic link" in str(caught.value)
    assert key_link.is_symlink()


def test_dangling_client_key_link_not_followed(tree: Path) -> None:
    """A dangling link is not written through (the key is not created elsewhere)."""
    key_link = tree / "certs" / "client.key"
    target = tree / "other" / "planted.key"
    key_link.symlink_to(target)
    with pytest.raises(ConfigurationError):
        load_or_create_client_key(str(key_link))
    assert not target.exists()


# -- through twistd -------------------------------------------------------------------


def _names(der: bytes | None) -> list[str]:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


def _handshake(port: int, name: str) -> bytes | None:
    """The DER served for ``name``, or ``None`` when the handshake is refused."""
    try:
        return tls_exchange(port, name).der
    except (ssl.SSLError, ConnectionError):
        return None


def test_twistd_does_not_serve_linked_key(tree: Path) -> None:
    certs = tree / "certs"
    write_entry(str(certs / "good.example.test.pem"), _entry_bytes("good.example.test"))
    link = certs / "evil.example.test.pem"
    link.symlink_to(tree / "other" / "secret.pem")
    before = (tree / "other" / "secret.pem").read_bytes()
    (tree / "site").mkdir()
    port = free_port()
    unreachable_ca = f"https://127.0.0.1:{free_port()}/dir"
    description = (
        f"acme:{quote(str(certs))}:tcp:{port}:interface=127.0.0.1"
        f":directory={quote(unreachable_ca)}:watch_interval=0.2"
    )
    log_path = tree / "twistd.log"
    proc = start_web(description, tree / "site", tree, log_path)
    try:
        deadline = time.monotonic() + 20
        good = None
        while good is None and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            good = _handshake(port, "good.example.test")
            if good is None:
                time.sleep(0.1)
        assert good is not None and _names(good) == ["good.example.test"], log_path.read_text()

        evil = _handshake(port, "evil.example.test")
        assert evil is None or "evil.example.test" not in _names(evil)

        time.sleep(1.0)  # a watch cycle: the link is still refused, not replaced
        evil = _handshake(port, "evil.example.test")
        assert evil is None or "evil.example.test" not in _names(evil)
        text = log_path.read_text()
        refused = [line for line in text.splitlines() if f"{link} is a symbolic link" in line]
        assert len(refused) == 1, text
        assert "Unhandled Error" not in text
        assert link.is_symlink()
        assert (tree / "other" / "secret.pem").read_bytes() == before
        assert "obtaining a certificate for evil.example.test" not in text
    finally:
        proc.terminate()
        proc.wait(10)
