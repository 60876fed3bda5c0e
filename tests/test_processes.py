"""How processes are launched: worker pool sizes, node names; the supervisor behind `ops-workers run`."""

from __future__ import annotations

import socket

import pytest

from workers.errors import UsageError
from workers.processes import node_name, worker_concurrency


@pytest.mark.parametrize(
    ("queues", "requested", "expected"),
    [
        (["backups"], None, 1),
        (["backups", "default"], None, 1),
        (["backups"], 1, 1),
        (["incidents", "default"], None, 2),
        (["incidents"], 4, 4),
        (["default"], 1, 1),
    ],
)
def test_worker_concurrency_is_one_with_the_backups_queue(
    queues: list[str], requested: int | None, expected: int
) -> None:
    assert worker_concurrency(queues, requested) == expected


def test_more_than_one_process_with_the_backups_queue_is_refused_saying_why() -> None:
    with pytest.raises(UsageError, match="one pg_dump at a time"):
        worker_concurrency(["default", "backups"], 2)


def test_node_name_expands_the_host_as_celery_does() -> None:
    host = socket.gethostname()

    assert node_name("backups@%h") == f"backups@{host}"
    assert node_name("backups-2@fixed") == "backups-2@fixed"
    assert node_name("just-a-host") == "celery@just-a-host"  # celery reads a bare value as the host
