"""Worker pool action: grow the prefork pools consuming a backlogged queue through Celery remote control."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from workers.errors import ActionError
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    integer,
    text,
)

# How long to collect answers to the broadcast that finds the consumers; without a destination the
# reply wait always lasts this long, and workers on a healthy broker answer within milliseconds.
DISCOVERY_TIMEOUT_S = 1.0
GROW_POLL_S = 0.1

PARAMS: Mapping[str, Param] = {
    "queue": Param(Kind.TEXT, required=True, templated=True),
    "increment": Param(Kind.INT, default=1),
    "max_concurrency": Param(Kind.INT, default=8),
}


def _pool_size(stats: Mapping[str, Any]) -> int:
    # The live process list; the reported max-concurrency is the start-up value and never changes.
    processes = (stats.get("pool") or {}).get("processes")
    return len(processes) if isinstance(processes, list) else 0


def _wait_for_size(control: Any, worker: str, size: int, timeout_s: float) -> int:
    """The worker's pool size once it reaches size (pool_grow forks in the background) or at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = control.inspect(destination=[worker], timeout=min(timeout_s, 5.0)).stats() or {}
        current = _pool_size(stats.get(worker, {}))
        if current >= size or time.monotonic() >= deadline:
            return current
        time.sleep(GROW_POLL_S)


def scale_pool(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Grow every worker consuming `queue` by `increment` processes, never beyond max_concurrency.

    Raises:
        ActionError: no Celery app, or no worker answered.
    """
    if ctx.celery_app is None:
        raise ActionError("no Celery app to send remote-control commands with")
    queue = text(params, "queue")
    control = ctx.celery_app.control
    discovery = control.inspect(timeout=min(ctx.timeout_s, DISCOVERY_TIMEOUT_S))
    queues_by_worker: Mapping[str, list[dict[str, Any]]] = discovery.active_queues() or {}
    consumers = sorted(w for w, queues in queues_by_worker.items() if any(q.get("name") == queue for q in queues))
    if not consumers:
        return ActionResult(False, f"no worker consumes {queue}", {"queue": queue, "workers": []})
    # With a destination the reply wait ends as soon as every named worker answered.
    stats_by_worker: Mapping[str, Mapping[str, Any]] = (
        control.inspect(destination=consumers, timeout=min(ctx.timeout_s, 5.0)).stats() or {}
    )
    limit, step = integer(params, "max_concurrency"), integer(params, "increment")
    changes: list[dict[str, object]] = []
    for worker in consumers:
        before = _pool_size(stats_by_worker.get(worker, {}))
        grow = max(0, min(step, limit - before))
        change: dict[str, object] = {"worker": worker, "before": before, "grow_by": grow}
        if grow and not ctx.dry_run:
            replies = control.pool_grow(grow, destination=[worker], reply=True, timeout=min(ctx.timeout_s, 5.0))
            change["reply"] = replies[0].get(worker) if replies else None
            change["after"] = _wait_for_size(control, worker, before + grow, ctx.timeout_s)
        changes.append(change)
    grown = sum(int(str(c["grow_by"])) for c in changes)
    short = [
        c["worker"]
        for c in changes
        if "after" in c and int(str(c["after"])) < int(str(c["before"])) + int(str(c["grow_by"]))
    ]
    verb = "would grow" if ctx.dry_run else "grew"
    if short:
        return ActionResult(
            False,
            f"pool of {', '.join(map(str, short))} did not grow in time",
            {"queue": queue, "workers": changes},
        )
    return ActionResult(
        True,
        f"{verb} {len(consumers)} worker(s) of {queue} by {grown} process(es)",
        {"queue": queue, "workers": changes},
    )


SCALE = ActionSpec(scale_pool, PARAMS, "grow the Celery pools consuming a queue")
