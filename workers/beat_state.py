"""Whether a beat is alive, read from RedBeat's keys on the broker: its lock and its schedule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis

from workers.errors import BrokerUnavailable


@dataclass(frozen=True, slots=True)
class BeatState:
    lock_held: bool  # a beat holds RedBeat's lock (it renews it; the key expires when the beat dies)
    lag_s: float | None  # how far the most overdue entry is past its due time; None: no schedule stored


def read_beat_state(client: redis.Redis, key_prefix: str, now: datetime) -> BeatState:
    """RedBeat's lock and schedule (`PREFIX:lock`, the sorted set `PREFIX:schedule` scored by due time).

    Raises:
        BrokerUnavailable: Redis could not be reached.
    """
    try:
        lock_held = bool(client.exists(f"{key_prefix}:lock"))
        first = client.zrange(f"{key_prefix}:schedule", 0, 0, withscores=True)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot read the beat state from the broker: {exc}") from exc
    if not first:
        return BeatState(lock_held, None)
    due_at = float(first[0][1])
    return BeatState(lock_held, max(0.0, now.timestamp() - due_at))
