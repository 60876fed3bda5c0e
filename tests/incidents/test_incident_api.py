"""The incidents API on the receiver and the operator commands: list, show with actions, ack, resolve, pause."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from celery import Celery
from click.testing import CliRunner
from sqlalchemy import Engine

from tests.conftest import subprocess_env
from workers.cli import cli
from workers.errors import UsageError
from workers.incidents.api import ACK_BODY_LIMIT_BYTES
from workers.incidents.lifecycle import load_incident
from workers.incidents.operations import handle_incident
from workers.incidents.receiver import create_receiver_app
from workers.settings import Settings

from .conftest import insert_incident
from .server import serving

TOKEN = "api-token-for-tests"
PLAYBOOK = """
commands:
  noop: ["/bin/true"]
playbooks:
  - name: noop
    match: {alertname: Noop}
    target: "{labels.instance}"
    steps:
      - action: command.run
        params: {command: noop}
"""


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _settings(ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path]) -> Settings:
    return ops_env(OPS_PLAYBOOKS=str(playbook_file(PLAYBOOK)), OPS_RECEIVER_TOKEN=TOKEN)


def test_api_lists_shows_and_acknowledges(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], state_db: Engine, worker_app: Celery
) -> None:
    settings = _settings(ops_env, playbook_file)
    incident_id = insert_incident(state_db, "Noop", severity="critical", labels={"instance": "i-1"})
    handle_incident(settings, incident_id)
    app = create_receiver_app(settings, engine=state_db, celery_app=worker_app)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/incidents").status_code == 401
        assert client.get(f"/incidents/{incident_id}", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.post(f"/incidents/{incident_id}/ack", json={"by": "mallory"}).status_code == 401

        listed = client.get("/incidents", headers=auth, params={"status": "active"}).json()["incidents"]
        shown = client.get(f"/incidents/{incident_id}", headers=auth).json()
        missing = client.get("/incidents/999999", headers=auth)
        not_an_id = client.get("/incidents/../../etc", headers=auth)
        bad_status = client.get("/incidents", headers=auth, params={"status": "'; DROP TABLE incidents; --"})
        no_name = client.post(f"/incidents/{incident_id}/ack", headers=auth, json={})
        acked = client.post(f"/incidents/{incident_id}/ack", headers=auth, json={"by": "alice"})

    assert [i["id"] for i in listed] == [incident_id]
    [action] = [a for a in shown["actions"] if not a["action"].startswith("notify.")]
    notifications = [a for a in shown["actions"] if a["action"].startswith("notify.")]
    assert {k: action[k] for k in ("step", "action", "outcome")} == {
        "step": 0,
        "action": "command.run",
        "outcome": "ok",
    }
    assert action["started_at"] and action["finished_at"] and action["detail"]["returncode"] == 0
    assert [(n["action"], n["outcome"]) for n in notifications] == [("notify.pagerduty", "unconfigured")]
    assert missing.status_code == 404 and not_an_id.status_code == 404
    assert missing.json()["request_id"] == missing.headers["x-request-id"]  # to find its log lines
    assert bad_status.status_code == 400 and no_name.status_code == 400
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == "alice"
    assert load_incident(state_db, incident_id).acknowledged_at is not None


def test_cli_ack_resolve_show_and_pause(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], state_db: Engine
) -> None:
    settings = _settings(ops_env, playbook_file)
    incident_id = insert_incident(state_db, "Noop", severity="critical", labels={"instance": "i-2"})
    handle_incident(settings, incident_id)

    assert run_cli("incidents", "ack", str(incident_id), "--by", "bob")[0] == 0
    code, output = run_cli("incidents", "resolve", str(incident_id))
    assert code == 0 and "resolved" in output
    code, output = run_cli("incidents", "show", str(incident_id), "--json")
    shown = json.loads(output)
    assert shown["status"] == "resolved" and shown["acknowledged_by"] == "bob"
    assert [a["action"] for a in shown["actions"] if not a["action"].startswith("notify.")] == ["command.run"]
    assert all({"action", "outcome", "started_at", "finished_at", "detail"} <= set(a) for a in shown["actions"])
    assert shown["postmortem"].startswith("# Post-mortem draft: Noop")
    assert "acknowledged by bob" in shown["postmortem"]
    refused = CliRunner().invoke(cli, ["incidents", "ack", str(incident_id), "--by", "carol"])
    assert isinstance(refused.exception, UsageError)  # main() turns it into exit code 2
    assert "is resolved; nothing to acknowledge" in str(refused.exception)

    assert run_cli("remediation", "pause", "--by", "dave", "--reason", "db migration")[0] == 0
    code, output = run_cli("remediation", "status", "--json")
    status = json.loads(output)
    assert status["paused"] is True and status["pause"]["by"] == "dave" and status["playbooks"] == ["noop"]
    paused_id = insert_incident(state_db, "Noop", labels={"instance": "i-3"}, fingerprint="paused")
    assert handle_incident(settings, paused_id)["status"] == "skipped_paused"
    assert "remediation resumed" in run_cli("remediation", "resume")[1].splitlines()
    assert "remediation: running" in run_cli("remediation", "status")[1]


def test_invalid_playbooks_stop_check_and_the_incidents_worker_at_start(
    base_env: dict[str, str], playbook_file: Callable[[str], Path]
) -> None:
    broken = playbook_file(PLAYBOOK.replace("action: command.run", "action: command.runn"))
    env = subprocess_env({**base_env, "OPS_PLAYBOOKS": str(broken)})
    for argv in (["check"], ["worker", "-Q", "incidents"]):
        done = subprocess.run([sys.executable, "-m", "workers", *argv], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"{broken}: playbook 'noop': steps[0].action: unknown action 'command.runn'" in done.stderr


def test_an_ack_body_over_the_limit_is_a_413_declared_or_streamed(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], state_db: Engine, worker_app: Celery
) -> None:
    settings = _settings(ops_env, playbook_file)
    incident_id = insert_incident(state_db, "Noop", labels={"instance": "i-4"})
    app = create_receiver_app(settings, engine=state_db, celery_app=worker_app)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    large = json.dumps({"by": "alice", "pad": "x" * ACK_BODY_LIMIT_BYTES}).encode()

    def streamed() -> Iterator[bytes]:
        # No Content-Length: the limit must hold while reading, not only for what the client declares.
        yield b'{"by": "alice", "pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        declared = client.post(f"/incidents/{incident_id}/ack", content=large, headers=auth)
        chunked = client.post(f"/incidents/{incident_id}/ack", content=streamed(), headers=auth)
        unauthenticated = client.post(f"/incidents/{incident_id}/ack", content=large)

    assert (declared.status_code, chunked.status_code, unauthenticated.status_code) == (413, 413, 401)
    assert declared.json()["request_id"] == declared.headers["x-request-id"]
    assert load_incident(state_db, incident_id).status == "active"


def test_the_api_reads_through_the_receivers_engine(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], state_db: Engine, worker_app: Celery,
    tmp_path: Path,
) -> None:  # fmt: skip
    incident_id = insert_incident(state_db, "Noop", labels={"instance": "i-5"})
    # OPS_STATE_DATABASE_URL names a database that does not exist: only the engine handed in can answer.
    elsewhere = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    settings = ops_env(OPS_PLAYBOOKS=str(playbook_file(PLAYBOOK)), OPS_RECEIVER_TOKEN=TOKEN,
                       OPS_STATE_DATABASE_URL=elsewhere)  # fmt: skip
    app = create_receiver_app(settings, engine=state_db, celery_app=worker_app)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        listed = client.get("/incidents", headers=auth)
        shown = client.get(f"/incidents/{incident_id}", headers=auth)
        acked = client.post(f"/incidents/{incident_id}/ack", headers=auth, json={"by": "erin"})

    assert listed.status_code == 200, listed.text
    assert [i["id"] for i in listed.json()["incidents"]] == [incident_id]
    assert shown.status_code == 200 and shown.json()["actions"] == []
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "erin"
