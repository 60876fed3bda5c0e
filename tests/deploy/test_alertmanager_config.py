"""deploy/alertmanager: amtool accepts it; it routes to the receiver with bearer auth, inhibits warnings."""

from __future__ import annotations

import yaml

from tests.deploy.tools import DEPLOY, amtool

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


def test_amtool_accepts_the_config() -> None:
    result = amtool("check-config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_routes_to_the_receiver_with_bearer_auth_from_a_file_and_resolved_notifications() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    webhook = receivers[config["route"]["receiver"]]["webhook_configs"][0]
    assert webhook["url"].endswith("/alertmanager")
    assert webhook["send_resolved"] is True
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert "credentials" not in authorization  # the token is a mounted secret, never in the file
    assert authorization["credentials_file"].startswith("/run/secrets/")
    assert {"alertname", "instance"} <= set(config["route"]["group_by"])


def test_a_critical_alert_inhibits_the_warning_of_the_same_alertname_and_instance() -> None:
    [rule] = yaml.safe_load(CONFIG.read_text())["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    assert set(rule["equal"]) == {"alertname", "instance"}


def test_routing_of_a_critical_and_a_warning_alert() -> None:
    cases = (["alertname=DatabaseConnectionHigh", "severity=critical"], ["alertname=X", "severity=warning"])
    for labels in cases:
        result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "ops-workers"
