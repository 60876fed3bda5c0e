"""Recording episodes on both state-database backends: SQLite (development default) and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine

from workers.incidents.alerts import Alert, AlertStatus, parse_notification
from workers.incidents.intake import decode_body
from workers.incidents.records import (
    get_incident,
    list_incidents,
    mark_enqueued,
    pending_transitions,
    record_alerts,
)
from workers.state.db import create_state_engine, upgrade

from .conftest import load_case, state_url_for

if TYPE_CHECKING:
    from tests.conftest import PgServer

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        pg: PgServer = request.getfixturevalue("pg")
        url = state_url_for(pg, pg.create_database(prefix="ops_recv").dbname)
    engine = create_state_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def alerts_of(case: str) -> tuple[Alert, ...]:
    return parse_notification(decode_body(load_case(case)), NOW).alerts


def test_new_duplicate_and_resolved_episodes(state_engine: Engine) -> None:
    firing = alerts_of("01-firing-two-alerts-empty-urls.json")
    with state_engine.begin() as conn:
        first = record_alerts(conn, firing, request_id="r1", at=NOW)
    with state_engine.begin() as conn:
        again = record_alerts(conn, firing, request_id="r2", at=NOW + timedelta(seconds=5))
    assert (len(first.transitions), first.duplicates) == (2, 0)
    assert (len(again.transitions), again.duplicates) == (0, 2)

    raw_alerts = json.loads(load_case("01-firing-two-alerts-empty-urls.json"))["alerts"]
    ended = [{**a, "status": "resolved", "endsAt": "2023-06-12T09:00:00Z"} for a in raw_alerts]
    resolved = parse_notification({"alerts": ended}, NOW).alerts
    with state_engine.begin() as conn:
        resolution = record_alerts(conn, resolved, request_id="r3", at=NOW + timedelta(seconds=10))
    assert {t.alert_status for t in resolution.transitions} == {AlertStatus.RESOLVED}
    assert {t.incident_id for t in resolution.transitions} == {t.incident_id for t in first.transitions}

    with state_engine.connect() as conn:
        views = list_incidents(conn)
        assert {(v.status, v.alert_status) for v in views} == {("resolved", "resolved")}
        assert all(v.starts_at.tzinfo is not None and v.starts_at.utcoffset() == timedelta(0) for v in views)
        assert views[0].request_id == "r3"
        shown = get_incident(conn, views[0].id)
        assert shown is not None and shown.to_json()["labels"] == dict(views[0].labels)
        assert list_incidents(conn, status="active") == []


def test_pending_transitions_and_mark_enqueued(state_engine: Engine) -> None:
    with state_engine.begin() as conn:
        outcome = record_alerts(
            conn, alerts_of("04-nineteen-alerts-legacy-no-fingerprints.json"), request_id=None, at=NOW
        )
    with state_engine.connect() as conn:
        # Changed too recently for reconcile: the receiver is still sending them.
        assert pending_transitions(conn, changed_before=NOW - timedelta(seconds=30), limit=100) == []
        pending = pending_transitions(conn, changed_before=NOW, limit=100)
    assert sorted(t.incident_id for t in pending) == sorted(t.incident_id for t in outcome.transitions)
    with state_engine.begin() as conn:
        assert mark_enqueued(conn, pending[:5], NOW) == 5
    with state_engine.connect() as conn:
        assert len(pending_transitions(conn, changed_before=NOW, limit=100)) == 14
