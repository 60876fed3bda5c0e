"""The receiver over HTTP against the real PostgreSQL state database and the real Redis broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import sql
from sqlalchemy import Engine, text

from workers.app import create_app
from workers.incidents.receiver import create_receiver_app
from workers.incidents.reconcile import reconcile
from workers.settings import Settings
from workers.state.db import create_state_engine, upgrade

from .conftest import AUTH, TOKEN, http_client, incident_rows, load_case, queued_messages, state_url_for
from .redis_server import RedisServer

if TYPE_CHECKING:
    from tests.conftest import PgServer

JSON = {"Content-Type": "application/json"}


def post(client: httpx.Client, payload: bytes | dict[str, object], **headers: str) -> httpx.Response:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/alertmanager", content=content, headers={**JSON, **AUTH, **headers})


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def firing(alertname: str = "DiskFull", severity: str = "critical", starts_at: str = "2026-12-03T10:00:00Z",
           **extra: object) -> dict[str, object]:  # fmt: skip
    return {
        "status": "firing",
        "labels": {"alertname": alertname, "severity": severity, "instance": "db1"},
        "annotations": {"summary": "s"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        **extra,
    }


def notification(*alerts: dict[str, object], **top: object) -> dict[str, object]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "ops",
        "groupLabels": {},
        "alerts": list(alerts),
        **top,
    }


@pytest.mark.parametrize(
    ("case", "alerts", "severities", "statuses"),
    [
        ("01-firing-two-alerts-empty-urls.json", 2, {"critical"}, {"active"}),
        ("02-disk-full-relative-generator-url.json", 1, {"warning"}, {"active"}),
        ("03-resolved-single-capitalised-severity.json", 1, {"warning"}, {"resolved"}),
        ("04-nineteen-alerts-legacy-no-fingerprints.json", 19, {"warning"}, {"active"}),
    ],
)
def test_every_shared_case_is_accepted_recorded_and_enqueued(
    client: httpx.Client, engine: Engine, redis_url: str, case: str, alerts: int, severities: set[str],
    statuses: set[str],
) -> None:  # fmt: skip
    response = post(client, load_case(case))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["alerts"], answer["recorded"], answer["duplicates"], answer["enqueued"]) == (
        alerts,
        alerts,
        0,
        alerts,
    )
    rows = incident_rows(engine)
    assert len(rows) == alerts
    assert {r["severity"] for r in rows} == severities
    assert {r["status"] for r in rows} == statuses
    assert all(r["enqueued_at"] is not None for r in rows)
    messages = queued_messages(redis_url)
    assert sorted(m["headers"]["argsrepr"] for m in messages) == sorted(f"[{r['id']}]" for r in rows)
    assert {m["headers"]["task"] for m in messages} == {"incidents.handle"}


def test_repeated_delivery_records_and_enqueues_nothing_new(
    client: httpx.Client, engine: Engine, redis_url: str
) -> None:
    body = load_case("01-firing-two-alerts-empty-urls.json")
    post(client, body)
    before = sample("ops_alert_deliveries_duplicate_total")

    again = post(client, body).json()

    assert (again["recorded"], again["duplicates"], again["enqueued"]) == (0, 2, 0)
    assert len(incident_rows(engine)) == 2
    assert len(queued_messages(redis_url)) == 2
    assert sample("ops_alert_deliveries_duplicate_total") - before == 2


def test_resolution_marks_the_episode_resolved_once_and_a_new_starts_at_is_a_new_episode(
    client: httpx.Client, engine: Engine, redis_url: str
) -> None:
    post(client, notification(firing()))
    resolved = firing(status="resolved", endsAt="2026-12-03T10:30:00Z")

    first = post(client, notification(resolved)).json()
    repeat = post(client, notification(resolved)).json()
    late_firing = post(client, notification(firing())).json()
    refire = post(client, notification(firing(starts_at="2026-12-03T11:00:00Z"))).json()

    assert (first["recorded"], repeat["recorded"], late_firing["recorded"], refire["recorded"]) == (
        1,
        0,
        0,
        1,
    )
    rows = incident_rows(engine)
    assert [(r["status"], r["alert_status"]) for r in rows] == [
        ("resolved", "resolved"),
        ("active", "firing"),
    ]
    assert rows[0]["ends_at"] is not None and rows[0]["resolved_at"] is not None
    # One task for the new episode, one for its resolution, one for the re-fire.
    ids = [m["headers"]["argsrepr"] for m in queued_messages(redis_url)]
    assert sorted(ids) == sorted([f"[{rows[0]['id']}]", f"[{rows[0]['id']}]", f"[{rows[1]['id']}]"])


def test_one_body_repeating_an_episode_records_it_once(client: httpx.Client, engine: Engine) -> None:
    answer = post(client, notification(firing(), firing(), firing(status="resolved"))).json()
    assert answer["recorded"] == 1
    assert [r["alert_status"] for r in incident_rows(engine)] == ["resolved"]


def test_critical_is_queued_ahead_of_warning(client: httpx.Client, redis_url: str) -> None:
    body = notification(*(firing(alertname=f"W{i}", severity="warning") for i in range(5)),
                        firing(alertname="C", severity="critical"))  # fmt: skip
    post(client, body)
    order = [m["properties"]["priority"] for m in queued_messages(redis_url)]
    assert order == [0, 3, 3, 3, 3, 3]


def test_request_id_is_kept_returned_and_carried_into_the_task(client: httpx.Client, redis_url: str) -> None:
    response = post(client, notification(firing()), **{"X-Request-ID": "am-req-42"})

    assert response.headers["x-request-id"] == "am-req-42"
    assert response.json()["request_id"] == "am-req-42"
    (message,) = queued_messages(redis_url)
    assert message["headers"]["request_id"] == "am-req-42"


def test_unsafe_request_id_is_replaced_not_echoed(client: httpx.Client) -> None:
    response = post(client, notification(firing()), **{"X-Request-ID": "a b<script>"})
    assert response.headers["x-request-id"] != "a b<script>"
    assert len(response.headers["x-request-id"]) == 32


BAD_INPUTS: list[tuple[str, dict[str, str], bytes, int, str | None]] = [
    ("no credentials", {"Authorization": ""}, b'{"alerts": []}', 401, None),
    ("wrong token", {"Authorization": "Bearer nope"}, b'{"alerts": []}', 401, None),
    ("basic when only a token is set", {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()},
     b'{"alerts": []}', 401, None),
    ("not json content type", {"Content-Type": "text/plain"}, b'{"alerts": []}', 415, None),
    ("no content type", {"Content-Type": ""}, b'{"alerts": []}', 415, None),
    ("too large", {}, b'{"alerts": [], "pad": "' + b"x" * 70000 + b'"}', 413, None),
    ("malformed json", {}, b'{"alerts": [', 400, "body"),
    ("not utf-8", {}, b'{"alerts": "\xff"}', 400, "body"),
    ("missing startsAt", {}, json.dumps(notification({"labels": {"alertname": "x"}})).encode(), 400,
     "alerts[0].startsAt"),
    ("second alert bad", {}, json.dumps(notification(firing(), firing(status="odd"))).encode(), 400,
     "alerts[1].status"),
    ("fingerprint not hex", {}, json.dumps(notification(firing(), firing(fingerprint="x\n\u001b[31m"))).encode(),
     400, "alerts[1].fingerprint"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "headers", "payload", "status", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_status_and_records_nothing(
    client: httpx.Client, engine: Engine, redis_url: str, why: str, headers: dict[str, str], payload: bytes,
    status: int, field: str | None,
) -> None:  # fmt: skip
    response = post(client, payload, **headers)

    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["field"] == field
        assert response.json()["error"].startswith(f"{field}: ")
    if status == 401:
        assert "WWW-Authenticate" in response.headers
    assert incident_rows(engine) == []
    assert queued_messages(redis_url) == []


def test_body_over_the_limit_without_content_length_is_refused(client: httpx.Client, engine: Engine) -> None:
    def chunks() -> object:
        yield b'{"alerts": [], "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    response = client.post("/alertmanager", content=chunks(), headers={**JSON, **AUTH})
    assert response.status_code == 413
    assert incident_rows(engine) == []


def test_basic_auth_is_accepted_when_configured(
    ops_env: Callable[..., Settings], state_url: str, engine: Engine
) -> None:
    settings = ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_BASIC_AUTH="alertmanager:pa:ss")
    app = create_receiver_app(settings, engine=engine, celery_app=create_app(settings, name="basic"))
    good = "Basic " + base64.b64encode(b"alertmanager:pa:ss").decode()
    bad = "Basic " + base64.b64encode(b"alertmanager:wrong").decode()
    with http_client(app) as client:
        assert post(client, notification(firing()), Authorization=good).status_code == 200
        assert post(client, notification(firing()), Authorization=bad).status_code == 401
        assert post(client, notification(firing()), Authorization=f"Bearer {TOKEN}").status_code == 401


def test_state_database_down_gives_503_and_a_retry_after_it_returns_succeeds(
    ops_env: Callable[..., Settings], pg: PgServer, redis_url: str
) -> None:
    target = pg.create_database(prefix="ops_recv")
    url = state_url_for(pg, target.dbname)
    migrate = create_state_engine(url)
    upgrade(migrate)
    migrate.dispose()
    settings = ops_env(OPS_STATE_DATABASE_URL=url, OPS_RECEIVER_TOKEN=TOKEN)
    engine = create_state_engine(url)
    app = create_receiver_app(settings, engine=engine, celery_app=create_app(settings, name="down"))
    hidden = f"{target.dbname}_away"
    body = notification(firing())
    try:
        with http_client(app) as client:
            assert post(client, body).status_code == 200
            rename(pg, target.dbname, hidden)

            down = post(client, notification(firing(alertname="WhileDown")))
            assert down.status_code == 503
            assert down.headers["Retry-After"]
            assert client.get("/readyz").status_code == 503
            listing = client.get("/incidents", headers={"Authorization": f"Bearer {TOKEN}"})
            assert listing.status_code == 503
            assert listing.json()["request_id"] == listing.headers["x-request-id"]

            rename(pg, hidden, target.dbname)
            retried = post(client, notification(firing(alertname="WhileDown")))
            assert retried.status_code == 200
            assert client.get("/readyz").status_code == 200
        names = sorted(str(r["alertname"]) for r in incident_rows(engine))
        assert names == ["DiskFull", "WhileDown"]
    finally:
        engine.dispose()


def rename(pg: PgServer, old: str, new: str) -> None:
    """Rename a database, first ending the sessions that hold it (the receiver's pool)."""
    with psycopg.connect(**pg.admin.conninfo(), autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,))
            try:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))
            except psycopg.errors.ObjectInUse:
                continue
            break
        else:
            raise AssertionError(f"could not rename {old}")
    if old in pg.created:
        pg.created[pg.created.index(old)] = new


def test_broker_down_still_answers_200_and_reconcile_enqueues_once_it_is_back(
    ops_env: Callable[..., Settings], state_url: str, redis_url: str, tmp_path: object
) -> None:
    with RedisServer.reserve() as server:
        settings = ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN, OPS_BROKER_URL=server.url)
        engine = create_state_engine(state_url)
        sender = create_app(settings, name="broker-down")
        app = create_receiver_app(settings, engine=engine, celery_app=sender)
        with http_client(app) as client:
            answer = post(client, notification(firing(), firing(alertname="Other", severity="warning")))
            assert answer.status_code == 200
            assert answer.json()["enqueued"] == 0
        assert all(r["enqueued_at"] is None for r in incident_rows(engine))

        server.start()
        result = reconcile(engine, sender, alertmanager=None, now=datetime.now(UTC), grace=timedelta(0))
        again = reconcile(engine, sender, alertmanager=None, now=datetime.now(UTC), grace=timedelta(0))

        assert (result.enqueued, again.enqueued) == (2, 0)
        messages = queued_messages(server.url)
        assert [m["properties"]["priority"] for m in messages] == [0, 3]
        assert all(r["enqueued_at"] is not None for r in incident_rows(engine))
        engine.dispose()


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"state_database": "ok", "broker": "ok"}
    before = REGISTRY.get_sample_value("ops_alerts_received_total", {"status": "firing", "severity": "critical"}) or 0.0
    post(client, notification(firing()))
    text = client.get("/metrics").text
    assert 'http_requests_total{endpoint="/alertmanager",method="POST",status="200"}' in text
    assert "http_request_duration_seconds_bucket" in text
    after = REGISTRY.get_sample_value("ops_alerts_received_total", {"status": "firing", "severity": "critical"})
    assert after == before + 1


def test_truncated_count_is_counted(client: httpx.Client) -> None:
    before = sample("ops_alerts_truncated_total")
    assert post(client, notification(firing(), truncatedAlerts=4)).status_code == 200
    assert sample("ops_alerts_truncated_total") - before == 4


def test_a_truncated_count_the_fetch_table_cannot_hold_is_a_named_400_and_records_nothing(
    ops_env: Callable[..., Settings], state_url: str, engine: Engine
) -> None:
    settings = ops_env(
        OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN, OPS_ALERTMANAGER_URL="http://127.0.0.1:9"
    )
    app = create_receiver_app(settings, engine=engine, celery_app=create_app(settings, name="fetch"))
    with http_client(app) as client:
        response = post(client, notification(firing(), truncatedAlerts=2**31))
        largest = post(client, notification(firing(alertname="Largest"), truncatedAlerts=2**31 - 1))

    assert response.status_code == 400, response.text
    assert response.json()["field"] == "truncatedAlerts"
    assert largest.status_code == 200, largest.text
    assert [r["alertname"] for r in incident_rows(engine)] == ["Largest"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT truncated_alerts FROM alert_fetches")).scalars().all() == [2**31 - 1]
