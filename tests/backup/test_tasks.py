"""Backup tasks on real workers through the real Redis: results, fan-out, retry policy, SIGKILL mid-backup."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, signals
from celery.contrib.testing.worker import TestWorkController

from tests.backup.conftest import free_port
from tests.backup.test_full_backup import platform_settings
from tests.conftest import PgServer
from workers.app import create_app
from workers.backup.lock import backup_lock
from workers.backup.manifest import list_manifests
from workers.backup.naming import BackupKind, scope_prefix
from workers.backup.storage import LocalStore, open_store
from workers.backup.tasks import backup_all_orgs_task, backup_full_task, backup_org_task
from workers.errors import AlreadyRunning, CommandNotFound, InvalidOrganizationId
from workers.metrics import registry_for
from workers.settings import PostgresTarget, Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(ops_env: Callable[..., Settings], platform_db: PostgresTarget) -> Settings:
    """Overrides the shared fixture: the worker's settings point at the seeded platform database."""
    return platform_settings(ops_env, platform_db)


def test_full_backup_task_stores_a_backup(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController
) -> None:
    result = backup_full_task.delay().get(timeout=120)
    manifests = list_manifests(open_store(settings.backup))
    assert [m.id for m in manifests] == [result["id"]]
    assert result["kind"] == "full" and result["size"] == manifests[0].size_bytes


def test_all_orgs_fans_out_one_task_per_organization(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController
) -> None:
    task_ids = backup_all_orgs_task.delay().get(timeout=60)
    assert len(task_ids) == 3
    results = [worker_app.AsyncResult(task_id).get(timeout=120) for task_id in task_ids]
    stored = list_manifests(open_store(settings.backup), BackupKind.ORG)
    assert sorted(m.id for m in stored) == sorted(r["id"] for r in results)
    assert len({m.organization_id for m in stored}) == 3


def test_permanent_errors_fail_at_once_without_retry(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController, platform_db: PostgresTarget
) -> None:
    result = backup_org_task.delay("1; DROP TABLE organizations")
    with pytest.raises(InvalidOrganizationId):
        result.get(timeout=60)
    assert result.state == "FAILURE"

    with backup_lock(platform_db, scope_prefix(BackupKind.FULL, platform_db.dbname)):
        overlapping = backup_full_task.delay()
        with pytest.raises(AlreadyRunning):
            overlapping.get(timeout=60)
    assert list(open_store(settings.backup).list_objects()) == []


def test_a_failed_backup_is_logged_once_by_the_worker_with_its_cause(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController, platform_db: PostgresTarget,
    ops_env: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    platform_settings(ops_env, platform_db, OPS_PG_BIN_DIR=str(empty_bin))  # what the task reads when it runs
    caplog.set_level(logging.INFO)

    result = backup_full_task.delay()
    with pytest.raises(CommandNotFound):
        result.get(timeout=60)

    # Celery's tracer handles it (the retry policy said: permanent) and logs it, with the traceback;
    # the operation below it only counted it.
    [logged] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged.name == "celery.app.trace"
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], CommandNotFound)


@pytest.fixture
def retries() -> Iterator[threading.Event]:
    seen = threading.Event()

    def on_retry(**_: Any) -> None:
        seen.set()

    signals.task_retry.connect(on_retry, weak=False)
    yield seen
    signals.task_retry.disconnect(on_retry)


def test_an_unreachable_database_is_retried(
    ops_env: Callable[..., Settings], retries: threading.Event, redis_url: str
) -> None:
    settings = ops_env(OPS_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/platform")
    app = create_app(settings, name="workers-test-retry")
    app.loader.import_default_modules()
    app.set_current()
    app.set_default()
    from celery.contrib.testing.worker import start_worker

    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=["backups"], shutdown_timeout=30):
            # No result subscription: a pending AsyncResult collected after close_app() reconnects to Redis.
            backup_full_task.apply_async(ignore_result=True)
            assert retries.wait(timeout=60), "the task was not retried"
    finally:
        close_app(app)


def test_a_dump_blocked_by_ddl_is_retried(
    pg: PgServer, ops_env: Callable[..., Settings], retries: threading.Event, redis_url: str
) -> None:
    source = pg.create_database(seed="create table t (x int);")
    settings = platform_settings(ops_env, source, OPS_BACKUP_LOCK_WAIT_TIMEOUT_S="0.2")
    app = create_app(settings, name="workers-test-retry-lock")
    app.loader.import_default_modules()
    app.set_current()
    app.set_default()
    from celery.contrib.testing.worker import start_worker

    try:
        with pg.connect(source) as ddl, ddl.transaction():
            ddl.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # pg_dump's lock wait times out behind it
            with start_worker(app, pool="solo", perform_ping_check=False, queues=["backups"], shutdown_timeout=30):
                # No result subscription: a pending AsyncResult collected after close_app() reconnects to Redis.
                backup_full_task.apply_async(ignore_result=True)
                assert retries.wait(timeout=60), "the task was not retried"
    finally:
        close_app(app)


def close_app(app: Celery) -> None:
    """Close the app's broker and result-backend connections (else their sockets leak into later tests)."""
    app.close()
    app.backend.client.connection_pool.disconnect()


def start_worker_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "backups", "-c", "1",
            "--pool", "prefork", "--without-mingle", "--without-gossip", "--loglevel", "INFO"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def partial_bytes(store: LocalStore) -> int:
    total = 0
    for path in store.root.rglob("*.partial"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue  # renamed into place or removed between listing and stat
    return total


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    # A file appearing on disk or a lock being freed has no event to wait on: check with a deadline.
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_worker_sigkilled_mid_backup_publishes_nothing_and_the_redelivered_task_completes(
    base_env: dict[str, str], medium_platform_db: PostgresTarget, redis_url: str, tmp_path: Path,
    ops_env: Callable[..., Settings],
) -> None:  # fmt: skip
    from tests.conftest import subprocess_env

    target = medium_platform_db

    def logs() -> str:
        return "\n".join(
            f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:] for log in sorted(tmp_path.glob("w*.log"))
        )

    env = {
        **base_env,
        "OPS_DATABASE_URL": f"postgresql://{target.user}@{target.host}:{target.port}/{target.dbname}",
        "OPS_LONGEST_TASK_S": "60",
    }
    settings = platform_settings(ops_env, target)
    store = open_store(settings.backup)
    assert isinstance(store, LocalStore)
    # Slow enough compression that the backup is surely still running when the worker dies.
    slow = start_worker_process(
        subprocess_env({**env, "OPS_BACKUP_ZSTD_LEVEL": "19", "OPS_BACKUP_ZSTD_THREADS": "0"}), tmp_path / "w1.log"
    )
    try:
        app = create_app(settings, name="workers-test-sender")
        task = app.send_task("backup.full")
        try:
            wait_for(lambda: partial_bytes(store) > 0, 90, "a partial upload")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None
        os.killpg(slow.pid, signal.SIGKILL)
    finally:
        if slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
        slow.wait()

    assert list_manifests(store) == [], logs()  # no manifest, so no backup

    def lock_is_free() -> bool:
        try:
            with backup_lock(target, scope_prefix(BackupKind.FULL, target.dbname)):
                return True
        except AlreadyRunning:
            return False

    wait_for(lock_is_free, 30, "the dead worker's lock to be released")
    with redis.Redis.from_url(redis_url) as client:
        unacked = client.hlen("unacked")
    assert unacked == 1, logs()  # acks_late: the message was not acknowledged

    # Redis hands an unacknowledged message to another worker after visibility_timeout (the
    # longest task + 10 min); restore it now instead of waiting that long.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "visibility_timeout": 0}
    with app.connection_for_write() as connection:
        connection.default_channel.qos.restore_visible(start=0, num=10)

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    fast = start_worker_process(
        subprocess_env({**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}), tmp_path / "w2.log"
    )
    try:
        try:
            result = task.get(timeout=150)
        except Exception as exc:
            raise AssertionError(f"redelivered task did not complete: {exc!r}\n{logs()}") from exc
    finally:
        close_app(app)
        fast.send_signal(signal.SIGTERM)
        try:
            fast.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(fast.pid, signal.SIGKILL)
            fast.wait()
    manifests = list_manifests(store)
    assert [m.id for m in manifests] == [result["id"]]
    assert not any(store.root.rglob("*.partial"))  # the dead worker's leftover was discarded under the lock
    # The prefork child recorded the outcome where the worker's exporter reads it.
    registry = registry_for(metrics_dir)
    assert registry is not None
    last = registry.get_sample_value("ops_backup_last_success_timestamp_seconds", {"kind": "full"})
    assert last is not None and last >= manifests[0].finished_at.timestamp() - 1
    assert registry.get_sample_value("ops_backup_size_bytes", {"kind": "full"}) == manifests[0].size_bytes
