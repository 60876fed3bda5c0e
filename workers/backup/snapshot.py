"""An exported REPEATABLE READ snapshot: pg_dump and our row counts see exactly the same data."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from workers.backup.connection import connect, database_error
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

# Ordinary tables only (relkind 'r'): partitions, but not partitioned parents (they hold no rows of
# their own) nor materialized views (pg_dump stores their query, not their rows). The manifest's
# tables and the tables a restore drill expects are both read with this query, so they agree.
_USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
ORDER BY 1, 2
"""


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every ordinary table in conn's database, as pg_dump dumps their rows."""
    return [(str(s), str(t)) for s, t in conn.execute(_USER_TABLES).fetchall()]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A held transaction: its exported id and what we learned inside it."""

    conn: psycopg.Connection[Any]
    snapshot_id: str
    server_version: str
    database_size_bytes: int

    def user_tables(self) -> list[tuple[str, str]]:
        """(schema, table) of every ordinary table, as pg_dump sees them, in this snapshot."""
        return user_tables(self.conn)

    def count_rows(self, tables: Sequence[tuple[str, str]]) -> dict[str, int]:
        """'schema.table' -> rows, read in this snapshot."""
        counts: dict[str, int] = {}
        for schema, table in tables:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            row = self.conn.execute(query).fetchone()
            counts[f"{schema}.{table}"] = int(row[0]) if row else 0
        return counts


@contextmanager
def exported_snapshot(
    target: PostgresTarget, *, lock_wait_timeout_s: float, read_only: bool = True
) -> Iterator[Snapshot]:
    """Open a REPEATABLE READ transaction, export its snapshot and hold it for the block.

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: connecting failed or the connection dropped.
        DatabaseRefused: a statement in the snapshot was refused, e.g. the role may not read a table.
    """
    conn = connect(target)
    try:
        # psycopg opens the transaction with these at the first statement.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = read_only
        # Fail fast rather than queue behind DDL (our counts take ACCESS SHARE locks too).
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_wait_timeout_s * 1000)}ms",))
        row = conn.execute(
            "SELECT pg_export_snapshot(), current_setting('server_version'), pg_database_size(current_database())"
        ).fetchone()
        assert row is not None
        snapshot = Snapshot(conn, str(row[0]), str(row[1]), int(row[2]))
        log.debug("snapshot exported", extra={"snapshot": snapshot.snapshot_id})
        yield snapshot
        conn.rollback()  # read only: nothing to commit; ending the transaction releases the snapshot
    except psycopg.Error as exc:
        raise database_error(target, exc) from exc
    finally:
        conn.close()
