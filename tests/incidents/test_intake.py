"""Recording a notification through the receiver's own engine (no pre-ping): stale connections, 503s."""

from __future__ import annotations

import psycopg
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from workers.incidents.receiver import create_receiver_app, receiver_engine
from workers.settings import Settings

from .conftest import AUTH, http_client, incident_rows, load_case

JSON = {**AUTH, "Content-Type": "application/json"}


def _drop_other_sessions(state_url: str) -> int:
    """Terminate every session of the state database but this one: what a server restart does to a pool."""
    url = make_url(state_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_dropped_pooled_connection_is_replaced_without_a_503(
    receiver_settings: Settings, engine: Engine, sender: Celery, state_url: str
) -> None:
    own = receiver_engine(receiver_settings)
    try:
        with http_client(create_receiver_app(receiver_settings, engine=own, celery_app=sender)) as client:
            first = client.post("/alertmanager", content=load_case("02-disk-full-relative-generator-url.json"),
                                headers=JSON)  # fmt: skip
            assert first.status_code == 200, first.text
            assert _drop_other_sessions(state_url) >= 1  # the receiver's pooled connection among them

            second = client.post("/alertmanager", content=load_case("01-firing-two-alerts-empty-urls.json"),
                                 headers=JSON)  # fmt: skip
            assert second.status_code == 200, second.text
            assert second.json()["recorded"] == 2
    finally:
        own.dispose()
    assert len(incident_rows(engine)) == 3
