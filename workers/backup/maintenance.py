"""Cleanup and verification as tasks and the CLI run them: build the edges from Settings, call the core, count."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from workers import metrics
from workers.backup.cleanup import CleanupReport, collect_scratch_databases, prune
from workers.backup.lease import deletion_claims, lease_server, reading_lease
from workers.backup.lock import held_backup_locks
from workers.backup.manifest import Manifest, find_manifest, read_manifest
from workers.backup.naming import MANIFEST_SUFFIX, BackupKind, KeyParts, manifest_key, parse_key
from workers.backup.process import find_program
from workers.backup.retention import Policy
from workers.backup.scratch import sweep_scratch_databases
from workers.backup.storage import BackupStore, open_store
from workers.backup.verification import (
    VERIFICATION_SUFFIX,
    VerificationResult,
    drill_error,
    object_key_of_verification,
    record_in_state,
    state_history,
    verifications_in,
    write_verification,
)
from workers.backup.verify import DrillOptions, verify_backup
from workers.errors import (
    BackupInUse,
    BackupNotFound,
    ConfigError,
    ObjectNotFound,
    ServiceUnavailable,
    UsageError,
    WorkersError,
)
from workers.settings import Settings
from workers.state.db import create_state_engine, upgrade

log = logging.getLogger(__name__)

LATEST = "latest"


def retention_policy(settings: Settings) -> Policy:
    backup = settings.backup
    return Policy(
        retention_days=backup.retention_days,
        keep_min=backup.keep_min,
        keep_daily=backup.keep_daily,
        keep_weekly=backup.keep_weekly,
        keep_monthly=backup.keep_monthly,
    )


def drill_options(settings: Settings) -> DrillOptions:
    return DrillOptions(
        pg_restore=find_program("pg_restore", settings.backup.pg_bin_dir),
        pg_dump=find_program("pg_dump", settings.backup.pg_bin_dir),
        timeout_s=settings.backup.dump_timeout_s,
        schema_source=settings.database,
        tenant_column=settings.backup.tenant_column,
    )


def cleanup_backups(
    settings: Settings,
    *,
    dry_run: bool = False,
    store: BackupStore | None = None,
    now: datetime | None = None,
    after_manifests: Callable[[Sequence[str]], None] | None = None,
) -> CleanupReport:
    """Apply retention, collect orphans, stale uploads and dead drills' databases; used by backup.cleanup.

    Raises:
        StorageUnavailable, StorageRefused, DatabaseUnavailable: cleanup stopped; what it deleted stays deleted.
    """
    store = store if store is not None else open_store(settings.backup)
    server = lease_server(settings)
    now = now if now is not None else datetime.now(UTC)
    try:
        with deletion_claims(server) as claims:
            report = prune(
                store,
                retention_policy(settings),
                claims,
                now=now,
                orphan_grace=timedelta(seconds=settings.backup.orphan_grace_s),
                dry_run=dry_run,
                after_manifests=after_manifests,
                # Backups lock their scope on the platform database (operations.take_*_backup).
                running=lambda scopes: held_backup_locks(settings.platform_database(), scopes),
            )
        collect_scratch_databases(server, report)
    except Exception:
        if not dry_run:
            metrics.BACKUP_CLEANUP_LAST_FAILURE.set(time.time())
        raise
    report.finished_at = datetime.now(UTC)
    if not dry_run:
        _count_cleanup(report)
    log.info(
        "cleanup finished",
        extra={"dry_run": dry_run, "deleted": len(report.deletions), "held_series": len(report.held)},
    )
    return report


def _count_cleanup(report: CleanupReport) -> None:
    for what in ("backup", "orphan", "incomplete_upload", "scratch_database"):
        metrics.BACKUP_CLEANUP_DELETED.labels(what=what).inc(report.count(what))
    for kind in BackupKind:
        held = sum(1 for s in report.held if s["kind"] == str(kind))
        metrics.BACKUP_RETENTION_HELD_SERIES.labels(kind=str(kind)).set(held)
    metrics.BACKUP_CLEANUP_LAST_SUCCESS.set(time.time())


def _manifest_keys(store: BackupStore, kind: BackupKind | None) -> list[tuple[KeyParts, str]]:
    prefix = f"{kind}/" if kind is not None else ""
    found: list[tuple[KeyParts, str]] = []
    for stored in store.list_objects(prefix):
        if stored.key.endswith(MANIFEST_SUFFIX):
            try:
                found.append((parse_key(stored.key), stored.key))
            except ValueError:
                continue
    return found


def select_backup(store: BackupStore, selector: str, kind: BackupKind | None) -> Manifest:
    """The manifest named by an id, or the newest of a kind for 'latest' (reads one manifest, not all).

    Raises:
        BackupNotFound: no such backup (or no backup of that kind at all).
    """
    if selector != LATEST:
        manifest = find_manifest(store, selector)
        if kind is not None and manifest.kind is not kind:
            raise UsageError(f"backup {selector} is a {manifest.kind} backup, not {kind}")
        return manifest
    keys = _manifest_keys(store, kind or BackupKind.FULL)
    if not keys:
        wanted = kind or BackupKind.FULL
        raise BackupNotFound(LATEST, f"no {wanted} backup in the store yet; see `ops-workers backup list`")
    _, newest = max(keys, key=lambda item: (item[0].taken_at, item[0].backup_id))
    return read_manifest(store, newest)


# Raised by a drill, and no verdict at all: a service outage (the task retries), the backup is gone or
# being deleted, or this process's settings are incomplete (exit 2: the command was wrong, not the
# backup). Any other error of ours means the drill could not run, and is recorded as such.
_NOT_RECORDED = (ServiceUnavailable, BackupNotFound, BackupInUse, ConfigError)


def verify(
    settings: Settings, selector: str, kind: BackupKind | None = None, *, store: BackupStore | None = None
) -> VerificationResult:
    """Verify one backup (an id, or 'latest' of kind); record the result beside it and in the state database.

    A drill that cannot run (pg_restore missing, credentials or privileges refused, a bad configuration)
    is recorded and counted as a failed verification with reason drill_error, then its error is raised.

    Raises:
        BackupNotFound: no such backup, or cleanup deleted it before the drill could lease it.
        BackupInUse: cleanup is deleting it right now.
        StorageUnavailable, DatabaseUnavailable: a service failed; nothing was recorded (retry).
        WorkersError: the drill could not run (recorded, see above).
    """
    store = store if store is not None else open_store(settings.backup)
    manifest = select_backup(store, selector, kind)
    started_at = datetime.now(UTC)
    try:
        result = _leased_drill(settings, store, manifest)
    except _NOT_RECORDED:
        raise
    except WorkersError as exc:
        failed = drill_error(manifest, exc, started_at=started_at, finished_at=datetime.now(UTC))
        write_verification(store, failed)
        _record(settings, failed)
        raise
    _record(settings, result)
    return result


def _leased_drill(settings: Settings, store: BackupStore, manifest: Manifest) -> VerificationResult:
    options = drill_options(settings)
    server = lease_server(settings)
    with reading_lease(server, manifest.id):
        try:
            # Read again under the lease: cleanup may have deleted it between the listing and now.
            manifest = read_manifest(store, manifest_key(manifest.key))
        except ObjectNotFound:
            raise BackupNotFound(manifest.id) from None
        swept = sweep_scratch_databases(server)
        if swept:
            log.warning("stale scratch databases dropped", extra={"databases": swept})
        with metrics.BACKUP_VERIFY_DURATION.labels(kind=str(manifest.kind)).time():
            result = verify_backup(manifest, store, server, options)
        write_verification(store, result)
    return result


def _record(settings: Settings, result: VerificationResult) -> None:
    """Append the result to the state database and count it."""
    engine = create_state_engine(settings.state_database_url.value)
    try:
        upgrade(engine)
        record_in_state(engine, result)
    finally:
        engine.dispose()
    _count_verification(result)


def _count_verification(result: VerificationResult) -> None:
    if result.ok:
        metrics.BACKUP_VERIFY_LAST_SUCCESS.labels(kind=result.kind).set(time.time())
    else:
        metrics.BACKUP_VERIFY_LAST_FAILURE.labels(kind=result.kind).set(time.time())
        metrics.BACKUP_VERIFY_FAILURES.labels(kind=result.kind, reason=str(result.reason)).inc()


def org_sample(store: BackupStore, size: int, *, cycle_days: float | None = None) -> list[str]:
    """Ids of the newest backup of up to `size` organizations, those verified longest ago (or never) first.

    With cycle_days, the sample grows to what a daily run needs to verify every organization within
    that many days, so retention always finds a verified backup to keep (and need not hold a series).
    """
    newest: dict[str, KeyParts] = {}
    for parts, _ in _manifest_keys(store, BackupKind.ORG):
        series = f"{parts.database}/{parts.organization_id}"
        if series not in newest or parts.taken_at > newest[series].taken_at:
            newest[series] = parts
    last_verified: dict[str, datetime] = {}
    for stored in store.list_objects(f"{BackupKind.ORG}/"):
        if stored.key.endswith(VERIFICATION_SUFFIX):
            try:
                parts = parse_key(object_key_of_verification(stored.key))
            except ValueError:
                continue
            series = f"{parts.database}/{parts.organization_id}"
            last_verified[series] = max(last_verified.get(series, stored.modified_at), stored.modified_at)
    never = datetime.min.replace(tzinfo=UTC)
    order = sorted(newest, key=lambda s: (last_verified.get(s, never), s))
    if cycle_days is not None:
        size = max(size, math.ceil(len(order) / cycle_days))
    return [newest[s].backup_id for s in order[:size]]


def verify_org_sample(settings: Settings, *, store: BackupStore | None = None) -> list[VerificationResult]:
    """Verify the newest backup of OPS_BACKUP_VERIFY_ORG_SAMPLE organizations (more when there are many);
    used by backup.verify_orgs."""
    store = store if store is not None else open_store(settings.backup)
    # Each organization verified at least twice per retention window: with a fixed 3 a day, 100
    # organizations would wait 34 days, and retention would hold their unverified series.
    cycle_days = settings.backup.retention_days / 2
    return [
        verify(settings, backup_id, BackupKind.ORG, store=store)
        for backup_id in org_sample(store, settings.backup.verify_org_sample, cycle_days=cycle_days)
    ]


def verification_index(settings: Settings, kind: BackupKind | None = None) -> dict[str, VerificationResult]:
    """Backup id -> its latest verification, for `backup list` (one listing, one read per record)."""
    return verifications_in(open_store(settings.backup), f"{kind}/" if kind is not None else "")


def verification_summary(result: VerificationResult | None) -> str:
    """One line for `backup list` / `backup show`."""
    if result is None:
        return "unverified"
    if result.ok:
        return f"verified {result.finished_at:%Y-%m-%d %H:%M}Z"
    return f"FAILED {result.finished_at:%Y-%m-%d %H:%M}Z ({result.reason}): {result.first_mismatch}"


def verification_history(settings: Settings, backup_id: str) -> list[dict[str, object]]:
    """Every recorded verification of one backup from the state database, newest first (`backup show`)."""
    engine = create_state_engine(settings.state_database_url.value)
    try:
        upgrade(engine)
        return state_history(engine, [backup_id])
    finally:
        engine.dispose()
