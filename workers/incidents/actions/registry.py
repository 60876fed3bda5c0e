"""Every remediation action by the name playbooks use; an explicit literal, filled by nobody at import."""

from __future__ import annotations

from collections.abc import Mapping

from workers.incidents.actions import backups, command, diagnostics, files, http, logs, pool, postgres, tickets
from workers.incidents.actions.base import ActionSpec

ACTIONS: Mapping[str, ActionSpec] = {
    "postgres.terminate_queries": postgres.TERMINATE,
    "postgres.cancel_queries": postgres.CANCEL,
    "files.cleanup": files.CLEANUP,
    "logs.archive": logs.ARCHIVE,
    "logs.rotate": logs.ROTATE,
    "http.check": http.CHECK,
    "http.request": http.REQUEST,
    "celery.scale": pool.SCALE,
    "backup.trigger": backups.TRIGGER,
    "diagnostics.capture": diagnostics.CAPTURE,
    "diagnostics.dependencies": diagnostics.DEPENDENCIES,
    "command.run": command.RUN,
    "ticket.open": tickets.OPEN,
}
