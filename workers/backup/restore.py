"""Restore a backup into a database: full via pg_restore, org via COPY in one transaction; checksum first."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from workers.backup.archive import TableData, TableEnd, TableStart, read_events, read_header
from workers.backup.connection import connect
from workers.backup.dump import client_env
from workers.backup.manifest import Manifest
from workers.backup.naming import BackupKind
from workers.backup.process import run_streaming
from workers.backup.storage import BackupStore
from workers.backup.stream import Progress, VerifiedReader
from workers.backup.tenant import (
    TenantTable,
    bind_organization,
    delete_rows_query,
    has_rows_query,
    resolve_tables,
)
from workers.errors import CorruptBackup, RestoreFailed, RestoreRefused, RowCountMismatch, UsageError
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    backup_id: str
    kind: BackupKind
    database: str
    created_database: bool
    tables: dict[str, int] = field(default_factory=dict)  # rows restored (org) or expected (full)

    def to_json(self) -> dict[str, object]:
        return {
            "backup_id": self.backup_id,
            "kind": str(self.kind),
            "database": self.database,
            "created_database": self.created_database,
            "tables": self.tables,
        }


def _same_database(a: PostgresTarget, b: PostgresTarget | None) -> bool:
    return b is not None and (a.host, a.port, a.dbname) == (b.host, b.port, b.dbname)


def _admin(target: PostgresTarget) -> psycopg.Connection[Any]:
    return connect(target.with_dbname("postgres"), autocommit=True)


def _database_exists(target: PostgresTarget) -> bool:
    with _admin(target) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,)).fetchone() is not None


def _has_user_objects(target: PostgresTarget) -> bool:
    with connect(target, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f'))"
        ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class _Prepared:
    created: bool
    non_empty: bool


@contextmanager
def _prepared_database(target: PostgresTarget, *, force: bool) -> Iterator[_Prepared]:
    """Create target if missing (dropped again if the block fails); say whether it already held objects."""
    created = False
    if not _database_exists(target):
        with _admin(target) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
        created = True
    try:
        non_empty = not created and _has_user_objects(target)
        if non_empty and not force:
            raise RestoreRefused(f"database {target.dbname} is not empty; use --force to restore into it anyway")
        yield _Prepared(created, non_empty)
    except BaseException:
        if created:
            with _admin(target) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.dbname)))
        raise


def restore_full(
    manifest: Manifest,
    store: BackupStore,
    target: PostgresTarget,
    *,
    source: PostgresTarget | None,
    pg_restore: str,
    force: bool,
    timeout_s: float,
    progress: Progress | None = None,
) -> RestoreResult:
    """pg_restore a full backup into a new or empty database, in one transaction, checksum verified first.

    Raises:
        RestoreRefused: target is the source database or not empty, and force is off.
        ChecksumMismatch: the object differs from its manifest; nothing committed.
        CommandFailed: pg_restore failed; nothing committed (it runs in one transaction).
    """
    if _same_database(target, source) and not force:
        raise RestoreRefused(f"{target.dbname} is the database this backup came from; use --force to overwrite it")
    argv = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--single-transaction", "--no-password"]
    with _prepared_database(target, force=force) as prepared, store.open_reader(manifest.key) as raw:
        if prepared.non_empty:
            argv += ["--clean", "--if-exists"]
        # pg_restore commits only at the very end of its single transaction, and VerifiedReader
        # holds back the archive's last bytes until the checksum matched: a mismatch kills
        # pg_restore before it can commit.
        reader = VerifiedReader(raw, manifest.key, manifest.sha256, manifest.size_bytes, progress)
        # A conninfo string, so a database name can never be read as an option or a connection URL.
        argv.append(f"--dbname={make_conninfo('', dbname=target.dbname)}")
        run_streaming(argv, env=client_env(target), timeout_s=timeout_s, source=reader)
    log.info("backup restored", extra={"backup_id": manifest.id, "kind": "full", "database": target.dbname})
    return RestoreResult(manifest.id, BackupKind.FULL, target.dbname, prepared.created, dict(manifest.tables))


def restore_org(
    manifest: Manifest,
    store: BackupStore,
    target: PostgresTarget,
    *,
    source: PostgresTarget | None,
    tenant_column: str,
    force: bool,
    progress: Progress | None = None,
) -> RestoreResult:
    """Load one organization's rows into a database that has the schema: one transaction, foreign-key order.

    Sequences are moved past the restored ids. With force, the organization's existing rows are replaced.

    Raises:
        RestoreRefused: target is the source, or already holds rows of this organization, and force is off.
        ChecksumMismatch: the object differs from its manifest; the transaction is rolled back.
        RowCountMismatch: the rows loaded differ from the manifest's counts; rolled back.
        RestoreFailed: PostgreSQL rejected the rows (constraint, missing schema); rolled back.
    """
    organization_id = manifest.organization_id
    if organization_id is None:
        raise CorruptBackup(f"manifest {manifest.id} is an org backup without an organization_id")
    if _same_database(target, source) and not force:
        raise RestoreRefused(f"{target.dbname} is the database this backup came from; use --force to write into it")
    if not _database_exists(target):
        raise UsageError(f"database {target.dbname} does not exist; an org backup needs a database with the schema")
    restored: dict[str, int] = {}
    with connect(target) as conn, store.open_reader(manifest.key) as raw:
        reader = VerifiedReader(raw, manifest.key, manifest.sha256, manifest.size_bytes, progress)
        try:
            with conn.transaction():
                header = read_header(reader)
                if header.get("organization_id") != organization_id:
                    raise CorruptBackup(f"{manifest.key} holds organization {header.get('organization_id')!r}")
                tables = resolve_tables(conn, list(manifest.tables), tenant_column)
                bind_organization(conn, organization_id)
                _clear_or_refuse(conn, tables, target.dbname, organization_id, force=force)
                by_name = {t.qualified: t for t in tables}
                restored = _copy_in(conn, reader, by_name)
                if reader.read(1):  # also completes the checksum, which raises on a mismatch
                    raise CorruptBackup(f"{manifest.key}: data after the end of the archive")
                if restored != dict(manifest.tables):
                    table = min(t for t in {*restored, *manifest.tables} if restored.get(t) != manifest.tables.get(t))
                    raise RowCountMismatch(manifest.key, table, restored.get(table, 0), manifest.tables.get(table, 0))
                _advance_sequences(conn, tables)
        except psycopg.Error as exc:
            raise RestoreFailed(f"restore of {manifest.id} into {target.dbname} rolled back: {exc}") from exc
    log.info("backup restored", extra={"backup_id": manifest.id, "kind": "org", "database": target.dbname})
    return RestoreResult(manifest.id, BackupKind.ORG, target.dbname, False, restored)


def _clear_or_refuse(
    conn: psycopg.Connection[Any], tables: list[TenantTable], dbname: str, organization_id: str, *, force: bool
) -> None:
    present = [t.qualified for t in tables if (row := conn.execute(has_rows_query(t)).fetchone()) and row[0]]
    if not present:
        return
    if not force:
        raise RestoreRefused(
            f"{dbname} already has rows of organization {organization_id} in {', '.join(present)};"
            " use --force to replace them"
        )
    for table in reversed(tables):
        conn.execute(delete_rows_query(table))


def _copy_in(conn: psycopg.Connection[Any], reader: VerifiedReader, tables: dict[str, TenantTable]) -> dict[str, int]:
    restored: dict[str, int] = {}
    events = read_events(reader)
    with conn.cursor() as cursor:
        for start in events:
            if not isinstance(start, TableStart) or start.table not in tables:
                raise CorruptBackup(f"unexpected {start!r} in the archive (not a tenant table of the target)")
            query = sql.SQL("COPY {} ({}) FROM STDIN").format(
                tables[start.table].identifier, sql.SQL(", ").join(sql.Identifier(c) for c in start.columns)
            )
            with cursor.copy(query) as copy:
                for event in events:  # the same iterator: this table's frames, up to its end
                    if isinstance(event, TableEnd):
                        break
                    if not isinstance(event, TableData):
                        raise CorruptBackup(f"unexpected {event!r} inside table {start.table}")
                    copy.write(event.data)
            restored[start.table] = cursor.rowcount
    return restored


def _advance_sequences(conn: psycopg.Connection[Any], tables: list[TenantTable]) -> None:
    for table in tables:
        for column in table.columns:
            row = conn.execute(
                "SELECT pg_get_serial_sequence(%s, %s)", (table.identifier.as_string(conn), column)
            ).fetchone()
            if not row or row[0] is None:
                continue
            conn.execute(
                sql.SQL(
                    "SELECT setval(%s::regclass, GREATEST(COALESCE((SELECT max({column}) FROM {table}), 1),"
                    " COALESCE(pg_sequence_last_value(%s::regclass), 1)))"
                ).format(column=sql.Identifier(column), table=table.identifier),
                (row[0], row[0]),
            )
