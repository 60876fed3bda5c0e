"""Backup tasks: thin wrappers over workers.backup.operations. Wire names are a contract with beat."""

from __future__ import annotations

from celery import shared_task

from workers.backup.manifest import Manifest
from workers.backup.operations import organization_ids, take_full_backup, take_org_backup
from workers.errors import AlreadyRunning, DatabaseUnavailable, StorageUnavailable, UsageError
from workers.settings import get_settings

# Transient: the database or the store could not be reached, or pg_dump met a passing condition (its
# lock wait timed out behind DDL, its connection was lost: CommandInterrupted, a DatabaseUnavailable).
# Bad credentials (database or S3), any other failed dump, a bad id or an overlapping run are
# permanent for this message and are never retried.
TRANSIENT = (DatabaseUnavailable, StorageUnavailable)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 60, "retry_backoff_max": 1800, "max_retries": 5}


def summary(manifest: Manifest) -> dict[str, object]:
    return {"id": manifest.id, "kind": str(manifest.kind), "key": manifest.key, "size": manifest.size_bytes}


@shared_task(name="backup.full", throws=(AlreadyRunning,), **RETRY)
def backup_full_task() -> dict[str, object]:
    """Take a full backup of the platform database; return its id, key and size."""
    return summary(take_full_backup(get_settings()))


@shared_task(name="backup.org", throws=(AlreadyRunning, UsageError), **RETRY)
def backup_org_task(organization_id: str) -> dict[str, object]:
    """Back up one organization; return its id, key and size."""
    return summary(take_org_backup(get_settings(), organization_id))


@shared_task(name="backup.all_orgs", autoretry_for=(DatabaseUnavailable,), retry_backoff=60, max_retries=5)
def backup_all_orgs_task() -> list[str]:
    """Enqueue one backup.org per organization; return the ids of the enqueued tasks."""
    return [backup_org_task.delay(organization_id).id for organization_id in organization_ids(get_settings())]
