"""Exact queue depths read from the Redis broker: ready (every priority list), unacked and scheduled.

kombu's Redis transport keeps one list per priority step (`incidents`, `incidents\x06\x161` ...
`incidents\x06\x169`, kombu's default separator), and messages a worker has reserved in the `unacked`
hash until they are acked.
A plain `LLEN incidents` (what most exporters do) sees only priority 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis

from workers.errors import BrokerUnavailable

# kombu.transport.redis defaults; our app does not override them.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
HSCAN_BATCH = 500


@dataclass(frozen=True, slots=True)
class QueueDepth:
    queue: str
    ready: int  # waiting in the queue's lists, every priority (includes ETA tasks no worker fetched yet)
    unacked: int  # reserved by a worker and due now: running, or prefetched and about to run
    scheduled: int  # reserved by a worker and held until its ETA/countdown


def priority_lists(queue: str, steps: Sequence[int], sep: str) -> list[str]:
    """The Redis list names kombu uses for one queue: step 0 is the bare name. Pure."""
    return [f"{queue}{sep}{step}" if step else queue for step in sorted(set(steps))]


def classify_unacked(raw: bytes | str, now: datetime) -> tuple[str, bool] | None:
    """(queue, is_scheduled) of one `unacked` hash value, or None when it is not a kombu message. Pure.

    The value is JSON `[message, exchange, routing_key]`; our queues are direct with
    routing_key == queue name. A task whose `eta` header lies in the future is scheduled.
    """
    try:
        message, _exchange, routing_key = json.loads(raw)
        headers = message.get("headers") or {}
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(routing_key, str):
        return None
    eta = headers.get("eta") if isinstance(headers, dict) else None
    return routing_key, _is_future(eta, now)


def _is_future(eta: object, now: datetime) -> bool:
    if not isinstance(eta, str):
        return False
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    return when > now


def count_unacked(
    values: Iterable[bytes | str], queues: Sequence[str], now: datetime
) -> dict[str, tuple[int, int]]:
    """queue -> (unacked, scheduled) over `unacked` hash values; other queues are ignored. Pure."""
    counts = {queue: [0, 0] for queue in queues}
    for raw in values:
        classified = classify_unacked(raw, now)
        if classified is None or classified[0] not in counts:
            continue
        queue, is_scheduled = classified
        counts[queue][1 if is_scheduled else 0] += 1
    return {queue: (pair[0], pair[1]) for queue, pair in counts.items()}


def read_queue_depths(
    client: redis.Redis, queues: Sequence[str], steps: Sequence[int], sep: str, now: datetime
) -> list[QueueDepth]:
    """Depth of every queue, read from the broker in one pipeline plus a scan of the unacked hash.

    Raises:
        BrokerUnavailable: Redis could not be reached.
    """
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for name in priority_lists(queue, steps, sep):
                pipe.llen(name)
        lengths = iter(pipe.execute())
        ready = {queue: sum(next(lengths) for _ in priority_lists(queue, steps, sep)) for queue in queues}
        reserved = count_unacked(
            (value for _tag, value in client.hscan_iter(UNACKED_KEY, count=HSCAN_BATCH)), queues, now
        )
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot read queue depths from the broker: {exc}") from exc
    return [QueueDepth(queue, ready[queue], *reserved[queue]) for queue in queues]
