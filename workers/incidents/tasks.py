"""Incident tasks (queue incidents): thin over operations; the receiver sends incidents.handle by name."""

from __future__ import annotations

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from workers.errors import ServiceUnavailable
from workers.incidents.operations import handle_incident
from workers.incidents.reconcile import run_reconcile
from workers.settings import get_settings


# No retries: beat runs it again every minute, and what it did not finish stays pending in the database.
@shared_task(name="incidents.reconcile", bind=True)
def reconcile_task(self: Task) -> dict[str, int]:
    """Fetch truncated alert groups; enqueue every recorded episode that has no incidents.handle task yet."""
    return run_reconcile(get_settings(), self.app).to_json()


# ignore_result: nobody waits on it; the audit trail is the record, and storing the state twice per
# task (started, succeeded) in Redis is CPU the incident queue needs under load.
@shared_task(
    name="incidents.handle",
    bind=True,
    ignore_result=True,
    autoretry_for=(ServiceUnavailable, OperationalError),
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=10,
)
def handle_incident_task(self: Task, incident_id: int) -> dict[str, object]:
    """Run the playbook of a firing episode once, or close a resolved one; takes an id, never a payload."""
    return handle_incident(get_settings(), int(incident_id), celery_app=self.app)
