"""Every Prometheus metric of the package, and the exposition server."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from workers.settings import Bind

# --- tasks (recorded by workers.hooks around every task) ---
TASKS = Counter(
    "ops_tasks_total",
    "Celery tasks finished, by wire name and outcome (succeeded, failed, retried).",
    ["task", "outcome"],
)
TASK_DURATION = Histogram(
    "ops_task_duration_seconds",
    "Wall time of one task run, in seconds.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 7200, float("inf")),
)
TASK_LAST_SUCCESS = Gauge(
    "ops_task_last_success_timestamp_seconds",
    "Unix time at which a task of this wire name last succeeded.",
    ["task"],
    multiprocess_mode="max",
)
BEAT_LAST_TICK = Gauge(
    "ops_beat_last_tick_timestamp_seconds",
    "Unix time at which the scheduler (beat) last sent a scheduled task.",
    multiprocess_mode="max",
)


def registry_for(metrics_dir: Path | None) -> CollectorRegistry | None:
    """A registry that merges every process's samples when running multiprocess; None means the default."""
    if metrics_dir is None:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return registry


def start_metrics_server(bind: Bind, metrics_dir: Path | None) -> None:
    """Serve /metrics on bind in a daemon thread."""
    registry = registry_for(metrics_dir)
    if registry is None:
        start_http_server(bind.port, addr=bind.host)
    else:
        start_http_server(bind.port, addr=bind.host, registry=registry)

# --- alert receiver (workers.incidents) ---
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered by the alert receiver, by method, endpoint (route path) and status code.",
    ["method", "endpoint", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer one HTTP request of the alert receiver, in seconds.",
    ["method", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")),
)
ALERTS_RECEIVED = Counter(
    "ops_alerts_received_total",
    "Alerts received in accepted webhook notifications, by alert status and normalised severity.",
    ["status", "severity"],
)
ALERT_DELIVERIES_DUPLICATE = Counter(
    "ops_alert_deliveries_duplicate_total",
    "Alerts that were already recorded in the same state (retries, HA peers, repeat_interval re-sends).",
)
ALERTS_TRUNCATED = Counter(
    "ops_alerts_truncated_total",
    "Alerts Alertmanager left out of notifications (truncatedAlerts), to be fetched from its API.",
)
INCIDENTS_ENQUEUED = Counter(
    "ops_incidents_enqueued_total",
    "incidents.handle tasks sent, by who sent them (receiver, reconcile).",
    ["source"],
)
INCIDENTS_ENQUEUE_FAILURES = Counter(
    "ops_incidents_enqueue_failures_total",
    "Times the broker could not take incidents.handle tasks; reconcile sends them later.",
    ["source"],
)
