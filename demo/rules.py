"""The deploy/ rule files and Alertmanager config, rendered for a fast local loop. Pure but for file I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def rule_files() -> list[Path]:
    """Every rule file production loads: alerts.yml and rules/*.yml."""
    return [PROMETHEUS_DIR / "alerts.yml", *sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))]


def shorten_for(groups: dict[str, Any], for_duration: str) -> dict[str, Any]:
    """The same rule groups with every `for:` replaced by for_duration; expressions stay as they are."""
    shortened = []
    for group in groups["groups"]:
        rules = [{**rule, "for": for_duration} if "for" in rule else dict(rule) for rule in group["rules"]]
        shortened.append({**group, "rules": rules, "interval": "1s"})
    return {"groups": shortened}


def render_rules(out_dir: Path, for_duration: str) -> list[Path]:
    """Write shortened copies of every rule file into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in rule_files():
        target = out_dir / source.name
        target.write_text(yaml.safe_dump(shorten_for(yaml.safe_load(source.read_text()), for_duration)))
        written.append(target)
    return written


def prometheus_config(rule_paths: list[Path], alertmanager: str, jobs: dict[str, list[str]]) -> dict[str, Any]:
    """A Prometheus config scraping jobs (job -> host:port targets) every second, alerting alertmanager."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in rule_paths],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()
        ],
    }


def alertmanager_config(receiver_url: str, token_file: Path) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml pointed at a local receiver, with second-scale grouping."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["route"].update({"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"})
    for route in config["route"].get("routes", []):
        route["group_wait"] = "0s"
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = receiver_url
            webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return config
