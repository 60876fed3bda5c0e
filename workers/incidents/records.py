"""Incidents in the state database: record alert episodes idempotently, track what still needs a task.

One row per episode (fingerprint, starts_at). Every statement here takes a Connection, so callers
decide the transaction; nothing here enqueues or talks HTTP.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from workers.incidents.alerts import Alert, AlertStatus, Severity, episodes
from workers.state.schema import alert_fetches, incidents

# Lifecycle of an incident row (incidents.status); alert_status holds what Alertmanager last said.
ACTIVE = "active"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
STATUSES = (ACTIVE, ACKNOWLEDGED, RESOLVED)


@dataclass(frozen=True, slots=True)
class Transition:
    """An episode that became new or resolved and so needs one incidents.handle task."""

    incident_id: int
    fingerprint: str
    severity: Severity
    alert_status: AlertStatus
    request_id: str | None = None  # the notification that recorded it, when read back for reconcile


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    transitions: tuple[Transition, ...]
    duplicates: int  # alerts that changed nothing: retries, HA peers, repeat_interval re-sends


@dataclass(frozen=True, slots=True)
class PendingFetch:
    id: int
    receiver: str
    group_labels: Mapping[str, str]
    truncated_alerts: int
    request_id: str | None = None  # of the truncated notification


@functools.cache
def _upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (fingerprint, starts_at) DO UPDATE ... WHERE firing -> resolved ... RETURNING.

    Built once per dialect and run with a list of rows: SQLAlchemy caches its compiled form and
    sends one multi-row INSERT ("insertmanyvalues"), instead of compiling a new statement per body.
    """
    # Spelled alike by both dialects, but each one's insert() carries its own on_conflict_do_update().
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(incidents)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[incidents.c.fingerprint, incidents.c.starts_at],
        set_={
            "alert_status": AlertStatus.RESOLVED.value,
            "status": RESOLVED,
            "ends_at": excluded.ends_at,
            "resolved_at": excluded.received_at,
            "updated_at": excluded.updated_at,
            "request_id": excluded.request_id,
            "enqueued_at": None,
        },
        where=and_(
            incidents.c.alert_status == AlertStatus.FIRING.value,
            excluded.alert_status == AlertStatus.RESOLVED.value,
        ),
    ).returning(incidents.c.id, incidents.c.fingerprint, incidents.c.severity, incidents.c.alert_status)


def _row(alert: Alert, request_id: str | None, at: datetime) -> dict[str, object]:
    resolved = alert.status is AlertStatus.RESOLVED
    return {
        "fingerprint": alert.fingerprint,
        "starts_at": alert.starts_at,
        "alertname": alert.name,
        "severity": alert.severity.value,
        "status": RESOLVED if resolved else ACTIVE,
        "alert_status": alert.status.value,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "generator_url": alert.generator_url,
        "ends_at": alert.ends_at,
        "request_id": request_id,
        "received_at": at,
        "created_at": at,
        "updated_at": at,
        "enqueued_at": None,
        "resolved_at": at if resolved else None,
    }


def record_alerts(conn: Connection, alerts: Sequence[Alert], *, request_id: str | None, at: datetime) -> RecordOutcome:
    """Insert new episodes and resolve firing ones, in one statement; return what needs a task.

    A repeated delivery (same episode, same status) and a late "firing" for an episode already
    resolved change nothing and count as duplicates.
    """
    unique = episodes(alerts)
    if not unique:
        return RecordOutcome((), len(alerts))
    stmt = _upsert(conn.dialect.name)
    result = conn.execute(stmt, [_row(alert, request_id, at) for alert in unique])
    transitions = tuple(
        Transition(int(row.id), row.fingerprint, Severity(row.severity), AlertStatus(row.alert_status))
        for row in result
    )
    return RecordOutcome(transitions, len(alerts) - len(transitions))


def mark_enqueued(conn: Connection, sent: Sequence[Transition], at: datetime) -> int:
    """Stamp enqueued_at on the rows whose task was sent; return how many rows were stamped.

    Only a row still in the state that was sent is stamped: if the episode was resolved meanwhile,
    its resolution still needs its own task and keeps enqueued_at NULL.
    """
    if not sent:
        return 0
    by_status = [
        and_(
            incidents.c.alert_status == status.value,
            incidents.c.id.in_([t.incident_id for t in sent if t.alert_status is status]),
        )
        for status in AlertStatus
        if any(t.alert_status is status for t in sent)
    ]
    stmt = update(incidents).where(incidents.c.enqueued_at.is_(None), or_(*by_status)).values(enqueued_at=at)
    return conn.execute(stmt).rowcount


def pending_transitions(conn: Connection, *, changed_before: datetime, limit: int) -> list[Transition]:
    """Recorded episodes that have no task yet and were last changed before `changed_before`."""
    stmt = (
        select(incidents.c.id, incidents.c.fingerprint, incidents.c.severity, incidents.c.alert_status,
               incidents.c.request_id)
        .where(incidents.c.enqueued_at.is_(None), incidents.c.updated_at <= changed_before)
        .order_by(incidents.c.id)
        .limit(limit)
    )  # fmt: skip
    return [
        Transition(int(row.id), row.fingerprint, Severity(row.severity), AlertStatus(row.alert_status), row.request_id)
        for row in conn.execute(stmt)
    ]


def add_fetch(
    conn: Connection,
    *,
    receiver: str,
    group_labels: Mapping[str, str],
    truncated_alerts: int,
    request_id: str | None,
    at: datetime,
) -> None:
    """Remember that Alertmanager left alerts of this group out, for reconcile to fetch."""
    conn.execute(
        alert_fetches.insert().values(
            receiver=receiver[:200],
            group_labels=dict(group_labels),
            truncated_alerts=truncated_alerts,
            request_id=request_id,
            requested_at=at,
            attempts=0,
        )
    )


def pending_fetches(conn: Connection, *, limit: int) -> list[PendingFetch]:
    stmt = (
        select(alert_fetches.c.id, alert_fetches.c.receiver, alert_fetches.c.group_labels,
               alert_fetches.c.truncated_alerts, alert_fetches.c.request_id)
        .where(alert_fetches.c.fetched_at.is_(None))
        .order_by(alert_fetches.c.id)
        .limit(limit)
    )  # fmt: skip
    return [
        PendingFetch(int(r.id), r.receiver, dict(r.group_labels), int(r.truncated_alerts), r.request_id)
        for r in conn.execute(stmt)
    ]


def finish_fetch(conn: Connection, fetch_id: int, at: datetime) -> None:
    conn.execute(
        update(alert_fetches)
        .where(alert_fetches.c.id == fetch_id)
        .values(fetched_at=at, attempts=alert_fetches.c.attempts + 1, last_error=None)
    )


def fail_fetch(conn: Connection, fetch_id: int, error: str) -> None:
    conn.execute(
        update(alert_fetches)
        .where(alert_fetches.c.id == fetch_id)
        .values(attempts=alert_fetches.c.attempts + 1, last_error=error[:2000])
    )


def utc(value: datetime | None) -> datetime | None:
    """A timestamp read back from the database as aware UTC (SQLite hands back naive values)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class IncidentView:
    """One incidents row as operators see it (`ops-workers incidents list|show`)."""

    id: int
    alertname: str
    fingerprint: str
    starts_at: datetime
    ends_at: datetime | None
    status: str
    alert_status: str
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generator_url: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    enqueued_at: datetime | None
    resolved_at: datetime | None

    def to_json(self) -> dict[str, object]:
        def stamp(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "alertname": self.alertname,
            "fingerprint": self.fingerprint,
            "starts_at": stamp(self.starts_at),
            "ends_at": stamp(self.ends_at),
            "status": self.status,
            "alert_status": self.alert_status,
            "severity": self.severity,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "generator_url": self.generator_url,
            "request_id": self.request_id,
            "created_at": stamp(self.created_at),
            "updated_at": stamp(self.updated_at),
            "enqueued_at": stamp(self.enqueued_at),
            "resolved_at": stamp(self.resolved_at),
        }


_VIEW_COLUMNS = (
    incidents.c.id, incidents.c.alertname, incidents.c.fingerprint, incidents.c.starts_at,
    incidents.c.ends_at, incidents.c.status, incidents.c.alert_status, incidents.c.severity,
    incidents.c.labels,
    incidents.c.annotations, incidents.c.generator_url, incidents.c.request_id, incidents.c.created_at,
    incidents.c.updated_at, incidents.c.enqueued_at, incidents.c.resolved_at,
)  # fmt: skip


def _view(row: Any) -> IncidentView:
    return IncidentView(
        id=int(row.id),
        alertname=row.alertname,
        fingerprint=row.fingerprint,
        starts_at=utc(row.starts_at) or row.starts_at,
        ends_at=utc(row.ends_at),
        status=row.status,
        alert_status=row.alert_status,
        severity=row.severity,
        labels=dict(row.labels),
        annotations=dict(row.annotations),
        generator_url=row.generator_url,
        request_id=row.request_id,
        created_at=utc(row.created_at) or row.created_at,
        updated_at=utc(row.updated_at) or row.updated_at,
        enqueued_at=utc(row.enqueued_at),
        resolved_at=utc(row.resolved_at),
    )


def list_incidents(conn: Connection, *, status: str | None = None, limit: int = 100) -> list[IncidentView]:
    """The most recent incidents first, optionally only those with the given lifecycle status."""
    stmt = select(*_VIEW_COLUMNS).order_by(incidents.c.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(incidents.c.status == status)
    return [_view(row) for row in conn.execute(stmt)]


def get_incident(conn: Connection, incident_id: int) -> IncidentView | None:
    row = conn.execute(select(*_VIEW_COLUMNS).where(incidents.c.id == incident_id)).first()
    return _view(row) if row is not None else None
