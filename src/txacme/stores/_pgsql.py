"""
The SQL of :class:`txacme.stores.postgres.PostgresStore`: :class:`StoreSQL`
runs each operation on one connection, blocking, in a pool thread; the store
checks the arguments first and calls it through its
:class:`~txacme.stores._pgconnection.ConnectionPool`.

Every write sends its change notification in its own transaction, so it is
delivered only if the write commits. Lock expiries are computed by the database
clock (``clock_timestamp()``), so hosts with skewed clocks agree on who holds a
lock.

psycopg (the optional ``postgres`` extra) is imported where it is used.

May import the core modules and the rest of :mod:`txacme.stores`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

import pem

from txacme.errors import ConfigurationError
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.stores.coordination import ChallengeRecord, Lease, LockLost
from txacme.stores.keysealing import KeyEncryption

if TYPE_CHECKING:
    from psycopg import sql

    from txacme.stores._pgconnection import Connection

log = Logger()

KEY_PLAIN = 1
"""``key_format`` of a private key stored as PEM."""

KEY_SEALED = 2
"""``key_format`` of a private key sealed by :class:`~txacme.stores.keysealing.KeyEncryption`."""

DEFAULT_ROW = ""
"""The ``name`` of the default entry's row (no server name is empty)."""

Prepared = tuple[bytes, int, str, datetime]
"""A validated entry as its row holds it: key data, key format, certificates, ``not_after``."""


def entry_from_row(
    name: str,
    key_data: bytes | None,
    key_format: int,
    certificates: str,
    sealer: KeyEncryption | None,
) -> list[pem.AbstractPEMObject]:
    """The PEM objects of a ``txacme_certificates`` row: ``[]`` for a wanted name."""
    if key_data is None:
        return []
    if key_format == KEY_SEALED:
        if sealer is None:
            raise ConfigurationError(
                f"{name}: the private key is sealed, and no key_encryption was given"
            )
        key_pem = sealer.unseal(name, bytes(key_data))
    else:
        key_pem = bytes(key_data)
    objects = pem.parse(key_pem) + pem.parse(certificates.encode("ascii"))
    if len(objects) < 2 or not isinstance(objects[0], pem.PrivateKey):
        raise ConfigurationError(f"{name}: the stored entry is damaged")
    return objects


class StoreSQL:
    """
    The tables of one store (in ``schema``, or the connection's
    ``search_path``) and the SQL run on them. Every method but the constructor
    takes a connection and blocks: call it in a pool thread.

    :ivar channel: the LISTEN/NOTIFY channel of the store's changes.
    """

    def __init__(self, schema: str | None, node_id: str) -> None:
        from psycopg import sql

        def table(name: str) -> sql.Identifier:
            if schema is None:
                return sql.Identifier(name)
            return sql.Identifier(schema, name)

        self.schema = schema
        self.node_id = node_id
        self.certificates = table("txacme_certificates")
        self.locks = table("txacme_locks")
        self.challenges = table("txacme_challenges")
        self.versions = table("txacme_schema")
        self.channel = "txacme" if schema is None else f"txacme.{schema}"

    # -- schema ----------------------------------------------------------------

    def migrate(self, conn: Connection, migrations: list[list[str]]) -> int:
        """
        Create or migrate the tables to version ``len(migrations)``, under a
        transaction-level advisory lock (processes starting together migrate once).

        :return: the schema version.
        :raises txacme.errors.ConfigurationError: when the database is newer.
        """
        from psycopg import sql

        prefix = "" if self.schema is None else sql.Identifier(self.schema).as_string(conn) + "."
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('txacme schema migration'))")
            if self.schema is not None:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer NOT NULL)").format(
                    self.versions
                )
            )
            version = self.schema_version(conn)
            known = len(migrations)
            if version > known:
                raise ConfigurationError(
                    f"the database schema is version {version}, newer than this txacme "
                    f"knows ({known}); upgrade txacme"
                )
            for index in range(version, known):
                for statement in migrations[index]:
                    conn.execute(statement.replace("{p}", prefix))
                log.info(
                    "migrated the PostgreSQL store to schema version {version}", version=index + 1
                )
            if version != known:
                conn.execute(sql.SQL("DELETE FROM {}").format(self.versions))
                conn.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(self.versions),
                    (known,),
                )
            return known

    def schema_version(self, conn: Connection) -> int:
        """The schema version recorded in the database (0 for none)."""
        from psycopg import sql

        row = conn.execute(sql.SQL("SELECT max(version) FROM {}").format(self.versions)).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    # -- notification ------------------------------------------------------------

    def notify(self, conn: Connection, payload: dict[str, str | bool]) -> None:
        """Send a change notification (in the current transaction)."""
        payload["o"] = self.node_id
        conn.execute(
            "SELECT pg_notify(%s, %s)", (self.channel, json.dumps(payload, separators=(",", ":")))
        )

    # -- certificates ------------------------------------------------------------

    def entry(
        self, conn: Connection, name: str, sealer: KeyEncryption | None
    ) -> list[pem.AbstractPEMObject] | None:
        """The entry of ``name`` (``[]`` when wanted), or ``None`` when it has no row."""
        from psycopg import sql

        query = sql.SQL("SELECT key_data, key_format, certificates FROM {} WHERE name = %s").format(
            self.certificates
        )
        row = conn.execute(query, (name,)).fetchone()
        if row is None:
            return None
        return entry_from_row(name, row[0], row[1], row[2], sealer)

    def entries(
        self, conn: Connection, sealer: KeyEncryption | None
    ) -> dict[str, list[pem.AbstractPEMObject]]:
        """Every entry but the default by name; damaged entries are logged and left out."""
        from psycopg import sql

        query = sql.SQL(
            "SELECT name, key_data, key_format, certificates FROM {} WHERE name <> %s"
        ).format(self.certificates)
        result: dict[str, list[pem.AbstractPEMObject]] = {}
        with conn.cursor() as cursor:
            cursor.execute(query, (DEFAULT_ROW,))
            for name, key_data, key_format, certificates in cursor:
                try:
                    result[name] = entry_from_row(name, key_data, key_format, certificates, sealer)
                except (ConfigurationError, ValueError, UnicodeError) as e:
                    log.error(
                        "skipping the damaged entry {name}: {reason}", name=name, reason=str(e)
                    )
        return result

    def _upsert(self, conn: Connection, name: str, prepared: Prepared) -> None:
        from psycopg import sql

        conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS c (name, key_data, key_format, certificates, not_after, "
                "updated_by) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET key_data = EXCLUDED.key_data, "
                "key_format = EXCLUDED.key_format, certificates = EXCLUDED.certificates, "
                "not_after = EXCLUDED.not_after, updated_by = EXCLUDED.updated_by, "
                "version = c.version + 1, updated_at = clock_timestamp()"
            ).format(t=self.certificates),
            (name, *prepared, self.node_id),
        )
        self.notify(conn, {"k": "c", "n": name})

    def store(self, conn: Connection, name: str, prepared: Prepared) -> None:
        """Replace the entry of ``name`` (one transaction); notify."""
        with conn.transaction():
            self._upsert(conn, name, prepared)

    def store_fenced(self, conn: Connection, lease: Lease, name: str, prepared: Prepared) -> None:
        """
        Replace the entry of ``name`` if ``lease`` still holds its lock, checked
        in the same transaction; notify.

        :raises txacme.stores.coordination.LockLost: when it does not (nothing written).
        """
        from psycopg import sql

        check = sql.SQL(
            "SELECT 1 FROM {} WHERE name = %s AND lease_id = %s "
            "AND expires_at > clock_timestamp() FOR UPDATE"
        ).format(self.locks)
        with conn.transaction():
            if conn.execute(check, (name, lease.lease_id)).fetchone() is None:
                raise LockLost(f"the lease on {name} was lost; not storing")
            self._upsert(conn, name, prepared)

    def mark_wanted(self, conn: Connection, name: str) -> bool:
        """Create an empty entry unless one exists; notify when created."""
        from psycopg import sql

        query = sql.SQL(
            "INSERT INTO {} (name, updated_by) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING "
            "RETURNING 1"
        ).format(self.certificates)
        with conn.transaction():
            created = conn.execute(query, (name, self.node_id)).fetchone() is not None
            if created:
                self.notify(conn, {"k": "c", "n": name})
            return created

    def remove(self, conn: Connection, name: str) -> bool:
        """Delete the entry of ``name``; notify when there was one."""
        from psycopg import sql

        query = sql.SQL("DELETE FROM {} WHERE name = %s RETURNING 1").format(self.certificates)
        with conn.transaction():
            removed = conn.execute(query, (name,)).fetchone() is not None
            if removed:
                self.notify(conn, {"k": "c", "n": name})
            return removed

    # -- locks -----------------------------------------------------------------

    def take_lock(
        self, conn: Connection, name: str, ttl: float, lease_id: str
    ) -> tuple[Lease | None, float]:
        """
        Take the lock of ``name`` as ``lease_id`` if it is free (or already
        ours): the lease, or ``None`` and the seconds left on the holder's lease.
        """
        from psycopg import sql

        take = sql.SQL(
            "INSERT INTO {t} AS l (name, lease_id, owner, fence, expires_at) "
            "VALUES (%(name)s, %(lease)s, %(owner)s, 1, "
            "clock_timestamp() + make_interval(secs => %(ttl)s)) "
            "ON CONFLICT (name) DO UPDATE SET lease_id = EXCLUDED.lease_id, "
            "owner = EXCLUDED.owner, fence = l.fence + 1, expires_at = EXCLUDED.expires_at "
            "WHERE l.expires_at <= clock_timestamp() OR l.lease_id = EXCLUDED.lease_id "
            "RETURNING fence, extract(epoch FROM expires_at)"
        ).format(t=self.locks)
        holder = sql.SQL(
            "SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM {} WHERE name = %s"
        ).format(self.locks)
        row = conn.execute(
            take, {"name": name, "lease": lease_id, "owner": self.node_id, "ttl": ttl}
        ).fetchone()
        if row is not None:
            return Lease(name, lease_id, int(row[0]), self.node_id, float(row[1])), 0.0
        left = conn.execute(holder, (name,)).fetchone()
        return None, float(left[0]) if left is not None else 0.0

    def renew_lock(self, conn: Connection, lease: Lease, ttl: float) -> Lease:
        """
        Extend ``lease`` by ``ttl`` seconds from now.

        :raises txacme.stores.coordination.LockLost: when it lapsed or was taken over.
        """
        from psycopg import sql

        query = sql.SQL(
            "UPDATE {} SET expires_at = clock_timestamp() + make_interval(secs => %s) "
            "WHERE name = %s AND lease_id = %s AND expires_at > clock_timestamp() "
            "RETURNING extract(epoch FROM expires_at)"
        ).format(self.locks)
        row = conn.execute(query, (ttl, lease.name, lease.lease_id)).fetchone()
        if row is None:
            raise LockLost(f"the lease on {lease.name} was lost")
        return Lease(lease.name, lease.lease_id, lease.fence, lease.owner, float(row[0]))

    def release_lock(self, conn: Connection, lease: Lease) -> bool:
        """Give the lock back and notify; ``False`` when the lease was already lost."""
        from psycopg import sql

        query = sql.SQL(
            "UPDATE {} SET lease_id = NULL, owner = NULL, expires_at = '-infinity' "
            "WHERE name = %s AND lease_id = %s AND expires_at > clock_timestamp() RETURNING 1"
        ).format(self.locks)
        with conn.transaction():
            released = conn.execute(query, (lease.name, lease.lease_id)).fetchone() is not None
            if released:
                self.notify(conn, {"k": "l", "n": lease.name})
            return released

    def lock_holder(self, conn: Connection, name: str) -> tuple[str, int, float] | None:
        """``(owner, fence, seconds left)`` of the live lease on ``name``, or ``None``."""
        from psycopg import sql

        query = sql.SQL(
            "SELECT owner, fence, extract(epoch FROM expires_at - clock_timestamp()) FROM {} "
            "WHERE name = %s AND expires_at > clock_timestamp()"
        ).format(self.locks)
        row = conn.execute(query, (normalize_server_name(name),)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), float(row[2]))

    # -- challenges ------------------------------------------------------------------

    def put_challenge(self, conn: Connection, record: ChallengeRecord, ttl: float) -> None:
        """Write ``record`` expiring after ``ttl`` seconds (purging expired ones); notify."""
        from psycopg import sql

        query = sql.SQL(
            "INSERT INTO {} (challenge_type, identifier, token, key_authorization, owner, "
            "expires_at) VALUES (%s, %s, %s, %s, %s, "
            "clock_timestamp() + make_interval(secs => %s)) "
            "ON CONFLICT (challenge_type, identifier, token) DO UPDATE SET "
            "key_authorization = EXCLUDED.key_authorization, owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at"
        ).format(self.challenges)
        purge = sql.SQL("DELETE FROM {} WHERE expires_at < clock_timestamp()").format(
            self.challenges
        )
        with conn.transaction():
            conn.execute(purge)
            conn.execute(
                query,
                (
                    record.challenge_type,
                    record.identifier,
                    record.token,
                    record.key_authorization,
                    record.owner,
                    ttl,
                ),
            )
            self.notify(
                conn,
                {"k": "h", "n": record.identifier, "t": record.challenge_type, "tok": record.token},
            )

    def get_challenges(
        self,
        conn: Connection,
        challenge_type: str,
        identifier: str | None,
        token: str | None,
    ) -> list[ChallengeRecord]:
        """The unexpired records of ``challenge_type`` matching the filters."""
        from psycopg import sql

        query = sql.SQL(
            "SELECT challenge_type, identifier, token, key_authorization, owner FROM {} "
            "WHERE challenge_type = %s AND (%s::text IS NULL OR identifier = %s) "
            "AND (%s::text IS NULL OR token = %s) AND expires_at > clock_timestamp()"
        ).format(self.challenges)
        rows = conn.execute(
            query, (challenge_type, identifier, identifier, token, token)
        ).fetchall()
        return [ChallengeRecord(*row) for row in rows]

    def delete_challenge(self, conn: Connection, record: ChallengeRecord) -> None:
        """Delete ``record`` (no-op when gone); notify when it was there."""
        from psycopg import sql

        query = sql.SQL(
            "DELETE FROM {} WHERE challenge_type = %s AND identifier = %s AND token = %s "
            "RETURNING 1"
        ).format(self.challenges)
        with conn.transaction():
            row = conn.execute(
                query, (record.challenge_type, record.identifier, record.token)
            ).fetchone()
            if row is not None:
                self.notify(
                    conn,
                    {
                        "k": "h",
                        "n": record.identifier,
                        "t": record.challenge_type,
                        "tok": record.token,
                        "d": True,
                    },
                )


__all__ = ["DEFAULT_ROW", "KEY_PLAIN", "KEY_SEALED", "StoreSQL", "entry_from_row"]
