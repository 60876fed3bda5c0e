"""Backup leases: PostgreSQL advisory locks that keep cleanup away from a backup being verified or restored.

Readers (verify, restore) hold a shared lock on the backup's id for as long as they use it; cleanup
takes the exclusive lock of each backup before deleting it and skips the ones it cannot get. The
locks live in a server session, so a reader that dies, even by SIGKILL, releases its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from workers.backup.connection import connect, connection_error
from workers.errors import BackupInUse
from workers.settings import PostgresTarget, Settings

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "ops-workers.backup-lease:"
# How long a reader waits for a deletion in progress (which holds the exclusive lock briefly).
READER_WAIT_S = 30.0


def lease_server(settings: Settings) -> PostgresTarget:
    """Where leases and throwaway databases live: OPS_BACKUP_VERIFY_DATABASE_URL, else the platform's server."""
    return settings.backup.verify_database or settings.platform_database()


@contextmanager
def reading_lease(server: PostgresTarget, backup_id: str, *, wait_s: float = READER_WAIT_S) -> Iterator[None]:
    """Hold a shared lease on backup_id for the block, so cleanup leaves the backup alone.

    Raises:
        BackupInUse: cleanup held the backup (it is being deleted) for longer than wait_s.
        DatabaseUnavailable, DatabaseAuthenticationFailed: the server could not be reached.
    """
    conn = connect(server, autocommit=True)
    try:
        conn.execute(f"SET lock_timeout = {max(1, int(wait_s * 1000))}")
        try:
            conn.execute("SELECT pg_advisory_lock_shared(hashtextextended(%s, 0))", (LEASE_NAMESPACE + backup_id,))
        except psycopg.errors.LockNotAvailable:
            raise BackupInUse(backup_id, "it is being deleted by cleanup") from None
        log.debug("reading lease taken", extra={"backup_id": backup_id})
        yield
    except psycopg.OperationalError as exc:
        raise connection_error(server, exc) from exc
    finally:
        conn.close()  # ends the session, which releases the lease


class DeletionClaims:
    """Exclusive leases taken by cleanup on one connection, batch by batch."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def claim(self, backup_ids: Sequence[str]) -> set[str]:
        """Take the exclusive lease of every id no reader holds; return the ids taken. One round trip."""
        if not backup_ids:
            return set()
        rows = self._conn.execute(
            "SELECT id FROM unnest(%s::text[]) AS id"
            " WHERE pg_try_advisory_lock(hashtextextended(%s || id, 0))",
            (list(backup_ids), LEASE_NAMESPACE),
        ).fetchall()
        return {str(row[0]) for row in rows}

    def release_all(self) -> None:
        self._conn.execute("SELECT pg_advisory_unlock_all()")


@contextmanager
def deletion_claims(server: PostgresTarget) -> Iterator[DeletionClaims]:
    """A session for cleanup's exclusive leases; every lease is released when the block ends.

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: the server could not be reached.
    """
    conn = connect(server, autocommit=True)
    try:
        yield DeletionClaims(conn)
    except psycopg.OperationalError as exc:
        raise connection_error(server, exc) from exc
    finally:
        conn.close()
