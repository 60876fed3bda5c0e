"""Throwaway databases for restore drills: uniquely named, always dropped, and swept when a drill died.

Each throwaway database is guarded by an advisory lock, named after it, held by the session that
created it for as long as it is in use. A database with our prefix whose lock nobody holds belongs to
a drill that died (SIGKILL, lost connection): the sweep drops it. No clock or age guess is involved.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from workers.backup.connection import connect, connection_error, database_error
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

PREFIX = "ops_verify_"
_NAME = re.compile(r"^ops_verify_\d{8}t\d{6}_[0-9a-f]{8}$")
LOCK_NAMESPACE = "ops-workers.scratch:"
# Advisory locks belong to the database of the session that holds them, and drills of other
# deployments (another OPS_DATABASE_URL on the same server) lock in their own database: look for
# the lock in pg_locks across every database. The drill takes it before CREATE DATABASE, and a dead
# drill's name is never locked again, so nothing can change between this check and the DROP.
_HELD_ANYWHERE = """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks, (SELECT hashtextextended(%s, 0) AS k) AS wanted
        WHERE locktype = 'advisory' AND granted AND objsubid = 1
          AND classid::bigint = (wanted.k >> 32) & 4294967295
          AND objid::bigint = wanted.k & 4294967295
    )
"""


def new_scratch_name(now: datetime) -> str:
    """ops_verify_YYYYMMDDtHHMMSS_xxxxxxxx: sortable, unique, and recognisable by the sweep."""
    return f"{PREFIX}{now.astimezone(UTC).strftime('%Y%m%dt%H%M%S')}_{secrets.token_hex(4)}"


def is_scratch_name(name: str) -> bool:
    return _NAME.match(name) is not None


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    # WITH (FORCE) ends a pg_restore still connected to it (its parent may have died).
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def scratch_database(server: PostgresTarget, now: datetime) -> Iterator[PostgresTarget]:
    """Create an empty throwaway database on server, yield it, and drop it whatever happens.

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: the server could not be reached.
        DatabaseRefused: the server refused, e.g. the role may not create databases.
    """
    name = new_scratch_name(now)
    conn = connect(server, autocommit=True)
    try:
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (LOCK_NAMESPACE + name,))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        log.info("scratch database created", extra={"database": name})
        try:
            yield server.with_dbname(name)
        finally:
            _drop(conn, name)
            log.info("scratch database dropped", extra={"database": name})
    except psycopg.Error as exc:  # e.g. the role may not create databases
        raise database_error(server, exc) from exc
    finally:
        conn.close()


def list_scratch_databases(server: PostgresTarget) -> list[str]:
    """Every throwaway database on server, live or stale."""
    with connect(server, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", (PREFIX + "%",)
        ).fetchall()
    return [str(row[0]) for row in rows if is_scratch_name(str(row[0]))]


def sweep_scratch_databases(server: PostgresTarget, *, dry_run: bool = False) -> list[str]:
    """Drop every throwaway database no live drill holds; return their names (those it would drop if dry_run).

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: the server could not be reached.
    """
    swept: list[str] = []
    try:
        with connect(server, autocommit=True) as conn:
            for name in list_scratch_databases(server):
                row = conn.execute(_HELD_ANYWHERE, (LOCK_NAMESPACE + name,)).fetchone()
                if row and row[0]:
                    continue  # a live drill holds it
                if not dry_run:
                    _drop(conn, name)  # logged by the caller, once per database (cleanup) or per sweep (drill)
                swept.append(name)
    except psycopg.OperationalError as exc:
        raise connection_error(server, exc) from exc
    return swept
