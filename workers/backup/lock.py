"""One backup per scope at a time: a PostgreSQL advisory lock held by a session; it dies with its holder."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import psycopg

from workers.backup.connection import connect, database_error
from workers.errors import AlreadyRunning
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

# Namespace for the lock's name, so our advisory locks cannot collide with the platform's own.
LOCK_NAMESPACE = "ops-workers.backup:"
# A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
# pg_locks lists the locks of every database of the server: the scope names the database anyway.
_HELD = """
SELECT scope FROM unnest(%s::text[]) AS scope
WHERE EXISTS (
    SELECT 1 FROM pg_locks, (SELECT hashtextextended(%s || scope, 0) AS k) AS wanted
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND classid::bigint = (wanted.k >> 32) & 4294967295
      AND objid::bigint = wanted.k & 4294967295
)
"""


@contextmanager
def backup_lock(target: PostgresTarget, scope: str) -> Iterator[None]:
    """Hold the advisory lock named scope on target's database for the block.

    The lock lives in its own session: if this process dies (even by SIGKILL) the server ends the
    session and the lock is gone, so a crashed backup never blocks the next one.

    Raises:
        AlreadyRunning: another session holds it; nothing was done.
        DatabaseUnavailable, DatabaseAuthenticationFailed: the database could not be reached.
        DatabaseRefused: the role may not take advisory locks there.
    """
    conn = connect(target, autocommit=True)
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (LOCK_NAMESPACE + scope,)).fetchone()
        if not row or not row[0]:
            raise AlreadyRunning(f"a backup of {scope}")
        log.debug("backup lock taken", extra={"scope": scope})
        yield
    except psycopg.Error as exc:
        raise database_error(target, exc) from exc
    finally:
        conn.close()  # ends the session, which releases the lock


def held_backup_locks(target: PostgresTarget, scopes: Collection[str]) -> set[str]:
    """The scopes among these whose backup lock a session holds right now: a backup of them is running.

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: the database could not be reached.
        DatabaseRefused: the server refused the query.
    """
    if not scopes:
        return set()
    conn = connect(target, autocommit=True)
    try:
        rows = conn.execute(_HELD, (sorted(scopes), LOCK_NAMESPACE)).fetchall()
    except psycopg.Error as exc:
        raise database_error(target, exc) from exc
    finally:
        conn.close()
    return {str(row[0]) for row in rows}
