"""Per-organization backups: the tenant tables read with COPY (SELECT ... WHERE col = %s) in one snapshot."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from workers import __version__
from workers.backup.archive import ORG_FORMAT, ArchiveWriter
from workers.backup.manifest import Manifest, write_manifest
from workers.backup.naming import BackupKind, object_key
from workers.backup.snapshot import exported_snapshot
from workers.backup.storage import BackupStore
from workers.backup.stream import DigestWriter, Progress, ProgressWriter, compressor
from workers.errors import InvalidOrganizationId, OrganizationNotFound, UsageError
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenantOptions:
    tables: tuple[str, ...]  # as configured: "name" or "schema.name"
    column: str  # the column tying a row to its organization
    id_pattern: str
    lock_wait_timeout_s: float
    zstd_level: int
    zstd_threads: int


@dataclass(frozen=True, slots=True)
class TenantTable:
    schema: str
    name: str
    columns: tuple[str, ...]
    filter_column: str  # the tenant column, or the primary key of the table the others point at
    filter_type: str  # its SQL type as the catalog spells it (format_type), e.g. "uuid"

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def validate_organization_id(organization_id: str, pattern: str) -> str:
    """The id if it matches pattern (a UUID by default); a UUID in its canonical lower-case form. Pure.

    PostgreSQL's uuid type compares case-insensitively, so `ABC...` and `abc...` are one organization:
    one spelling keeps one key prefix, one backup series and one metric series per organization.

    Raises:
        InvalidOrganizationId: anything else, with the reason.
    """
    if not re.fullmatch(pattern, organization_id):
        shown = organization_id if len(organization_id) <= 80 else organization_id[:77] + "..."
        raise InvalidOrganizationId(
            f"organization id {shown!r} does not match OPS_TENANT_ID_PATTERN ({pattern}); nothing was done"
        )
    if _UUID_TEXT.fullmatch(organization_id):
        return organization_id.lower()
    return organization_id


def dependency_order(tables: Sequence[str], references: Mapping[str, set[str]]) -> list[str]:
    """tables ordered so each comes after the tables it references (ties keep the given order). Pure.

    Raises:
        UsageError: the foreign keys form a cycle among the tables.
    """
    ordered: list[str] = []
    remaining = list(tables)
    while remaining:
        ready = [t for t in remaining if not (references.get(t, set()) - {t}) - set(ordered)]
        if not ready:
            raise UsageError(f"foreign keys among {', '.join(remaining)} form a cycle; cannot order them")
        ordered.append(ready[0])
        remaining.remove(ready[0])
    return ordered


# The one tenant table without the tenant column: its primary key is the organization id.
ORGANIZATIONS_TABLE = "organizations"

# COPY cannot take protocol-level parameters, so the id is bound to a transaction-local setting
# with a real bound parameter, and the COPY query reads it from there: the id is never SQL text.
ID_SETTING = "ops_backup.organization_id"
_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""
_PRIMARY_KEY = """
SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisprimary
"""
_REFERENCES = """
SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c
WHERE c.contype = 'f' AND c.conrelid = ANY(%s::regclass[]) AND c.confrelid = ANY(%s::regclass[])
"""


def resolve_tables(conn: psycopg.Connection[Any], names: Sequence[str], column: str) -> list[TenantTable]:
    """The configured tables as they exist in conn's database, in foreign-key order.

    Raises:
        UsageError: a table is missing, or lacks the tenant column (only the organizations table may, and
            then needs a one-column primary key).
    """
    by_regclass: dict[str, TenantTable] = {}
    for name in names:
        row = conn.execute(
            "SELECT n.nspname, c.relname, c.oid::regclass::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            (name,),
        ).fetchone()
        if row is None:
            raise UsageError(f"tenant table {name!r} (OPS_TENANT_TABLES) does not exist in the database")
        schema, relname, regclass = str(row[0]), str(row[1]), str(row[2])
        types = {str(r[0]): str(r[1]) for r in conn.execute(_COLUMNS, (regclass,)).fetchall()}
        columns = tuple(types)
        if column in columns:
            filter_column = column
        elif relname == ORGANIZATIONS_TABLE:
            # The organizations table itself: its own primary key is what the others point at.
            keys = [str(r[0]) for r in conn.execute(_PRIMARY_KEY, (regclass,)).fetchall()]
            if len(keys) != 1:
                raise UsageError(f"tenant table {name!r} has no column {column!r} and no one-column primary key")
            filter_column = keys[0]
        else:
            # Filtering any other table by its primary key would silently back up none of its rows.
            raise UsageError(
                f"tenant table {name!r} (OPS_TENANT_TABLES) has no column {column!r} (OPS_TENANT_COLUMN), and only"
                f" the {ORGANIZATIONS_TABLE} table may be filtered by its primary key: remove {name!r} from"
                " OPS_TENANT_TABLES or give it the tenant column; nothing was done"
            )
        by_regclass[regclass] = TenantTable(schema, relname, columns, filter_column, types[filter_column])
    references: dict[str, set[str]] = {}
    regclasses = list(by_regclass)
    for child, parent in conn.execute(_REFERENCES, (regclasses, regclasses)).fetchall():
        references.setdefault(str(child), set()).add(str(parent))
    return [by_regclass[r] for r in dependency_order(regclasses, references)]


def bind_organization(conn: psycopg.Connection[Any], organization_id: str) -> None:
    """Bind the id (a server-side parameter) to the current transaction for copy_out_query()."""
    conn.execute("SELECT set_config(%s, %s, true)", (ID_SETTING, organization_id), prepare=False)


def copy_out_query(table: TenantTable) -> sql.Composed:
    """COPY of the bound organization's rows; the id is read from the setting, never part of the SQL text."""
    return sql.SQL("COPY (SELECT {columns} FROM {table} WHERE {column} = {bound}) TO STDOUT").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in table.columns),
        table=table.identifier,
        column=sql.Identifier(table.filter_column),
        bound=_bound_id(table),
    )


def _bound_id(table: TenantTable) -> sql.Composed:
    # The type comes from the catalog (format_type), never from input.
    return sql.SQL("CAST(current_setting({}) AS {})").format(sql.Literal(ID_SETTING), sql.SQL(table.filter_type))


def has_rows_query(table: TenantTable) -> sql.Composed:
    """Whether table holds rows of the bound organization."""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} = {})").format(
        table.identifier, sql.Identifier(table.filter_column), _bound_id(table)
    )


def delete_rows_query(table: TenantTable) -> sql.Composed:
    """Delete the bound organization's rows from table."""
    return sql.SQL("DELETE FROM {} WHERE {} = {}").format(
        table.identifier, sql.Identifier(table.filter_column), _bound_id(table)
    )


def _organization_exists(conn: psycopg.Connection[Any], root: TenantTable, organization_id: str) -> bool:
    try:
        row = conn.execute(has_rows_query(root)).fetchone()
    except psycopg.errors.DataError as exc:
        # The pattern let it through but PostgreSQL's type (uuid, integer) does not.
        raise InvalidOrganizationId(
            f"organization id {organization_id[:80]!r} is not a valid {root.filter_type}; nothing was done"
        ) from exc
    return bool(row and row[0])


def create_org_backup(
    target: PostgresTarget,
    store: BackupStore,
    organization_id: str,
    *,
    backup_id: str,
    started_at: datetime,
    options: TenantOptions,
    progress: Progress | None = None,
) -> Manifest:
    """Back up one organization's rows into store, all tables in one snapshot; publish the manifest last.

    Raises:
        InvalidOrganizationId: the id is malformed (checked before anything is read).
        OrganizationNotFound: no such organization; nothing stored.
        DatabaseUnavailable, DatabaseAuthenticationFailed, StorageUnavailable, StorageFull, StorageRefused.
    """
    organization_id = validate_organization_id(organization_id, options.id_pattern)
    key = object_key(BackupKind.ORG, target.dbname, backup_id, organization_id)
    with exported_snapshot(target, lock_wait_timeout_s=options.lock_wait_timeout_s) as snapshot:
        conn = snapshot.conn
        tables = resolve_tables(conn, options.tables, options.column)
        bind_organization(conn, organization_id)
        root = next((t for t in tables if t.filter_column != options.column), None)
        if root is not None and not _organization_exists(conn, root, organization_id):
            raise OrganizationNotFound(f"no organization {organization_id} in {target.dbname}; nothing was stored")
        counts: dict[str, int] = {}
        with store.open_writer(key, size_hint_bytes=None) as writer:
            digest = DigestWriter(writer)
            with compressor(options.zstd_level, options.zstd_threads).stream_writer(
                digest,  # type: ignore[arg-type]  # zstandard only needs write()
                closefd=False,
                write_return_read=True,
            ) as zstd_sink:
                archive = ArchiveWriter(
                    ProgressWriter(zstd_sink, progress), organization_id=organization_id, database=target.dbname
                )
                for table in tables:
                    counts[table.qualified] = _copy_table(conn, table, archive)
                archive.finish()
            part_size_bytes = writer.part_size_bytes
    manifest = Manifest(
        id=backup_id,
        kind=BackupKind.ORG,
        database=target.dbname,
        organization_id=organization_id,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        pg_dump_version=None,
        server_version=snapshot.server_version,
        format=ORG_FORMAT,
        compression="zstd",
        key=key,
        size_bytes=digest.size_bytes,
        sha256=digest.hexdigest(),
        tables=counts,
        part_size_bytes=part_size_bytes,
        tool_version=f"ops-workers {__version__}",
    )
    write_manifest(store, manifest)
    log.info("backup stored", extra={"kind": "org", "database": target.dbname, "key": key, "tables": counts})
    return manifest


def _copy_table(conn: psycopg.Connection[Any], table: TenantTable, archive: ArchiveWriter) -> int:
    archive.start_table(table.qualified, table.columns)
    with conn.cursor() as cur:
        with cur.copy(copy_out_query(table)) as copy:
            for chunk in copy:
                archive.data(chunk)
        rows = cur.rowcount
    archive.end_table(rows)
    return rows
