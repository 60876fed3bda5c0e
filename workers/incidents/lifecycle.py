"""Incident lifecycle in the state database: active -> acknowledged -> resolved, with timestamps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import OperationalError

from workers.errors import DatabaseUnavailable, IncidentNotFound, UsageError
from workers.incidents.alerts import Severity
from workers.state.schema import incidents

ACTIVE, ACKNOWLEDGED, RESOLVED = "active", "acknowledged", "resolved"


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every timestamp we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    fingerprint: str
    starts_at: datetime
    alertname: str
    severity: str
    status: str  # active | acknowledged | resolved
    alert_status: str  # firing | resolved
    # What playbooks match and substitute: alertname and severity always set, a known severity in
    # lower case ("Critical" -> "critical"), so conditions agree with severity routing.
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    received_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    ends_at: datetime | None
    postmortem: str | None
    labels_as_sent: Mapping[str, str]  # the record: the labels exactly as Alertmanager sent them

    @property
    def is_firing(self) -> bool:
        return self.alert_status == "firing"

    @property
    def summary(self) -> str:
        return self.annotations.get("summary") or self.annotations.get("description") or self.alertname

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "alertname": self.alertname,
            "severity": self.severity,
            "status": self.status,
            "alert_status": self.alert_status,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "received_at": self.received_at,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at,
            "resolved_at": self.resolved_at,
            "labels": dict(self.labels_as_sent),
            "annotations": dict(self.annotations),
            "summary": self.summary,
        }


_KNOWN_SEVERITIES = frozenset(s.value for s in Severity)


def _severity_label(sent: str | None, recorded: str) -> str:
    """The severity label for playbooks: a known one in lower case, an unknown one as sent, a missing one as routed."""
    if sent is None:
        return recorded
    lowered = sent.strip().lower()
    return lowered if lowered in _KNOWN_SEVERITIES else sent


def _incident(row: Any) -> Incident:
    labels = {str(k): str(v) for k, v in (row.labels or {}).items()}
    return Incident(
        id=int(row.id),
        fingerprint=row.fingerprint,
        starts_at=aware(row.starts_at),  # type: ignore[arg-type]
        alertname=row.alertname,
        severity=row.severity,
        status=row.status,
        alert_status=row.alert_status,
        labels={
            **labels,
            "alertname": labels.get("alertname", row.alertname),
            "severity": _severity_label(labels.get("severity"), row.severity),
        },
        annotations={str(k): str(v) for k, v in (row.annotations or {}).items()},
        received_at=aware(row.received_at),  # type: ignore[arg-type]
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=aware(row.acknowledged_at),
        resolved_at=aware(row.resolved_at),
        ends_at=aware(row.ends_at),
        postmortem=row.postmortem,
        labels_as_sent=labels,
    )


def _unavailable(exc: OperationalError) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"state database unreachable: {exc.orig}")


def load_incident(engine: Engine, incident_id: int) -> Incident:
    """The incident with this id.

    Raises:
        IncidentNotFound: no such id.
        DatabaseUnavailable: the state database could not be reached.
    """
    try:
        with engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
    except OperationalError as exc:
        raise _unavailable(exc) from exc
    if row is None:
        raise IncidentNotFound(incident_id)
    return _incident(row)


def list_incidents(engine: Engine, *, status: str | None = None, limit: int = 100) -> list[Incident]:
    """Newest first; only those with status when given."""
    query = select(incidents).order_by(incidents.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(incidents.c.status == status)
    with engine.connect() as conn:
        return [_incident(row) for row in conn.execute(query)]


def acknowledge(engine: Engine, incident_id: int, by: str, now: datetime) -> Incident:
    """Mark an active incident acknowledged by `by`; acknowledging twice keeps the first.

    Raises:
        IncidentNotFound: no such id.
        UsageError: the incident is resolved already, or `by` is empty.
    """
    if not by.strip():
        raise UsageError("acknowledge needs the name of who acknowledges (--by NAME)")
    incident = load_incident(engine, incident_id)
    if incident.status == RESOLVED:
        raise UsageError(f"incident {incident_id} is resolved; nothing to acknowledge")
    with engine.begin() as conn:
        conn.execute(
            update(incidents)
            .where(incidents.c.id == incident_id, incidents.c.status == ACTIVE)
            .values(status=ACKNOWLEDGED, acknowledged_by=by.strip()[:200], acknowledged_at=now, updated_at=now)
        )
    return load_incident(engine, incident_id)


def mark_resolved(engine: Engine, incident_id: int, now: datetime) -> tuple[Incident, bool]:
    """Mark the incident resolved; return it and whether this call resolved it (False: it already was).

    Raises:
        IncidentNotFound: no such id.
    """
    load_incident(engine, incident_id)
    with engine.begin() as conn:
        changed = conn.execute(
            update(incidents)
            .where(incidents.c.id == incident_id, incidents.c.status != RESOLVED)
            .values(status=RESOLVED, resolved_at=now, updated_at=now)
        ).rowcount
    return load_incident(engine, incident_id), bool(changed)


def store_postmortem(engine: Engine, incident_id: int, markdown: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(incidents).where(incidents.c.id == incident_id).values(postmortem=markdown))


def recent_episodes(engine: Engine, fingerprint: str, now: datetime, window: timedelta) -> int:
    """How many episodes of this alert started within the window and already resolved (flap detection)."""
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count())
            .select_from(incidents)
            .where(
                incidents.c.fingerprint == fingerprint,
                incidents.c.starts_at >= now - window,
                incidents.c.alert_status == "resolved",
            )
        ).scalar_one()
    return int(count)


def active_by_severity(engine: Engine) -> dict[str, int]:
    """Unresolved incidents per severity (for the ops_incidents_active gauge)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(incidents.c.severity, func.count())
            .where(incidents.c.status != RESOLVED)
            .group_by(incidents.c.severity)
        ).all()
    return {str(severity): int(count) for severity, count in rows}
