"""backup.verify and backup.cleanup on an embedded worker through the real Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from prometheus_client import REGISTRY

from tests.backup.test_cleanup import stored_backup
from workers.backup.maintenance_tasks import backup_cleanup_task, backup_verify_task
from workers.backup.naming import BackupKind
from workers.backup.operations import take_full_backup
from workers.backup.retention import Verification
from workers.backup.storage import open_store
from workers.settings import PostgresTarget, Settings


@pytest.fixture
def settings(ops_env: Callable[..., Settings], platform_db: PostgresTarget) -> Settings:
    """The standard test settings plus the platform database (what the drills restore from and on)."""
    target = platform_db
    return ops_env(OPS_DATABASE_URL=f"postgresql://{target.user}@{target.host}:{target.port}/{target.dbname}")


def test_verify_and_cleanup_tasks_run_on_a_worker(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController
) -> None:
    manifest = take_full_backup(settings)

    verified = backup_verify_task.delay("latest", "full").get(timeout=150)
    cleaned = backup_cleanup_task.delay(dry_run=True).get(timeout=60)

    assert (verified["backup_id"], verified["outcome"], verified["reason"]) == (manifest.id, "ok", None)
    assert cleaned["dry_run"] is True
    assert cleaned["kept_backups"] == 1
    assert "deletions" not in cleaned


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_cleanup_task_logs_each_deletion_and_updates_the_cleanup_metrics(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(settings.backup)
    for days in (0, 1, 2):
        stored_backup(store, days, verified=Verification.OK)
    expired = [stored_backup(store, days) for days in (40, 50)]
    for days in (1, 2, 3):  # never verified: the series is held whole
        stored_backup(store, days, kind=BackupKind.ORG, organization_id="org-1")
    deleted = {what: sample("ops_backup_cleanup_deleted_total", what=what) for what in ("backup", "orphan")}
    started = time.time()
    caplog.set_level(logging.INFO, logger="workers.backup.cleanup")

    cleaned = backup_cleanup_task.delay().get(timeout=60)

    assert cleaned["deleted"]["backup"] == 2
    logged = [(r.what, r.key, r.rule) for r in caplog.records if r.getMessage() == "backup deleted"]  # type: ignore[attr-defined]
    assert [entry for entry in logged if entry[0] == "backup"] == [
        ("backup", expired[1].key, "expired"), ("backup", expired[0].key, "expired")
    ]  # fmt: skip
    assert sample("ops_backup_cleanup_deleted_total", what="backup") == deleted["backup"] + 2
    assert sample("ops_backup_cleanup_deleted_total", what="orphan") == deleted["orphan"]
    assert sample("ops_backup_cleanup_last_success_timestamp_seconds") >= started
    assert sample("ops_backup_retention_held_series", kind="org") == 1
    assert sample("ops_backup_retention_held_series", kind="full") == 0


def test_the_verify_task_goes_to_the_backups_queue(worker_app: Celery) -> None:
    router = worker_app.amqp.router
    for name in ("backup.verify", "backup.verify_orgs", "backup.cleanup"):
        assert router.route({}, name)["queue"].name == "backups"
