"""Cleanup and verification tasks: thin wrappers over workers.backup.maintenance. Wire names are a contract."""

from __future__ import annotations

from celery import shared_task

from workers.backup.maintenance import LATEST, cleanup_backups, verify, verify_org_sample
from workers.backup.naming import BackupKind
from workers.errors import BackupInUse, BackupNotFound, DatabaseUnavailable, StorageUnavailable
from workers.settings import get_settings

# Transient: a service could not be reached, or cleanup held the backup for a moment. A failed
# verification is not an error of the task: it is its result, recorded and counted. A drill that
# could not run (pg_restore missing, credentials refused) is recorded and counted too, and fails
# the task without a retry.
TRANSIENT = (DatabaseUnavailable, StorageUnavailable, BackupInUse)

# Celery's annotations type shared_task(name=...) only; with options the decorator is untyped.


@shared_task(  # type: ignore[untyped-decorator]
    name="backup.cleanup", autoretry_for=TRANSIENT, retry_backoff=60, retry_backoff_max=1800, max_retries=3
)
def backup_cleanup_task(dry_run: bool = False) -> dict[str, object]:
    """Apply retention and collect garbage; return the counts (each deletion is logged)."""
    report = cleanup_backups(get_settings(), dry_run=dry_run).to_json()
    return {k: v for k, v in report.items() if k != "deletions"}


@shared_task(  # type: ignore[untyped-decorator]
    name="backup.verify", throws=(BackupNotFound,), autoretry_for=TRANSIENT, retry_backoff=60, max_retries=3
)
def backup_verify_task(selector: str = "latest", kind: str = "full") -> dict[str, object]:
    """Restore-drill one backup (an id, or 'latest' of kind); return the verification record."""
    return verify(get_settings(), selector, BackupKind(kind) if selector == LATEST else None).to_json()


@shared_task(  # type: ignore[untyped-decorator]
    name="backup.verify_orgs", autoretry_for=TRANSIENT, retry_backoff=60, max_retries=3
)
def backup_verify_orgs_task() -> list[dict[str, object]]:
    """Restore-drill the newest backup of a sample of organizations, least recently verified first."""
    return [result.to_json() for result in verify_org_sample(get_settings())]
