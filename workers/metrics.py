"""Every Prometheus metric of the package, and the exposition server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from workers import system
from workers.beat_state import read_beat_state
from workers.errors import WorkersError
from workers.queues import read_queue_depths
from workers.settings import Bind, PostgresTarget

log = logging.getLogger(__name__)

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
# No gauge for beat here: beat serves no metrics. Its liveness is read from RedBeat's lock and
# schedule on the broker by the exporter (ops_beat_lock_held, ops_beat_schedule_lag_seconds).


def registry_for(metrics_dir: Path | None) -> CollectorRegistry | None:
    """A registry that merges every process's samples when running multiprocess; None means the default."""
    if metrics_dir is None:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    # The serving (main) process's start time: restarts show as changes(process_start_time_seconds).
    ProcessCollector(registry=registry)
    return registry


def start_metrics_server(bind: Bind, metrics_dir: Path | None) -> int:
    """Serve /metrics on bind in a daemon thread; return the port it listens on (bind.port 0 picks one)."""
    registry = registry_for(metrics_dir)
    if registry is None:
        server, _thread = start_http_server(bind.port, addr=bind.host)
    else:
        server, _thread = start_http_server(bind.port, addr=bind.host, registry=registry)
    return int(server.server_port)

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


# --- incidents and remediation ---
INCIDENTS = Counter(
    "ops_incidents_total",
    "Alert episodes handled (firing), by alert name and severity.",
    ["alertname", "severity"],
)
INCIDENTS_ACTIVE = Gauge(
    "ops_incidents_active",
    "Incidents not yet resolved (active or acknowledged), by severity, as of the last change.",
    ["severity"],
    multiprocess_mode="mostrecent",
)
REMEDIATION_ACTIONS = Counter(
    "ops_remediation_actions_total",
    "Remediation action attempts, by action and outcome (ok, failed, skipped_<reason>).",
    ["action", "outcome"],
)
PLAYBOOK_RUNS = Counter(
    "ops_playbook_runs_total",
    "Playbook runs finished, by playbook and outcome (completed, failed, escalated, skipped_<reason>).",
    ["playbook", "outcome"],
)
NOTIFICATIONS = Counter(
    "ops_notifications_total",
    "Notifications sent, by channel and outcome (ok, failed, unconfigured).",
    ["channel", "outcome"],
)
ALERT_TO_ACTION = Histogram(
    "ops_alert_to_action_seconds",
    "Time from the receiver accepting an alert to the first remediation action starting, in seconds.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")),
)
PLAYBOOKS_VALID = Gauge(
    "ops_playbooks_valid",
    "1 when the playbooks file last read by an incidents worker is valid; 0 while an invalid version is ignored "
    "(the last valid one stays in use, or, if none was read, alerts are routed without remediation).",
    multiprocess_mode="mostrecent",
)

# --- backups (recorded by workers.backup.operations, the edge that knows each outcome) ---
BACKUP_LAST_SUCCESS = Gauge(
    "ops_backup_last_success_timestamp_seconds",
    "Unix time at which the last backup of this kind (full, org) was stored.",
    ["kind"],
    multiprocess_mode="max",
)
BACKUP_DURATION = Histogram(
    "ops_backup_duration_seconds",
    "Wall time of one backup of this kind, snapshot to manifest, in seconds.",
    ["kind"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200, 14400, float("inf")),
)
BACKUP_SIZE = Gauge(
    "ops_backup_size_bytes",
    "Size in bytes of the most recently stored backup of this kind, as stored (compressed).",
    ["kind"],
    multiprocess_mode="mostrecent",
)
BACKUP_FAILURES = Counter(
    "ops_backup_failures_total",
    "Backups of this kind that failed, by reason (a closed set, see workers.backup.operations.REASONS).",
    ["kind", "reason"],
)

# --- restore drills and cleanup (workers.backup.maintenance) ---
BACKUP_VERIFY_LAST_SUCCESS = Gauge(
    "ops_backup_verify_last_success_timestamp_seconds",
    "Unix time at which a backup of this kind last passed verification (restore drill).",
    ["kind"],
    multiprocess_mode="max",
)
BACKUP_VERIFY_LAST_FAILURE = Gauge(
    "ops_backup_verify_last_failure_timestamp_seconds",
    "Unix time at which a backup of this kind last failed verification.",
    ["kind"],
    multiprocess_mode="max",
)
BACKUP_VERIFY_FAILURES = Counter(
    "ops_backup_verify_failures_total",
    "Failed verifications, by kind and reason (checksum, decode, download, restore, row_count, timeout, server,"
    " drill_error).",
    ["kind", "reason"],
)
BACKUP_VERIFY_DURATION = Histogram(
    "ops_backup_verify_duration_seconds",
    "Wall time of one verification (download, restore, row counts, drop), in seconds.",
    ["kind"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200, float("inf")),
)
BACKUP_CLEANUP_LAST_SUCCESS = Gauge(
    "ops_backup_cleanup_last_success_timestamp_seconds",
    "Unix time at which backup cleanup last finished without error.",
    multiprocess_mode="max",
)
BACKUP_CLEANUP_LAST_FAILURE = Gauge(
    "ops_backup_cleanup_last_failure_timestamp_seconds",
    "Unix time at which backup cleanup last failed.",
    multiprocess_mode="max",
)
BACKUP_CLEANUP_DELETED = Counter(
    "ops_backup_cleanup_deleted_total",
    "Things cleanup deleted, by what (backup, orphan, incomplete_upload, scratch_database).",
    ["what"],
)
BACKUP_RETENTION_HELD_SERIES = Gauge(
    "ops_backup_retention_held_series",
    "Series kept whole by the last cleanup because none of their recent backups passed verification.",
    ["kind"],
    multiprocess_mode="mostrecent",
)


# --- the exporter process (`ops-workers exporter`): read at scrape time by collectors ---
# Names of the platform's existing dashboards and alerts are kept as they are (no ops_ prefix).
SYSTEM_CPU = "system_cpu_usage_percent"
SYSTEM_MEMORY = "system_memory_usage_percent"
SYSTEM_DISK = "system_disk_usage_percent"
SYSTEM_DISK_FREE = "system_disk_free_bytes"
DATABASE_CONNECTIONS = "database_connections_active"
DATABASE_CONNECTIONS_MAX = "database_connections_max"
CELERY_WORKERS = "celery_workers_active"
QUEUE_MESSAGES = "ops_queue_messages"
SOURCE_UP = "ops_exporter_source_up"
BEAT_LOCK_HELD = "ops_beat_lock_held"
BEAT_LAG = "ops_beat_schedule_lag_seconds"
# Read from Redis at each scrape: the pause is set by the CLI, a process nobody scrapes.
REMEDIATION_PAUSED = "ops_remediation_paused"
QUEUE_STATES = ("ready", "unacked", "scheduled")
# Every name the exporter's collector yields (the README's metrics table lists each).
EXPORTER_METRICS = (
    SYSTEM_CPU, SYSTEM_MEMORY, SYSTEM_DISK, SYSTEM_DISK_FREE, DATABASE_CONNECTIONS, DATABASE_CONNECTIONS_MAX,
    CELERY_WORKERS, QUEUE_MESSAGES, SOURCE_UP, BEAT_LOCK_HELD, BEAT_LAG, REMEDIATION_PAUSED,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExporterSources:
    """Where the exporter's readings come from: the broker, the platform database, the host, the workers."""

    broker: redis.Redis
    queues: tuple[str, ...]
    priority_steps: tuple[int, ...]
    priority_sep: str
    beat_key_prefix: str
    platform_database: PostgresTarget | None
    disk_mounts: tuple[str, ...]
    count_workers: Callable[[], int]
    remediation_paused: Callable[[], bool]  # raises WorkersError when it cannot tell


class ExporterCollector(Collector):
    """The exporter's gauges, read fresh at every scrape; a source that fails is reported by SOURCE_UP."""

    def __init__(self, sources: ExporterSources) -> None:
        self.sources = sources
        system.cpu_percent()  # psutil measures CPU between two calls: start the first interval now

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(SOURCE_UP, "1 if this source was read at this scrape.", labels=["source"])
        yield GaugeMetricFamily(SYSTEM_CPU, "CPU use of the host since the previous scrape, in percent.",
                                value=system.cpu_percent())  # fmt: skip
        yield GaugeMetricFamily(SYSTEM_MEMORY, "Memory in use on the host, in percent.",
                                value=system.memory_percent())  # fmt: skip
        yield from self._disks()
        yield from self._queues(up)
        yield from self._beat(up)
        yield from self._database(up)
        yield from self._workers(up)
        yield from self._remediation(up)
        yield up

    def _disks(self) -> Iterator[Metric]:
        percent = GaugeMetricFamily(SYSTEM_DISK, "Space in use on a mounted file system, in percent.",
                                    labels=["mountpoint", "device"])  # fmt: skip
        free = GaugeMetricFamily(SYSTEM_DISK_FREE, "Space left on a mounted file system, in bytes.",
                                 labels=["mountpoint", "device"])  # fmt: skip
        for usage in system.disk_usage(self.sources.disk_mounts):
            percent.add_metric([usage.mountpoint, usage.device], usage.percent)
            free.add_metric([usage.mountpoint, usage.device], usage.free_bytes)
        yield percent
        yield free

    def _queues(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        s = self.sources
        now = datetime.now(UTC)
        try:
            depths = read_queue_depths(s.broker, s.queues, s.priority_steps, s.priority_sep, now)
        except WorkersError:
            log.warning("queue depths unavailable", exc_info=True)
            up.add_metric(["broker"], 0)
            return
        up.add_metric(["broker"], 1)
        family = GaugeMetricFamily(
            QUEUE_MESSAGES,
            "Messages of a queue on the broker: ready (every priority list), unacked (reserved by a worker) "
            "and scheduled (reserved, waiting for an ETA or countdown).",
            labels=["queue", "state"],
        )
        for depth in depths:
            family.add_metric([depth.queue, "ready"], depth.ready)
            family.add_metric([depth.queue, "unacked"], depth.unacked)
            family.add_metric([depth.queue, "scheduled"], depth.scheduled)
        yield family

    def _beat(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        try:
            state = read_beat_state(self.sources.broker, self.sources.beat_key_prefix, datetime.now(UTC))
        except WorkersError:
            log.warning("beat state unavailable", exc_info=True)
            up.add_metric(["beat"], 0)
            return
        up.add_metric(["beat"], 1)
        yield GaugeMetricFamily(BEAT_LOCK_HELD, "1 while a beat holds the scheduler lock, else 0.",
                                value=int(state.lock_held))  # fmt: skip
        if state.lag_s is not None:
            yield GaugeMetricFamily(BEAT_LAG, "How late the most overdue schedule entry is, in seconds.",
                                    value=state.lag_s)  # fmt: skip

    def _database(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        target = self.sources.platform_database
        if target is None:
            return
        try:
            count = system.count_connections(target)
        except WorkersError:
            log.warning("connection count unavailable", exc_info=True)
            up.add_metric(["database"], 0)
            return
        up.add_metric(["database"], 1)
        active = GaugeMetricFamily(DATABASE_CONNECTIONS, "Client sessions on the platform database.",
                                   labels=["database"])  # fmt: skip
        active.add_metric([count.database], count.active)
        limit = GaugeMetricFamily(DATABASE_CONNECTIONS_MAX, "Sessions the platform database accepts at most.",
                                  labels=["database"])  # fmt: skip
        limit.add_metric([count.database], count.limit)
        yield active
        yield limit

    def _workers(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        try:
            workers = self.sources.count_workers()
        except WorkersError:
            log.warning("worker count unavailable", exc_info=True)
            up.add_metric(["workers"], 0)
            return
        up.add_metric(["workers"], 1)
        yield GaugeMetricFamily(CELERY_WORKERS, "Celery workers that answered a ping.", value=workers)


    def _remediation(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        try:
            paused = self.sources.remediation_paused()
        except WorkersError:
            log.warning("remediation pause unavailable", exc_info=True)
            up.add_metric(["remediation"], 0)
            return
        up.add_metric(["remediation"], 1)
        yield GaugeMetricFamily(REMEDIATION_PAUSED, "1 while remediation is paused globally "
                                "(ops-workers remediation pause), else 0.", value=int(paused))  # fmt: skip


def exporter_registry(sources: ExporterSources) -> CollectorRegistry:
    """A registry of the exporter's own collector only (never the multiprocess files of workers)."""
    registry = CollectorRegistry()
    registry.register(ExporterCollector(sources))
    ProcessCollector(registry=registry)
    return registry
