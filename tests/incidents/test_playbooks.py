"""Playbooks load from YAML into frozen values; every mistake names the file, the playbook and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.errors import ConfigError, UnsafeParameter
from workers.incidents.playbook_file import DEFAULT_PLAYBOOKS, load_playbooks, parse_duration, parse_playbooks
from workers.incidents.playbooks import matches
from workers.incidents.templates import render

VALID = """
commands:
  restart: ["/bin/true", "{labels.service}"]
playbooks:
  - name: db
    match: {alertname: DatabaseConnectionHigh, severity: "~critical|warning"}
    target: "{labels.instance}"
    cooldown: 15m
    steps:
      - action: postgres.terminate_queries
        params: {min_duration: 5m, states: [active, "idle in transaction"]}
        on_failure: continue
      - action: command.run
        params: {command: restart}
    notify: [slack]
"""


def test_bundled_default_playbooks_cover_the_original_alerts() -> None:
    catalog = load_playbooks(None)
    assert catalog.source == str(DEFAULT_PLAYBOOKS)
    for alertname in (
        "HighErrorRate",
        "DatabaseConnectionHigh",
        "HighMemoryUsage",
        "LowDiskSpace",
        "APIServiceDown",
        "QueueBacklogHigh",
        "BackupTooOld",
        "BackupVerificationFailing",
    ):
        assert catalog.playbook_for({"alertname": alertname}) is not None, alertname
    assert catalog.playbook_for({"alertname": "SomethingElse"}) is None


def test_valid_file_becomes_typed_values() -> None:
    catalog = parse_playbooks(VALID, "ops.yaml")
    playbook = catalog.playbook_for({"alertname": "DatabaseConnectionHigh", "severity": "critical"})
    assert playbook is not None and playbook.cooldown_s == 900.0
    assert playbook.steps[0].params["min_duration"] == 300.0
    assert playbook.steps[0].params["states"] == ("active", "idle in transaction")
    assert playbook.steps[0].params["limit"] == 50  # the declared default
    assert catalog.commands["restart"] == ("/bin/true", "{labels.service}")
    assert catalog.channels_for("critical", playbook) == ("pagerduty", "slack")
    assert catalog.channels_for("info", None) == ("log",)
    assert catalog.playbook_for({"alertname": "DatabaseConnectionHigh", "severity": "info"}) is None


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("action: postgres.terminate_queries", "action: postgres.kill_everything"),
        ("min_duration: 5m", "min_duration: soon"),
        ('states: [active, "idle in transaction"]', "states: [active, sleeping]"),
        ("params: {command: restart}", "params: {}"),
        ("params: {command: restart}", "params: {command: reboot}"),
        ("on_failure: continue", "on_failure: retry"),
        ("cooldown: 15m", "cooldown: [1]"),
        ("notify: [slack]", "notify: [carrier-pigeon]"),
        ("min_duration: 5m", 'min_duration: 5m, limit: "{labels.limit}"'),
    ],
)
def test_each_mistake_names_file_playbook_and_field(broken: str, expected: str) -> None:
    text = VALID.replace(broken, expected)
    with pytest.raises(ConfigError) as caught:
        parse_playbooks(text, "/etc/ops/playbooks.yaml")
    message = str(caught.value)
    assert "/etc/ops/playbooks.yaml: playbook 'db'" in message, message


def test_messages_name_the_exact_field() -> None:
    text = VALID.replace("min_duration: 5m", "min_duration: soon").replace("params: {command: restart}", "params: {}")
    with pytest.raises(ConfigError) as caught:
        parse_playbooks(text, "ops.yaml")
    problems = caught.value.problems
    assert any("steps[0].params.min_duration: must be a duration" in p for p in problems), problems
    assert any("steps[1].params.command: required by command.run" in p for p in problems), problems


def test_shell_strings_are_refused_as_commands() -> None:
    text = VALID.replace('restart: ["/bin/true", "{labels.service}"]', 'restart: "/bin/systemctl restart x"')
    with pytest.raises(ConfigError, match=r"commands\.restart: must be a non-empty argv list"):
        parse_playbooks(text, "ops.yaml")


def test_missing_operator_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the playbooks file"):
        load_playbooks(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("2d", 172800.0), ("250ms", 0.25), (90, 90.0)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "-1s", -3, True, "m5", ""])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("matchers", "labels", "expected"),
    [
        ({"alertname": "A"}, {"alertname": "A"}, True),
        ({"alertname": "A"}, {"alertname": "AB"}, False),
        ({"severity": "~crit.*"}, {"severity": "critical"}, True),
        ({"severity": "~crit"}, {"severity": "critical"}, False),  # full match only
        ({"queue": "x"}, {}, False),
    ],
)
def test_matches(matchers: dict[str, str], labels: dict[str, str], expected: bool) -> None:
    assert matches(matchers, labels) is expected


def test_render_is_one_pass_and_refuses_missing_labels() -> None:
    labels = {"instance": "{vars.secret}", "path": "../../etc"}
    assert render("f", "/x/{labels.instance}", labels, {"secret": "s3cr3t"}) == "/x/{vars.secret}"
    with pytest.raises(UnsafeParameter, match=r"labels\.nope is not set"):
        render("f", "{labels.nope}", labels, {})


def test_shipped_backup_playbooks_key_their_target_on_labels_the_backup_rules_carry() -> None:
    # The backup rules aggregate `by (kind)`: an alert from them carries alertname, kind and severity only.
    catalog = load_playbooks(None)
    for alertname in ("BackupTooOld", "BackupVerificationFailing"):
        labels = {"alertname": alertname, "kind": "full", "severity": "critical"}
        playbook = catalog.playbook_for(labels)
        assert playbook is not None
        assert render("target", playbook.target, labels, {}) == "backup-full"


def test_backup_kind_is_a_label_or_one_of_full_and_org() -> None:
    step = "  - name: b\n    match: {alertname: BackupTooOld}\n    steps:\n      - action: backup.trigger\n"
    labelled = parse_playbooks(f"playbooks:\n{step}        params: {{kind: '{{labels.kind}}'}}\n", "ops.yaml")
    assert labelled.playbooks[0].steps[0].params == {"task": "backup.full", "kind": "{labels.kind}"}
    with pytest.raises(ConfigError) as caught:
        parse_playbooks(f"playbooks:\n{step}        params: {{kind: everything}}\n", "ops.yaml")
    assert caught.value.problems == (
        "ops.yaml: playbook 'b': steps[0].params.kind: must be one of full, org (got 'everything')",
    )


STEPS_WITH_IDS = """
playbooks:
  - name: deploys
    match: {alertname: HighErrorRate}
    steps:
      - id: recent-deploy
        action: http.check
        params: {url: "http://127.0.0.1:1/deploys"}
      - action: http.request
        params: {url: "http://127.0.0.1:1/rollback"}
        if_ok: recent-deploy
"""


@pytest.mark.parametrize(
    ("broken", "expected", "problem"),
    [
        ("if_ok: recent-deploy", "if_ok: rollback", "steps[1].if_ok: no earlier step has id 'rollback'"),
        ("if_ok: recent-deploy", "if_failed: nowhere", "steps[1].if_failed: no earlier step has id 'nowhere'"),
        ("if_ok: recent-deploy", "if_ok: [recent-deploy]", "steps[1].if_ok: must be a step id"),
        ("      - action: http.request", "      - id: recent-deploy\n        action: http.request",
         "steps[1].id: 'recent-deploy' is the id of an earlier step too"),
    ],
)  # fmt: skip
def test_step_references_name_file_playbook_and_field(broken: str, expected: str, problem: str) -> None:
    assert parse_playbooks(STEPS_WITH_IDS, "ops.yaml").playbooks[0].steps[1].if_ok == "recent-deploy"
    with pytest.raises(ConfigError) as caught:
        parse_playbooks(STEPS_WITH_IDS.replace(broken, expected), "ops.yaml")
    [message] = caught.value.problems
    assert message.startswith(f"ops.yaml: playbook 'deploys': {problem}"), message


def test_shipped_high_error_rate_rolls_back_only_a_deployment_it_found() -> None:
    playbook = load_playbooks(None).playbook_for({"alertname": "HighErrorRate"})
    assert playbook is not None
    [rollback] = [s for s in playbook.steps if s.params.get("command") == "rollback-api"]
    assert rollback.if_ok == "recent-deploy" and rollback.when == {"severity": "critical"}
    assert any(s.id == "recent-deploy" for s in playbook.steps)
