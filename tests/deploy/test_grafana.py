"""deploy/grafana: provisioning files and the dashboard fit together; the dashboard covers every area."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.deploy.tools import DEPLOY, tool
from workers.embedded import free_port

GRAFANA = DEPLOY / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "ops-workers.json").read_text())


def panel_exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] if p["type"] != "row" for t in p["targets"]]


def test_the_datasource_uid_the_dashboard_uses_is_provisioned() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in provisioned["datasources"]}
    used = {p["datasource"]["uid"] for p in DASHBOARD["panels"] if p["type"] != "row"}
    assert used == {"prometheus"} and used <= uids
    assert provisioned["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_dashboard_provider_reads_the_mounted_directory() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ops-workers.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_panels_have_unique_ids_and_targets_with_unique_ref_ids() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]


def test_the_dashboard_covers_every_area_the_issue_names() -> None:
    text = "\n".join(panel_exprs())
    for metric in (
        "ops_queue_messages", "ops_tasks_total", "ops_task_duration_seconds_bucket",
        "ops_backup_last_success_timestamp_seconds", "ops_backup_size_bytes", "ops_backup_duration_seconds",
        "ops_backup_verify_last_success_timestamp_seconds", "ops_incidents_active",
        "ops_remediation_actions_total", "ops_notifications_total",
    ):  # fmt: skip
        assert metric in text, metric


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with no targets, on a free port, to parse the dashboard's queries."""
    binary = tool("prometheus", "prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    (root / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "prometheus did not become ready"
            threading.Event().wait(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_dashboard_query_is_valid_promql(prometheus_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        for expr in panel_exprs():
            body = client.get(f"{prometheus_url}/api/v1/query", params={"query": expr}).json()
            assert body["status"] == "success", (expr, body.get("error"))


def test_every_metric_the_dashboard_reads_is_one_we_export() -> None:
    readme = (DEPLOY.parent / "README.md").read_text().splitlines()
    documented = {line.split("`")[1] for line in readme if line.startswith("| `") and line.count("`") >= 2}
    documented |= {"celery_queue_length", "up"}  # the reference celery-exporter's; Prometheus' own
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in panel_exprs()
        for name in re.findall(r"\b(?:ops|system|database|celery|http|process)_[a-z_]+\b", expr)
    }
    assert used <= documented, sorted(used - documented)
