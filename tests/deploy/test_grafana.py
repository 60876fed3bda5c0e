"""deploy/grafana: provisioning files and the dashboard fit together; the dashboard covers every area."""

from __future__ import annotations

import json

import yaml

from tests.deploy.tools import DEPLOY

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
