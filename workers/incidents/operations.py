"""Incident operations for tasks, the CLI and the HTTP API: wire the edges from Settings, call the core."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import Engine

from workers import metrics
from workers.backup.storage import open_store
from workers.incidents.archive import StoreArchive
from workers.incidents.audit import AuditTrail
from workers.incidents.lifecycle import (
    Incident,
    acknowledge,
    active_by_severity,
    list_incidents,
    load_incident,
    mark_resolved,
    store_postmortem,
)
from workers.incidents.notify import build_channels
from workers.incidents.playbook_file import load_playbooks
from workers.incidents.playbook_source import LOGGED_PROBLEMS, PlaybookSource
from workers.incidents.playbooks import Catalog
from workers.incidents.postmortem import draft_postmortem, seen_firing
from workers.incidents.rails import Rails
from workers.incidents.runner import (
    RESOLVE,
    TRIGGER,
    Edges,
    RunReport,
    is_closed,
    notify_unless_resolved,
    run_playbook,
    send_notifications,
)
from workers.settings import Settings
from workers.state.db import create_state_engine

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


def now_utc() -> datetime:
    return datetime.now(UTC)


@functools.cache
def state_engine(url: str) -> Engine:
    """One engine (and connection pool) per state database URL in this process.

    No pre-ping: it doubled the round trips of incidents.handle. A connection the server dropped
    fails once with OperationalError, is discarded by the pool, and the task is retried for it.
    """
    return create_state_engine(url, pre_ping=False)


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)


@functools.cache
def _playbook_source(path: Path | None) -> PlaybookSource:
    """One per playbooks file in this process: it keeps the last valid version it read."""
    return PlaybookSource(path)


def catalog_of(settings: Settings) -> Catalog:
    """The playbooks to act on (OPS_PLAYBOOKS or the bundled default); never raises for an invalid file.

    An invalid edit is logged and counted, and the last valid version read stays in use; with none,
    a routing-only catalog (no playbooks) lets alerts still be routed and notified.
    """
    return _playbook_source(settings.remediation.playbooks_file).current()


def rails_of(settings: Settings) -> Rails:
    return Rails(_redis(settings.broker_url.value), settings.remediation.lock_ttl_s)


def build_edges(settings: Settings, celery_app: Celery | None = None) -> Edges:
    engine = state_engine(settings.state_database_url.value)
    return Edges(
        settings=settings,
        trail=AuditTrail(engine),
        rails=rails_of(settings),
        channels=build_channels(settings.notify),
        archive=StoreArchive(open_store(settings.backup)),
        clock=now_utc,
        celery_app=celery_app,
    )


def _refresh_active_gauge(engine: Engine) -> None:
    counts = active_by_severity(engine)
    for severity in {"critical", "warning", "info", *counts}:
        metrics.INCIDENTS_ACTIVE.labels(severity=severity).set(counts.get(severity, 0))


def close_incident(incident: Incident, catalog: Catalog, edges: Edges) -> RunReport:
    """Resolve the incident (never remediate): resolve notifications; a post-mortem when critical and seen firing."""
    resolved, changed = mark_resolved(edges.trail.engine, incident.id, edges.clock())
    playbook = catalog.playbook_for(resolved.labels)
    notified = send_notifications(resolved, catalog, playbook, edges, RESOLVE, {"status": "resolved"})
    if resolved.severity == "critical" and (changed or resolved.postmortem is None):
        records = edges.trail.records(resolved.id)
        if seen_firing(resolved, records):
            store_postmortem(edges.trail.engine, resolved.id, draft_postmortem(resolved, records))
    _refresh_active_gauge(edges.trail.engine)
    return RunReport(incident.id, playbook.name if playbook else None, "resolved", (), tuple(notified))


def _route_without_playbook(incident: Incident, catalog: Catalog, edges: Edges) -> RunReport:
    """Route and notify by severity only: no playbook matches, or no valid playbooks file was ever read."""
    status = "skipped_invalid_playbooks" if catalog.problems else "no_playbook"
    if not edges.trail.records(incident.id):  # the first delivery of this episode
        metrics.INCIDENTS.labels(alertname=incident.alertname, severity=incident.severity).inc()
        if catalog.problems:
            edges.trail.record(
                incident.id, None, "remediation", {"playbooks": catalog.source}, status, edges.clock(),
                {"problems": list(catalog.problems[:LOGGED_PROBLEMS])},
                "the playbooks file is invalid and no valid version was read: routed by severity, nothing remediated",
            )  # fmt: skip
    notified = notify_unless_resolved(incident, catalog, None, edges, TRIGGER, {"playbook": "none"})
    return RunReport(incident.id, None, status, (), tuple(notified))


def handle_incident(settings: Settings, incident_id: int, celery_app: Celery | None = None) -> dict[str, object]:
    """Act on one recorded episode: run its playbook once while firing, close it once resolved.

    Raises:
        IncidentNotFound: no such incident.
        DatabaseUnavailable, BrokerUnavailable: retry later.
    """
    catalog = catalog_of(settings)
    edges = build_edges(settings, celery_app)
    incident = load_incident(edges.trail.engine, incident_id)
    if is_closed(incident):
        return close_incident(incident, catalog, edges).to_json()
    playbook = catalog.playbook_for(incident.labels)
    if playbook is None:
        report = _route_without_playbook(incident, catalog, edges)
    else:
        report = run_playbook(incident, playbook, catalog, edges)
    _refresh_active_gauge(edges.trail.engine)
    return report.to_json()


def acknowledge_incident(settings: Settings, incident_id: int, by: str, *, engine: Engine | None = None) -> Incident:
    """Mark an incident acknowledged (on `engine`, the receiver's, when given). Raises IncidentNotFound, UsageError."""
    engine = engine or state_engine(settings.state_database_url.value)
    incident = acknowledge(engine, incident_id, by, now_utc())
    log.info("incident acknowledged", extra={"incident_id": incident_id, "by": incident.acknowledged_by})
    return incident


def resolve_incident(settings: Settings, incident_id: int) -> Incident:
    """Resolve an incident by hand: same closing as an automatic resolve. Raises IncidentNotFound."""
    edges = build_edges(settings)
    close_incident(load_incident(edges.trail.engine, incident_id), catalog_of(settings), edges)
    log.info("incident resolved by hand", extra={"incident_id": incident_id})
    return load_incident(edges.trail.engine, incident_id)


def incident_document(settings: Settings, incident_id: int, *, engine: Engine | None = None) -> dict[str, Any]:
    """The incident with its audit trail (`actions`) and post-mortem, as JSON-ready values."""
    engine = engine or state_engine(settings.state_database_url.value)
    return {**load_incident(engine, incident_id).to_json(), **incident_audit(settings, incident_id, engine=engine)}


def incident_audit(settings: Settings, incident_id: int, *, engine: Engine | None = None) -> dict[str, Any]:
    """What remediation adds to an incident: acknowledgement, run status, the audit trail (`actions`), post-mortem."""
    engine = engine or state_engine(settings.state_database_url.value)
    incident = load_incident(engine, incident_id)
    trail = AuditTrail(engine)
    return {
        "acknowledged_by": incident.acknowledged_by,
        "acknowledged_at": incident.acknowledged_at,
        "run_status": trail.run_status(incident_id),
        "actions": [r.to_json() for r in trail.records(incident_id)],
        "postmortem": incident.postmortem,
    }


def incidents_document(
    settings: Settings, status: str | None, limit: int, *, engine: Engine | None = None
) -> list[dict[str, Any]]:
    engine = engine or state_engine(settings.state_database_url.value)
    return [i.to_json() for i in list_incidents(engine, status=status, limit=limit)]


def pause_remediation(settings: Settings, by: str, reason: str) -> None:
    rails_of(settings).pause(by, reason)  # the exporter reads it at each scrape: ops_remediation_paused
    log.warning("remediation paused", extra={"by": by, "reason": reason})


def resume_remediation(settings: Settings) -> bool:
    resumed = rails_of(settings).resume()
    log.warning("remediation resumed", extra={"was_paused": resumed})
    return resumed


def remediation_status(settings: Settings) -> dict[str, Any]:
    """Paused or not (who, when, why), global dry-run, the playbooks file and its playbooks. Raises ConfigError."""
    paused = rails_of(settings).paused()
    catalog = load_playbooks(settings.remediation.playbooks_file)  # an operator asking wants the file's problems
    return {
        "paused": paused is not None,
        "pause": paused,
        "dry_run": settings.remediation.dry_run,
        "source": catalog.source,
        "playbooks": [p.name for p in catalog.playbooks],
        "dry_run_playbooks": [p.name for p in catalog.playbooks if p.dry_run],
    }
