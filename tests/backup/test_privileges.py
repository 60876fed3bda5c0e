"""A role without the privileges a backup needs: one permanent error naming what to grant, never a retry."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from prometheus_client import REGISTRY
from psycopg import sql

from tests.backup.test_org_backup import ACME, WITH_AUDIT_LOG
from tests.conftest import PgServer, subprocess_env
from workers.backup.lock import backup_lock
from workers.backup.operations import take_org_backup
from workers.backup.storage import LocalStore
from workers.backup.tasks import TRANSIENT, backup_org_task
from workers.errors import DatabaseRefused
from workers.settings import PostgresTarget, Settings

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Limited:
    database: PostgresTarget  # as the test's superuser
    as_role: PostgresTarget  # the same database as a role that may read organizations, not molecules

    @property
    def url(self) -> str:
        t = self.as_role
        return f"postgresql://{t.user}@{t.host}:{t.port}/{t.dbname}"

    @property
    def env(self) -> dict[str, str]:
        return {"OPS_DATABASE_URL": self.url, "OPS_TENANT_TABLES": "organizations,molecules"}


@pytest.fixture
def limited(pg: PgServer) -> Iterator[Limited]:
    database = pg.create_database(seed=WITH_AUDIT_LOG)
    role = f"ops_test_reader_{uuid.uuid4().hex[:8]}"  # roles belong to the server: unique, and dropped after
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with pg.connect(database) as conn:
            conn.execute(sql.SQL("GRANT SELECT ON organizations TO {}").format(sql.Identifier(role)))
        yield Limited(database, replace(database, user=role, password=None))
    finally:
        with pg.connect(database) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("ops_backup_failures_total", {"kind": "org", "reason": reason}) or 0.0


def test_a_table_the_role_may_not_read_is_a_permanent_error_naming_the_grant(
    limited: Limited, local_store: LocalStore, ops_env: Callable[..., Settings]
) -> None:
    settings = ops_env(**limited.env)
    before = failures("database_refused")
    with pytest.raises(DatabaseRefused, match="permission denied for table molecules") as caught:
        take_org_backup(settings, ACME, store=local_store)
    assert f"GRANT pg_read_all_data TO {limited.as_role.user}" in str(caught.value)
    assert not isinstance(caught.value, TRANSIENT)
    assert failures("database_refused") == before + 1
    assert list(local_store.list_objects()) == []


def test_a_backup_lock_the_role_may_not_take_is_a_permanent_error(pg: PgServer, limited: Limited) -> None:
    with pg.connect(limited.database) as conn:
        # Functions live in each database's catalog: this revokes them in the test database only.
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_try_advisory_lock(bigint) FROM PUBLIC")
    with pytest.raises(DatabaseRefused, match="permission denied for function pg_try_advisory_lock"), backup_lock(
        limited.as_role, "full/platform/"
    ):
        pass


def test_the_cli_prints_the_refusal_as_one_line_without_a_traceback(limited: Limited, base_env: dict[str, str]) -> None:
    env = {**base_env, **limited.env, "OPS_LOG_LEVEL": "INFO"}
    result = subprocess.run(
        [sys.executable, "-m", "workers", "backup", "org", ACME],
        env=subprocess_env(env), cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "permission denied for table molecules" in line


@pytest.fixture
def settings(ops_env: Callable[..., Settings], limited: Limited) -> Settings:
    """The worker's settings: the platform database as the limited role."""
    return ops_env(**limited.env)


def test_the_org_task_fails_at_once_without_a_retry(
    settings: Settings, worker_app: Celery, celery_worker: TestWorkController
) -> None:
    result = backup_org_task.delay(ACME)
    with pytest.raises(DatabaseRefused, match="permission denied for table molecules"):
        result.get(timeout=60)  # a retry would wait out its 60 s backoff first
    assert result.state == "FAILURE"
