"""Incident tasks. incidents.reconcile lives here; incidents.handle is sent by wire name (see dispatch.py)."""

from __future__ import annotations

from celery import Task, shared_task

from workers.incidents.reconcile import run_reconcile
from workers.settings import get_settings


# No retries: beat runs it again every minute, and what it did not finish stays pending in the database.
@shared_task(name="incidents.reconcile", bind=True)
def reconcile_task(self: Task) -> dict[str, int]:
    """Fetch truncated alert groups; enqueue every recorded episode that has no incidents.handle task yet."""
    return run_reconcile(get_settings(), self.app).to_json()
