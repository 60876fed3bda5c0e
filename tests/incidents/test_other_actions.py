"""backup.trigger, diagnostics.capture and diagnostics.dependencies with their real effects."""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from workers.backup.storage import LocalStore
from workers.incidents.actions.backups import trigger_backup
from workers.incidents.actions.base import ActionContext
from workers.incidents.actions.diagnostics import capture_diagnostics, check_dependencies
from workers.incidents.archive import StoreArchive
from workers.settings import Settings

from .conftest import queued_messages


def _context(settings: Settings, tmp_path: Path, app: Celery | None = None, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(settings, dry_run, 10.0, {}, StoreArchive(LocalStore(tmp_path)), celery_app=app)


def test_backup_trigger_enqueues_the_task_by_wire_name(
    settings: Settings, worker_app: Celery, redis_url: str, tmp_path: Path
) -> None:
    dry = trigger_backup({"task": "backup.verify"}, _context(settings, tmp_path, worker_app, dry_run=True))
    assert queued_messages(redis_url, "backups") == [] and dry.summary == "would enqueue backup.verify"

    result = trigger_backup({"task": "backup.full"}, _context(settings, tmp_path, worker_app))

    [message] = queued_messages(redis_url, "backups")
    assert message["headers"]["task"] == "backup.full"  # type: ignore[index]
    assert message["headers"]["id"] == result.detail["task_id"]  # type: ignore[index]


def test_diagnostics_capture_lists_top_processes_as_evidence(settings: Settings, tmp_path: Path) -> None:
    result = capture_diagnostics({"top": 5, "process_name": "no-such-process-xyz"}, _context(settings, tmp_path))

    by_rss = result.detail["by_rss"]
    assert result.ok and 0 < len(by_rss) <= 5  # type: ignore[arg-type]
    sizes = [p["rss_bytes"] for p in by_rss]  # type: ignore[attr-defined, union-attr]
    assert sizes == sorted(sizes, reverse=True)
    assert all({"pid", "name", "cpu_percent"} <= set(p) for p in result.detail["by_cpu"])  # type: ignore[attr-defined, union-attr]
    assert result.detail["py_spy"]["dump"] is None  # type: ignore[index]


def test_dependencies_report_each_probe(settings: Settings, tmp_path: Path) -> None:
    result = check_dependencies({}, _context(settings, tmp_path))

    probes = {p["service"]: p["ok"] for p in result.detail["probes"]}  # type: ignore[attr-defined, union-attr]
    assert probes["broker"] is True and probes["state database"] is True
    assert result.ok is all(probes.values())
