"""`ops-workers check` and friends as an operator runs them: real processes, real exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from workers.cli import worker_env
from workers.settings import load_settings
from workers.state.db import create_state_engine, current_revision, head_revision

REPO = Path(__file__).resolve().parent.parent


def ops(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_exits_0_when_every_service_answers(base_env: dict[str, str], pg_admin: object) -> None:
    env = {**base_env, "OPS_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres"}
    result = ops(env, "check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker: ok" in result.stdout
    assert "platform database: ok" in result.stdout
    assert "backup store: ok" in result.stdout


def test_check_exits_1_naming_the_unreachable_service(base_env: dict[str, str]) -> None:
    env = {
        **base_env,
        "OPS_BROKER_URL": "redis://127.0.0.1:1/0",
        "OPS_DATABASE_URL": "postgresql://nobody:pw-never-shown@127.0.0.1:1/platform",
    }
    result = ops(env, "check")

    assert result.returncode == 1
    assert "broker: FAILED" in result.stdout
    assert "platform database: FAILED" in result.stdout
    assert "pw-never-shown" not in result.stdout + result.stderr


def test_check_exits_2_listing_every_bad_setting_and_probes_nothing(base_env: dict[str, str]) -> None:
    env = {**base_env, "OPS_LOG_LEVEL": "LOUD", "OPS_RECEIVER_BIND": "nowhere", "OPS_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = ops(env, "check")

    assert result.returncode == 2
    assert "OPS_LOG_LEVEL" in result.stderr and "OPS_RECEIVER_BIND" in result.stderr
    assert "broker" not in result.stdout


def test_db_upgrade_migrates_the_state_database(base_env: dict[str, str]) -> None:
    result = ops(base_env, "db", "upgrade")

    assert result.returncode == 0, result.stderr
    assert "state database at revision" in result.stdout
    assert ops(base_env, "db", "current").stdout.strip() not in ("", "empty")


def test_demo_seed_creates_the_platform_schema_with_rows(base_env: dict[str, str], pg: pytest.FixtureRequest) -> None:
    target = pg.create_database()  # type: ignore[attr-defined]
    url = f"postgresql://postgres@127.0.0.1:5432/{target.dbname}"
    # An empty database that is not the demo one: seed refuses nothing (it is empty), fills it.
    result = ops(base_env, "demo", "seed", "--database-url", url, "--organizations", "2", "--molecules-per-org", "10")

    assert result.returncode == 0, result.stderr
    assert "organizations=2" in result.stdout and "molecules=20" in result.stdout
    again = ops(base_env, "demo", "seed", "--database-url", url)
    assert "already seeded" in again.stdout
    assert pg.scalar(target, "select count(distinct organization_id) from job_results") == 2  # type: ignore[attr-defined]


def test_demo_seed_reset_drops_only_a_database_it_created(base_env: dict[str, str], pg: pytest.FixtureRequest) -> None:
    precious = pg.create_database(seed="create table precious (x int); insert into precious values (1);")  # type: ignore[attr-defined]
    url = f"postgresql://postgres@127.0.0.1:5432/{precious.dbname}"

    refused = ops(base_env, "demo", "seed", "--reset", "--database-url", url)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refuses to drop" in refused.stderr and "Traceback" not in refused.stderr
    assert pg.scalar(precious, "select count(*) from precious") == 1  # type: ignore[attr-defined]
    system = ops(base_env, "demo", "seed", "--reset", "--database-url", "postgresql://postgres@127.0.0.1:5432/template1")
    assert system.returncode == 2 and "system database" in system.stderr

    demo = pg.create_database()  # type: ignore[attr-defined]
    demo_url = f"postgresql://postgres@127.0.0.1:5432/{demo.dbname}"
    small = ("--organizations", "1", "--molecules-per-org", "5")
    first = ops(base_env, "demo", "seed", "--reset", "--database-url", demo_url, *small)
    assert first.returncode == 0, first.stderr  # empty: dropped and created with the marker
    again = ops(base_env, "demo", "seed", "--reset", "--database-url", demo_url, *small)
    assert again.returncode == 0, again.stderr  # its own marker: dropped and seeded again
    assert pg.scalar(demo, "select count(*) from organizations") == 1  # type: ignore[attr-defined]


def test_check_json_lists_the_settings_problems_on_stdout(base_env: dict[str, str]) -> None:
    result = ops({**base_env, "OPS_LOG_LEVEL": "LOUD"}, "check", "--json")

    assert result.returncode == 2
    [entry] = json.loads(result.stdout)
    assert (entry["service"], entry["ok"]) == ("settings", False)
    assert any("OPS_LOG_LEVEL" in problem for problem in entry["problems"])


def test_check_json_reports_settings_and_playbooks_before_the_probes(base_env: dict[str, str]) -> None:
    result = ops({**base_env, "OPS_BROKER_URL": "redis://127.0.0.1:1/0"}, "check", "--json")

    assert result.returncode == 1
    services = {entry["service"]: entry["ok"] for entry in json.loads(result.stdout)}
    assert services["settings"] and services["playbooks"] and not services["broker"]


@pytest.mark.parametrize("args", [("incidents", "list"), ("incidents", "show", "1"), ("db", "current")])
def test_an_unreachable_state_database_is_one_line_and_exit_1(base_env: dict[str, str], args: tuple[str, ...]) -> None:
    env = {**base_env, "OPS_STATE_DATABASE_URL": "postgresql://ops:pw-never-shown@127.0.0.1:1/state"}
    result = ops(env, *args)

    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: state database") and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr and "pw-never-shown" not in result.stderr


@pytest.mark.parametrize("args", [("incidents", "list"), ("db", "upgrade"), ("check",)])
def test_a_state_database_in_an_unwritable_place_is_one_line_and_exit_1(
    base_env: dict[str, str], args: tuple[str, ...]
) -> None:
    env = {**base_env, "OPS_STATE_DATABASE_URL": "sqlite:////proc/ops-nowhere/state.db"}
    result = ops(env, *args)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot create /proc/ops-nowhere" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_for_an_unknown_queue_is_refused(base_env: dict[str, str]) -> None:
    result = ops(base_env, "worker", "-Q", "incidents,nosuchqueue")

    assert result.returncode == 2
    assert "nosuchqueue" in result.stderr and "incidents, backups, default" in result.stderr


def test_a_backups_worker_with_more_than_one_process_is_refused(base_env: dict[str, str]) -> None:
    result = ops(base_env, "worker", "-Q", "default,backups", "-c", "2")

    assert result.returncode == 2
    assert "-c 2 with the backups queue" in result.stderr and "one pg_dump at a time" in result.stderr


def test_a_worker_whose_metrics_port_is_taken_or_invalid_does_not_start(base_env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = ops({**base_env, "OPS_METRICS_BIND": f"127.0.0.1:{port}"}, "worker", "-Q", "default")
    assert taken.returncode == 1, taken.stderr
    assert "OPS_METRICS_BIND" in taken.stderr and str(port) in taken.stderr and "Traceback" not in taken.stderr

    invalid = ops(base_env, "worker", "-Q", "default", "--metrics-bind", "127.0.0.1:99999")
    assert invalid.returncode == 2
    assert "--metrics-bind 127.0.0.1:99999: port must be between 0 and 65535" in invalid.stderr


def test_an_incident_id_beyond_64_bits_is_a_usage_error(base_env: dict[str, str]) -> None:
    for args in (("show",), ("resolve",), ("ack", "--by", "me")):
        result = ops(base_env, "incidents", args[0], "99999999999999999999999", *args[1:])
        assert result.returncode == 2, result.stderr
        assert "99999999999999999999999 is not in the range" in result.stderr and "Traceback" not in result.stderr


def test_two_workers_on_one_queue_keep_their_own_metrics_directories(tmp_path: Path) -> None:
    settings = load_settings({"OPS_VAR_DIR": str(tmp_path)})
    first = Path(worker_env(settings, "incidents-1@%h", None)["PROMETHEUS_MULTIPROC_DIR"])
    (first / "counter_123.db").write_bytes(b"samples of the first worker")

    second = Path(worker_env(settings, "incidents-2@%h", None)["PROMETHEUS_MULTIPROC_DIR"])

    assert second != first and second.parent == first.parent == tmp_path / "metrics"
    assert first.name == f"incidents-1@{socket.gethostname()}"
    assert (first / "counter_123.db").exists()  # starting the second did not empty the first's
    assert list(second.iterdir()) == []


def test_a_worker_migrates_a_fresh_state_database_before_it_starts(base_env: dict[str, str]) -> None:
    engine = create_state_engine(base_env["OPS_STATE_DATABASE_URL"])
    assert current_revision(engine) is None
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "worker", "-Q", "default", "--hostname", "migrate@test"],
        env=subprocess_env(base_env), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stderr is not None
        # Printed before the process becomes the Celery worker (the per-test timeout bounds this).
        said = next(line for line in worker.stderr if "state database at revision" in line)
    finally:
        worker.kill()
        worker.wait(timeout=30)
        assert worker.stderr is not None
        worker.stderr.close()

    assert said.strip() == f"state database at revision {head_revision()}"
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_worker_whose_state_database_is_unreachable_says_so_and_exits_1(base_env: dict[str, str]) -> None:
    env = {**base_env, "OPS_STATE_DATABASE_URL": "postgresql://ops:pw-never-shown@127.0.0.1:1/state"}
    result = ops(env, "worker", "-Q", "default")

    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: state database") and "Traceback" not in result.stderr


def test_a_receiver_whose_port_is_taken_says_so_and_exits_1(base_env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**base_env, "OPS_RECEIVER_BIND": f"127.0.0.1:{port}", "OPS_RECEIVER_TOKEN": "t" * 32}
        result = ops(env, "receiver")

    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (OPS_RECEIVER_BIND)" in result.stderr
