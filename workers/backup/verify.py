"""Restore drills: restore a backup into a throwaway database and prove it holds what was dumped.

The object is streamed from the store through the SHA-256/size check and zstd into pg_restore; the
row count of every table in the manifest is then compared with the restored one. Any difference, a
checksum mismatch, a decode error or a restore error is a failed verification, never a success.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from workers.backup.connection import connect
from workers.backup.dump import client_env
from workers.backup.manifest import Manifest
from workers.backup.naming import BackupKind
from workers.backup.process import run_streaming
from workers.backup.restore import restore_org
from workers.backup.retention import Verification
from workers.backup.scratch import scratch_database
from workers.backup.snapshot import user_tables
from workers.backup.storage import BackupStore
from workers.backup.stream import VerifiedReader
from workers.backup.verification import Reason, VerificationResult
from workers.errors import (
    ChecksumMismatch,
    CommandFailed,
    CommandInterrupted,
    CommandTimedOut,
    CorruptBackup,
    ObjectNotFound,
    RestoreFailed,
    RowCountMismatch,
)
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class DrillOptions:
    pg_restore: str  # absolute path (process.find_program)
    pg_dump: str  # for the schema an org backup is restored into
    timeout_s: float
    # The database whose schema an org backup is restored into (its source); None: org drills refused.
    schema_source: PostgresTarget | None = None
    tenant_column: str = "organization_id"


class _Mismatch(Exception):
    """Internal: a verdict reached inside the drill; becomes a failed VerificationResult."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def pg_restore_argv(pg_restore: str, dbname: str) -> list[str]:
    return [
        pg_restore,
        # pg_restore keeps going after errors unless told otherwise; a restore that "finished"
        # with errors is a failed verification, not a warning.
        "--exit-on-error",
        "--no-owner",
        "--no-privileges",
        "--no-password",
        f"--dbname={dbname}",
    ]


def restore_full_archive(target: PostgresTarget, store: BackupStore, manifest: Manifest, options: DrillOptions) -> None:
    """Stream a full backup through the checksum check and zstd into pg_restore on target.

    Raises:
        ChecksumMismatch, CorruptBackup, ObjectNotFound: the stored object is not what the manifest says.
        CommandFailed, CommandTimedOut: pg_restore did not succeed.
    """
    with store.open_reader(manifest.key) as raw:
        reader = VerifiedReader(raw, manifest.key, manifest.sha256, manifest.size_bytes)
        run_streaming(
            pg_restore_argv(options.pg_restore, target.dbname),
            env=client_env(target),
            timeout_s=options.timeout_s,
            source=reader,
        )


def load_schema(target: PostgresTarget, source: PostgresTarget, options: DrillOptions) -> None:
    """Give target the schema of source (pg_dump --schema-only): what an org backup is restored into.

    The schema-only archive is small (no rows), so it is held in memory between the two programs.

    Raises:
        CommandFailed, CommandTimedOut: pg_dump or pg_restore did not succeed.
    """
    archive = io.BytesIO()
    dump_argv = [options.pg_dump, "--schema-only", "--format=custom", "--no-password"]
    run_streaming(dump_argv, env=client_env(source), timeout_s=options.timeout_s, sink=archive)
    archive.seek(0)
    run_streaming(
        pg_restore_argv(options.pg_restore, target.dbname),
        env=client_env(target),
        timeout_s=options.timeout_s,
        source=archive,
    )


def restore_org_archive(target: PostgresTarget, store: BackupStore, manifest: Manifest, options: DrillOptions) -> None:
    """Load the org backup's rows into target after giving it the source's schema.

    Raises:
        _Mismatch: no schema source is configured.
        ChecksumMismatch, CorruptBackup, RestoreFailed, CommandFailed, CommandTimedOut: see restore_org.
    """
    if options.schema_source is None:
        raise _Mismatch(Reason.SERVER, "no schema source for org backups (OPS_DATABASE_URL not set)")
    load_schema(target, options.schema_source.with_dbname(manifest.database), options)
    restore_org(manifest, store, target, source=None, tenant_column=options.tenant_column, force=False)


def compare_row_counts(target: PostgresTarget, expected: Mapping[str, int], *, exhaustive: bool) -> int:
    """Count every manifest table in target; return how many were checked.

    exhaustive: also fail when target holds a user table the manifest does not list (full backups).

    Raises:
        _Mismatch: the first table (in name order) whose count differs, is missing, or is extra.
    """
    if not expected:
        raise _Mismatch(Reason.ROW_COUNT, "the manifest lists no tables")
    with connect(target, autocommit=True) as conn:
        for name in sorted(expected):
            schema, _, table = name.rpartition(".")
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema or "public", table))
            try:
                row = conn.execute(query).fetchone()
            except psycopg.errors.UndefinedTable:
                raise _Mismatch(Reason.ROW_COUNT, f"{name}: missing after restore") from None
            restored = int(row[0]) if row else 0
            if restored != expected[name]:
                raise _Mismatch(
                    Reason.ROW_COUNT, f"{name}: {restored} rows restored, the manifest says {expected[name]}"
                )
        if exhaustive:
            # The same catalog query the manifest was made with: pg_stat_user_tables would also list
            # partitioned parents and materialized views, which the manifest rightly leaves out.
            extra = [f"{s}.{t}" for s, t in user_tables(conn) if f"{s}.{t}" not in expected]
            if extra:
                raise _Mismatch(Reason.ROW_COUNT, f"{extra[0]}: restored but not listed in the manifest")
    return len(expected)


def _drill(scratch: PostgresTarget, store: BackupStore, manifest: Manifest, options: DrillOptions) -> int:
    try:
        if manifest.kind is BackupKind.FULL:
            restore_full_archive(scratch, store, manifest, options)
        else:
            restore_org_archive(scratch, store, manifest, options)
    except ChecksumMismatch as exc:
        raise _Mismatch(Reason.CHECKSUM, str(exc)) from exc
    except RowCountMismatch as exc:  # restore_org compares what it loaded with the manifest's counts itself
        raise _Mismatch(Reason.ROW_COUNT, str(exc)) from exc
    except CorruptBackup as exc:
        raise _Mismatch(Reason.DECODE, str(exc)) from exc
    except RestoreFailed as exc:
        raise _Mismatch(Reason.RESTORE, str(exc)) from exc
    except ObjectNotFound as exc:
        raise _Mismatch(Reason.DOWNLOAD, str(exc)) from exc
    except CommandTimedOut as exc:
        raise _Mismatch(Reason.TIMEOUT, str(exc)) from exc
    except CommandInterrupted:
        raise  # the drill server was briefly unusable: no verdict on the backup, a DatabaseUnavailable (retry)
    except CommandFailed as exc:
        raise _Mismatch(Reason.RESTORE, f"{exc.program} exited with {exc.returncode}: {exc.stderr_tail}") from exc
    return compare_row_counts(scratch, manifest.tables, exhaustive=manifest.kind is BackupKind.FULL)


def verify_backup(
    manifest: Manifest,
    store: BackupStore,
    server: PostgresTarget,
    options: DrillOptions,
    *,
    clock: Clock = lambda: datetime.now(UTC),
) -> VerificationResult:
    """Restore the backup into a throwaway database on server, compare, drop it; return the verdict.

    A verdict on the backup (checksum, decode, restore, row counts) is returned as a failed result.

    Raises:
        StorageUnavailable: the store could not be read (says nothing about the backup; retry).
        DatabaseUnavailable, DatabaseAuthenticationFailed, DatabaseRefused: the drill server could not be used.
        UsageError: an org backup's tables do not fit the configured tenant tables.
    """
    started_at = clock()
    reason: Reason | None = None
    detail: str | None = None
    checked = 0
    with scratch_database(server, started_at) as scratch:
        log.info("verification started", extra={"backup_id": manifest.id, "scratch_database": scratch.dbname})
        try:
            checked = _drill(scratch, store, manifest, options)
        except _Mismatch as mismatch:
            reason, detail = mismatch.reason, mismatch.detail
    result = VerificationResult(
        backup_id=manifest.id,
        kind=str(manifest.kind),
        database=manifest.database,
        organization_id=manifest.organization_id,
        key=manifest.key,
        started_at=started_at,
        finished_at=clock(),
        outcome=Verification.OK if reason is None else Verification.FAILED,
        reason=reason,
        first_mismatch=detail,
        tables_checked=checked,
        scratch_database=scratch.dbname,
    )
    if result.ok:
        log.info("backup verified", extra={"backup_id": manifest.id, "tables": checked})
    else:
        log.error(
            "backup verification failed",
            extra={"backup_id": manifest.id, "reason": str(reason), "first_mismatch": detail},
        )
    return result
