"""The runner with its safety rails, against the real state database and Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import Engine

from tests.incidents.conftest import RecordingServer, insert_incident, minutes_ago, set_alert_status
from workers.incidents.alerts import parse_notification
from workers.incidents.audit import AuditTrail
from workers.incidents.lifecycle import load_incident
from workers.incidents.operations import handle_incident, pause_remediation, rails_of, resume_remediation
from workers.incidents.records import record_alerts
from workers.settings import Settings

PLAYBOOKS = """
commands:
  mark: ["/bin/sh", "-c", "echo run >> {mark_file}"]
  slow: ["/bin/sh", "-c", "echo slow >> {mark_file}; sleep 2"]
  fail: ["/bin/false"]
  hold: ["/bin/sh", "-c", "while [ ! -e {release_file} ]; do sleep 0.05; done"]
playbooks:
  - name: mark
    match: {{alertname: Mark}}
    target: "{{labels.instance}}"
    cooldown: 15m
    steps:
      - action: command.run
        params: {{command: mark}}
  - name: slow
    match: {{alertname: Slow}}
    target: "{{labels.instance}}"
    cooldown: 0s
    steps:
      - action: command.run
        params: {{command: slow}}
  - name: budgeted
    match: {{alertname: Budgeted}}
    target: "{{labels.instance}}"
    cooldown: 0s
    budget_per_hour: 2
    steps:
      - action: command.run
        params: {{command: mark}}
  - name: dry
    match: {{alertname: Dry}}
    target: "{{labels.instance}}"
    dry_run: true
    steps:
      - action: command.run
        params: {{command: mark}}
  - name: checked
    match: {{alertname: Checked}}
    target: "{{labels.instance}}"
    steps:
      - action: command.run
        params: {{command: mark}}
    check:
      action: http.check
      params: {{url: "{health_url}/healthz", expect_status: 200}}
  - name: failing
    match: {{alertname: Failing}}
    target: "{{labels.instance}}"
    steps:
      - action: command.run
        params: {{command: fail}}
        on_failure: continue
      - action: command.run
        params: {{command: mark}}
        on_failure: stop
  - name: rollback
    match: {{alertname: Deployed}}
    target: "{{labels.instance}}"
    cooldown: 0s
    steps:
      - id: recent-deploy
        action: http.check
        params: {{url: "{health_url}/deploys", expect_status: 200}}
        on_failure: continue
      - action: command.run
        params: {{command: mark}}
        if_ok: recent-deploy
  - name: held
    match: {{alertname: Held}}
    target: "{{labels.instance}}"
    cooldown: 0s
    steps:
      - action: http.request
        params: {{url: "{signal_url}/started", method: POST}}
      - action: command.run
        params: {{command: hold}}
"""


def _settings(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, **extra: str
) -> tuple[Settings, Path]:
    mark_file = tmp_path / "marks.txt"
    text = PLAYBOOKS.format(
        mark_file=mark_file,
        health_url=extra.pop("health_url", "http://127.0.0.1:9"),
        signal_url=extra.pop("signal_url", "http://127.0.0.1:9"),
        release_file=tmp_path / "release",
    )
    settings = ops_env(OPS_PLAYBOOKS=str(playbook_file(text)), **extra)
    return settings, mark_file


def _marks(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _outcomes(state_db: Engine, incident_id: int) -> list[tuple[str, str]]:
    return [(r.action, r.outcome) for r in AuditTrail(state_db).records(incident_id)]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _steps(state_db: Engine, incident_id: int) -> list[tuple[str, str]]:
    return [o for o in _outcomes(state_db, incident_id) if not o[0].startswith("notify.")]


@contextmanager
def _held_run(settings: Settings, incident_id: int, tmp_path: Path) -> Iterator[dict[str, object]]:
    """Handle the incident in a thread; its `Held` playbook waits in its second step until the block ends."""
    report: dict[str, object] = {}
    thread = threading.Thread(target=lambda: report.update(handle_incident(settings, incident_id)))
    thread.start()
    try:
        yield report
    finally:
        (tmp_path / "release").touch()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the held run did not finish"


def test_runs_once_per_episode_even_when_delivered_twice(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    incident_id = insert_incident(state_db, "Mark", labels={"instance": "db-1"})

    first = handle_incident(settings, incident_id)
    second = handle_incident(settings, incident_id)

    assert first["status"] == "completed"
    assert second["status"] == "already_completed"
    assert _marks(marks) == 1
    assert [o for o in _outcomes(state_db, incident_id) if o[0] == "command.run"] == [("command.run", "ok")]


def test_cooldown_per_playbook_and_target(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    before = _sample("ops_remediation_actions_total", action="command.run", outcome="skipped_cooldown")
    first = insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="a")
    again = insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="b")
    other = insert_incident(state_db, "Mark", labels={"instance": "db-2"}, fingerprint="c")

    assert handle_incident(settings, first)["status"] == "completed"
    assert handle_incident(settings, again)["status"] == "skipped_cooldown"
    assert handle_incident(settings, other)["status"] == "completed"

    assert _marks(marks) == 2
    assert ("command.run", "skipped_cooldown") in _outcomes(state_db, again)
    assert _sample("ops_remediation_actions_total", action="command.run", outcome="skipped_cooldown") == before + 1


def test_hourly_budget_per_playbook(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    ids = [insert_incident(state_db, "Budgeted", labels={"instance": f"h{i}"}, fingerprint=f"f{i}") for i in range(3)]

    statuses = [handle_incident(settings, i)["status"] for i in ids]

    assert statuses == ["completed", "completed", "skipped_budget"]
    assert _marks(marks) == 2
    assert ("command.run", "skipped_budget") in _outcomes(state_db, ids[2])


def test_flapping_alert_is_escalated_instead_of_remediated(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    pagerduty = recording_server()
    settings, marks = _settings(
        ops_env,
        playbook_file,
        tmp_path,
        OPS_REMEDIATION_FLAP_THRESHOLD="3",
        OPS_PAGERDUTY_ROUTING_KEY="rk-test",
        OPS_PAGERDUTY_URL=f"{pagerduty.url}/v2/enqueue",
    )
    for minutes in (50, 40, 30, 20):
        insert_incident(
            state_db,
            "Mark",
            labels={"instance": "db-1"},
            fingerprint="flappy",
            alert_status="resolved",
            starts_at=minutes_ago(minutes),
        )
    incident_id = insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="flappy")

    report = handle_incident(settings, incident_id)

    assert report["status"] == "skipped_flapping"
    assert _marks(marks) == 0
    [page] = pagerduty.wait_for(1)
    assert page.body["event_action"] == "trigger" and page.body["dedup_key"] == "flappy"
    assert ("notify.pagerduty", "ok") in _outcomes(state_db, incident_id)


def test_pause_stops_remediation_until_resumed(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    pause_remediation(settings, "alice", "maintenance window")
    paused = insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="p1")
    assert handle_incident(settings, paused)["status"] == "skipped_paused"
    assert _marks(marks) == 0

    assert resume_remediation(settings) is True
    later = insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="p2")
    assert handle_incident(settings, later)["status"] == "completed"
    assert _marks(marks) == 1


def test_dry_run_global_and_per_playbook_touches_nothing(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    per_playbook = insert_incident(state_db, "Dry", labels={"instance": "x"})
    assert handle_incident(settings, per_playbook)["status"] == "dry_run"
    assert ("command.run", "skipped_dry_run") in _outcomes(state_db, per_playbook)

    settings, marks = _settings(ops_env, playbook_file, tmp_path, OPS_REMEDIATION_DRY_RUN="true")
    globally = insert_incident(state_db, "Mark", labels={"instance": "y"})
    assert handle_incident(settings, globally)["status"] == "dry_run"
    [row] = [r for r in AuditTrail(state_db).records(globally) if r.action == "command.run"]
    assert row.outcome == "skipped_dry_run" and row.detail is not None and "would run mark" in str(row.detail)
    assert _marks(marks) == 0


def test_two_incidents_never_act_on_one_target_at_once(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    slow = insert_incident(state_db, "Slow", labels={"instance": "shared"}, fingerprint="s1")
    other = insert_incident(state_db, "Mark", labels={"instance": "shared"}, fingerprint="s2")
    results: dict[str, object] = {}
    runner = threading.Thread(target=lambda: results.update(slow=handle_incident(settings, slow)))
    runner.start()
    # The slow step writes its mark first, then sleeps while holding the target's lock.
    deadline = threading.Event()
    for _ in range(100):
        if _marks(marks) >= 1:
            break
        deadline.wait(0.05)
    assert _marks(marks) == 1, "the slow playbook did not start"

    assert handle_incident(settings, other)["status"] == "skipped_locked"
    runner.join(timeout=30)
    assert results["slow"]["status"] == "completed"  # type: ignore[index]
    assert ("command.run", "skipped_locked") in _outcomes(state_db, other)


def test_failing_post_check_escalates(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    pagerduty, health = recording_server(), recording_server()
    health.statuses.extend([503])
    settings, _ = _settings(
        ops_env,
        playbook_file,
        tmp_path,
        health_url=health.url,
        OPS_PAGERDUTY_ROUTING_KEY="rk-test",
        OPS_PAGERDUTY_URL=f"{pagerduty.url}/v2/enqueue",
    )
    incident_id = insert_incident(state_db, "Checked", severity="warning", labels={"instance": "api-1"})

    report = handle_incident(settings, incident_id)

    assert report["status"] == "escalated"
    assert _steps(state_db, incident_id) == [("command.run", "ok"), ("http.check", "failed")]
    [page] = pagerduty.wait_for(1)
    assert page.body["event_action"] == "trigger"
    # A warning routes to the ticket only, but the escalation paged: its resolve goes to PagerDuty too.
    set_alert_status(state_db, incident_id, "resolved")
    assert handle_incident(settings, incident_id)["status"] == "resolved"
    assert [p.body["event_action"] for p in pagerduty.wait_for(2)] == ["trigger", "resolve"]


def test_on_failure_continue_and_stop(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    incident_id = insert_incident(state_db, "Failing", labels={"instance": "z"})

    report = handle_incident(settings, incident_id)

    assert report["status"] == "completed"
    assert _marks(marks) == 1
    assert [o for o in _outcomes(state_db, incident_id) if o[0] == "command.run"] == [
        ("command.run", "failed"),
        ("command.run", "ok"),
    ]
    [failed] = [r for r in AuditTrail(state_db).records(incident_id) if r.outcome == "failed"]
    assert failed.error == "fail exited with 1" and failed.finished_at is not None


def test_resolved_episode_closes_and_never_remediates(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    pagerduty = recording_server()
    settings, marks = _settings(
        ops_env,
        playbook_file,
        tmp_path,
        OPS_PAGERDUTY_ROUTING_KEY="rk-test",
        OPS_PAGERDUTY_URL=f"{pagerduty.url}/v2/enqueue",
    )
    incident_id = insert_incident(state_db, "Mark", severity="critical", labels={"instance": "db-9"}, fingerprint="ep9")
    assert handle_incident(settings, incident_id)["status"] == "completed"
    set_alert_status(state_db, incident_id, "resolved")

    report = handle_incident(settings, incident_id)
    handle_incident(settings, incident_id)  # redelivered: sends nothing twice

    assert report["status"] == "resolved"
    assert _marks(marks) == 1
    pages = pagerduty.wait_for(2)
    assert [(p.body["event_action"], p.body["dedup_key"]) for p in pages] == [
        ("trigger", "ep9"),
        ("resolve", "ep9"),
    ]
    incident = load_incident(state_db, incident_id)
    assert incident.status == "resolved" and incident.resolved_at is not None
    assert incident.postmortem is not None
    assert "# Post-mortem draft: Mark" in incident.postmortem and "command.run" in incident.postmortem
    assert "pagerduty (resolve): ok" in incident.postmortem


def test_alert_without_playbook_is_routed_by_severity(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    ticket = recording_server()
    settings, _ = _settings(
        ops_env,
        playbook_file,
        tmp_path,
        OPS_TICKET_WEBHOOK_URL=f"{ticket.url}/tickets",
        OPS_TICKET_WEBHOOK_TOKEN="tkt-secret",
    )
    warning = insert_incident(state_db, "Unknown", severity="warning", fingerprint="u1")
    info = insert_incident(state_db, "Unknown", severity="info", fingerprint="u2")

    assert handle_incident(settings, warning)["status"] == "no_playbook"
    assert handle_incident(settings, info)["status"] == "no_playbook"

    [opened] = ticket.wait_for(1)
    assert opened.body["incident_id"] == warning and opened.headers["Authorization"] == "Bearer tkt-secret"
    assert _outcomes(state_db, info) == [("notify.log", "ok")]
    assert "tkt-secret" not in str(AuditTrail(state_db).records(warning))


def test_default_low_disk_playbook_requests_storage_when_critical(
    ops_env: Callable[..., Settings], state_db: Engine, tmp_path: Path,
    recording_server: Callable[[], RecordingServer],
) -> None:  # fmt: skip
    tickets = recording_server()
    settings = ops_env(OPS_TICKET_WEBHOOK_URL=f"{tickets.url}/tickets", OPS_REMEDIATION_ALLOWED_ROOTS=str(tmp_path))
    warning = insert_incident(state_db, "LowDiskSpace", severity="warning", labels={"instance": "n1"}, fingerprint="w")
    critical = insert_incident(
        state_db, "LowDiskSpace", severity="critical", labels={"instance": "n2"}, fingerprint="c"
    )

    handle_incident(settings, warning)
    handle_incident(settings, critical)

    assert dict(_outcomes(state_db, warning))["ticket.open"] == "skipped_condition"
    critical_steps = [o for o in _outcomes(state_db, critical) if not o[0].startswith("notify.")]
    # The bundled paths lie outside this test's allowed roots: refused, and the playbook goes on.
    assert critical_steps[0] == ("files.cleanup", "failed")
    assert critical_steps[-1] == ("ticket.open", "ok")
    requests = tickets.wait_for(2)
    assert any(r.body["kind"] == "request" and r.body["summary"] == "More storage needed on n2" for r in requests)


def test_a_duplicate_delivery_gives_up_after_one_lock_ttl_and_leaves_the_live_run_alone(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    signal = recording_server()
    settings, _ = _settings(
        ops_env, playbook_file, tmp_path, signal_url=signal.url,
        OPS_REMEDIATION_LOCK_TTL_S="1", OPS_REMEDIATION_ACTION_TIMEOUT_S="10",
    )  # fmt: skip
    incident_id = insert_incident(state_db, "Held", labels={"instance": "h-1"})

    with _held_run(settings, incident_id, tmp_path) as live:
        assert len(signal.wait_for(1)) == 1, "the held playbook did not start"
        duplicate = handle_incident(settings, incident_id)  # a redelivery while the first still runs
        during = _steps(state_db, incident_id)

    assert duplicate["status"] == "already_running"
    assert during == [("http.request", "ok"), ("command.run", "running")]  # not marked interrupted
    assert live["status"] == "completed"
    assert _steps(state_db, incident_id) == [("http.request", "ok"), ("command.run", "ok")]


def test_resumed_run_finding_another_incident_on_its_target_is_skipped_locked_and_notified(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    tickets = recording_server()
    settings, marks = _settings(ops_env, playbook_file, tmp_path, OPS_TICKET_WEBHOOK_URL=f"{tickets.url}/tickets")
    incident_id = insert_incident(state_db, "Mark", labels={"instance": "db-1"})
    # A first attempt claimed the run and started its step, then its worker died.
    trail, started = AuditTrail(state_db), datetime.now(UTC)
    trail.claim_run(incident_id, "mark", "db-1", started)
    trail.start(incident_id, 0, "command.run", {"command": "mark"}, started)

    with rails_of(settings).target_lock("db-1", "incident:another") as other:
        assert other.acquired
        report = handle_incident(settings, incident_id)

    assert report["status"] == "skipped_locked"
    assert trail.run_status(incident_id) == "skipped_locked"
    assert _steps(state_db, incident_id) == [("command.run", "interrupted"), ("command.run", "skipped_locked")]
    assert _marks(marks) == 0
    trigger, update = tickets.wait_for(2)
    assert (trigger.body["kind"], update.body["kind"]) == ("trigger", "update")
    assert update.body["incident_id"] == incident_id and update.body["details"]["status"] == "skipped_locked"


def test_dry_run_claims_neither_cooldown_nor_budget(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    dry, _ = _settings(ops_env, playbook_file, tmp_path, OPS_REMEDIATION_DRY_RUN="true")
    rehearsed = [insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="d0")]
    rehearsed += [insert_incident(state_db, "Budgeted", labels={"instance": "b"}, fingerprint=f"d{i}") for i in (1, 2)]
    assert [handle_incident(dry, i)["status"] for i in rehearsed] == ["dry_run"] * 3
    assert rails_of(dry).cooldown_left_s("mark", "db-1") == 0

    real, marks = _settings(ops_env, playbook_file, tmp_path)
    acting = [insert_incident(state_db, "Mark", labels={"instance": "db-1"}, fingerprint="r0")]
    acting += [insert_incident(state_db, "Budgeted", labels={"instance": "b"}, fingerprint=f"r{i}") for i in (1, 2)]
    assert [handle_incident(real, i)["status"] for i in acting] == ["completed"] * 3
    assert _marks(marks) == 3


def test_resumed_run_that_is_paused_records_skips_only_for_the_steps_not_done(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, _ = _settings(ops_env, playbook_file, tmp_path)
    incident_id = insert_incident(state_db, "Held", labels={"instance": "h-2"})
    # A first attempt finished step 0, then its worker died; remediation was paused since.
    trail, started = AuditTrail(state_db), datetime.now(UTC)
    trail.claim_run(incident_id, "held", "h-2", started)
    trail.record(incident_id, 0, "http.request", {}, "ok", started)
    pause_remediation(settings, "alice", "incident review")

    report = handle_incident(settings, incident_id)

    assert report["status"] == "skipped_paused"
    assert report["steps"] == [["command.run", "skipped_paused"]]
    assert _steps(state_db, incident_id) == [("http.request", "ok"), ("command.run", "skipped_paused")]


def test_critical_episode_first_seen_resolved_gets_no_post_mortem(
    ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path, state_db: Engine
) -> None:
    settings, marks = _settings(ops_env, playbook_file, tmp_path)
    now = datetime.now(UTC)
    alert = {
        "status": "resolved",
        "labels": {"alertname": "Mark", "severity": "critical", "instance": "db-3"},
        "annotations": {"summary": "fired and resolved while the receiver was away"},
        "startsAt": (now - timedelta(minutes=10)).isoformat(),
        "endsAt": (now - timedelta(minutes=1)).isoformat(),
        "fingerprint": "0a1b2c3d4e5f6071",  # first seen resolved
    }
    notification = parse_notification({"version": "4", "status": "resolved", "receiver": "ops", "alerts": [alert]}, now)
    with state_db.begin() as conn:
        [recorded] = record_alerts(conn, notification.alerts, request_id=None, at=now).transitions

    report = handle_incident(settings, recorded.incident_id)

    assert report["status"] == "resolved"
    incident = load_incident(state_db, recorded.incident_id)
    assert incident.status == "resolved" and incident.postmortem is None
    assert _outcomes(state_db, recorded.incident_id) == [] and _marks(marks) == 0


def _paging(ops_env: Callable[..., Settings], playbook_file: Callable[[str], Path], tmp_path: Path,
            pagerduty: RecordingServer, signal: RecordingServer) -> Settings:  # fmt: skip
    settings, _ = _settings(
        ops_env, playbook_file, tmp_path, signal_url=signal.url,
        OPS_PAGERDUTY_ROUTING_KEY="rk-test", OPS_PAGERDUTY_URL=f"{pagerduty.url}/v2/enqueue",
    )  # fmt: skip
    return settings


def _events(pagerduty: RecordingServer) -> list[tuple[str, str]]:
    return [(r.body["event_action"], r.body["dedup_key"]) for r in pagerduty.requests if r.path == "/v2/enqueue"]


def test_the_page_goes_out_before_the_first_action_starts(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    shared = recording_server()  # PagerDuty and the playbook's first action post to one server: one order
    settings = _paging(ops_env, playbook_file, tmp_path, shared, shared)
    incident_id = insert_incident(state_db, "Held", severity="critical", labels={"instance": "p-1"}, fingerprint="pg1")

    with _held_run(settings, incident_id, tmp_path) as report:
        arrived = shared.wait_for(2)
        assert [r.path for r in arrived] == ["/v2/enqueue", "/started"]

    assert report["status"] == "completed"
    assert _events(shared) == [("trigger", "pg1")]  # the outcome goes to the other channels, not another page


def test_a_resolve_handled_while_the_playbook_runs_pairs_with_its_trigger(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    pagerduty, signal = recording_server(), recording_server()
    settings = _paging(ops_env, playbook_file, tmp_path, pagerduty, signal)
    incident_id = insert_incident(state_db, "Held", severity="critical", labels={"instance": "p-2"}, fingerprint="pg2")

    with _held_run(settings, incident_id, tmp_path) as report:
        assert len(signal.wait_for(1)) == 1, "the held playbook did not start"
        set_alert_status(state_db, incident_id, "resolved")
        assert handle_incident(settings, incident_id)["status"] == "resolved"  # the resolve task, meanwhile

    assert report["status"] == "completed"
    assert _events(pagerduty) == [("trigger", "pg2"), ("resolve", "pg2")]  # nothing re-opens it afterwards


def test_an_episode_resolved_during_its_playbook_is_resolved_by_the_run(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    pagerduty, signal = recording_server(), recording_server()
    settings = _paging(ops_env, playbook_file, tmp_path, pagerduty, signal)
    incident_id = insert_incident(state_db, "Held", severity="critical", labels={"instance": "p-3"}, fingerprint="pg3")

    with _held_run(settings, incident_id, tmp_path) as report:
        assert len(signal.wait_for(1)) == 1, "the held playbook did not start"
        set_alert_status(state_db, incident_id, "resolved")  # recorded; its task not run yet

    assert report["status"] == "completed"
    assert _events(pagerduty) == [("trigger", "pg3"), ("resolve", "pg3")]
    assert handle_incident(settings, incident_id)["status"] == "resolved"  # the resolve task, late: sends no more
    assert _events(pagerduty) == [("trigger", "pg3"), ("resolve", "pg3")]


def test_if_ok_runs_a_step_only_when_the_step_it_names_succeeded(
    ops_env: Callable[..., Settings],
    playbook_file: Callable[[str], Path],
    tmp_path: Path,
    state_db: Engine,
    recording_server: Callable[[], RecordingServer],
) -> None:
    deploys = recording_server()
    deploys.statuses.extend([404, 200])  # the first incident finds no recent deployment, the second one does
    settings, marks = _settings(ops_env, playbook_file, tmp_path, health_url=deploys.url)
    none_found = insert_incident(state_db, "Deployed", labels={"instance": "api-1"}, fingerprint="n")
    found = insert_incident(state_db, "Deployed", labels={"instance": "api-2"}, fingerprint="f")

    assert handle_incident(settings, none_found)["status"] == "completed"
    assert handle_incident(settings, found)["status"] == "completed"

    assert _steps(state_db, none_found) == [("http.check", "failed"), ("command.run", "skipped_condition")]
    assert _steps(state_db, found) == [("http.check", "ok"), ("command.run", "ok")]
    assert _marks(marks) == 1
