"""Safety rails kept in Redis, shared by every worker: pause, cooldown, hourly budget, per-target lock."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from workers.errors import BrokerUnavailable

PREFIX = "ops:remediation"
BUDGET_WINDOW_S = 3600
_LOCK_POLL_S = 0.2

# Trim the hour's window, admit a holder already counted (a resumed run), refuse beyond the limit.
_CLAIM_BUDGET = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass(frozen=True, slots=True)
class LockAttempt:
    """The outcome of asking for a target's lock."""

    acquired: bool
    holder: str  # who holds the lock: the caller when acquired, else the holder that kept it


def _holder_of(token: str) -> str:
    return token.rsplit(":", 1)[0]


def _digest(value: str) -> str:
    # Targets come from alert labels: hash them so no label value shapes a Redis key.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class Rails:
    """The shared state behind pause, cooldown, hourly budget and per-target locks."""

    def __init__(self, client: redis.Redis, lock_ttl_s: float) -> None:
        self.client = client
        self.lock_ttl_ms = int(lock_ttl_s * 1000)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    # --- global pause ---
    def pause(self, by: str, reason: str) -> None:
        doc = {"by": by, "reason": reason, "since": datetime.now(UTC).isoformat()}
        self._call("set", f"{PREFIX}:paused", json.dumps(doc))

    def resume(self) -> bool:
        """Lift the pause; False when remediation was not paused."""
        return bool(self._call("delete", f"{PREFIX}:paused"))

    def paused(self) -> dict[str, str] | None:
        """Who paused remediation, when and why; None while it runs."""
        raw = self._call("get", f"{PREFIX}:paused")
        return None if raw is None else dict(json.loads(raw))

    # --- cooldown per (playbook, target) ---
    def claim_cooldown(self, playbook: str, target: str, holder: str, cooldown_s: float) -> bool:
        """Start the cooldown for holder; False while another holder's cooldown runs."""
        if cooldown_s <= 0:
            return True
        key = f"{PREFIX}:cooldown:{playbook}:{_digest(target)}"
        if self._call("set", key, holder, nx=True, px=int(cooldown_s * 1000)):
            return True
        current = self._call("get", key)
        return current is not None and current.decode() == holder

    def release_cooldown(self, playbook: str, target: str, holder: str) -> None:
        self._call("eval", _RELEASE, 1, f"{PREFIX}:cooldown:{playbook}:{_digest(target)}", holder, "0")

    def cooldown_left_s(self, playbook: str, target: str) -> float:
        left_ms = self._call("pttl", f"{PREFIX}:cooldown:{playbook}:{_digest(target)}")
        return max(0.0, left_ms / 1000) if left_ms and left_ms > 0 else 0.0

    # --- runs per playbook per hour ---
    def claim_budget(self, playbook: str, holder: str, limit: int) -> bool:
        """Count holder's run against the playbook's hourly budget; False when the budget is spent."""
        now = time.time()
        key = f"{PREFIX}:budget:{playbook}"
        return bool(self._call("eval", _CLAIM_BUDGET, 1, key, repr(now), BUDGET_WINDOW_S, limit, holder))

    # --- one incident acting on a target at a time ---
    @contextmanager
    def target_lock(self, target: str, holder: str, wait_s: float = 0.0) -> Iterator[LockAttempt]:
        """Hold the target's lock while the block runs, renewed meanwhile; yield whether it was acquired.

        A lock held by an earlier attempt of the same holder (its worker died) is waited for, once,
        for one lock TTL: nobody renews it any more, so it expires by then. A live attempt keeps
        renewing it, and the wait ends unacquired instead of lasting as long as that attempt.
        """
        key = f"{PREFIX}:lock:{_digest(target)}"
        token = f"{holder}:{uuid.uuid4().hex}"
        deadline = time.monotonic() + wait_s
        waited_for_own = False
        while not self._call("set", key, token, nx=True, px=self.lock_ttl_ms):
            current = self._call("get", key)
            if current is None:
                continue  # released or expired since the SET: try again at once
            held_by = _holder_of(current.decode())
            if held_by == holder and not waited_for_own:
                waited_for_own = True
                deadline = max(deadline, time.monotonic() + self.lock_ttl_ms / 1000 + 1)
            if time.monotonic() >= deadline:
                yield LockAttempt(False, held_by)
                return
            time.sleep(_LOCK_POLL_S)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_ttl_ms / 3000):
                try:
                    self.client.eval(_RENEW, 1, key, token, self.lock_ttl_ms)
                except redis.RedisError:
                    continue  # the next round tries again; the TTL covers two missed renewals

        renewer = threading.Thread(target=renew, name="target-lock-renewal", daemon=True)
        renewer.start()
        try:
            yield LockAttempt(True, holder)
        finally:
            stop.set()
            renewer.join()
            self._call("eval", _RELEASE, 1, key, token)
