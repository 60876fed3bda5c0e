"""Backup operations as the tasks and the CLI run them: build the edges from Settings, lock, call the core."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis
from kombu.exceptions import KombuError
from psycopg import sql

from workers import metrics
from workers.backup.connection import connect
from workers.backup.dump import DumpOptions, create_full_backup
from workers.backup.lease import lease_server, reading_lease
from workers.backup.lock import backup_lock
from workers.backup.manifest import Manifest, find_manifest, list_manifests
from workers.backup.naming import BackupKind, database_name_problem, new_backup_id, scope_prefix
from workers.backup.process import find_program
from workers.backup.restore import RestoreResult, restore_full, restore_org
from workers.backup.storage import BackupStore, open_store
from workers.backup.stream import Progress
from workers.backup.tenant import TenantOptions, create_org_backup, resolve_tables, validate_organization_id
from workers.errors import (
    AlreadyRunning,
    BrokerUnavailable,
    CommandFailed,
    CommandNotFound,
    CommandTimedOut,
    ConfigError,
    DatabaseAuthenticationFailed,
    DatabaseRefused,
    DatabaseUnavailable,
    StorageFull,
    StorageRefused,
    StorageUnavailable,
    UsageError,
    WorkersError,
)
from workers.redaction import redact_text
from workers.settings import Settings

log = logging.getLogger(__name__)

# Failure reasons, the closed label set of ops_backup_failures_total; first match wins.
REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (AlreadyRunning, "already_running"),
    (UsageError, "usage"),
    (ConfigError, "config"),  # e.g. OPS_DATABASE_URL not set on the worker
    (DatabaseAuthenticationFailed, "database_auth"),
    (DatabaseRefused, "database_refused"),
    (DatabaseUnavailable, "database_unavailable"),
    (StorageFull, "storage_full"),
    (StorageRefused, "storage_refused"),
    (StorageUnavailable, "storage_unavailable"),
    (CommandNotFound, "command_missing"),
    (CommandTimedOut, "timeout"),
    (CommandFailed, "dump_failed"),
    (WorkersError, "other"),
)


def failure_reason(exc: BaseException) -> str:
    """The ops_backup_failures_total reason for exc. Pure."""
    return next((reason for kind, reason in REASONS if isinstance(exc, kind)), "unexpected")


@contextmanager
def _recorded(kind: BackupKind) -> Iterator[None]:
    """The metrics of a backup's outcome.

    A failure is counted here and raised, not logged: the layer that handles it logs it once, with
    its cause. That is Celery's task tracer on a worker (after the retry policy has decided), and
    main() in the CLI, which prints its one line. A success is logged where it happens ("backup stored").
    """
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        metrics.BACKUP_FAILURES.labels(kind=kind, reason=failure_reason(exc)).inc()
        raise
    metrics.BACKUP_DURATION.labels(kind=kind).observe(time.monotonic() - started)
    metrics.BACKUP_LAST_SUCCESS.labels(kind=kind).set_to_current_time()


def dump_options(settings: Settings) -> DumpOptions:
    backup = settings.backup
    return DumpOptions(
        pg_dump=find_program("pg_dump", backup.pg_bin_dir),
        timeout_s=backup.dump_timeout_s,
        lock_wait_timeout_s=backup.lock_wait_timeout_s,
        zstd_level=backup.zstd_level,
        zstd_threads=backup.zstd_threads,
    )


def tenant_options(settings: Settings) -> TenantOptions:
    backup = settings.backup
    return TenantOptions(
        tables=backup.tenant_tables,
        column=backup.tenant_column,
        id_pattern=backup.tenant_id_pattern,
        lock_wait_timeout_s=backup.lock_wait_timeout_s,
        zstd_level=backup.zstd_level,
        zstd_threads=backup.zstd_threads,
    )


def _discard_leftovers(store: BackupStore, scope: str) -> None:
    # Called holding the scope's lock: an unfinished upload there belongs to a dead backup.
    discarded = store.discard_incomplete(scope)
    if discarded:
        log.warning("unfinished uploads discarded", extra={"scope": scope, "keys": discarded})


def take_full_backup(
    settings: Settings, *, store: BackupStore | None = None, progress: Progress | None = None
) -> Manifest:
    """Back up the platform database now; used by the backup.full task and `ops-workers backup full`.

    Raises:
        AlreadyRunning: a full backup of this database is in progress elsewhere; nothing was stored.
    """
    with _recorded(BackupKind.FULL):
        target = settings.platform_database()
        store = store if store is not None else open_store(settings.backup)
        options = dump_options(settings)
        started_at = datetime.now(UTC)
        scope = scope_prefix(BackupKind.FULL, target.dbname)
        with backup_lock(target, scope):
            _discard_leftovers(store, scope)
            manifest = create_full_backup(
                target,
                store,
                backup_id=new_backup_id(started_at, secrets.token_hex(4)),
                started_at=started_at,
                options=options,
                progress=progress,
            )
    metrics.BACKUP_SIZE.labels(kind=BackupKind.FULL).set(manifest.size_bytes)
    return manifest


def take_org_backup(
    settings: Settings, organization_id: str, *, store: BackupStore | None = None, progress: Progress | None = None
) -> Manifest:
    """Back up one organization now; used by the backup.org task and `ops-workers backup org`.

    Raises:
        InvalidOrganizationId: the id is malformed; nothing was read or stored.
        OrganizationNotFound: no such organization; nothing stored.
        AlreadyRunning: a backup of this organization is in progress elsewhere.
    """
    with _recorded(BackupKind.ORG):
        organization_id = validate_organization_id(organization_id, settings.backup.tenant_id_pattern)
        target = settings.platform_database()
        store = store if store is not None else open_store(settings.backup)
        started_at = datetime.now(UTC)
        scope = scope_prefix(BackupKind.ORG, target.dbname, organization_id)
        with backup_lock(target, scope):
            _discard_leftovers(store, scope)
            manifest = create_org_backup(
                target,
                store,
                organization_id,
                backup_id=new_backup_id(started_at, secrets.token_hex(4)),
                started_at=started_at,
                options=tenant_options(settings),
                progress=progress,
            )
    metrics.BACKUP_SIZE.labels(kind=BackupKind.ORG).set(manifest.size_bytes)
    return manifest


def organization_ids(settings: Settings) -> list[str]:
    """Every organization of the platform database, for the per-organization fan-out."""
    target = settings.platform_database()
    with connect(target, autocommit=True) as conn:
        tables = resolve_tables(conn, settings.backup.tenant_tables, settings.backup.tenant_column)
        root = next((t for t in tables if t.filter_column != settings.backup.tenant_column), None)
        if root is None:
            raise UsageError("OPS_TENANT_TABLES names no organizations table (one without the tenant column)")
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY 1").format(sql.Identifier(root.filter_column), root.identifier)
        ).fetchall()
    return [str(row[0]) for row in rows]


def backups(settings: Settings, kind: BackupKind | None = None) -> list[Manifest]:
    """Every backup in the configured store, newest first."""
    return list_manifests(open_store(settings.backup), kind)


def backup(settings: Settings, backup_id: str) -> Manifest:
    """One backup's manifest. Raises BackupNotFound, or UsageError for a malformed id."""
    return find_manifest(open_store(settings.backup), backup_id)


# Never a restore target, --force or not.
SYSTEM_DATABASES = frozenset({"postgres", "template0", "template1"})


def enqueue_backup(settings: Settings, task: str, args: tuple[str, ...]) -> str:
    """Hand a backup task (by wire name) to the workers; return its task id. `backup full|org --enqueue`.

    Raises:
        BrokerUnavailable: the broker did not take the message.
    """
    # workers.app builds the production app when imported; only this path needs an app.
    from workers.app import create_app

    app = create_app(settings)
    try:
        # Nothing waits for a result (the outcome is in the worker's log and metrics), so no result
        # backend is touched; two quick retries, then a clear error instead of Celery's long ones.
        sent = app.send_task(task, args=args, ignore_result=True, retry_policy={"max_retries": 2})
    except (KombuError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(
            f"broker {redact_text(settings.broker_url.value)} did not take {task}: {redact_text(str(exc))}"
        ) from exc
    finally:
        app.close()
    return str(sent.id)


def restore_backup(
    settings: Settings, backup_id: str, target_db: str, *, force: bool = False, progress: Progress | None = None
) -> RestoreResult:
    """Restore one backup into target_db on the platform's server; `ops-workers backup restore`.

    Raises:
        BackupNotFound, UsageError: unknown or malformed id, unusable target.
        RestoreRefused: target is the source or not empty and force is off.
        ChecksumMismatch: the stored object is damaged; nothing committed.
    """
    source = settings.platform_database()
    problem = database_name_problem(target_db)
    if problem is not None:
        raise UsageError(f"--target-db {target_db[:80]!r} is not a database name to restore into: {problem}")
    if target_db in SYSTEM_DATABASES:
        raise UsageError(
            f"--target-db {target_db} is a system database (template1 is copied into every new database, "
            "postgres is the maintenance database); restore into a database of its own"
        )
    store = open_store(settings.backup)
    manifest = backup(settings, backup_id)
    target = source.with_dbname(target_db)
    # A shared lease: cleanup never deletes a backup while it is being restored.
    with reading_lease(lease_server(settings), manifest.id):
        if manifest.kind is BackupKind.FULL:
            return restore_full(
                manifest,
                store,
                target,
                source=source.with_dbname(manifest.database),
                pg_restore=find_program("pg_restore", settings.backup.pg_bin_dir),
                force=force,
                timeout_s=settings.backup.dump_timeout_s,
                progress=progress,
            )
        return restore_org(
            manifest,
            store,
            target,
            source=source.with_dbname(manifest.database),
            tenant_column=settings.backup.tenant_column,
            force=force,
            progress=progress,
        )
