"""An invalid edit of the playbooks file never leaves a recorded alert unhandled."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from tests.incidents.conftest import RecordingServer, insert_incident
from workers.incidents.audit import AuditTrail
from workers.incidents.operations import handle_incident
from workers.settings import Settings

VALID = """
commands:
  mark: ["/bin/sh", "-c", "echo run >> {marks}"]
playbooks:
  - name: mark
    match: {{alertname: Mark}}
    target: "{{labels.instance}}"
    cooldown: 0s
    steps:
      - action: command.run
        params: {{command: mark}}
"""


def _valid_gauge() -> float | None:
    return REGISTRY.get_sample_value("ops_playbooks_valid")


def _break(path: Path) -> None:
    stat = path.stat()
    path.write_text(path.read_text().replace("action: command.run", "action: command.runn"))
    # A new mtime even where the clock is coarse: the loader re-reads on a changed mtime.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_an_invalid_edit_keeps_the_last_valid_playbooks_logged_and_counted(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marks = tmp_path / "marks.txt"
    path = playbook_file(VALID.format(marks=marks))
    settings = ops_env(OPS_PLAYBOOKS=str(path))
    before = insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="before")
    assert handle_incident(settings, before)["status"] == "completed"
    assert _valid_gauge() == 1

    _break(path)
    after = [insert_incident(state_db, "Mark", labels={"instance": f"db-{i}"}, fingerprint=f"a{i}") for i in (2, 3)]
    with caplog.at_level(logging.ERROR, logger="workers.incidents.playbook_source"):
        statuses = [handle_incident(settings, i)["status"] for i in after]

    assert statuses == ["completed", "completed"]
    assert len(marks.read_text().splitlines()) == 3
    assert _valid_gauge() == 0
    [logged] = [r for r in caplog.records if r.name == "workers.incidents.playbook_source"]  # once, not per alert
    assert logged.getMessage() == "playbooks file invalid, keeping its last valid version"
    assert any("unknown action 'command.runn'" in p for p in logged.problems)  # type: ignore[attr-defined]


def test_with_no_valid_playbooks_an_alert_is_routed_and_notified_without_remediation(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    tickets = recording_server()
    marks = tmp_path / "marks.txt"
    path = playbook_file(VALID.format(marks=marks))
    _break(path)  # e.g. the worker restarted after the bad edit: this process never read a valid version
    settings = ops_env(OPS_PLAYBOOKS=str(path), OPS_TICKET_WEBHOOK_URL=f"{tickets.url}/tickets")
    incident_id = insert_incident(state_db, "Mark", severity="warning", labels={"instance": "db-1"})

    report = handle_incident(settings, incident_id)
    again = handle_incident(settings, incident_id)  # a redelivery records and sends nothing twice

    assert report["status"] == again["status"] == "skipped_invalid_playbooks"
    assert not marks.exists()
    [ticket] = tickets.wait_for(1)
    assert ticket.body["kind"] == "trigger" and ticket.body["incident_id"] == incident_id
    rows = AuditTrail(state_db).records(incident_id)
    assert [(r.action, r.outcome) for r in rows] == [
        ("remediation", "skipped_invalid_playbooks"),
        ("notify.ticket", "ok"),
    ]
    assert rows[0].error is not None and "nothing remediated" in rows[0].error
    assert any(f"{path}: playbook 'mark': steps[0].action" in p for p in rows[0].detail["problems"])  # type: ignore[index, union-attr]
    assert _valid_gauge() == 0
