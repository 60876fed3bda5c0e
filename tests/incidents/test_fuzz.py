"""Property-based fuzzing of POST /alertmanager over real HTTP: whatever the body, never a 500.

Each test runs twice: without OPS_ALERTMANAGER_URL, and with it, so that a truncated notification
is also recorded for reconcile to fetch (the alert_fetches row and its column limits).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from workers.incidents.receiver import create_receiver_app
from workers.settings import Settings

from .conftest import AUTH, TOKEN, http_client

HEADERS = {**AUTH, "Content-Type": "application/json"}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that includes what databases and encoders choke on: NUL, lone surrogates, CJK, CRLF, RTL marks.
nasty_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["", "\x00", "\ud800", "警告", "a\r\nb", "\u202e", "0001-01-01T00:00:00Z", "firing", "resolved", "x" * 300]
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | nasty_text
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
timestamps = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()) | st.sampled_from(
    ["2026-12-03T10:00:00.123456789Z", "0001-01-01T00:00:00Z", "2026-12-03T10:00:00+14:00",
     "9999-12-31T23:59:59-12:00", "2026-02-30T00:00:00Z"]
)  # fmt: skip
# Small counts, counts around the 32-bit column a fetch is recorded in, and any whole number at all.
truncated_counts = st.integers(0, 10) | st.integers(2**31 - 3, 2**31 + 3) | st.integers(min_value=0)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything at all."""
    return st.one_of(valid, valid, json_values)


alert_like = st.fixed_dictionaries(
    {
        "labels": field(st.dictionaries(nasty_text, nasty_text, min_size=1, max_size=4)),
        "startsAt": field(timestamps),
    },
    optional={
        "status": field(st.sampled_from(["firing", "resolved"])),
        "annotations": field(st.dictionaries(nasty_text, nasty_text, max_size=3)),
        "endsAt": field(timestamps),
        "fingerprint": field(st.text(alphabet="0123456789abcdef", max_size=16)),
        "generatorURL": field(nasty_text),
    },
)
notification_like = st.fixed_dictionaries(
    {"alerts": field(st.lists(alert_like, max_size=5))},
    optional={
        "version": field(st.sampled_from(["1", "3", "4"])),
        "status": json_values,
        "receiver": field(nasty_text),
        "groupKey": json_values,
        "groupLabels": field(st.dictionaries(nasty_text, nasty_text, max_size=3)),
        "truncatedAlerts": field(truncated_counts),
    },
)

# A notification whose alerts are well formed, so the body gets as far as the truncation bookkeeping.
truncated_like = st.fixed_dictionaries(
    {
        "alerts": st.lists(
            st.fixed_dictionaries({"labels": st.dictionaries(nasty_text, nasty_text, min_size=1, max_size=3),
                                   "startsAt": st.sampled_from(["2026-12-03T10:00:00Z", "2026-12-03T10:05:00Z"])}),
            max_size=2,
        ),
        "truncatedAlerts": truncated_counts,
    },
    optional={"receiver": nasty_text, "groupLabels": st.dictionaries(nasty_text, nasty_text, max_size=3)},
)  # fmt: skip


@pytest.fixture(params=["without-fetch", "with-fetch"])
def client(
    request: pytest.FixtureRequest, ops_env: Callable[..., Settings], state_url: str, engine: Engine, sender: Celery
) -> Iterator[httpx.Client]:
    """The receiver, with or without OPS_ALERTMANAGER_URL (never contacted here: only reconcile reads it)."""
    fetch = {"OPS_ALERTMANAGER_URL": "http://127.0.0.1:9"} if request.param == "with-fetch" else {}
    receiver_settings = ops_env(
        OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN, OPS_RECEIVER_MAX_BODY="65536", **fetch
    )
    assert (receiver_settings.receiver.alertmanager_url is not None) is bool(fetch)
    with http_client(create_receiver_app(receiver_settings, engine=engine, celery_app=sender)) as test_client:
        yield test_client


def post(client: httpx.Client, content: bytes) -> httpx.Response:
    return client.post("/alertmanager", content=content, headers=HEADERS)


@FUZZ
@given(doc=notification_like)
def test_notification_shaped_bodies_get_200_or_a_named_400(client: httpx.Client, doc: dict[str, Any]) -> None:
    response = post(client, json.dumps(doc).encode())
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["field"]
    else:
        assert response.json()["alerts"] == len(doc["alerts"])


@FUZZ
@given(doc=truncated_like)
def test_truncated_notifications_get_200_or_a_named_400(client: httpx.Client, doc: dict[str, Any]) -> None:
    response = post(client, json.dumps(doc).encode())
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["field"]
    else:
        assert response.json()["truncated"] == doc["truncatedAlerts"]


@FUZZ
@given(doc=json_values)
def test_any_json_value_is_never_a_server_error(client: httpx.Client, doc: object) -> None:
    response = post(client, json.dumps(doc).encode())
    assert response.status_code in (200, 400), response.text


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_never_a_server_error(client: httpx.Client, raw: bytes) -> None:
    assert post(client, raw).status_code in (200, 400)


def test_deeply_nested_json_is_a_400_not_a_crash(client: httpx.Client) -> None:
    response = post(client, b"[" * 30_000 + b"]" * 30_000)
    assert response.status_code == 400
    assert response.json()["field"] == "body"
