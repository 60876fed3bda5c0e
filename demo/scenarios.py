"""The three closed-loop scenarios: cause -> rule fires -> Alertmanager -> receiver -> playbook -> fixed -> resolved."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from demo.stack import Stack, wait_until
from workers.app import create_app
from workers.settings import load_settings

STEP_TIMEOUT_S = 90.0
FLOOD_TASKS = 600  # ops.check tasks: enough to stay over the 100-message threshold past `for:`
IDLE_SESSIONS = 17  # of the CONNECTION LIMIT 20: 85%, over DatabaseConnectionHigh's 80%


@dataclass
class Timeline:
    scenario: str
    started: float = field(default_factory=time.time)
    events: list[tuple[str, float]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def mark(self, event: str, at: float | None = None) -> None:
        self.events.append((event, (at if at is not None else time.time()) - self.started))

    def at(self, event: str) -> float | None:
        return next((t for e, t in self.events if e == event), None)

    def render(self) -> str:
        lines = [f"== {self.scenario} =="]
        lines += [f"  {t:7.1f}s  {event}" for event, t in self.events]
        lines += [f"           audit: {a.get('action')} -> {a.get('outcome')}: {_summary_of(a.get('detail'))}"
                  for a in self.audit]  # fmt: skip
        if self.error:
            lines.append(f"  FAILED: {self.error}")
        return "\n".join(lines)


def _summary_of(detail: object) -> str:
    if isinstance(detail, dict):
        extra = {k: v for k, v in detail.items() if k != "summary" and k != "sessions"}
        text = f"{detail.get('summary', '')} {extra if extra else ''}".strip()
    else:
        text = str(detail)
    return text if len(text) <= 240 else text[:237] + "..."


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _incidents(stack: Stack, alertname: str, since: float) -> list[dict[str, Any]]:
    listed = stack.receiver_api("/incidents")["incidents"]
    found = [i for i in listed if i.get("alertname") == alertname]
    return [i for i in found if (_received_at(i) or 0) >= since - 1]


def _received_at(incident: dict[str, Any]) -> float | None:
    return _timestamp(incident.get("received_at") or incident.get("created_at"))


def _incident_detail(stack: Stack, incident_id: object) -> dict[str, Any]:
    detail: dict[str, Any] = stack.receiver_api(f"/incidents/{incident_id}")
    return detail


def _alerts_expr(alertname: str) -> str:
    return f'ALERTS{{alertname="{alertname}",alertstate="firing"}}'


def _mark_firing(stack: Stack, timeline: Timeline, alertname: str) -> None:
    """Wait for the rule to fire; mark the first evaluation at which Prometheus had it firing."""
    seen = wait_until(f"{alertname} firing", _firing(stack, alertname), STEP_TIMEOUT_S)
    times = stack.sample_times(_alerts_expr(alertname), timeline.started - 1, seen + 1)
    timeline.mark("rule firing", times[0] if times else seen)


def _firing(stack: Stack, alertname: str) -> Callable[[], bool]:
    return lambda: any(a["state"] == "firing" for a in stack.prometheus_alerts(alertname))


def _follow_incident(stack: Stack, timeline: Timeline, alertname: str, action: str) -> dict[str, Any]:
    """Wait for the incident and its action; mark both from the records' own timestamps."""
    box: dict[str, Any] = {}

    def recorded() -> bool:
        found = _incidents(stack, alertname, timeline.started)
        if found:
            box["incident"] = found[0]
        return bool(found)

    wait_until(f"{alertname}: incident recorded", recorded, STEP_TIMEOUT_S, interval_s=0.5)
    incident: dict[str, Any] = box["incident"]
    timeline.mark(f"incident {incident['id']} recorded by the receiver", _received_at(incident))

    def acted() -> bool:
        detail = _incident_detail(stack, incident["id"])
        done = [a for a in detail.get("actions", []) if a.get("action") == action and a.get("finished_at")]
        box["detail"], box["done"] = detail, done
        return bool(done)

    wait_until(f"{alertname}: {action} finished", acted, STEP_TIMEOUT_S, interval_s=0.5)
    first = box["done"][0]
    timeline.mark(f"playbook started {action}", _timestamp(first.get("started_at")))
    timeline.mark(f"{action} finished: {first.get('outcome')}", _timestamp(first.get("finished_at")))
    if first.get("outcome") != "ok":
        raise RuntimeError(f"{action} ended {first.get('outcome')}: {first.get('detail')}")
    return incident


def _close(stack: Stack, timeline: Timeline, alertname: str, incident: dict[str, Any]) -> None:
    gone = wait_until(f"{alertname}: rule resolved", lambda: not stack.prometheus_alerts(alertname), STEP_TIMEOUT_S)
    # Resolved at the first evaluation after the last one that still had it firing.
    times = stack.sample_times(_alerts_expr(alertname), timeline.started - 1, gone + 1)
    timeline.mark("rule resolved in Prometheus", times[-1] + 1 if times else gone)
    box: dict[str, Any] = {}

    def closed() -> bool:
        box["detail"] = _incident_detail(stack, incident["id"])
        return bool(box["detail"].get("status") == "resolved")

    wait_until(f"{alertname}: incident resolved", closed, STEP_TIMEOUT_S, interval_s=0.5)
    detail = box["detail"]
    timeline.mark(f"incident {incident['id']} resolved", _timestamp(detail.get("resolved_at")))
    timeline.audit = list(detail.get("actions", []))


def run_backup_too_old(stack: Stack) -> Timeline:
    """No backup exists yet: BackupTooOld fires, the playbook starts a full backup, the rule resolves."""
    wait_until("BackupTooOld pending", lambda: bool(stack.prometheus_alerts("BackupTooOld")), STEP_TIMEOUT_S)
    # The cause is there from the start: count from when Prometheus first saw no backup.
    active_at = _timestamp(stack.prometheus_alerts("BackupTooOld")[0].get("activeAt"))
    timeline = Timeline("BackupTooOld", started=active_at or time.time())
    timeline.mark("cause: Prometheus finds no successful full backup")
    _mark_firing(stack, timeline, "BackupTooOld")
    incident = _follow_incident(stack, timeline, "BackupTooOld", "backup.trigger")
    manifests = stack.root / "backups"
    wait_until("backup manifest", lambda: any(manifests.rglob("*.manifest.json")), STEP_TIMEOUT_S)
    first = min(manifests.rglob("*.manifest.json"), key=lambda p: p.stat().st_mtime)
    timeline.mark("backup stored with its manifest", first.stat().st_mtime)
    _close(stack, timeline, "BackupTooOld", incident)
    return timeline


def run_database_connections(stack: Stack) -> Timeline:
    """Sessions idle in transaction fill the demo database; the playbook terminates them."""
    timeline = Timeline("DatabaseConnectionHigh")
    with ExitStack() as sessions:
        conns = []
        for _ in range(IDLE_SESSIONS):
            conn = sessions.enter_context(psycopg.connect(**stack.platform.conninfo(), application_name="leaky-app"))
            conn.execute("SELECT 1")  # opens a transaction and leaves it idle
            conns.append(conn)
        timeline.mark(f"cause: {IDLE_SESSIONS} sessions idle in transaction")
        _mark_firing(stack, timeline, "DatabaseConnectionHigh")
        incident = _follow_incident(stack, timeline, "DatabaseConnectionHigh", "postgres.terminate_queries")
        expr = f'database_connections_active{{database="{stack.platform.dbname}"}} < {IDLE_SESSIONS // 2}'
        seen = wait_until("connections dropped", lambda: bool(stack.query(expr)), STEP_TIMEOUT_S)
        acted = timeline.at("playbook started postgres.terminate_queries") or 0
        dropped = stack.sample_times(expr, timeline.started + acted - 1, seen + 1)
        timeline.mark("metric dropped (next scrape)", dropped[0] if dropped else seen)
        alive = 0
        for conn in conns:
            try:
                conn.execute("SELECT 1")
                alive += 1
            except psycopg.Error:
                pass  # terminated, as it should be
        if alive:
            raise RuntimeError(f"{alive} idle sessions survived the playbook")
        _close(stack, timeline, "DatabaseConnectionHigh", incident)
    return timeline


def run_queue_backlog(stack: Stack) -> Timeline:
    """A flood on the default queue: the rule fires on ops_queue_messages, the pool grows, the backlog drains."""
    app = create_app(load_settings(stack.env), name="loop-flood")
    timeline = Timeline("QueueBacklogHigh")
    timeline.mark(f"cause: a flood of {FLOOD_TASKS} tasks onto queue default starts")
    with app.producer_or_acquire() as producer:
        for _ in range(FLOOD_TASKS):
            app.send_task("ops.check", queue="default", producer=producer)
    timeline.mark(f"all {FLOOD_TASKS} tasks sent")
    _mark_firing(stack, timeline, "QueueBacklogHigh")
    incident = _follow_incident(stack, timeline, "QueueBacklogHigh", "celery.scale")
    drained = 'ops_queue_messages{queue="default",state="ready"} == 0'
    seen = wait_until("backlog drained", lambda: bool(stack.query(drained)), STEP_TIMEOUT_S * 2)
    acted = timeline.started + (timeline.at("playbook started celery.scale") or 0)
    times = stack.sample_times(drained, acted, seen + 1)
    timeline.mark("backlog drained", times[0] if times else seen)
    _close(stack, timeline, "QueueBacklogHigh", incident)
    return timeline


SCENARIOS: dict[str, Callable[[Stack], Timeline]] = {
    "BackupTooOld": run_backup_too_old,
    "DatabaseConnectionHigh": run_database_connections,
    "QueueBacklogHigh": run_queue_backlog,
}


def run_all(stack: Stack, names: list[str] | None = None) -> list[Timeline]:
    """Run the scenarios one after the other; a failed one is reported and the next still runs."""
    timelines = []
    for name in names or list(SCENARIOS):
        try:
            timelines.append(SCENARIOS[name](stack))
        except (RuntimeError, TimeoutError, ValueError) as exc:
            failed = Timeline(name)
            failed.error = str(exc)
            timelines.append(failed)
    return timelines


def _first(timeline: Timeline, matches: Callable[[str], bool]) -> str:
    value = next((t for event, t in timeline.events if matches(event)), None)
    return f"{value:.1f}s" if value is not None else "-"


def summary(timelines: list[Timeline]) -> str:
    """The table `make demo` ends with: seconds from the cause to each stage."""
    header = f"{'scenario':<24} {'fired':>7} {'acted':>7} {'fixed':>7} {'resolved':>9} {'closed':>7}  result"
    rows = [header, "-" * len(header)]
    for t in timelines:
        cells = (
            _first(t, lambda e: e == "rule firing"),
            _first(t, lambda e: e.startswith("playbook started")),
            _first(t, lambda e: e.startswith(("metric dropped", "backup stored", "backlog drained"))),
            _first(t, lambda e: e == "rule resolved in Prometheus"),
            _first(t, lambda e: e.startswith("incident") and e.endswith("resolved")),
        )
        result = "ok" if t.error is None else "FAILED"
        rows.append(f"{t.scenario:<24} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} {cells[3]:>9} {cells[4]:>7}  {result}")
    return "\n".join(rows)
