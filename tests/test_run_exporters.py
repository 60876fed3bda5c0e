"""`ops-workers run` starts the exporter, and the reference celery-exporter when `make exporter` installed it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_CI
from workers.cli import process_specs
from workers.processes import celery_exporter_spec
from workers.settings import Bind, Settings


def test_run_starts_the_exporter_on_its_bind(settings: Settings) -> None:
    specs = {spec.name: spec for spec in process_specs(settings, {})}
    assert specs["exporter"].argv[-2:] == ("workers", "exporter")
    assert "PROMETHEUS_MULTIPROC_DIR" not in specs["exporter"].env  # its registry is its own


def test_celery_exporter_spec_needs_the_installed_venv(tmp_path: Path) -> None:
    bind = Bind("127.0.0.1", 9808)
    assert celery_exporter_spec(tmp_path, bind, "incidents") is None
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert celery_exporter_spec(tmp_path, bind, "incidents") is None  # installed only once stamped
    (tmp_path / ".installed").write_text("")
    spec = celery_exporter_spec(tmp_path, bind, "incidents")
    assert spec is not None
    assert spec.argv[0] == str(tmp_path / "bin" / "python")
    assert list(spec.argv[spec.argv.index("--port") : spec.argv.index("--port") + 2]) == ["--port", "9808"]


def test_run_hands_the_broker_url_to_the_celery_exporter_in_its_environment_only(settings: Settings) -> None:
    broker = "redis://:s3cret@127.0.0.1:6379/14"
    specs = {spec.name: spec for spec in process_specs(settings, {"OPS_BROKER_URL": broker})}
    if "celery-exporter" not in specs:
        assert not IN_CI, "CI runs `make exporter` before the tests"
        pytest.skip("celery-exporter not installed here (make exporter)")
    spec = specs["celery-exporter"]
    assert spec.env["CE_BROKER_URL"] == broker
    assert all("s3cret" not in arg for arg in spec.argv)
