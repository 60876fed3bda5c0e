"""Worker metrics under the real prefork pool: counts survive children that die and come back."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from celery import Celery
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import subprocess_env
from workers import metrics
from workers.embedded import free_port

TASK = "ops.check"


class WorkerProcess:
    """`ops-workers worker` as a child process; its output lines are read by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "worker", "-Q", "default", "-c", "2", "--hostname", "pf@test"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout_s: float = 60) -> str:
        """The first output line containing text; fails after timeout_s."""
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                pytest.fail(f"worker never printed {text!r}")
            if text in line:
                return line

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def prefork_worker(base_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[WorkerProcess, str]]:
    port = free_port()
    env = subprocess_env({**base_env, "OPS_METRICS_BIND": f"127.0.0.1:{port}", "OPS_LOG_LEVEL": "INFO"})
    worker = WorkerProcess(env)
    try:
        worker.wait_for("worker metrics served")
        worker.wait_for("ready.")
        yield worker, f"http://127.0.0.1:{port}/metrics"
    finally:
        worker.stop()


def sample(url: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def run_tasks(app: Celery, count: int) -> None:
    results = [app.send_task(TASK, queue="default") for _ in range(count)]
    for result in results:
        result.get(timeout=60)


def test_task_counts_add_up_across_prefork_children_that_are_killed_and_replaced(
    prefork_worker: tuple[WorkerProcess, str], worker_app: Celery, base_env: dict[str, str]
) -> None:
    worker, url = prefork_worker
    succeeded = {"task": TASK, "outcome": "succeeded"}

    run_tasks(worker_app, 6)
    first_children = {p.pid for p in worker.children()}
    assert len(first_children) == 2
    before_kill = sample(url, "ops_tasks_total", succeeded)

    victim = psutil.Process(min(first_children))
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    worker.wait_for("Process 'ForkPoolWorker", timeout_s=30)  # billiard reports the lost child
    run_tasks(worker_app, 6)
    replaced = {p.pid for p in worker.children()}

    assert before_kill == 6
    assert replaced != first_children and len(replaced) == 2
    assert sample(url, "ops_tasks_total", succeeded) == 12
    assert sample(url, "ops_task_duration_seconds_count", {"task": TASK}) == 12
    last_success = sample(url, "ops_task_last_success_timestamp_seconds", {"task": TASK})
    assert last_success is not None and last_success > 0
    # Each child wrote its own files into the worker's own multiprocess directory.
    files = list((Path(base_env["OPS_VAR_DIR"]) / "metrics" / "pf@test").glob("*.db"))
    assert len(files) >= 3


def test_no_gauge_uses_a_live_multiprocess_mode() -> None:
    # hooks._child_exited relies on this: mark_process_dead() in the exiting child is only enough
    # (a child killed by SIGKILL leaves nothing stale behind) while no gauge is per live process.
    gauges = [v for v in vars(metrics).values() if isinstance(v, Gauge)]
    assert gauges
    assert [g._name for g in gauges if g._multiprocess_mode.startswith("live")] == []
