"""The beat schedule, as data: entry name -> task wire name + crontab. Times come from ScheduleSettings."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from workers.settings import ScheduleSettings


def cron(expression: str) -> crontab:
    """'m h dom mon dow' -> crontab (UTC, the app's timezone)."""
    minute, hour, day_of_month, month, day_of_week = expression.split()
    return crontab(
        minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week
    )


def build_beat_schedule(schedule: ScheduleSettings) -> dict[str, dict[str, Any]]:
    """Every periodic job. Tasks are named by wire name, so the scheduler never imports task code."""
    return {
        "backup-full-daily": {
            "task": "backup.full",
            "schedule": cron(schedule.backup_full),
            "options": {"queue": "backups"},
        },
        "backup-orgs-daily": {
            # Fans out: one backup.org task per organization.
            "task": "backup.all_orgs",
            "schedule": cron(schedule.backup_orgs),
            "options": {"queue": "backups"},
        },
        "ops-check-hourly": {
            "task": "ops.check",
            "schedule": cron(schedule.ops_check),
            "options": {"queue": "default", "expires": 3000},
        },
        "incidents-reconcile": {
            "task": "incidents.reconcile",
            "schedule": cron(schedule.incidents_reconcile),
            # A run not started within the minute is superseded by the next one.
            "options": {"queue": "incidents", "expires": 50},
        },
        "backup-verify-daily": {
            # Restore-drill the newest full backup (taken at OPS_SCHEDULE_BACKUP_FULL, earlier).
            "task": "backup.verify",
            "schedule": cron(schedule.backup_verify),
            "args": ("latest", "full"),
            "options": {"queue": "backups"},
        },
        "backup-verify-orgs-daily": {
            # The newest backup of OPS_BACKUP_VERIFY_ORG_SAMPLE organizations, least recently verified first.
            "task": "backup.verify_orgs",
            "schedule": cron(schedule.backup_verify_orgs),
            "options": {"queue": "backups"},
        },
        "backup-cleanup-weekly": {
            "task": "backup.cleanup",
            "schedule": cron(schedule.backup_cleanup),
            "options": {"queue": "backups"},
        },
    }
