"""Send incidents.handle tasks: one per episode transition, by wire name, critical ahead of warning."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from celery import Celery
from kombu.exceptions import KombuError

from workers.errors import BrokerUnavailable
from workers.incidents.alerts import Severity
from workers.incidents.records import Transition
from workers.logs import log_context

log = logging.getLogger(__name__)

HANDLE_TASK = "incidents.handle"
INCIDENTS_QUEUE = "incidents"
# The Redis transport keeps one list per priority step and, with queue_order_strategy=priority,
# workers drain step 0 before step 1 and so on: a lower number runs first. Verified against the
# real broker by tests/incidents/test_dispatch.py.
PRIORITY: dict[Severity, int] = {Severity.CRITICAL: 0, Severity.WARNING: 3, Severity.INFO: 6}


def enqueue_transitions(app: Celery, transitions: Sequence[Transition]) -> list[Transition]:
    """Send one incidents.handle task per transition in one Redis pipeline; return the ones sent.

    The task carries only the incident id. Sending is at least once: a task may be sent again by
    reconcile if the process dies before enqueued_at is stamped, so the handler must be idempotent.

    Raises:
        BrokerUnavailable: the broker did not take the batch; nothing is marked as sent.
    """
    if not transitions:
        return []
    ordered = sorted(transitions, key=lambda t: (PRIORITY[t.severity], t.incident_id))
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            for transition in ordered:
                # Bound here so hooks.py copies them into the message headers and the task's log lines.
                # A transition read back by reconcile carries the request id its row was recorded with;
                # one the receiver just recorded has none and keeps the request's own, bound around it.
                fields: dict[str, object] = {"incident_id": transition.incident_id,
                                             "fingerprint": transition.fingerprint}  # fmt: skip
                if transition.request_id is not None:
                    fields["request_id"] = transition.request_id
                with log_context(**fields):
                    app.send_task(
                        HANDLE_TASK,
                        args=[transition.incident_id],
                        queue=INCIDENTS_QUEUE,
                        priority=PRIORITY[transition.severity],
                        ignore_result=True,
                        producer=producer,
                        # Fail fast when the broker is down: the receiver must answer Alertmanager, and
                        # reconcile resends. (retry=True with max_retries=0 fails as fast, at more CPU.)
                        retry=False,
                    )
    except (KombuError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"broker did not take {len(ordered)} incidents.handle task(s): {exc}") from exc
    log.debug("incident tasks sent", extra={"tasks": len(ordered)})
    return ordered
