"""Shared fixtures: the real PostgreSQL and Redis, per-test settings, an embedded Celery worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import TestWorkController, start_worker
from psycopg import sql

from workers.app import create_app
from workers.embedded import free_port
from workers.settings import PostgresTarget, Settings, get_settings, parse_postgres_url

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parent.parent
# Each checkout (or developer) may pick its own database number so parallel runs don't flush each other.
TEST_REDIS_URL = os.environ.get("OPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_POSTGRES_URL = os.environ.get("OPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def require(service: str, probe: Callable[[], object]) -> None:
    """Skip when a service is down on a laptop; fail in CI, so a missing service can't turn the suite green."""
    try:
        probe()
    except Exception as exc:
        if IN_CI:
            raise
        pytest.skip(f"{service} unreachable ({exc}); start it (see README, 'Tests')")


@dataclass
class PgServer:
    """The real PostgreSQL server; hands out fresh databases and drops them afterwards."""

    admin: PostgresTarget
    created: list[str] = field(default_factory=list)

    def connect(self, target: PostgresTarget | None = None) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(**(target or self.admin).conninfo(), autocommit=True)

    def create_database(self, seed: str | None = None, prefix: str = "ops_test") -> PostgresTarget:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        target = self.admin.with_dbname(name)
        if seed:
            with self.connect(target) as conn:
                conn.execute(seed)  # type: ignore[arg-type]
        return target

    def scalar(self, target: PostgresTarget, query: str) -> object:
        with self.connect(target) as conn:
            row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    def drop_all(self) -> None:
        with self.connect() as conn:
            for name in self.created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.clear()


@pytest.fixture(scope="session")
def pg_admin() -> PostgresTarget:
    admin = parse_postgres_url(TEST_POSTGRES_URL)
    require("postgres", lambda: psycopg.connect(**admin.conninfo(), connect_timeout=3).close())
    return admin


@pytest.fixture
def pg(pg_admin: PostgresTarget) -> Iterator[PgServer]:
    server = PgServer(pg_admin)
    yield server
    server.drop_all()


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3)
    require("redis", client.ping)
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def base_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """OPS_* variables of an isolated system: test Redis, SQLite state and backups under tmp_path."""
    return {
        "OPS_BROKER_URL": redis_url,
        "OPS_VAR_DIR": str(tmp_path / "var"),
        "OPS_STATE_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'state.db'}",
        "OPS_BACKUP_STORE": f"file://{tmp_path / 'backups'}",
        "OPS_LOG_LEVEL": "DEBUG",
        "OPS_METRICS_BIND": "127.0.0.1:0",
        "OPS_RECEIVER_BIND": "127.0.0.1:0",
        # Fixed default ports would clash with anything else running here, e.g. another `ops-workers run`.
        "OPS_EXPORTER_BIND": f"127.0.0.1:{free_port()}",
        "OPS_CELERY_EXPORTER_BIND": f"127.0.0.1:{free_port()}",
        "OPS_FLOWER_BIND": f"127.0.0.1:{free_port()}",
    }


@pytest.fixture
def ops_env(monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str]) -> Callable[..., Settings]:
    """Install OPS_* variables in this process (what get_settings() reads in tasks) and return Settings."""

    def install(**overrides: str) -> Settings:
        for name in [n for n in os.environ if n.startswith("OPS_") and not n.startswith("OPS_TEST_")]:
            monkeypatch.delenv(name)
        for name, value in {**base_env, **overrides}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return get_settings()

    yield install
    get_settings.cache_clear()


@pytest.fixture
def settings(ops_env: Callable[..., Settings]) -> Settings:
    return ops_env()


@pytest.fixture
def worker_app(settings: Settings) -> Celery:
    """A Celery app on the test Redis, configured exactly as production's."""
    app = create_app(settings, name="workers-test")
    app.loader.import_default_modules()
    # shared_task proxies resolve to the current app: make it this one, not workers.app's.
    app.set_current()
    app.set_default()
    return app


@pytest.fixture
def celery_worker(worker_app: Celery) -> Iterator[TestWorkController]:
    """An embedded worker (solo pool) consuming every queue of the app through the real Redis."""
    with start_worker(
        worker_app,
        pool="solo",
        perform_ping_check=False,
        queues=["incidents", "backups", "default"],
        loglevel="INFO",
        shutdown_timeout=30,
    ) as worker:
        yield worker


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for an `ops-workers` child process running this checkout."""
    clean = {k: v for k, v in os.environ.items() if not (k.startswith("OPS_") and not k.startswith("OPS_TEST_"))}
    return {**clean, **env, "PYTHONPATH": str(REPO)}


