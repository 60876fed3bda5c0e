"""prune(): apply the retention plan to a store and collect the garbage a crash can leave behind.

One paginated listing describes the whole store. Each expired backup is claimed (an exclusive lease,
so a backup being verified or restored is skipped), then deleted manifest first: from that moment the
backup no longer exists, and a crash before its object goes leaves an orphan object, which the next
run collects, never a manifest that points at nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from workers.backup.naming import MANIFEST_SUFFIX, OBJECT_SUFFIX, BackupKind, KeyParts, parse_key, scope_of_key
from workers.backup.retention import Candidate, Decision, Policy, RetentionPlan, Verification, plan_retention
from workers.backup.scratch import sweep_scratch_databases
from workers.backup.storage import DELETE_BATCH, BackupStore, StoredObject
from workers.backup.verification import (
    VERIFICATION_SUFFIX,
    manifest_key_of_verification,
    object_key_of_verification,
    read_verification,
    verification_key,
)
from workers.errors import ObjectNotFound
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

INCOMPLETE_UPLOAD_AGE = timedelta(days=1)

# Scopes (naming.scope_prefix) whose backup lock is held now, of those asked about: lock.held_backup_locks.
RunningBackups = Callable[[Collection[str]], set[str]]


class Claims(Protocol):
    """Exclusive leases on backups (lease.DeletionClaims); cleanup deletes only what it claimed."""

    def claim(self, backup_ids: Sequence[str]) -> set[str]: ...

    def release_all(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Deletion:
    """One thing cleanup removed (or would remove, in a dry run), and the rule that allowed it."""

    what: str  # backup | orphan | incomplete_upload | scratch_database
    key: str  # object key, or the database name for scratch databases
    rule: str
    detail: str
    backup_id: str | None = None
    kind: str | None = None
    series: str | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in {
            "what": self.what, "key": self.key, "rule": self.rule, "detail": self.detail,
            "backup_id": self.backup_id, "kind": self.kind, "series": self.series,
        }.items() if v is not None}  # fmt: skip


@dataclass
class CleanupReport:
    dry_run: bool
    policy: str
    started_at: datetime
    finished_at: datetime | None = None
    deletions: list[Deletion] = field(default_factory=list)
    skipped_in_use: list[str] = field(default_factory=list)  # backup ids held by a verify or restore
    skipped_in_progress: list[str] = field(default_factory=list)  # keys in a scope whose backup is running
    held: list[dict[str, object]] = field(default_factory=list)  # series kept whole
    kept: int = 0
    listed_objects: int = 0

    def count(self, what: str) -> int:
        return sum(1 for d in self.deletions if d.what == what)

    def add(self, deletions: Sequence[Deletion]) -> None:
        """Report deletions; each one actually made (not in a dry run) is logged once, with its key and rule."""
        self.deletions += deletions
        if not self.dry_run:
            for deletion in deletions:
                log.info("backup deleted", extra=deletion.to_json())

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "policy": self.policy,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "listed_objects": self.listed_objects,
            "kept_backups": self.kept,
            "deleted": {w: self.count(w) for w in ("backup", "orphan", "incomplete_upload", "scratch_database")},
            "held_series": self.held,
            "skipped_in_use": self.skipped_in_use,
            "skipped_in_progress": self.skipped_in_progress,
            "deletions": [d.to_json() for d in self.deletions],
        }


@dataclass
class Inventory:
    """The store as one listing saw it, keyed by backup object key."""

    manifests: dict[str, KeyParts] = field(default_factory=dict)
    objects: dict[str, StoredObject] = field(default_factory=dict)
    verifications: dict[str, StoredObject] = field(default_factory=dict)
    listed: int = 0


def take_inventory(listing: Iterator[StoredObject]) -> Inventory:
    """Sort one listing into manifests, objects and verification records; foreign keys are ignored."""
    inventory = Inventory()
    for stored in listing:
        inventory.listed += 1
        key = stored.key
        try:
            if key.endswith(MANIFEST_SUFFIX):
                parts = parse_key(key)
                inventory.manifests[key[: -len(MANIFEST_SUFFIX)] + OBJECT_SUFFIX] = parts
            elif key.endswith(OBJECT_SUFFIX):
                parse_key(key)
                inventory.objects[key] = stored
            elif key.endswith(VERIFICATION_SUFFIX):
                object_key = object_key_of_verification(key)
                parse_key(object_key)
                inventory.verifications[object_key] = stored
        except ValueError:
            continue  # not one of ours: never touched
    return inventory


def series_of(parts: KeyParts) -> str:
    if parts.kind is BackupKind.ORG:
        return f"{parts.database}/{parts.organization_id}"
    return parts.database


def candidates(store: BackupStore, inventory: Inventory) -> dict[str, Candidate]:
    """Object key -> retention candidate for every published backup, with its verification outcome."""
    found: dict[str, Candidate] = {}
    for object_key, parts in inventory.manifests.items():
        verification = Verification.UNVERIFIED
        if object_key in inventory.verifications:
            record = read_verification(store, verification_key(object_key))
            if record is not None:
                verification = record.outcome
        found[object_key] = Candidate(
            id=parts.backup_id,
            kind=str(parts.kind),
            series=series_of(parts),
            taken_at=parts.taken_at,
            verification=verification,
        )
    return found


def _batches(items: Sequence[Decision], size: int) -> Iterator[Sequence[Decision]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _delete_keys(store: BackupStore, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), DELETE_BATCH):
        store.delete_many(keys[start : start + DELETE_BATCH])


def delete_backups(
    store: BackupStore,
    expired: Sequence[Decision],
    keys_of: dict[str, str],
    claims: Claims,
    report: CleanupReport,
    *,
    after_manifests: Callable[[Sequence[str]], None] | None = None,
) -> None:
    """Delete expired backups in batches: claim, manifests, then verification records and objects.

    after_manifests is called with each batch's object keys between the two deletes (tests crash there).
    """
    for batch in _batches(expired, DELETE_BATCH):
        claimed = claims.claim([d.backup.id for d in batch])
        try:
            doomed = [d for d in batch if d.backup.id in claimed]
            report.skipped_in_use += [d.backup.id for d in batch if d.backup.id not in claimed]
            object_keys = [keys_of[d.backup.id] for d in doomed]
            store.delete_many([k[: -len(OBJECT_SUFFIX)] + MANIFEST_SUFFIX for k in object_keys])
            if after_manifests is not None:
                after_manifests(object_keys)
            _delete_keys(store, [verification_key(k) for k in object_keys] + object_keys)
            report.add([_backup_deletion(d, keys_of[d.backup.id]) for d in doomed])
        finally:
            claims.release_all()


def _backup_deletion(decision: Decision, key: str) -> Deletion:
    backup = decision.backup
    return Deletion(
        "backup", key, str(decision.rule), decision.detail, backup.id, backup.kind, backup.series
    )


def orphans(inventory: Inventory, now: datetime, grace: timedelta) -> list[Deletion]:
    """Objects and verification records with no manifest, last written before the grace period."""
    found: list[Deletion] = []
    cutoff = now - grace
    detail = f"no manifest, last written more than {grace.total_seconds():g}s ago"
    for object_key, stored in inventory.objects.items():
        if object_key not in inventory.manifests and stored.modified_at < cutoff:
            found.append(Deletion("orphan", object_key, "orphan_object", detail))
    for object_key, stored in inventory.verifications.items():
        if object_key not in inventory.manifests and stored.modified_at < cutoff:
            found.append(Deletion("orphan", verification_key(object_key), "orphan_verification", detail))
    return found


def still_orphans(store: BackupStore, stray: Sequence[Deletion]) -> list[Deletion]:
    """The orphans whose manifest is still missing: a backup may have published it since the listing."""
    found: list[Deletion] = []
    for deletion in stray:
        if deletion.rule == "orphan_verification":
            manifest = manifest_key_of_verification(deletion.key)
        else:
            manifest = deletion.key[: -len(OBJECT_SUFFIX)] + MANIFEST_SUFFIX
        try:
            store.get_bytes(manifest)
        except ObjectNotFound:
            found.append(deletion)
    return found


def prune(
    store: BackupStore,
    policy: Policy,
    claims: Claims,
    *,
    now: datetime,
    orphan_grace: timedelta,
    dry_run: bool = False,
    after_manifests: Callable[[Sequence[str]], None] | None = None,
    running: RunningBackups | None = None,
) -> CleanupReport:
    """Delete what the retention plan expires, then orphans and stale incomplete uploads; report each.

    Orphans and unfinished uploads in a scope whose backup is running (running says which; None: no
    backup can be running) are left alone: the backup may have written its object and not yet its
    manifest, or be uploading for longer than a day.

    Raises:
        StorageUnavailable, StorageRefused: the store failed; what was deleted before stays deleted.
        DatabaseUnavailable, DatabaseAuthenticationFailed: running could not ask the database.
    """
    report = CleanupReport(dry_run=dry_run, policy=policy.describe(), started_at=now)
    inventory = take_inventory(store.list_objects(""))
    report.listed_objects = inventory.listed
    by_key = candidates(store, inventory)
    plan = plan_retention(by_key.values(), policy, now)
    _report_plan(plan, report)
    keys_of = {c.id: key for key, c in by_key.items()}
    if dry_run:
        report.add([_backup_deletion(d, keys_of[d.backup.id]) for d in plan.expired])
    else:
        delete_backups(store, plan.expired, keys_of, claims, report, after_manifests=after_manifests)
    stray = orphans(inventory, now, orphan_grace)
    started_before = now - INCOMPLETE_UPLOAD_AGE
    stale_uploads = store.discard_incomplete("", started_before=started_before, dry_run=True)
    busy = _running_scopes(running, [d.key for d in stray] + stale_uploads)
    report.skipped_in_progress += [d.key for d in stray if scope_of_key(d.key) in busy]
    report.skipped_in_progress += [k for k in stale_uploads if scope_of_key(k) in busy]
    # Asked after the lock check: a backup that held its lock at listing time and has let go since
    # published its manifest first, so an object whose manifest is still missing now is garbage.
    stray = still_orphans(store, [d for d in stray if scope_of_key(d.key) not in busy])
    if not dry_run:
        _delete_keys(store, [d.key for d in stray])
    report.add(stray)
    incomplete = (
        store.discard_incomplete("", started_before=started_before, dry_run=dry_run, spare=busy)
        if stale_uploads
        else []
    )
    report.add(
        [Deletion("incomplete_upload", key, "incomplete_upload", "unfinished upload started over a day ago")
         for key in incomplete]
    )  # fmt: skip
    return report


def _running_scopes(running: RunningBackups | None, keys: Sequence[str]) -> set[str]:
    scopes = {scope for scope in map(scope_of_key, keys) if scope is not None}
    if running is None or not scopes:
        return set()
    busy = running(scopes)
    if busy:
        log.info("backups running; orphans and unfinished uploads of their scopes kept", extra={"scopes": sorted(busy)})
    return busy


def collect_scratch_databases(server: PostgresTarget, report: CleanupReport) -> None:
    """Drop the throwaway databases no live drill holds (those of dead drills) and report each one.

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: the server could not be reached.
    """
    report.add(
        [Deletion("scratch_database", name, "stale_scratch_database", "no live restore drill holds it")
         for name in sweep_scratch_databases(server, dry_run=report.dry_run)]
    )  # fmt: skip


def _report_plan(plan: RetentionPlan, report: CleanupReport) -> None:
    report.kept = plan.kept
    for series in plan.held:
        report.held.append({"kind": series.kind, "series": series.series, "backups": len(series.decisions)})
        log.warning(
            "no recent backup of the series passed verification; keeping all of them",
            extra={"kind": series.kind, "series": series.series, "backups": len(series.decisions)},
        )
