"""docker-compose.yml, checked without a Docker engine: schema, commands, settings, ports, mounts, secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from tests.deploy.tools import REPO
from workers.cli import cli
from workers.settings import KNOWN_VARIABLES, load_settings

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OURS = {name: s for name, s in SERVICES.items() if s.get("build") == "."}
LONG_RUNNING_OURS = {name: s for name, s in OURS.items() if s.get("restart") != "no"}
REQUIRED_SERVICES = {
    "redis", "postgres", "minio", "minio-setup", "receiver", "worker-incidents", "worker-backups", "beat",
    "flower", "celery-exporter", "prometheus", "alertmanager", "grafana",
}  # fmt: skip


def test_the_file_matches_the_compose_schema_subset() -> None:
    schema = json.loads((Path(__file__).parent / "compose_schema.json").read_text())
    jsonschema.validate(COMPOSE, schema)


def test_a_misspelt_key_is_caught_by_the_schema() -> None:
    schema = json.loads((Path(__file__).parent / "compose_schema.json").read_text())
    broken = {**COMPOSE, "services": {**SERVICES, "beat": {**SERVICES["beat"], "restart_policy": "always"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_every_service_the_issue_lists_is_there() -> None:
    assert set(SERVICES) >= REQUIRED_SERVICES


def resolve_command(argv: list[str]) -> click.Command:
    """Walk `ops-workers ARGV` through the click groups and parse its options; raises on anything unknown."""
    command: click.Command = cli
    args = list(argv)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`ops-workers {' '.join(argv)}`: no command {name!r}"
        command = sub
    command.make_context("ops-workers", args)  # unknown options or bad values raise click errors
    return command


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_command_of_our_image_is_a_real_cli_command(name: str) -> None:
    command = resolve_command(SERVICES[name]["command"])
    assert not isinstance(command, click.Group), f"{name} runs a group, not a command"


def test_a_wrong_command_would_be_caught() -> None:
    with pytest.raises(AssertionError, match="no command 'wroker'"):
        resolve_command(["wroker"])
    with pytest.raises(click.NoSuchOption):
        resolve_command(["worker", "--concurency", "2"])


def environment_names(service: dict[str, Any]) -> set[str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {item.split("=", 1)[0] for item in env}
    return set(env)


def test_every_ops_variable_is_a_known_setting() -> None:
    names = {n for s in SERVICES.values() for n in environment_names(s)}
    example = (REPO / ".env.example").read_text().splitlines()
    names |= {line.split("=", 1)[0] for line in example if line and not line.startswith("#")}
    ops_names = {n for n in names if n.startswith("OPS_")}
    assert ops_names, "no OPS_ variable found; the check would be empty"
    assert ops_names <= KNOWN_VARIABLES, sorted(ops_names - KNOWN_VARIABLES)


def test_every_interpolated_variable_is_in_the_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    secrets_from_env = {s["environment"] for s in COMPOSE["secrets"].values() if "environment" in s}
    example = (REPO / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used | secrets_from_env <= defined, sorted((used | secrets_from_env) - defined)


def test_host_ports_do_not_clash_and_bind_loopback_only() -> None:
    published = [p for s in SERVICES.values() for p in s.get("ports", [])]
    host_ports = [p.split(":")[-2] for p in published]
    assert len(host_ports) == len(set(host_ports)), host_ports
    assert all(p.startswith("127.0.0.1:") for p in published), published


def test_listening_ports_inside_the_network_match_what_prometheus_scrapes() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
        if not target.startswith("localhost")
    }
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in SERVICES, f"Prometheus scrapes {target}, but there is no service {host}"
        service = SERVICES[host]
        binds = " ".join(str(v) for v in (service.get("environment") or {}).values())
        binds += " " + " ".join(service.get("command", []) if isinstance(service.get("command"), list) else [])
        third_party = {"alertmanager": "9093", "celery-exporter": "9808", "flower": "5555"}
        assert f"0.0.0.0:{port}" in binds or third_party.get(host) == port, target


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_mounted_files_and_directories_exist(name: str) -> None:
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith((".", "/")):
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
        else:
            assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"


def test_secrets_are_declared_and_mounted_where_the_configs_read_them() -> None:
    for service in SERVICES.values():
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]
    alertmanager = (REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text()
    assert "/run/secrets/receiver_token" in alertmanager and "receiver_token" in SERVICES["alertmanager"]["secrets"]


def test_exactly_one_beat_and_restart_policies_everywhere() -> None:
    beats = [n for n, s in SERVICES.items() if s.get("command") == ["beat"]]
    assert beats == ["beat"]
    assert SERVICES["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert all("restart" in s for s in SERVICES.values())


def test_every_long_running_service_has_a_health_check() -> None:
    long_running = {n for n, s in SERVICES.items() if s.get("restart") != "no"}
    assert LONG_RUNNING_OURS.keys() <= long_running
    assert {n for n in long_running if "healthcheck" not in SERVICES[n]} == set()


def test_the_exporter_reports_only_the_disks_it_is_told_to() -> None:
    # Without a list it reports every real file system, which in a container includes Docker's
    # bind-mounted /etc/hosts and /etc/resolv.conf.
    mounts = load_settings(dict(SERVICES["exporter"]["environment"])).exporter.disk_mounts
    assert mounts == ("/",)


def test_the_dockerfile_is_slim_and_runs_as_a_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["ops-workers"\]', dockerfile, re.M)
