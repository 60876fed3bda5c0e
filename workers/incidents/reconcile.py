"""Reconcile: fetch what truncated notifications left out; enqueue every recorded episode without a task.

Run every minute by beat (incidents.reconcile) and by `ops-workers incidents reconcile`. This is what
makes "recorded" imply "handled": a broker outage or a crash between commit and enqueue only delays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from workers import metrics
from workers.errors import AlertmanagerUnavailable, BrokerUnavailable, DatabaseUnavailable
from workers.incidents.alertmanager_api import AlertmanagerClient
from workers.incidents.dispatch import enqueue_transitions
from workers.incidents.intake import record_and_enqueue
from workers.incidents.records import (
    fail_fetch,
    finish_fetch,
    mark_enqueued,
    pending_fetches,
    pending_transitions,
)
from workers.logs import log_context
from workers.settings import Settings
from workers.state.db import create_state_engine, redact

log = logging.getLogger(__name__)

# The receiver stamps enqueued_at right after sending; leave it this long before sending for it.
DEFAULT_GRACE = timedelta(seconds=30)
BATCH = 500


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    fetched_groups: int
    fetch_failures: int
    recorded: int
    enqueued: int

    def to_json(self) -> dict[str, int]:
        return {
            "fetched_groups": self.fetched_groups,
            "fetch_failures": self.fetch_failures,
            "recorded": self.recorded,
            "enqueued": self.enqueued,
        }


def _fetch_truncated(engine: Engine, app: Celery, client: AlertmanagerClient, now: datetime) -> tuple[int, int, int]:
    fetched = failures = recorded = 0
    with engine.connect() as conn:
        pending = pending_fetches(conn, limit=BATCH)
    for fetch in pending:
        try:
            alerts = client.group_alerts(fetch.receiver, fetch.group_labels, now)
        except AlertmanagerUnavailable as exc:
            log.warning("alertmanager fetch failed", extra={"fetch_id": fetch.id, "error": str(exc)})
            with engine.begin() as conn:
                fail_fetch(conn, fetch.id, str(exc))
            failures += 1
            continue
        # The alerts belong to the notification that was truncated: record and send them under its request id.
        with log_context(**({"request_id": fetch.request_id} if fetch.request_id else {})):
            outcome, _ = record_and_enqueue(
                engine, app, alerts, request_id=fetch.request_id, now=now, source="reconcile"
            )
        with engine.begin() as conn:
            finish_fetch(conn, fetch.id, now)
        fetched += 1
        recorded += len(outcome.transitions)
    return fetched, failures, recorded


def reconcile(
    engine: Engine,
    app: Celery,
    *,
    alertmanager: AlertmanagerClient | None,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
) -> ReconcileResult:
    """Fetch truncated groups (when an Alertmanager is configured), then enqueue every pending episode.

    Raises:
        BrokerUnavailable: the broker is still down; the episodes stay pending for the next run.
        DatabaseUnavailable: the state database could not be reached.
    """
    fetched = failures = recorded = 0
    if alertmanager is not None:
        fetched, failures, recorded = _fetch_truncated(engine, app, alertmanager, now)
    enqueued = 0
    while True:
        with engine.connect() as conn:
            pending = pending_transitions(conn, changed_before=now - grace, limit=BATCH)
        if not pending:
            break
        try:
            sent = enqueue_transitions(app, pending)
        except BrokerUnavailable:
            metrics.INCIDENTS_ENQUEUE_FAILURES.labels(source="reconcile").inc()
            raise
        with engine.begin() as conn:
            mark_enqueued(conn, sent, now)
        metrics.INCIDENTS_ENQUEUED.labels(source="reconcile").inc(len(sent))
        enqueued += len(sent)
        if len(pending) < BATCH:
            break
    result = ReconcileResult(fetched, failures, recorded, enqueued)
    if enqueued or fetched or failures:
        log.info("incidents reconciled", extra=result.to_json())
    return result


def run_reconcile(settings: Settings, app: Celery, *, grace: timedelta = DEFAULT_GRACE) -> ReconcileResult:
    """reconcile() wired from settings; used by the incidents.reconcile task and the CLI."""
    engine = create_state_engine(settings.state_database_url.value)
    url = settings.receiver.alertmanager_url
    try:
        return reconcile(
            engine,
            app,
            alertmanager=AlertmanagerClient(url) if url else None,
            now=datetime.now(UTC),
            grace=grace,
        )
    except OperationalError as exc:
        raise DatabaseUnavailable(f"state database {redact(str(engine.url))} unreachable: {exc.orig}") from exc
    finally:
        engine.dispose()
