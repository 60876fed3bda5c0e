"""backup.trigger, diagnostics.capture and diagnostics.dependencies with their real effects."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine

from workers.backup.storage import LocalStore
from workers.errors import ActionError
from workers.incidents.actions.backups import trigger_backup
from workers.incidents.actions.base import ActionContext
from workers.incidents.actions.diagnostics import capture_diagnostics, check_dependencies
from workers.incidents.archive import StoreArchive
from workers.incidents.audit import AuditTrail
from workers.incidents.operations import handle_incident
from workers.settings import Settings

from .conftest import insert_incident, queued_messages


def _context(settings: Settings, tmp_path: Path, app: Celery | None = None, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(settings, dry_run, 10.0, {}, StoreArchive(LocalStore(tmp_path)), celery_app=app)


def test_backup_trigger_enqueues_the_task_by_wire_name(
    settings: Settings, worker_app: Celery, redis_url: str, tmp_path: Path
) -> None:
    verify = {"task": "backup.verify", "kind": "full"}
    dry = trigger_backup(verify, _context(settings, tmp_path, worker_app, dry_run=True))
    assert queued_messages(redis_url, "backups") == [] and dry.summary == "would enqueue backup.verify"

    result = trigger_backup({"task": "backup.full", "kind": "full"}, _context(settings, tmp_path, worker_app))

    [message] = queued_messages(redis_url, "backups")
    assert message["headers"]["task"] == "backup.full"  # type: ignore[index]
    assert message["headers"]["id"] == result.detail["task_id"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("task", "kind", "sent", "args"),
    [
        ("backup.full", "full", "backup.full", []),
        ("backup.full", "org", "backup.all_orgs", []),
        ("backup.verify", "full", "backup.verify", ["latest", "full"]),
        ("backup.verify", "org", "backup.verify_orgs", []),
    ],
)
def test_backup_trigger_starts_the_task_of_the_kind(
    settings: Settings, worker_app: Celery, redis_url: str, tmp_path: Path, task: str, kind: str, sent: str,
    args: list[str],
) -> None:  # fmt: skip
    result = trigger_backup({"task": task, "kind": kind}, _context(settings, tmp_path, worker_app))

    [message] = queued_messages(redis_url, "backups")
    assert message["headers"]["task"] == sent  # type: ignore[index]
    assert json.loads(base64.b64decode(message["body"]))[0] == args  # type: ignore[arg-type]
    assert result.detail["kind"] == kind and result.summary == f"enqueued {sent}"


def test_backup_trigger_refuses_an_unknown_kind(settings: Settings, worker_app: Celery, tmp_path: Path) -> None:
    with pytest.raises(ActionError, match="kind must be full or org"):
        trigger_backup({"task": "backup.verify", "kind": "everything"}, _context(settings, tmp_path, worker_app))


@pytest.mark.parametrize(
    ("alertname", "kind", "outcome", "sent"),
    [
        ("BackupVerificationFailing", "org", "ok", "backup.verify_orgs"),
        ("BackupVerificationFailing", "full", "ok", "backup.verify"),
        ("BackupTooOld", "org", "ok", "backup.all_orgs"),
        ("BackupTooOld", "full", "ok", "backup.full"),
        ("BackupTooOld", "../etc", "failed", None),
    ],
)
def test_shipped_backup_playbooks_start_the_task_of_the_alerts_kind(
    settings: Settings, worker_app: Celery, redis_url: str, state_db: Engine,
    alertname: str, kind: str, outcome: str, sent: str | None,
) -> None:  # fmt: skip
    incident_id = insert_incident(state_db, alertname, severity="critical", labels={"kind": kind})

    handle_incident(settings, incident_id, celery_app=worker_app)

    [step] = [r for r in AuditTrail(state_db).records(incident_id) if r.action == "backup.trigger"]
    assert step.outcome == outcome
    assert [m["headers"]["task"] for m in queued_messages(redis_url, "backups")] == ([sent] if sent else [])  # type: ignore[index]
    if sent is None:
        assert step.error == "parameter params.kind: must be one of full, org (got '../etc')"


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
