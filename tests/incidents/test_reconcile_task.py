"""incidents.reconcile on a real embedded worker through the real Redis, as beat runs it."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from sqlalchemy import Engine

from beat_schedule import build_beat_schedule
from workers.incidents.alerts import parse_notification
from workers.incidents.intake import decode_body
from workers.incidents.records import record_alerts
from workers.incidents.tasks import reconcile_task
from workers.logs import JsonFormatter
from workers.settings import Settings

from .conftest import TOKEN, incident_rows, load_case


def test_reconcile_task_enqueues_what_the_receiver_could_not(
    worker_app: Celery,
    celery_worker: TestWorkController,
    ops_env: Callable[..., Settings],
    state_url: str,
    engine: Engine,
) -> None:
    # The task reads settings when it runs: point them at this test's state database.
    ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN)
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    alerts = parse_notification(decode_body(load_case("01-firing-two-alerts-empty-urls.json")), long_ago).alerts
    with engine.begin() as conn:
        record_alerts(conn, alerts, request_id=None, at=long_ago)

    result = reconcile_task.apply_async().get(timeout=60)

    assert result == {"fetched_groups": 0, "fetch_failures": 0, "recorded": 0, "enqueued": 2}
    assert all(row["enqueued_at"] is not None for row in incident_rows(engine))
    assert reconcile_task.apply_async().get(timeout=60)["enqueued"] == 0


class HandledLines(logging.Handler):
    """The 'task finished' lines of incidents.handle, as the JSON they are written as."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.wanted = wanted
        self.lines: list[dict[str, object]] = []
        self.done = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.format(record))
        if line["event"] == "task finished" and line.get("task_name") == "incidents.handle":
            self.lines.append(line)
            if len(self.lines) >= self.wanted:
                self.done.set()


def test_tasks_reconcile_sends_carry_the_request_id_the_alerts_came_with(
    worker_app: Celery,
    celery_worker: TestWorkController,
    ops_env: Callable[..., Settings],
    state_url: str,
    engine: Engine,
) -> None:
    ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN)
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    alerts = parse_notification(decode_body(load_case("01-firing-two-alerts-empty-urls.json")), long_ago).alerts
    with engine.begin() as conn:  # recorded by the receiver, which then could not reach the broker
        record_alerts(conn, alerts, request_id="am-req-7f3a", at=long_ago)
    handled = HandledLines(wanted=2)
    hooks_log = logging.getLogger("workers.hooks")
    hooks_log.addHandler(handled)
    try:
        assert reconcile_task.apply_async().get(timeout=60)["enqueued"] == 2
        assert handled.done.wait(timeout=60), "the worker did not handle both incidents"
    finally:
        hooks_log.removeHandler(handled)

    assert [line["request_id"] for line in handled.lines] == ["am-req-7f3a", "am-req-7f3a"]
    handled_ids = sorted(str(line["incident_id"]) for line in handled.lines)
    assert handled_ids == [str(row["id"]) for row in incident_rows(engine)]


def test_beat_runs_reconcile_every_minute_on_the_incidents_queue(settings: Settings) -> None:
    entry = build_beat_schedule(settings.schedule)["incidents-reconcile"]
    assert entry["task"] == "incidents.reconcile"
    assert entry["options"]["queue"] == "incidents"
    assert str(entry["schedule"]._orig_minute) == "*"
