"""`ops-workers flower`: basic auth enforced; tasks visible with their arguments, and no secret in them."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from tests.conftest import subprocess_env
from workers.embedded import free_port

USER, PASSWORD = "ops", "fl0wer-secret"


@pytest.fixture
def flower_url(base_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = subprocess_env({**base_env, "OPS_FLOWER_BIND": f"127.0.0.1:{port}",
                          "OPS_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "workers", "flower"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
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
                pytest.fail("flower did not start within 60 s")
            if "Visit me at" in line:
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_requests_without_or_with_wrong_credentials_are_refused(flower_url: str) -> None:
    assert httpx.get(f"{flower_url}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{flower_url}/api/workers", auth=(USER, "wrong"), timeout=10).status_code == 401
    assert httpx.get(f"{flower_url}/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower_url}/api/workers", auth=(USER, PASSWORD), timeout=10).status_code == 200
    # Flower leaves /metrics open by design (Prometheus scrapes it); it names tasks and workers only.
    metrics = httpx.get(f"{flower_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and PASSWORD not in metrics.text


def test_flower_refuses_to_serve_off_loopback_without_auth(base_env: dict[str, str]) -> None:
    env = subprocess_env({**base_env, "OPS_FLOWER_BIND": "0.0.0.0:0"})
    result = subprocess.run([sys.executable, "-m", "workers", "flower"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2
    assert "OPS_FLOWER_BASIC_AUTH must be set" in result.stderr


def test_a_task_shows_with_its_identifier_arguments_and_no_secret(flower_url: str, worker_app: Celery) -> None:
    @worker_app.task(name="tests.echo")
    def echo(database: str) -> str:
        return database

    with start_worker(worker_app, pool="solo", perform_ping_check=False, queues=["default"]):
        # Flower learns about tasks from worker events, and only from once its event receiver is
        # connected: send a task again until Flower has seen one end, within a bounded time.
        deadline = time.monotonic() + 90
        task: dict[str, object] = {}
        while not task and time.monotonic() < deadline:
            result = echo.apply_async(("platform",), queue="default")
            result.get(timeout=30)
            for _ in range(10):
                response = httpx.get(f"{flower_url}/api/task/info/{result.id}", auth=(USER, PASSWORD), timeout=10)
                if response.status_code == 200 and response.json().get("state") == "SUCCESS":
                    task = response.json()
                    break
                threading.Event().wait(0.5)

    assert task.get("name") == "tests.echo"
    assert task.get("args") == "('platform',)"
    page = httpx.get(f"{flower_url}/tasks", auth=(USER, PASSWORD), timeout=10).text
    assert PASSWORD not in str(task) and PASSWORD not in page
