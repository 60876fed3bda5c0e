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

# What to start (`task`: a backup, or a verification of the newest one), named by the task that does it
# for the full backup; `kind`, usually the backup rules' kind label, picks the task for that kind.
BACKUP_TASKS = ("backup.full", "backup.verify")
KINDS = ("full", "org")
BACKUP_QUEUE = "backups"
# (task, kind) -> the wire name sent and its arguments.
TASK_FOR_KIND: Mapping[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("backup.full", "full"): ("backup.full", ()),
    ("backup.full", "org"): ("backup.all_orgs", ()),  # fans out: one backup.org per organization
    ("backup.verify", "full"): ("backup.verify", ("latest", "full")),
    ("backup.verify", "org"): ("backup.verify_orgs", ()),  # a sample of organizations' newest backups
}

PARAMS: Mapping[str, Param] = {
    "task": Param(Kind.TEXT, default="backup.full", choices=BACKUP_TASKS),
    "kind": Param(Kind.TEXT, default="full", choices=KINDS, templated=True),
}


def trigger_backup(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Enqueue the backup task for (task, kind) on the backups queue; the result carries its task id.

    Raises:
        ActionError: kind is not full or org, or there is no Celery app to send with.
    """
    task, kind = text(params, "task"), text(params, "kind")
    try:
        name, args = TASK_FOR_KIND[(task, kind)]
    except KeyError:
        raise ActionError(f"kind must be {' or '.join(KINDS)} (got {kind!r})") from None
    if ctx.celery_app is None:
        raise ActionError("no Celery app to enqueue the backup task with")
    detail: dict[str, object] = {"task": name, "args": list(args), "kind": kind, "queue": BACKUP_QUEUE}
    if ctx.dry_run:
        return ActionResult(True, f"would enqueue {name}", detail)
    result = ctx.celery_app.send_task(name, args=list(args), queue=BACKUP_QUEUE)
    return ActionResult(True, f"enqueued {name}", {**detail, "task_id": result.id})


TRIGGER = ActionSpec(trigger_backup, PARAMS, "start a backup or a verification now, of the full or org kind")
