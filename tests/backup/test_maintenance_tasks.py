"""backup.verify and backup.cleanup on an embedded worker through the real Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from workers.backup.maintenance_tasks import backup_cleanup_task, backup_verify_task
from workers.backup.operations import take_full_backup
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


def test_the_verify_task_goes_to_the_backups_queue(worker_app: Celery) -> None:
    router = worker_app.amqp.router
    for name in ("backup.verify", "backup.verify_orgs", "backup.cleanup"):
        assert router.route({}, name)["queue"].name == "backups"
