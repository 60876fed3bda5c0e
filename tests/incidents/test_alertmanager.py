"""End to end with a real Alertmanager: it delivers to our receiver over HTTP with bearer auth."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from celery import Celery
from psycopg import sql
from sqlalchemy import Engine

from workers.incidents.alertmanager_api import AlertmanagerClient
from workers.incidents.intake import Accepted
from workers.incidents.receiver import create_receiver_app
from workers.incidents.reconcile import reconcile
from workers.settings import Settings
from workers.state.db import create_state_engine, upgrade

from .alertmanager_process import Alertmanager, api_alert, running_alertmanager
from .conftest import TOKEN, incident_rows, queued_messages, state_url_for
from .server import serving

if TYPE_CHECKING:
    from tests.conftest import PgServer

DELIVERY_TIMEOUT_S = 45.0
Delivery = tuple[int, Accepted | None]


class Deliveries:
    """What the receiver answered Alertmanager, in order; tests wait on it instead of polling."""

    def __init__(self) -> None:
        self.events: queue.Queue[Delivery] = queue.Queue()
        self.seen: list[Delivery] = []

    def __call__(self, status: int, accepted: Accepted | None) -> None:
        self.events.put((status, accepted))

    def wait_until(self, condition: Callable[[list[Delivery]], bool], what: str) -> None:
        """Block until condition(all deliveries so far) holds; fail after DELIVERY_TIMEOUT_S."""
        deadline = datetime.now(UTC) + timedelta(seconds=DELIVERY_TIMEOUT_S)
        while not condition(self.seen):
            left = (deadline - datetime.now(UTC)).total_seconds()
            try:
                self.seen.append(self.events.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError(f"{what}: not within {DELIVERY_TIMEOUT_S}s; saw {self.seen}") from None

    def wait_for(self, wanted: Callable[[Delivery], bool], what: str) -> None:
        self.wait_until(lambda seen: any(wanted(event) for event in seen), what)


def total(field: str) -> Callable[[list[Delivery]], int]:
    return lambda seen: sum(getattr(a, field) for status, a in seen if status == 200 and a is not None)


def accepted(predicate: Callable[[Accepted], bool]) -> Callable[[Delivery], bool]:
    return lambda event: event[0] == 200 and event[1] is not None and predicate(event[1])


@contextmanager
def receiver_and_alertmanager(
    settings: Settings, engine: Engine, sender: Celery, tmp_path: Path, *, max_alerts: int = 0
) -> Iterator[tuple[Alertmanager, Deliveries]]:
    deliveries = Deliveries()
    app = create_receiver_app(settings, engine=engine, celery_app=sender, observer=deliveries)
    with serving(app) as receiver_url, running_alertmanager(receiver_url, TOKEN, tmp_path, max_alerts=max_alerts) as am:
        yield am, deliveries


def test_alertmanager_deliveries_are_recorded_once_and_resolutions_recorded(
    receiver_settings: Settings, engine: Engine, sender: Celery, redis_url: str, tmp_path: Path
) -> None:
    started = datetime.now(UTC) - timedelta(minutes=1)
    critical = {"alertname": "PostgresDown", "severity": "critical", "instance": "db1"}
    warning = {"alertname": "PostgresDown", "severity": "warning", "instance": "db2"}
    with receiver_and_alertmanager(receiver_settings, engine, sender, tmp_path) as (am, deliveries):
        am.post_alerts(api_alert(critical, started), api_alert(warning, started))
        deliveries.wait_until(lambda seen: total("recorded")(seen) == 2, "both alerts are recorded")
        # Alertmanager re-sends the group every repeat_interval: nothing new is recorded or enqueued.
        deliveries.wait_for(accepted(lambda a: a.duplicates == 2 and a.recorded == 0), "a repeat is a duplicate")

        ended = datetime.now(UTC) - timedelta(seconds=1)
        am.post_alerts(api_alert(critical, started, ended), api_alert(warning, started, ended))
        deliveries.wait_until(lambda seen: total("recorded")(seen) == 4, "the resolutions are recorded")
        assert total("enqueued")(deliveries.seen) == 4

    rows = incident_rows(engine)
    assert len(rows) == 2
    assert {(r["status"], r["alert_status"]) for r in rows} == {("resolved", "resolved")}
    assert {r["severity"] for r in rows} == {"critical", "warning"}
    assert all(r["generator_url"] == "http://prometheus.test/graph?g0.expr=up" for r in rows)
    # One task per new episode and one per resolution; repeats sent none.
    ids = sorted(m["headers"]["argsrepr"] for m in queued_messages(redis_url))  # type: ignore[index]
    assert ids == sorted(f"[{r['id']}]" for r in rows for _ in range(2))


def test_truncated_alerts_are_fetched_back_by_reconcile(
    ops_env: Callable[..., Settings], state_url: str, engine: Engine, sender: Celery, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    started = datetime.now(UTC) - timedelta(minutes=1)
    flood = [{"alertname": "DiskFull", "severity": "warning", "instance": f"node{i}"} for i in range(5)]
    with receiver_and_alertmanager(
        ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN, OPS_ALERTMANAGER_URL="http://x"),
        engine, sender, tmp_path, max_alerts=2,
    ) as (am, deliveries):  # fmt: skip
        am.post_alerts(*(api_alert(labels, started) for labels in flood))
        deliveries.wait_for(accepted(lambda a: a.alerts == 2 and a.truncated == 3), "a truncated notification")
        assert len(incident_rows(engine)) == 2

        result = reconcile(
            engine, sender, alertmanager=AlertmanagerClient(am.url), now=datetime.now(UTC), grace=timedelta(0)
        )

    assert result.fetched_groups >= 1 and result.fetch_failures == 0
    assert result.recorded == 3
    rows = incident_rows(engine)
    assert sorted(r["labels"]["instance"] for r in rows) == [f"node{i}" for i in range(5)]  # type: ignore[index]
    assert len(queued_messages(redis_url)) == 5


def test_state_database_down_gives_503_and_alertmanagers_retry_succeeds(
    ops_env: Callable[..., Settings], pg: PgServer, sender: Celery, tmp_path: Path
) -> None:
    dbname = f"ops_recv_{uuid.uuid4().hex[:12]}"
    url = state_url_for(pg, dbname)  # nothing there yet: every connection fails
    settings = ops_env(OPS_STATE_DATABASE_URL=url, OPS_RECEIVER_TOKEN=TOKEN)
    engine = create_state_engine(url)
    started = datetime.now(UTC) - timedelta(minutes=1)
    try:
        with receiver_and_alertmanager(settings, engine, sender, tmp_path) as (am, deliveries):
            am.post_alerts(api_alert({"alertname": "ReplicaLag", "severity": "critical"}, started))
            deliveries.wait_for(lambda event: event[0] == 503, "the receiver answers 503")

            with psycopg.connect(**pg.admin.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            pg.created.append(dbname)
            upgrade(engine)

            deliveries.wait_until(lambda seen: total("recorded")(seen) == 1, "Alertmanager's retry is recorded")
        rows = incident_rows(engine)
        assert [(r["alertname"], r["status"]) for r in rows] == [("ReplicaLag", "active")]
    finally:
        engine.dispose()
