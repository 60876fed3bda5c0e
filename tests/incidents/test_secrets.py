"""Credentials inside values (URL userinfo, ?token=, --password=, argv) never reach audit rows, logs or errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, select

from tests.incidents.conftest import RecordingServer, insert_incident
from workers.errors import AlertmanagerUnavailable
from workers.incidents.alertmanager_api import AlertmanagerClient
from workers.incidents.audit import AuditTrail
from workers.incidents.notify import build_channels
from workers.incidents.operations import handle_incident
from workers.incidents.reconcile import reconcile
from workers.incidents.records import add_fetch
from workers.logs import ConsoleFormatter, JsonFormatter
from workers.redaction import masked, redact_argv, redact_text
from workers.settings import Settings
from workers.state.schema import alert_fetches


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:hunter2@example.org/x", "https://***@example.org/x"),
        ("http://ghp_tok@git.example/x", "http://***@git.example/x"),
        ("http://u:p@ss@host:1/x", "http://***@host:1/x"),
        ("GET http://h/a?token=abc&page=2 failed", "GET http://h/a?token=***&page=2 failed"),
        (
            "http://h/?access_token=a;api_key=b&X-Amz-Signature=c",
            "http://h/?access_token=***;api_key=***&X-Amz-Signature=***",
        ),
        ("--password=hunter2 --db-token='a b'", "--password=*** --db-token=***"),
        ("host=db password=hunter2 user=me", "host=db password=*** user=me"),
        ("Authorization: Bearer abcdefgh12345", "Authorization: Bearer ***"),
        ("mail to ops@example.org about key rotation", "mail to ops@example.org about key rotation"),
        ("http://h/healthz?verbose=1", "http://h/healthz?verbose=1"),
    ],
)
def test_redact_text(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_redact_argv_masks_the_argument_after_a_secret_option() -> None:
    argv = [
        "curl", "-u", "me:pw", "--token", "t0k", "-H", "Authorization: Bearer abcdefgh12345", "python", "-u", "x.py",
    ]  # fmt: skip
    assert redact_argv(argv) == [
        "curl", "-u", "***", "--token", "***", "-H", "Authorization: Bearer ***", "python", "-u", "x.py",
    ]  # fmt: skip


def test_masked_params_hide_secret_names_and_secret_values() -> None:
    params = {"url": "http://a:s3@h/?token=s4", "api_key": "s5", "json": {"password": "s6", "note": "ok"}}
    assert masked(params) == {
        "url": "http://***@h/?token=***",
        "api_key": "***",
        "json": {"password": "***", "note": "ok"},
    }


SECRETS = [f"SECRET{n}zz" for n in range(1, 9)]
PLAYBOOK = """
commands:
  leaky: ["/bin/sh", "-c", "echo done", "--password=SECRET1zz", "https://deploy:SECRET2zz@deploy.invalid/x?token=SECRET3zz"]
playbooks:
  - name: leaky
    match: {alertname: Leaky}
    target: "{labels.instance}"
    cooldown: 0s
    steps:
      - action: command.run
        params: {command: leaky}
        on_failure: continue
      - action: http.check
        params: {url: "HEALTH/healthz?token=SECRET5zz", expect_status: 202}
        on_failure: continue
      - action: http.request
        params: {url: "http://ops:SECRET6zz@127.0.0.1:9/scale?api_key=SECRET7zz", method: POST}
        on_failure: continue
"""


def _formatted(records: list[logging.LogRecord]) -> str:
    return "\n".join(f(r) for r in records for f in (JsonFormatter().format, ConsoleFormatter().format))


def test_secrets_in_urls_and_argv_stay_out_of_the_audit_trail_and_the_logs(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = recording_server()
    health_url = health.url.replace("http://", "http://probe:SECRET4zz@")
    settings = ops_env(OPS_PLAYBOOKS=str(playbook_file(PLAYBOOK.replace("HEALTH", health_url))))
    incident_id = insert_incident(state_db, "Leaky", labels={"instance": "i-1"})

    with caplog.at_level(logging.DEBUG):
        report = handle_incident(settings, incident_id)

    assert report["status"] == "completed", report
    [checked] = health.requests
    assert checked.path == "/healthz?token=SECRET5zz"  # the real request keeps its credentials
    rows = [r.to_json() for r in AuditTrail(state_db).records(incident_id)]
    assert [(r["action"], r["outcome"]) for r in rows if not r["action"].startswith("notify.")] == [
        ("command.run", "ok"), ("http.check", "ok"), ("http.request", "failed"),
    ]  # fmt: skip
    stored = json.dumps(rows, default=str)
    assert "deploy:***@" not in stored and "https://***@deploy.invalid/x?token=***" in stored
    logged = _formatted(caplog.records)
    for secret in SECRETS[:7]:
        assert secret not in stored, secret
        assert secret not in logged, secret


def test_channels_do_not_show_their_credentials(ops_env: Callable[..., Settings]) -> None:
    settings = ops_env(
        OPS_PAGERDUTY_ROUTING_KEY="SECRET1zz", OPS_SLACK_WEBHOOK_URL="https://hooks.example/services/SECRET2zz",
        OPS_TICKET_WEBHOOK_URL="https://tickets.example/new?key=SECRET3zz", OPS_TICKET_WEBHOOK_TOKEN="SECRET4zz",
        OPS_SMTP_HOST="127.0.0.1", OPS_SMTP_TO="x@example.org", OPS_SMTP_USER="u", OPS_SMTP_PASSWORD="SECRET5zz",
    )  # fmt: skip
    channels = build_channels(settings.notify)
    assert set(channels) == {"log", "pagerduty", "slack", "ticket", "email"}
    shown = repr(channels)
    for secret in SECRETS[:5]:
        assert secret not in shown, secret


def test_alertmanager_url_credentials_stay_out_of_errors_logs_and_last_error(
    settings: Settings,
    state_db: Engine,
    worker_app: Celery,
    recording_server: Callable[[], RecordingServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = recording_server()
    failing.statuses.extend([500, 500])
    answering = AlertmanagerClient(failing.url.replace("http://", "http://am:SECRET1zz@") + "/")
    refused = AlertmanagerClient("http://am:SECRET2zz@127.0.0.1:9/?token=SECRET3zz")
    now = datetime.now(UTC)

    with pytest.raises(AlertmanagerUnavailable) as server_error:
        answering.group_alerts("ops", {"alertname": "X"}, now)
    with pytest.raises(AlertmanagerUnavailable) as unreachable:
        refused.group_alerts("ops", {}, now)
    with state_db.begin() as conn:
        add_fetch(conn, receiver="ops", group_labels={}, truncated_alerts=3, request_id=None, at=now)
    with caplog.at_level(logging.DEBUG):
        result = reconcile(state_db, worker_app, alertmanager=answering, now=now)

    assert "500" in str(server_error.value) and "http://***@127.0.0.1" in str(server_error.value)
    assert "ConnectError" in str(unreachable.value)
    assert result.fetch_failures == 1
    with state_db.connect() as conn:
        [last_error] = conn.execute(select(alert_fetches.c.last_error)).scalars().all()
    assert last_error and "500" in last_error
    texts = [str(server_error.value), str(unreachable.value), last_error, _formatted(caplog.records)]
    for secret in SECRETS[:3]:
        assert all(secret not in text for text in texts), secret
