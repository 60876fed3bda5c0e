"""Severity as playbooks see it: the label lower-cased when it is a known severity, kept as sent in the record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine

from workers.incidents.audit import AuditTrail
from workers.incidents.lifecycle import load_incident
from workers.incidents.operations import handle_incident
from workers.incidents.receiver import create_receiver_app
from workers.settings import Settings

from .conftest import AUTH, TOKEN, http_client, incident_rows, load_case

# Case 03 sends severity "Warning"; its alert is Deployment. The conditions are spelled in lower case.
PLAYBOOK = """
commands:
  mark: ["/bin/sh", "-c", "echo $0 >> MARK", "{labels.severity}"]
playbooks:
  - name: deployment
    match: {alertname: Deployment, severity: warning}
    target: "{labels.deployment}"
    cooldown: 0s
    steps:
      - action: command.run
        params: {command: mark}
        when: {severity: warning}
      - action: command.run
        params: {command: mark}
        when: {severity: critical}
"""


def firing_case_03() -> dict[str, object]:
    """Case 03 as it looked while firing (the shared file is its resolution)."""
    doc = json.loads(load_case("03-resolved-single-capitalised-severity.json"))
    doc["status"] = "firing"
    [alert] = doc["alerts"]
    alert.update(status="firing", endsAt="0001-01-01T00:00:00Z")
    return doc  # type: ignore[no-any-return]


def test_a_capitalised_severity_matches_lower_case_conditions_and_substitutes_lower_case(
    ops_env: Callable[..., Settings],
    state_url: str,
    engine: Engine,
    sender: Celery,
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    mark = tmp_path / "mark"
    settings = ops_env(
        OPS_STATE_DATABASE_URL=state_url,
        OPS_RECEIVER_TOKEN=TOKEN,
        OPS_PLAYBOOKS=str(playbook_file(PLAYBOOK.replace("MARK", str(mark)))),
    )
    with http_client(create_receiver_app(settings, engine=engine, celery_app=sender)) as client:
        assert client.post("/alertmanager", json=firing_case_03(), headers=AUTH).status_code == 200
    [row] = incident_rows(engine)

    report = handle_incident(settings, int(row["id"]))

    assert report["status"] == "completed", report
    outcomes = [(r.step, r.outcome) for r in AuditTrail(engine).records(int(row["id"])) if r.step is not None]
    assert outcomes == [(0, "ok"), (1, "skipped_condition")]
    assert mark.read_text() == "warning\n"
    incident = load_incident(engine, int(row["id"]))
    assert incident.labels["severity"] == "warning"
    # The record keeps what Alertmanager sent.
    assert row["labels"]["severity"] == "Warning"  # type: ignore[index]
    assert incident.labels_as_sent["severity"] == "Warning"
    assert incident.to_json()["labels"]["severity"] == "Warning"


@pytest.mark.parametrize(
    ("sent", "seen"),
    [("Critical", "critical"), (" INFO ", "info"), ("warning", "warning"), ("P1", "P1"), (None, "warning")],
)
def test_only_a_known_severity_is_normalised(
    ops_env: Callable[..., Settings], state_url: str, engine: Engine, sender: Celery, sent: str | None, seen: str
) -> None:
    settings = ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN)
    labels = {"alertname": "X"} if sent is None else {"alertname": "X", "severity": sent}
    body = {"alerts": [{"labels": labels, "startsAt": "2026-12-03T10:00:00Z"}]}
    with http_client(create_receiver_app(settings, engine=engine, celery_app=sender)) as client:
        assert client.post("/alertmanager", json=body, headers=AUTH).status_code == 200
    [row] = incident_rows(engine)

    incident = load_incident(engine, int(row["id"]))

    assert incident.labels["severity"] == seen
    assert incident.labels_as_sent == labels
