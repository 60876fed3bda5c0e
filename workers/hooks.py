"""Celery signal handlers: logging set-up, log context around tasks, request-id propagation, task metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals
from prometheus_client import multiprocess

from workers import metrics
from workers.logs import bind_context, configure_logging, current_context, unbind_context
from workers.settings import get_settings

log = logging.getLogger(__name__)

# Context fields that travel with a task message as headers, so the task's log lines carry them.
PROPAGATED_FIELDS = ("request_id", "incident_id", "fingerprint", "organization_id")

# task_id -> (context token, start time); only touched by the thread that runs the task.
_running: dict[str, tuple[object, float]] = {}


def _setup_logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


def _add_context_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    context = current_context()
    for name in PROPAGATED_FIELDS:
        if name in context and name not in headers:
            headers[name] = str(context[name])


def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None:
        return
    request = task.request
    delivery = request.delivery_info or {}
    fields: dict[str, object] = {
        "task_id": task_id,
        "task_name": task.name,
        "queue": delivery.get("routing_key"),
        "retries": request.retries,
    }
    for name in PROPAGATED_FIELDS:
        value = request.get(name) or (request.headers or {}).get(name)
        if value is not None:
            fields[name] = value
    _running[task_id] = (bind_context(**fields), time.monotonic())
    log.debug("task started")


def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    if task_id is None or task_id not in _running:
        return
    token, started = _running.pop(task_id)
    elapsed = time.monotonic() - started
    name = task.name if task is not None else "unknown"
    metrics.TASK_DURATION.labels(task=name).observe(elapsed)
    outcome = {"SUCCESS": "succeeded", "RETRY": "retried"}.get(state or "", "failed")
    metrics.TASKS.labels(task=name, outcome=outcome).inc()
    if outcome == "succeeded":
        metrics.TASK_LAST_SUCCESS.labels(task=name).set_to_current_time()
    log.info("task finished", extra={"state": state, "duration_ms": round(elapsed * 1000, 1)})
    unbind_context(token)


def _worker_ready(**_: Any) -> None:
    settings = get_settings()
    bind = settings.metrics_bind  # `ops-workers worker --metrics-bind` arrives as OPS_METRICS_BIND
    port = metrics.start_metrics_server(bind, settings.metrics_dir)
    log.info("worker metrics served", extra={"metrics_bind": f"{bind.host}:{port}"})


def _child_exited(pid: int | None = None, **_: Any) -> None:
    # Runs in the exiting pool child itself. mark_process_dead() only deletes the pid's live* gauge
    # files, and no gauge of ours uses a live* mode (max, mostrecent: workers.metrics), while the
    # counter and histogram files must outlive the child to keep the totals. So a child killed
    # before this runs (SIGKILL, OOM) leaves nothing wrong behind, and the parent need not do it.
    metrics_dir = get_settings().metrics_dir
    if pid is not None and metrics_dir is not None:
        multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]


def connect() -> None:
    """Connect every handler; called once, by workers.app."""
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.before_task_publish.connect(_add_context_headers, weak=False)
    signals.task_prerun.connect(_task_started, weak=False)
    signals.task_postrun.connect(_task_finished, weak=False)
    signals.worker_ready.connect(_worker_ready, weak=False)
    signals.worker_process_shutdown.connect(_child_exited, weak=False)
