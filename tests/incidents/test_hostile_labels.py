"""Hostile label values (shell metacharacters, SQL, path traversal) change nothing they should not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from tests.incidents.conftest import RecordingServer, insert_incident
from workers.incidents.audit import AuditTrail
from workers.incidents.operations import handle_incident
from workers.settings import Settings

PLAYBOOKS = """
vars:
  root: "{root}"
  api: "{api}"
commands:
  greet: ["/bin/echo", "hello", "{{labels.service}}"]
playbooks:
  - name: hostile
    match: {{alertname: Hostile}}
    target: "{{labels.instance}}"
    steps:
      - action: files.cleanup
        params: {{path: "{{vars.root}}/{{labels.dir}}", older_than: 0s}}
        on_failure: continue
      - action: command.run
        params: {{command: greet}}
        on_failure: continue
      - action: http.request
        params: {{url: "{{vars.api}}/items/{{labels.item}}", method: POST}}
        on_failure: continue
"""

HOSTILE = {
    "instance": "db-1'; DROP TABLE incidents; --",
    "dir": "../outside",
    "service": "x; touch {canary} $(touch {canary}) `touch {canary}`",
    "item": "../../admin?delete=all#",
}


def test_hostile_labels_change_nothing(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:  # fmt: skip
    api = recording_server()
    root, outside, canary = tmp_path / "root", tmp_path / "outside", tmp_path / "canary"
    root.mkdir()
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep")
    settings = ops_env(
        OPS_PLAYBOOKS=str(playbook_file(PLAYBOOKS.format(root=root, api=api.url))),
        OPS_REMEDIATION_ALLOWED_ROOTS=str(root),
    )
    labels = {name: value.format(canary=canary) for name, value in HOSTILE.items()}
    incident_id = insert_incident(state_db, "Hostile", labels=labels)

    report = handle_incident(settings, incident_id)

    assert report["status"] == "completed"
    records = {r.action: r for r in AuditTrail(state_db).records(incident_id)}
    assert records["files.cleanup"].outcome == "failed"
    assert "outside the allowed roots" in (records["files.cleanup"].error or "")
    assert precious.read_text() == "keep"
    assert records["command.run"].outcome == "failed"
    assert "is not a plain name" in (records["command.run"].error or "")
    assert not canary.exists()
    [request] = api.wait_for(1)
    assert request.path == "/items/..%2F..%2Fadmin%3Fdelete%3Dall%23"
    assert records["http.request"].outcome == "ok"
    assert handle_incident(settings, incident_id)["status"] == "already_completed"  # the incidents table is intact
