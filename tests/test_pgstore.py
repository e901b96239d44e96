"""
PostgresStore against a real PostgreSQL server (tests/postgres.py): schema and
migrations, entries, keys sealed at rest, leases under concurrency and lapse,
challenge records, LISTEN/NOTIFY (and its reconnection), connection loss, and
store_from_url.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness.postgres import Postgres, PostgresUnavailable, shared_postgres
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.interfaces import ICertificateStore
from txacme.stores.coordination import ChallengeRecord, ICoordinatingStore, LockLost, StoreChange
from txacme.testing import make_pem_objects

_database: str | None = None


def database() -> tuple[Postgres, str]:
    """The shared server and one database for this module (each test has its own schema)."""
    global _database
    try:
        server = shared_postgres()
    except PostgresUnavailable as e:
        raise SkipTest(str(e))
    if _database is None:
        _database = server.new_database()
    return server, _database


def entry(name: str, days: float = 90) -> list[Any]:
    start = datetime.now(timezone.utc)
    return make_pem_objects([name], start, start + timedelta(days=days))


def as_bytes(objects: list[Any]) -> list[bytes]:
    return [o.as_bytes() for o in objects]


class PostgresTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server, self.url = database()
        self.schema = "s_" + uuid.uuid4().hex[:12]

    def make_store(self, **kwargs: Any) -> Any:
        from txacme.stores.postgres import PostgresStore

        kwargs.setdefault("schema", self.schema)
        kwargs.setdefault("reactor", reactor)
        store = PostgresStore(kwargs.pop("url", self.url), **kwargs)
        self.addCleanup(store.close)
        return store

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.server.execute(self.url, query, params)

    @inlineCallbacks
    def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("condition not reached")
            yield deferLater(reactor, 0.01, lambda: None)


class SchemaTests(PostgresTestCase):
    @inlineCallbacks
    def test_created_on_start(self) -> Any:
        """start() creates the schema and tables and records the version."""
        from txacme.stores.postgres import SCHEMA_VERSION

        store = self.make_store()
        self.assertTrue(ICertificateStore.providedBy(store))
        self.assertTrue(ICoordinatingStore.providedBy(store))
        yield store.start()
        self.assertEqual((yield store.schema_version()), SCHEMA_VERSION)
        tables = {
            row[0]
            for row in self.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (self.schema,),
            )
        }
        self.assertEqual(
            tables,
            {"txacme_schema", "txacme_certificates", "txacme_locks", "txacme_challenges"},
        )

    @inlineCallbacks
    def test_concurrent_start_migrates_once(self) -> Any:
        """Processes starting together migrate once (serialized by an advisory lock)."""
        stores = [self.make_store() for _ in range(4)]
        yield DeferredList([s.start() for s in stores], fireOnOneErrback=True)
        rows = self.sql(f'SELECT version FROM "{self.schema}".txacme_schema')
        self.assertEqual(rows, [(1,)])

    @inlineCallbacks
    def test_newer_schema_refused(self) -> Any:
        """A database migrated by a newer txacme is not misread."""
        yield self.make_store().start()
        self.sql(f'UPDATE "{self.schema}".txacme_schema SET version = 99')
        error = yield self.assertFailure(self.make_store().start(), ConfigurationError)
        self.assertIn("version 99", str(error))

    @inlineCallbacks
    def test_later_migration_applied_once(self) -> Any:
        """A new migration is applied to an existing database, once."""
        from txacme.stores import postgres as pgstore

        yield self.make_store().start()
        self.patch(
            pgstore,
            "MIGRATIONS",
            [*pgstore.MIGRATIONS, ["CREATE TABLE {p}txacme_extra (x integer)"]],
        )
        yield DeferredList([self.make_store().start() for _ in range(2)], fireOnOneErrback=True)
        self.assertEqual(self.sql(f'SELECT version FROM "{self.schema}".txacme_schema'), [(2,)])
        self.assertEqual(self.sql(f'SELECT count(*) FROM "{self.schema}".txacme_extra'), [(0,)])

    @inlineCallbacks
    def test_unreachable_server(self) -> Any:
        """A server that is not there fails start() (and every operation) cleanly."""
        from tests.harness.pebble import free_port

        store = self.make_store(
            url=f"postgresql://txacme@127.0.0.1:{free_port()}/x", connect_timeout=2
        )
        yield self.assertFailure(store.get("a.example"), Exception)
        yield self.assertFailure(store.start(), Exception)

    @inlineCallbacks
    def test_close_leaves_no_thread(self) -> Any:
        """close() ends every thread; later operations fail."""
        before = {t.name for t in threading.enumerate()}
        store = self.make_store()
        yield store.store("a.example", entry("a.example"))
        self.assertIn("txacme-postgres-listen", {t.name for t in threading.enumerate()})
        yield store.close()
        after = {t.name for t in threading.enumerate()} - before
        self.assertEqual(after, set())
        yield self.assertFailure(store.get("a.example"), ConfigurationError)

    def test_repr_hides_password(self) -> None:
        """The connection string's password is never shown."""
        store = self.make_store(url="postgresql://u:s3cret@127.0.0.1:1/db")
        self.assertNotIn("s3cret", repr(store))
        self.assertIn("***", repr(store))


class EntryTests(PostgresTestCase):
    @inlineCallbacks
    def test_round_trip(self) -> Any:
        """Entries written by one store are read by another; names are canonical."""
        a, b = self.make_store(), self.make_store()
        objects = entry("a.example")
        yield a.store("A.Example", objects)
        self.assertEqual(as_bytes((yield b.get("a.example"))), as_bytes(objects))
        renewed = entry("a.example")
        yield b.store("a.example", renewed)
        self.assertEqual(as_bytes((yield a.get("a.example"))), as_bytes(renewed))
        all_entries = yield a.as_dict()
        self.assertEqual(list(all_entries), ["a.example"])
        rows = self.sql(f'SELECT version, updated_by FROM "{self.schema}".txacme_certificates')
        self.assertEqual(rows, [(2, b.node_id)])

    @inlineCallbacks
    def test_missing_wanted_removed(self) -> Any:
        """KeyError for unknown names; [] for wanted ones; removal."""
        store = self.make_store()
        yield self.assertFailure(store.get("none.example"), KeyError)
        self.assertTrue((yield store.mark_wanted("w.example")))
        self.assertFalse((yield store.mark_wanted("w.example")))
        self.assertEqual((yield store.get("w.example")), [])
        self.assertEqual((yield store.as_dict()), {"w.example": []})
        objects = entry("w.example")
        yield store.store("w.example", objects)
        self.assertFalse((yield store.mark_wanted("w.example")))  # never truncates
        self.assertTrue((yield store.remove("w.example")))
        self.assertFalse((yield store.remove("w.example")))
        yield self.assertFailure(store.get("w.example"), KeyError)

    @inlineCallbacks
    def test_default_entry(self) -> Any:
        """The default certificate is kept apart from server names."""
        store = self.make_store()
        yield self.assertFailure(store.get_default(), KeyError)
        objects = entry("default.example")
        yield store.store_default(objects)
        self.assertEqual(as_bytes((yield store.get_default())), as_bytes(objects))
        self.assertEqual((yield store.as_dict()), {})

    @inlineCallbacks
    def test_bad_input(self) -> Any:
        """Bad names and entries are refused before reaching the database."""
        store = self.make_store()
        yield self.assertFailure(store.get("../etc/passwd"), InvalidServerName)
        yield self.assertFailure(store.store("a.example", []), ConfigurationError)
        mismatched = [entry("a.example")[0], entry("a.example")[1]]
        yield self.assertFailure(store.store("a.example", mismatched), ConfigurationError)

    @inlineCallbacks
    def test_damaged_row_skipped(self) -> Any:
        """A damaged row is left out of as_dict (the others are read)."""
        store = self.make_store()
        yield store.store("good.example", entry("good.example"))
        self.sql(
            f'INSERT INTO "{self.schema}".txacme_certificates (name, key_data, key_format, '
            "certificates) VALUES ('bad.example', 'junk', 1, 'junk')"
        )
        self.assertEqual(list((yield store.as_dict())), ["good.example"])
        yield self.assertFailure(store.get("bad.example"), ConfigurationError)

    @inlineCallbacks
    def test_connection_loss_retried(self) -> Any:
        """Pooled connections killed by the server are replaced transparently."""
        store = self.make_store(listen=False)
        objects = entry("a.example")
        yield store.store("a.example", objects)
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        self.assertEqual(as_bytes((yield store.get("a.example"))), as_bytes(objects))


class SealedKeyTests(PostgresTestCase):
    def key_file(self, key: bytes | None = None) -> str:
        from txacme.stores.postgres import KeyEncryption

        path = self.mktemp()
        if key is None:
            KeyEncryption.generate_key_file(path)
        else:
            with open(path, "wb") as f:
                f.write(base64.b64encode(key))
        return path

    @inlineCallbacks
    def test_sealed_at_rest(self) -> Any:
        """With a key, private keys are not stored in the clear, and read back."""
        from txacme.stores.postgres import KeyEncryption

        path = self.key_file()
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        sealing = KeyEncryption.from_files(path)
        store = self.make_store(key_encryption=sealing)
        objects = entry("a.example")
        yield store.store("a.example", objects)
        ((key_data, key_format),) = self.sql(
            f'SELECT key_data, key_format FROM "{self.schema}".txacme_certificates'
        )
        self.assertEqual(key_format, 2)
        self.assertNotIn(b"PRIVATE KEY", bytes(key_data))
        self.assertNotIn(objects[0].as_bytes()[40:80], bytes(key_data))
        self.assertEqual(as_bytes((yield store.get("a.example"))), as_bytes(objects))
        self.assertNotIn("PRIVATE", repr(sealing))

    @inlineCallbacks
    def test_wrong_or_missing_key(self) -> Any:
        """Without the key, or with another, sealed entries cannot be read."""
        from txacme.stores.postgres import KeyEncryption

        sealer = self.make_store(key_encryption=KeyEncryption([os.urandom(32)]))
        yield sealer.store("a.example", entry("a.example"))
        error = yield self.assertFailure(self.make_store().get("a.example"), ConfigurationError)
        self.assertIn("sealed", str(error))
        other = self.make_store(key_encryption=KeyEncryption([os.urandom(32)]))
        yield self.assertFailure(other.get("a.example"), ConfigurationError)
        self.assertEqual((yield other.as_dict()), {})

    @inlineCallbacks
    def test_rotation_and_binding(self) -> Any:
        """An old key still unseals; a sealed key copied to another name does not."""
        from txacme.stores.postgres import KeyEncryption

        old, new = os.urandom(32), os.urandom(32)
        yield self.make_store(key_encryption=KeyEncryption([old])).store(
            "a.example", entry("a.example")
        )
        rotated = self.make_store(key_encryption=KeyEncryption([new, old]))
        self.assertEqual(len((yield rotated.get("a.example"))), 2)
        self.sql(
            f'INSERT INTO "{self.schema}".txacme_certificates (name, key_data, key_format, '
            f"certificates) SELECT %s, key_data, key_format, certificates FROM "
            f'"{self.schema}".txacme_certificates WHERE name = %s',
            ("b.example", "a.example"),
        )
        error = yield self.assertFailure(rotated.get("b.example"), ConfigurationError)
        self.assertIn("authentication", str(error))

    def test_key_files(self) -> None:
        """Key files hold 32 raw bytes, hex or base64; anything else is refused."""
        from txacme.stores.postgres import KeyEncryption

        key = os.urandom(32)
        for content in (key, key.hex().encode(), base64.b64encode(key) + b"\n"):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            sealing = KeyEncryption.from_files(path)
            self.assertEqual(KeyEncryption([key]).key_id, sealing.key_id)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"too short")
        self.assertRaises(ConfigurationError, KeyEncryption.from_files, path)
        self.assertRaises(ConfigurationError, KeyEncryption.from_files, path + ".missing")
        self.assertRaises(ConfigurationError, KeyEncryption, [b"short"])


class LockTests(PostgresTestCase):
    @inlineCallbacks
    def test_one_winner(self) -> Any:
        """Many processes trying at once: exactly one lease."""
        stores = [self.make_store(node_id=f"n{i}") for i in range(3)]
        yield DeferredList([s.start() for s in stores])
        results = yield DeferredList(
            [s.try_acquire("x.example", 30) for s in stores for _ in range(5)],
            fireOnOneErrback=True,
        )
        leases = [lease for ok, lease in results if lease is not None]
        self.assertEqual(len(leases), 1)
        self.assertEqual(leases[0].fence, 1)

    @inlineCallbacks
    def test_lapse_fencing_and_takeover(self) -> Any:
        """A lapsed lease is taken over; its holder can neither renew nor write."""
        a, b = self.make_store(node_id="a"), self.make_store(node_id="b")
        old = yield a.try_acquire("x.example", 0.5)
        self.assertIsNotNone(old)
        self.assertIsNone((yield b.try_acquire("x.example", 30)))
        holder = yield b.holder("x.example")
        self.assertEqual(holder[:2], ("a", 1))
        new = yield b.acquire("x.example", 30, timeout=10)
        self.assertEqual((new.owner, new.fence), ("b", 2))
        yield self.assertFailure(a.renew(old), LockLost)
        yield self.assertFailure(a.store_fenced(old, entry("x.example")), LockLost)
        yield self.assertFailure(a.get("x.example"), KeyError)
        self.assertFalse((yield a.release(old)))
        objects = entry("x.example")
        yield b.store_fenced(new, objects)
        self.assertEqual(as_bytes((yield a.get("x.example"))), as_bytes(objects))
        renewed = yield b.renew(new, 30)
        self.assertGreater(renewed.expires_at, new.expires_at)

    @inlineCallbacks
    def test_release_wakes_waiter(self) -> Any:
        """acquire() is woken by the release notification, not only by polling."""
        a, b = self.make_store(node_id="a"), self.make_store(node_id="b")
        changes: list[StoreChange] = []
        b.subscribe(changes.append)
        yield b.start()
        lease = yield a.try_acquire("x.example", 60)
        waiting = b.acquire("x.example", 60, timeout=30)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(waiting.called)
        self.assertTrue((yield a.release(lease)))
        got = yield waiting
        self.assertEqual(got.fence, 2)
        self.assertIn(StoreChange("lock", "x.example", origin="a"), changes)


class ChallengeAndNotifyTests(PostgresTestCase):
    @inlineCallbacks
    def test_challenges(self) -> Any:
        """Records are shared, filtered, expire and are deleted."""
        a, b = self.make_store(node_id="a"), self.make_store(node_id="b")
        record = ChallengeRecord("tls-alpn-01", "A.example", "tok", "tok.ka")
        yield a.put_challenge(record)
        found = yield b.get_challenges("tls-alpn-01", identifier="a.example")
        self.assertEqual(found, [ChallengeRecord("tls-alpn-01", "a.example", "tok", "tok.ka", "a")])
        self.assertEqual((yield b.get_challenges("http-01")), [])
        self.assertEqual(len((yield b.get_challenges("tls-alpn-01", token="tok"))), 1)
        yield b.delete_challenge(found[0])
        self.assertEqual((yield a.get_challenges("tls-alpn-01")), [])
        yield a.put_challenge(ChallengeRecord("http-01", "b.example", "t", "t.k"), ttl=1e-6)
        self.assertEqual((yield b.get_challenges("http-01")), [])
        yield self.assertFailure(
            a.put_challenge(ChallengeRecord("dns-01", "b.example", "t", "t.k")),
            ConfigurationError,
        )

    @inlineCallbacks
    def test_changes_are_notified(self) -> Any:
        """Writes by one process reach the subscribers of another."""
        a, b = self.make_store(node_id="a"), self.make_store(node_id="b")
        changes: list[StoreChange] = []
        b.subscribe(changes.append)
        yield b.start()
        yield a.store("a.example", entry("a.example"))
        yield a.mark_wanted("w.example")
        record = ChallengeRecord("http-01", "a.example", "tok", "tok.k")
        yield a.put_challenge(record)
        yield a.delete_challenge(record)
        yield self.wait_for(lambda: len(changes) >= 4)
        self.assertEqual(
            changes,
            [
                StoreChange("certificate", "a.example", origin="a"),
                StoreChange("certificate", "w.example", origin="a"),
                StoreChange(
                    "challenge", "a.example", challenge_type="http-01", token="tok", origin="a"
                ),
                StoreChange(
                    "challenge",
                    "a.example",
                    deleted=True,
                    challenge_type="http-01",
                    token="tok",
                    origin="a",
                ),
            ],
        )

    @inlineCallbacks
    def test_schemas_do_not_hear_each_other(self) -> Any:
        """Two clusters in two schemas of one database are separate."""
        a = self.make_store()
        b = self.make_store(schema=self.schema + "_other")
        changes: list[StoreChange] = []
        b.subscribe(changes.append)
        yield b.start()
        yield a.store("a.example", entry("a.example"))
        yield b.store("b.example", entry("b.example"))
        yield self.wait_for(lambda: len(changes) >= 1)
        self.assertEqual([c.name for c in changes], ["b.example"])
        self.assertEqual(list((yield b.as_dict())), ["b.example"])

    @inlineCallbacks
    def test_listener_reconnects_and_resyncs(self) -> Any:
        """When the LISTEN connection dies, it comes back and asks for a reload."""
        store = self.make_store()
        changes: list[StoreChange] = []
        store.subscribe(changes.append)
        yield store.start()
        killed = self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        )
        self.assertTrue(killed)
        yield self.wait_for(lambda: StoreChange("resync") in changes)
        other = self.make_store()
        yield other.store("after.example", entry("after.example"))
        yield self.wait_for(lambda: any(c.name == "after.example" for c in changes))


class StoreFromURLTests(PostgresTestCase):
    def test_postgres_options(self) -> None:
        """Options given as strings (as endpoint strings do) are converted."""
        from txacme.stores.postgres import PostgresStore
        from txacme.stores.url import store_from_url

        store = store_from_url(
            self.url,
            schema=self.schema,
            lease_ttl="12.5",
            reactor=reactor,
            lock_timeout="30",
            pool_size="2",
            listen="no",
            node_id="n",
        )
        self.addCleanup(store.close)
        self.assertIsInstance(store, PostgresStore)
        self.assertEqual((store.lease_ttl, store.lock_timeout, store.node_id), (12.5, 30.0, "n"))
        self.assertEqual(store.schema, self.schema)

    def test_key_file(self) -> None:
        """key_file= (and old_key_files=) turn sealing on."""
        from txacme.stores.postgres import KeyEncryption
        from txacme.stores.url import store_from_url

        paths = []
        for _ in range(2):
            path = self.mktemp()
            KeyEncryption.generate_key_file(path)
            paths.append(path)
        store = store_from_url(self.url, key_file=paths[0], old_key_files=paths[1], reactor=reactor)
        self.addCleanup(store.close)
        self.assertIsNotNone(store.key_encryption)
        self.assertRaises(ConfigurationError, store_from_url, self.url, old_key_files=paths[1])

    def test_errors_hide_password(self) -> None:
        """Errors name the bad option, never the password."""
        from txacme.stores.url import store_from_url

        url = "postgresql://u:hunter2@127.0.0.1:1/db"
        for kwargs in ({"colour": "blue"}, {"pool_size": "many"}, {"listen": "maybe"}):
            error = self.assertRaises(ConfigurationError, store_from_url, url, **kwargs)
            self.assertNotIn("hunter2", str(error))
        error = self.assertRaises(ConfigurationError, store_from_url, "redis://u:hunter2@h/0")
        self.assertNotIn("hunter2", str(error))
        self.assertIn("redis", str(error))

    def test_other_stores(self) -> None:
        """Paths and file: URLs are directories; memory: is in memory."""
        from txacme.stores.directory import DirectoryStore
        from txacme.stores.url import store_from_url
        from txacme.testing import MemoryStore

        directory = self.mktemp()
        os.makedirs(directory)
        self.assertIsInstance(store_from_url(directory), DirectoryStore)
        self.assertEqual(
            store_from_url("file://" + os.path.abspath(directory)).path.path,
            os.path.abspath(directory),
        )
        self.assertIsInstance(store_from_url("memory:"), MemoryStore)
        self.assertRaises(ConfigurationError, store_from_url, directory, schema="x")
        self.assertRaises(ConfigurationError, store_from_url, "")
        self.assertRaises(ConfigurationError, store_from_url, "file://elsewhere/x")
