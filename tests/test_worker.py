"""A real worker runs tasks through the real Redis; log lines carry task and request context."""

from __future__ import annotations

import json
import logging

import pytest
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


def test_task_log_lines_carry_task_id_and_the_callers_request_id(
    worker_app: Celery, celery_worker: TestWorkController, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="workers.hooks")
    with log_context(request_id="req-7f3a"):
        result = check_task.apply_async()
    result.get(timeout=30)

    formatter = JsonFormatter()
    finished = [
        json.loads(formatter.format(r)) for r in caplog.records if r.getMessage() == "task finished"
    ]
    assert finished, "the worker logged no 'task finished' line"
    line = finished[-1]
    assert line["task_id"] == result.id
    assert line["task_name"] == "ops.check"
    assert line["request_id"] == "req-7f3a"
    assert line["queue"] == "default"
    assert line["duration_ms"] >= 0
