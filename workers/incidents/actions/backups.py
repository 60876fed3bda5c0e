"""Backup action: start a backup or a verification now, by enqueueing its task by wire name."""

from __future__ import annotations

from collections.abc import Mapping

from workers.errors import ActionError
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    text,
)

# Wire names of the backup tasks that may be started from an incident, and their queue.
BACKUP_TASKS = ("backup.full", "backup.verify")
BACKUP_QUEUE = "backups"

PARAMS: Mapping[str, Param] = {
    "task": Param(Kind.TEXT, default="backup.full", choices=BACKUP_TASKS),
}


def trigger_backup(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Enqueue the backup task on the backups queue; the result carries its task id.

    Raises:
        ActionError: no Celery app to send it with.
    """
    if ctx.celery_app is None:
        raise ActionError("no Celery app to enqueue the backup task with")
    task = text(params, "task")
    if ctx.dry_run:
        return ActionResult(True, f"would enqueue {task}", {"task": task, "queue": BACKUP_QUEUE})
    result = ctx.celery_app.send_task(task, queue=BACKUP_QUEUE)
    return ActionResult(True, f"enqueued {task}", {"task": task, "queue": BACKUP_QUEUE, "task_id": result.id})


TRIGGER = ActionSpec(trigger_backup, PARAMS, "start a backup or a verification now")
