"""deploy/prometheus: the config and every rule file pass the real promtool; every rule has a unit test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.tools import DEPLOY, promtool

PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted([PROMETHEUS / "alerts.yml", *(PROMETHEUS / "rules").glob("*.yml")])
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))

# Every alert the issue names; each must exist and be unit-tested.
REQUIRED_ALERTS = {
    "APIServiceDown", "DatabaseConnectionHigh", "HighErrorRate", "SlowAPIResponse",
    "DockingJobFailureRateHigh",
    "HighCPUUsage", "HighMemoryUsage", "LowDiskSpace", "QueueBacklogHigh", "NoJobsProcessedRecently",
    "ContainerRestartHigh", "PersistentVolumeUsageHigh", "WorkerDown", "ReceiverDown", "BeatDown",
    "RemediationFailing", "NotificationsFailing", "ExporterDown",
}  # fmt: skip


def alert_rules(files: list[Path]) -> set[tuple[str, str]]:
    """(alertname, severity) of every alerting rule: a pair of thresholds shares its alertname."""
    return {
        (rule["alert"], rule["labels"]["severity"])
        for path in files
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def alerts_with_firing_tests(files: list[Path]) -> set[tuple[str, str]]:
    """(alertname, severity) of every alert some unit test expects to fire."""
    return {
        (case["alertname"], expected["exp_labels"]["severity"])
        for path in files
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        for expected in case.get("exp_alerts") or []
    }


def alerts_with_quiet_tests(files: list[Path]) -> set[str]:
    """Alertnames some unit test expects not to fire at some evaluation."""
    return {
        case["alertname"]
        for path in files
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }


def test_prometheus_config_and_its_rule_files_are_valid() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_clean(path: Path) -> None:
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_rule_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_required_alert_exists_and_every_rule_has_a_firing_and_a_quiet_unit_test() -> None:
    defined = alert_rules(RULE_FILES)
    names = {name for name, _ in defined}
    assert names >= REQUIRED_ALERTS, REQUIRED_ALERTS - names
    # Per severity: the critical rule of a pair is a rule of its own, with its own threshold.
    untested = defined - alerts_with_firing_tests(TEST_FILES)
    assert not untested, f"no unit test expects these to fire: {sorted(untested)}"
    assert names <= alerts_with_quiet_tests(TEST_FILES), names - alerts_with_quiet_tests(TEST_FILES)


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
                    assert rule["annotations"]["summary"], rule["alert"]


def test_a_wrong_expectation_makes_promtool_fail(tmp_path: Path) -> None:
    # Guards against unit tests that pass whatever the rules say.
    source = (PROMETHEUS / "tests" / "alerts_test.yml").read_text()
    broken = re.sub(r"summary: \"Worker worker-backups:9541 is down\"", 'summary: "something else"', source)
    assert broken != source
    (tmp_path / "tests").mkdir()
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
    (tmp_path / "tests" / "alerts_test.yml").write_text(broken)
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path / "tests")
    assert result.returncode != 0
    assert "WorkerDown" in result.stdout + result.stderr
