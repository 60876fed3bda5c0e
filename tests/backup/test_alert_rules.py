"""The backup alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parents[2]

RULES = REPO / "deploy" / "prometheus" / "rules" / "backup.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "backup_test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if IN_CI:
            raise AssertionError("promtool not installed; .ci/run installs the prometheus package")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def test_backup_rules_are_valid() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_backup_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_rule_test_with_a_wrong_expectation_fails(tmp_path: Path) -> None:
    # Guards against a rule test file that passes whatever the rules say.
    broken = RULE_TESTS.read_text().replace("eval_time: 27h\n", "eval_time: 25h\n", 1)
    assert broken != RULE_TESTS.read_text()
    copy = tmp_path / "tests" / "backup_test.yml"
    copy.parent.mkdir()
    copy.write_text(broken)
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / "backup.yml")
    result = run_promtool("test", "rules", copy)
    assert result.returncode != 0
    assert "BackupTooOld" in result.stdout + result.stderr


def test_every_metric_the_rules_read_is_defined() -> None:
    import re

    from prometheus_client.metrics import MetricWrapperBase

    from workers import metrics

    defined = {v._name for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)}
    read = set(re.findall(r"\b(ops_[a-z_]+)", RULES.read_text()))
    assert read, "the rules read no ops_ metric"
    assert read <= defined, f"rules read undefined metrics: {sorted(read - defined)}"
