"""The reference celery-exporter, from its own venv, against the real Redis: it runs, and it undercounts."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psutil
import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from prometheus_client.parser import text_string_to_metric_families

from workers.app import PRIORITY_SEP, PRIORITY_STEPS, QUEUES
from workers.embedded import free_port
from workers.processes import EXPORTER_VENV, QUEUE_NAMES, celery_exporter_spec
from workers.queues import read_queue_depths
from workers.settings import Bind

IN_CI = os.environ.get("CI") == "true"


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def celery_exporter(redis_url: str) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    spec = celery_exporter_spec(EXPORTER_VENV, Bind("127.0.0.1", port), QUEUE_NAMES)
    if spec is None:
        if IN_CI:
            raise AssertionError("celery-exporter not installed: .ci/run runs `make exporter`")
        pytest.skip("celery-exporter not installed (make exporter)")
    env = {**os.environ, **spec.env, "CE_BROKER_URL": redis_url}
    proc = subprocess.Popen(list(spec.argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                pytest.fail("celery-exporter did not start within 60 s")
            if "Started celery-exporter" in line:
                break
        url = f"http://127.0.0.1:{port}/metrics"
        # It logs "Started" before its HTTP server listens: wait until a scrape answers.
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "celery-exporter exited after starting"
                assert time.monotonic() < deadline, "celery-exporter did not answer on its port within 30 s"
                time.sleep(0.2)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_broker_url_is_in_the_environment_not_argv(
    celery_exporter: tuple[str, psutil.Process], redis_url: str
) -> None:
    _url, process = celery_exporter
    assert redis_url not in " ".join(process.cmdline())


def test_its_queue_length_sees_only_priority_zero_where_ours_sees_all(
    celery_exporter: tuple[str, psutil.Process], worker_app: Celery, redis_url: str
) -> None:
    url, _process = celery_exporter
    for priority in (0, 5, 9):
        worker_app.send_task("ops.check", queue="backups", priority=priority)

    theirs = samples(url)[("celery_queue_length", (("queue_name", "backups"),))]
    client = redis.Redis.from_url(redis_url)
    ours = {d.queue: d.ready for d in read_queue_depths(client, QUEUES, PRIORITY_STEPS, PRIORITY_SEP,
                                                          datetime.now(UTC))}  # fmt: skip
    client.close()

    assert (theirs, ours["backups"]) == (1, 3)


def test_it_counts_tasks_from_worker_events(
    celery_exporter: tuple[str, psutil.Process], worker_app: Celery, celery_worker: TestWorkController
) -> None:
    url, _process = celery_exporter
    worker_app.send_task("ops.check", queue="default").get(timeout=30)

    # The exporter consumes the worker's events asynchronously (and each scrape waits ~2 s on its
    # inspect() calls): give it a bounded time to see them.
    host = celery_worker.hostname.split("@", 1)[1]
    labels = (("hostname", host), ("name", "ops.check"), ("queue_name", "default"))
    key = ("celery_task_succeeded_total", labels)
    deadline = time.monotonic() + 40
    current = samples(url)
    while current.get(key, 0) < 1 and time.monotonic() < deadline:
        threading.Event().wait(0.5)
        current = samples(url)
    assert current.get(key, 0) >= 1, sorted(k for k in current if k[0].startswith("celery_task"))
