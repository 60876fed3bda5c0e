"""System-wide tasks (wire names ops.*); area tasks live in their own packages."""

from __future__ import annotations

from celery import shared_task

from workers.checks import run_probes
from workers.settings import get_settings


@shared_task(name="ops.check")
def check_task() -> list[dict[str, object]]:
    """Probe every service from the worker's side of the network; return one result per service."""
    return [result.to_json() for result in run_probes(get_settings())]
