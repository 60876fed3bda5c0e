"""On a real prefork `celery worker`: pool growth by remote control, and a child killed mid-playbook."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery
from sqlalchemy import Engine

from tests.incidents.conftest import WorkerProcess, insert_incident, start_worker_process, stop_worker_process
from workers.backup.storage import LocalStore
from workers.incidents.actions.base import ActionContext
from workers.incidents.actions.pool import scale_pool
from workers.incidents.archive import StoreArchive
from workers.incidents.audit import AuditTrail
from workers.incidents.operations import handle_incident
from workers.settings import Settings


@pytest.fixture
def worker_env(base_env: dict[str, str]) -> dict[str, str]:
    return dict(base_env)


@pytest.fixture
def worker_process(
    worker_app: Celery, worker_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**extra_env: str) -> WorkerProcess:
        worker = start_worker_process(worker_app, {**worker_env, **extra_env}, tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stop_worker_process(worker)


def _pool_processes(app: Celery, hostname: str, expected: int | None = None) -> int:
    """The worker's pool size; with expected, wait (up to 20 s) for it: pool_grow forks in the background."""
    deadline = time.monotonic() + 20
    while True:
        stats = app.control.inspect(destination=[hostname], timeout=5).stats() or {}
        size = len(stats[hostname]["pool"]["processes"])
        if expected is None or size == expected or time.monotonic() > deadline:
            return size
        time.sleep(0.1)


def test_celery_scale_grows_the_pool_of_the_backlogged_queue(
    settings: Settings, worker_app: Celery, worker_process: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    worker = worker_process()
    assert _pool_processes(worker_app, worker.hostname) == 1
    context = ActionContext(settings, False, 10.0, {}, StoreArchive(LocalStore(tmp_path)), celery_app=worker_app)

    result = scale_pool({"queue": "incidents", "increment": 2, "max_concurrency": 8}, context)
    capped = scale_pool({"queue": "incidents", "increment": 10, "max_concurrency": 4}, context)
    elsewhere = scale_pool({"queue": "nobody-listens", "increment": 1, "max_concurrency": 4}, context)

    assert result.ok and result.detail["workers"][0]["grow_by"] == 2  # type: ignore[index]
    assert capped.detail["workers"][0]["grow_by"] == 1  # type: ignore[index]
    assert _pool_processes(worker_app, worker.hostname, expected=4) == 4
    assert not elsewhere.ok


def test_default_queue_backlog_playbook_grows_the_pool(
    settings: Settings, worker_app: Celery, worker_process: Callable[..., WorkerProcess], state_db: Engine
) -> None:
    worker = worker_process()
    incident_id = insert_incident(state_db, "QueueBacklogHigh", labels={"queue": "incidents"})

    report = handle_incident(settings, incident_id, celery_app=worker_app)

    assert report["status"] == "completed", report
    [grown] = [r for r in AuditTrail(state_db).records(incident_id) if r.action == "celery.scale"]
    assert _pool_processes(worker_app, worker.hostname, expected=3) == 3, grown


STEP_SCRIPT = """
import pathlib, sys, time
log, marker = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with log.open("a") as handle:
    handle.write(sys.argv[3] + "\\n")
if sys.argv[3] == "step1" and not marker.exists():
    marker.write_text("started")
    time.sleep(120)  # the worker child running this step is killed meanwhile
"""


def test_worker_killed_mid_playbook_repeats_no_completed_step(
    ops_env: Callable[..., Settings], worker_app: Celery, worker_process: Callable[..., WorkerProcess],
    playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine,
) -> None:  # fmt: skip
    script, log, marker = tmp_path / "step.py", tmp_path / "steps.log", tmp_path / "step1.started"
    script.write_text(STEP_SCRIPT)
    commands = "\n".join(
        f'  {name}: ["{sys.executable}", "{script}", "{log}", "{marker}", "{name}"]'
        for name in ("step0", "step1", "step2")
    )
    playbooks = playbook_file(
        "commands:\n" + commands + "\nplaybooks:\n  - name: three\n    match: {alertname: Three}\n"
        "    target: '{labels.instance}'\n    steps:\n"
        + "".join(f"      - {{action: command.run, params: {{command: {n}}}, timeout: 150s}}\n"
                  for n in ("step0", "step1", "step2"))
    )  # fmt: skip
    extra = {"OPS_PLAYBOOKS": str(playbooks), "OPS_REMEDIATION_LOCK_TTL_S": "2"}
    ops_env(**extra)
    worker = worker_process(**extra)
    incident_id = insert_incident(state_db, "Three", labels={"instance": "app-1"})

    worker_app.send_task("incidents.handle", args=[incident_id], queue="incidents")
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), worker.log()
    [child] = psutil.Process(worker.proc.pid).children()
    os.kill(child.pid, signal.SIGKILL)

    trail = AuditTrail(state_db)
    deadline = time.monotonic() + 90
    while trail.run_status(incident_id) == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trail.run_status(incident_id) == "completed", worker.log()
    assert log.read_text().splitlines() == ["step0", "step1", "step1", "step2"]
    steps = [(r.step, r.outcome) for r in trail.records(incident_id) if r.action == "command.run"]
    assert steps == [(0, "ok"), (1, "interrupted"), (1, "ok"), (2, "ok")]
