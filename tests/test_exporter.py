"""The exporter process's metrics, scraped over HTTP: host, platform database, workers, exact queues."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import psycopg
import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from tests.conftest import PgServer, subprocess_env
from workers.app import PRIORITY_SEP, PRIORITY_STEPS, QUEUES, REDBEAT_KEY_PREFIX, create_app
from workers.exporter import BrokerLayout, exporter_sources, start_exporter
from workers.settings import Bind, Settings

LAYOUT = BrokerLayout(QUEUES, tuple(PRIORITY_STEPS), PRIORITY_SEP, REDBEAT_KEY_PREFIX)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def exporter_url(
    ops_env: object, worker_app: Celery, pg: PgServer, request: pytest.FixtureRequest
) -> Iterator[str]:
    platform = pg.create_database(prefix="ops_exporter")
    with pg.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 10").format(sql.Identifier(platform.dbname)))
    settings: Settings = ops_env(OPS_DATABASE_URL=f"postgresql://{platform.user}@{platform.host}:{platform.port}"
                                 f"/{platform.dbname}", OPS_EXPORTER_PING_TIMEOUT_S="0.5")  # type: ignore[operator]
    sources = exporter_sources(settings, worker_app, LAYOUT)
    server, thread = start_exporter(sources, Bind("127.0.0.1", 0))
    request.node.platform = platform
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    sources.broker.close()


def test_database_connections_count_idle_in_transaction_sessions_against_the_limit(
    exporter_url: str, request: pytest.FixtureRequest
) -> None:
    platform = request.node.platform
    with ExitStack() as stack:
        for _ in range(3):
            conn = stack.enter_context(psycopg.connect(**platform.conninfo()))
            conn.execute("SELECT 1")  # opens a transaction and leaves it idle
        during = scrape(exporter_url)
    after = scrape(exporter_url)

    labels = (("database", platform.dbname),)
    assert during[("database_connections_active", labels)] == 3
    assert during[("database_connections_max", labels)] == 10
    assert after[("database_connections_active", labels)] == 0
    assert during[("ops_exporter_source_up", (("source", "database"),))] == 1


def test_system_gauges_and_queue_depths_are_exported(exporter_url: str, worker_app: Celery) -> None:
    for priority in (0, 5, 9):
        worker_app.send_task("ops.check", queue="backups", priority=priority)

    samples = scrape(exporter_url)

    assert 0 <= samples[("system_cpu_usage_percent", ())] <= 100
    assert 0 < samples[("system_memory_usage_percent", ())] <= 100
    disks = {labels: v for (name, labels), v in samples.items() if name == "system_disk_usage_percent"}
    assert any(dict(labels)["mountpoint"] == "/" for labels in disks)
    assert samples[("ops_queue_messages", (("queue", "backups"), ("state", "ready")))] == 3
    assert samples[("ops_queue_messages", (("queue", "incidents"), ("state", "ready")))] == 0
    assert samples[("celery_workers_active", ())] == 0


def test_celery_workers_active_counts_a_running_worker(
    exporter_url: str, celery_worker: TestWorkController
) -> None:
    assert scrape(exporter_url)[("celery_workers_active", ())] == 1


def test_unreachable_database_is_reported_not_fatal(ops_env: object, worker_app: Celery) -> None:
    settings: Settings = ops_env(OPS_DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")  # type: ignore[operator]
    sources = exporter_sources(settings, worker_app, LAYOUT)
    server, thread = start_exporter(sources, Bind("127.0.0.1", 0))
    try:
        samples = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        sources.broker.close()
    assert samples[("ops_exporter_source_up", (("source", "database"),))] == 0
    assert samples[("ops_exporter_source_up", (("source", "broker"),))] == 1
    assert not any(name == "database_connections_active" for name, _ in samples)


def test_an_unreachable_broker_leaves_the_other_metrics_served(ops_env: object) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings: Settings = ops_env(OPS_BROKER_URL=f"redis://127.0.0.1:{port}/0", OPS_EXPORTER_PING_TIMEOUT_S="0.2")  # type: ignore[operator]
    app = create_app(settings, name="exporter-broker-down")
    sources = exporter_sources(settings, app, LAYOUT)
    server, thread = start_exporter(sources, Bind("127.0.0.1", 0))
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=60)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        sources.broker.close()
        app.close()
    assert response.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    for source in ("broker", "workers"):
        assert samples[("ops_exporter_source_up", (("source", source),))] == 0
    assert ("system_memory_usage_percent", ()) in samples


def test_exporter_command_serves_until_terminated(base_env: dict[str, str]) -> None:
    env = subprocess_env({**base_env, "OPS_EXPORTER_BIND": "127.0.0.1:0"})
    proc = subprocess.Popen([sys.executable, "-m", "workers", "exporter"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("exporter serving http://127.0.0.1:"), first
        samples = scrape(first.split()[-1])
        assert ("ops_queue_messages", (("queue", "default"), ("state", "ready"))) in samples
    finally:
        proc.terminate()
        returncode = proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
    assert returncode == 0


def test_beat_state_shows_the_lock_and_how_late_the_schedule_is(exporter_url: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert ("ops_beat_lock_held", ()) in scrape(exporter_url)
    assert scrape(exporter_url)[("ops_beat_lock_held", ())] == 0

    client.set(f"{REDBEAT_KEY_PREFIX}:lock", "token", ex=60)
    client.zadd(f"{REDBEAT_KEY_PREFIX}:schedule", {"a": time.time() - 300, "b": time.time() + 60})
    samples = scrape(exporter_url)

    assert samples[("ops_beat_lock_held", ())] == 1
    assert 299 <= samples[("ops_beat_schedule_lag_seconds", ())] < 330
