"""Task priority on the real Redis broker: a critical incident overtakes a backlog of warnings."""

from __future__ import annotations

from celery import Celery

from workers.incidents.alerts import AlertStatus, Severity
from workers.incidents.dispatch import HANDLE_TASK, INCIDENTS_QUEUE, PRIORITY, enqueue_transitions
from workers.incidents.records import Transition


def drain(app: Celery, count: int) -> list[int]:
    """Take `count` messages off the incidents queue the way a worker does, and return their incident ids."""
    ids: list[int] = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(INCIDENTS_QUEUE)
        try:
            for _ in range(count):
                message = queue.get(timeout=10)
                assert message.headers["task"] == HANDLE_TASK
                ids.append(message.decode()[0][0])
                message.ack()
        finally:
            queue.close()
    return ids


def transition(incident_id: int, severity: Severity) -> Transition:
    return Transition(incident_id, f"{incident_id:016x}", severity, AlertStatus.FIRING)


def test_lower_priority_number_drains_first_on_redis(worker_app: Celery) -> None:
    # The assumption PRIORITY is built on, checked against the broker itself.
    for priority, incident_id in ((9, 1), (5, 2), (0, 3)):
        worker_app.send_task(HANDLE_TASK, args=[incident_id], queue=INCIDENTS_QUEUE, priority=priority)
    assert drain(worker_app, 3) == [3, 2, 1]


def test_critical_overtakes_a_backlog_of_warnings(worker_app: Celery) -> None:
    assert PRIORITY[Severity.CRITICAL] < PRIORITY[Severity.WARNING] < PRIORITY[Severity.INFO]
    backlog = [transition(i, Severity.WARNING) for i in range(1, 51)]
    enqueue_transitions(worker_app, backlog)
    enqueue_transitions(worker_app, [transition(900, Severity.INFO)])
    enqueue_transitions(worker_app, [transition(1000, Severity.CRITICAL)])

    taken = drain(worker_app, 52)

    assert taken[0] == 1000
    assert taken[1:51] == list(range(1, 51))  # warnings keep their order among themselves
    assert taken[51] == 900
