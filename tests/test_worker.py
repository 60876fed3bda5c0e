"""A real worker runs tasks through the real Redis; log lines carry task and request context."""

from __future__ import annotations

import json
import logging
import threading

from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from workers.logs import JsonFormatter, log_context
from workers.tasks import check_task


def test_check_task_runs_on_a_real_worker_through_redis(
    worker_app: Celery, celery_worker: TestWorkController
) -> None:
    results = check_task.apply_async().get(timeout=30)

    by_service = {r["service"]: r for r in results}
    assert by_service["broker"]["ok"] is True
    assert by_service["state database"]["ok"] is True
    assert by_service["platform database"]["detail"].startswith("not configured")


class FinishedLines(logging.Handler):
    """Collects 'task finished' lines as JSON and signals when one arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "task finished":
            self.lines.append(json.loads(self.format(record)))
            self.arrived.set()


def test_task_log_lines_carry_task_id_and_the_callers_request_id(
    worker_app: Celery, celery_worker: TestWorkController
) -> None:
    handler = FinishedLines()
    hooks_log = logging.getLogger("workers.hooks")
    hooks_log.addHandler(handler)
    try:
        with log_context(request_id="req-7f3a"):
            result = check_task.apply_async()
        result.get(timeout=30)
        # The result is stored before task_postrun runs, so the line may come a moment later.
        assert handler.arrived.wait(timeout=30), "the worker logged no 'task finished' line"
    finally:
        hooks_log.removeHandler(handler)

    line = handler.lines[-1]
    assert line["task_id"] == result.id
    assert line["task_name"] == "ops.check"
    assert line["request_id"] == "req-7f3a"
    assert line["queue"] == "default"
    assert isinstance(line["duration_ms"], float)
