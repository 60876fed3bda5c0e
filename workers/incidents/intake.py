"""Accept one Alertmanager notification: parse, record durably, then enqueue (the route calls accept())."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from workers import metrics
from workers.errors import BrokerUnavailable, DatabaseUnavailable, InvalidAlert
from workers.incidents.alerts import Alert, parse_notification
from workers.incidents.dispatch import enqueue_transitions
from workers.incidents.records import RecordOutcome, add_fetch, mark_enqueued, record_alerts
from workers.state.db import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What one notification changed: the answer the receiver sends back."""

    alerts: int
    recorded: int  # episodes that were new or became resolved
    duplicates: int
    enqueued: int  # incidents.handle tasks sent now; the rest are left to reconcile
    truncated: int

    def to_json(self) -> dict[str, int]:
        return {
            "alerts": self.alerts,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "enqueued": self.enqueued,
            "truncated": self.truncated,
        }


def loggable(text: str, max_chars: int = 200) -> str:
    """Payload text made safe for any log format: control characters escaped, length capped."""
    return repr(text[:max_chars])[1:-1]


def _database_unavailable(engine: Engine, exc: DBAPIError) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"state database {redact(str(engine.url))} unreachable: {exc.orig}")


def _commit_alerts(engine: Engine, alerts: Sequence[Alert], *, request_id: str | None, now: datetime) -> RecordOutcome:
    """Record the alerts in one transaction; retried once on a pooled connection the server had dropped.

    The receiver's pool skips the pre-ping round trip. After a state-database restart the first use of a
    stale connection fails with connection_invalidated, SQLAlchemy discards the pool's older connections,
    and the second attempt runs on a fresh one. Repeating the upsert is safe: it is idempotent.

    Raises:
        DatabaseUnavailable: the alerts could not be committed.
    """
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                return record_alerts(conn, alerts, request_id=request_id, at=now)
        except DBAPIError as exc:
            if exc.connection_invalidated and attempt == 0:
                log.info("stale state-database connection discarded; recording again")
                continue
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise _database_unavailable(engine, exc) from exc
            raise
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"state database {redact(str(engine.url))}: no free connection ({exc})") from exc
    raise AssertionError("unreachable: the second attempt returns or raises")


def record_and_enqueue(
    engine: Engine,
    app: Celery,
    alerts: Sequence[Alert],
    *,
    request_id: str | None,
    now: datetime,
    source: str,
) -> tuple[RecordOutcome, int]:
    """Commit the alerts, then send a task per transition and stamp it; return the outcome and tasks sent.

    A broker that is down loses nothing: the rows stay with enqueued_at NULL for reconcile.

    Raises:
        DatabaseUnavailable: the alerts could not be committed; nothing was recorded or sent.
    """
    outcome = _commit_alerts(engine, alerts, request_id=request_id, now=now)
    try:
        sent = enqueue_transitions(app, outcome.transitions)
    except BrokerUnavailable:
        log.warning("broker unavailable; reconcile will enqueue", exc_info=True,
                    extra={"pending": len(outcome.transitions)})  # fmt: skip
        metrics.INCIDENTS_ENQUEUE_FAILURES.labels(source=source).inc()
        return outcome, 0
    metrics.INCIDENTS_ENQUEUED.labels(source=source).inc(len(sent))
    try:
        with engine.begin() as conn:
            mark_enqueued(conn, sent, now)
    except OperationalError:
        # The tasks are in the broker; reconcile may send them once more, which the handler tolerates.
        log.warning("could not stamp enqueued incidents", exc_info=True, extra={"tasks": len(sent)})
    return outcome, len(sent)


def _count(notification_alerts: Sequence[Alert], outcome: RecordOutcome) -> None:
    for alert in notification_alerts:
        metrics.ALERTS_RECEIVED.labels(status=alert.status.value, severity=alert.severity.value).inc()
        if not alert.severity_is_known:
            log.warning(
                "unknown severity counted as warning",
                extra={"alertname": loggable(alert.name), "alert_fingerprint": loggable(alert.fingerprint),
                       "severity_label": loggable(alert.severity_label or "")},
            )  # fmt: skip
    if outcome.duplicates:
        metrics.ALERT_DELIVERIES_DUPLICATE.inc(outcome.duplicates)


def decode_body(body: bytes) -> object:
    """The JSON document in body.

    Raises:
        InvalidAlert: the body is not JSON (or nests too deeply to be an Alertmanager notification).
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidAlert("body", f"is not valid JSON ({type(exc).__name__})") from None


def accept(
    body: bytes,
    *,
    engine: Engine,
    app: Celery,
    now: datetime,
    request_id: str | None,
    fetch_truncated: bool,
) -> Accepted:
    """Validate a webhook body, record every alert durably, then enqueue the transitions.

    Raises:
        InvalidAlert: the body can never be accepted (answer 4xx; nothing was recorded).
        DatabaseUnavailable: nothing was recorded (answer 5xx so Alertmanager retries).
    """
    notification = parse_notification(decode_body(body), now)
    outcome, enqueued = record_and_enqueue(
        engine, app, notification.alerts, request_id=request_id, now=now, source="receiver"
    )
    if notification.truncated_alerts:
        metrics.ALERTS_TRUNCATED.inc(notification.truncated_alerts)
        log.warning("notification truncated", extra={"truncated_alerts": notification.truncated_alerts,
                                                     "fetch": fetch_truncated})  # fmt: skip
        if fetch_truncated:
            try:
                with engine.begin() as conn:
                    add_fetch(
                        conn,
                        receiver=notification.receiver,
                        group_labels=notification.group_labels,
                        truncated_alerts=notification.truncated_alerts,
                        request_id=request_id,
                        at=now,
                    )
            except OperationalError as exc:
                raise _database_unavailable(engine, exc) from exc
    _count(notification.alerts, outcome)
    log.info(
        "notification accepted",
        extra={"alerts": len(notification.alerts), "recorded": len(outcome.transitions),
               "duplicates": outcome.duplicates, "enqueued": enqueued},
    )  # fmt: skip
    return Accepted(
        alerts=len(notification.alerts),
        recorded=len(outcome.transitions),
        duplicates=outcome.duplicates,
        enqueued=enqueued,
        truncated=notification.truncated_alerts,
    )
