"""Exact queue depths: every priority list, the unacked hash, ETA tasks held by a worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from workers.app import PRIORITY_SEP, PRIORITY_STEPS, QUEUES
from workers.errors import BrokerUnavailable
from workers.queues import classify_unacked, count_unacked, priority_lists, read_queue_depths

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def unacked_value(routing_key: str, eta: str | None) -> str:
    headers: dict[str, object] = {"task": "ops.check", "id": "x"}
    if eta is not None:
        headers["eta"] = eta
    return json.dumps([{"headers": headers, "body": "e30="}, "", routing_key])


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([0], ["incidents"]),
        ([0, 3, 6, 9], ["incidents", "incidents:3", "incidents:6", "incidents:9"]),
        (list(range(10)), ["incidents"] + [f"incidents:{n}" for n in range(1, 10)]),
    ],
)
def test_priority_lists_name_step_zero_bare(steps: list[int], expected: list[str]) -> None:
    assert priority_lists("incidents", steps, ":") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (unacked_value("incidents", None), ("incidents", False)),
        (unacked_value("backups", (NOW + timedelta(minutes=5)).isoformat()), ("backups", True)),
        (unacked_value("backups", (NOW - timedelta(seconds=1)).isoformat()), ("backups", False)),
        (unacked_value("default", "2026-01-05T12:10:00"), ("default", True)),  # naive: read as UTC
        (unacked_value("default", "not a date"), ("default", False)),
        ("not json", None),
        (json.dumps({"a": 1}), None),
        (json.dumps([{"headers": {}}, "", 7]), None),
    ],
)
def test_classify_unacked(raw: str, expected: tuple[str, bool] | None) -> None:
    assert classify_unacked(raw, NOW) == expected


def test_count_unacked_splits_due_from_scheduled_and_ignores_other_queues() -> None:
    later = (NOW + timedelta(hours=1)).isoformat()
    values = [
        unacked_value("incidents", None),
        unacked_value("incidents", later),
        unacked_value("incidents", later),
        unacked_value("celeryev", None),
        "garbage",
    ]
    assert count_unacked(values, ["incidents", "backups"], NOW) == {"incidents": (1, 2), "backups": (0, 0)}


def test_ready_counts_every_priority_list_where_llen_of_the_queue_undercounts(
    worker_app: Celery, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    for priority in range(10):
        for _ in range(priority + 1):
            worker_app.send_task("ops.check", queue="incidents", priority=priority)

    keys = sorted(k.decode() for k in client.keys("incidents*"))
    depths = {d.queue: d for d in read_queue_depths(client, QUEUES, PRIORITY_STEPS, PRIORITY_SEP, NOW)}

    # The key names kombu really used are the ones we read.
    assert set(keys) <= set(priority_lists("incidents", PRIORITY_STEPS, PRIORITY_SEP))
    assert len(keys) > 1
    assert depths["incidents"].ready == 55
    assert client.llen("incidents") < 55
    assert depths["backups"].ready == 0


def test_reserved_running_and_eta_tasks_count_as_unacked_and_scheduled(
    worker_app: Celery, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)

    @worker_app.task(name="tests.block")
    def block(key: str) -> None:
        client.rpush("tests:started", "1")
        client.blpop([key], timeout=60)

    with start_worker(worker_app, pool="solo", perform_ping_check=False, queues=["incidents"]):
        later = worker_app.send_task("ops.check", queue="incidents", countdown=600)
        running = block.apply_async(("tests:release",), queue="incidents")
        assert client.blpop(["tests:started"], timeout=30) is not None, "the blocking task never started"
        depths = {d.queue: d for d in read_queue_depths(client, QUEUES, PRIORITY_STEPS, PRIORITY_SEP,
                                                          datetime.now(UTC))}  # fmt: skip
        client.rpush("tests:release", "go")
        running.get(timeout=30)
        later.revoke()

    incidents = depths["incidents"]
    assert (incidents.ready, incidents.unacked, incidents.scheduled) == (0, 1, 1)


def test_broker_down_is_a_broker_unavailable_error() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(BrokerUnavailable, match="cannot read queue depths"):
        read_queue_depths(client, QUEUES, PRIORITY_STEPS, PRIORITY_SEP, NOW)
