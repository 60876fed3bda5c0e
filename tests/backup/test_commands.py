"""`ops-workers backup ...` as an operator runs it: real processes, JSON output, exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

from tests.backup.conftest import MotoServer, free_port
from tests.backup.test_org_backup import ACME, WITH_AUDIT_LOG
from tests.conftest import PgServer, subprocess_env
from workers.settings import PostgresTarget

REPO = Path(__file__).resolve().parents[2]


def ops(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=subprocess_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def platform_env(base_env: dict[str, str], target: PostgresTarget) -> dict[str, str]:
    return {**base_env, "OPS_DATABASE_URL": f"postgresql://{target.user}@{target.host}:{target.port}/{target.dbname}"}


def test_full_list_show_and_restore_round_trip(
    base_env: dict[str, str], platform_db: PostgresTarget, pg: object
) -> None:
    env = platform_env(base_env, platform_db)
    taken = ops(env, "backup", "full", "--json")
    assert taken.returncode == 0, taken.stderr
    manifest = json.loads(taken.stdout)
    assert manifest["kind"] == "full" and len(manifest["sha256"]) == 64

    listed = ops(env, "backup", "list", "--json")
    assert [m["id"] for m in json.loads(listed.stdout)] == [manifest["id"]]
    shown = ops(env, "backup", "show", manifest["id"], "--json")
    assert json.loads(shown.stdout) == manifest
    human = ops(env, "backup", "show", manifest["id"])
    assert manifest["id"] in human.stdout and "public.molecules=" in human.stdout

    target_db = f"ops_test_cli_{manifest['id'][-8:]}"
    pg.created.append(target_db)  # type: ignore[attr-defined]
    restored = ops(env, "backup", "restore", manifest["id"], "--target-db", target_db, "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["tables"] == manifest["tables"]

    refused = ops(env, "backup", "restore", manifest["id"], "--target-db", platform_db.dbname)
    assert refused.returncode == 2
    assert "--force" in refused.stderr


def test_bad_organization_id_exits_2_and_stores_nothing(
    base_env: dict[str, str], platform_db: PostgresTarget, tmp_path: Path
) -> None:
    env = platform_env(base_env, platform_db)
    result = ops(env, "backup", "org", "x' OR '1'='1", "--json")
    assert result.returncode == 2
    assert "OPS_TENANT_ID_PATTERN" in result.stderr
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("*.zst"))


def test_a_tenant_table_without_the_tenant_column_exits_2_and_stores_nothing(
    base_env: dict[str, str], pg: PgServer, tmp_path: Path
) -> None:
    source = pg.create_database(seed=WITH_AUDIT_LOG)
    env = {**platform_env(base_env, source), "OPS_TENANT_TABLES": "organizations,molecules,audit_log",
           "OPS_LOG_LEVEL": "INFO"}  # fmt: skip
    result = ops(env, "backup", "org", ACME)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: tenant table")
    assert "'audit_log'" in line and "OPS_TENANT_TABLES" in line and "OPS_TENANT_COLUMN" in line
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("*.zst"))


def test_a_failed_backup_is_one_line_on_stderr(
    base_env: dict[str, str], platform_db: PostgresTarget, tmp_path: Path
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**platform_env(base_env, platform_db), "OPS_PG_BIN_DIR": str(empty_bin), "OPS_LOG_LEVEL": "INFO"}
    result = ops(env, "backup", "full")
    assert result.returncode == 1
    # main() handles the failure and says so once; nothing below it logs the same failure again.
    assert result.stderr.splitlines() == [f"error: {empty_bin}/pg_dump not found on PATH; install it"
                                          " (e.g. the postgresql-client package)"]  # fmt: skip


def test_unknown_backup_id_exits_2(base_env: dict[str, str], platform_db: PostgresTarget) -> None:
    env = platform_env(base_env, platform_db)
    result = ops(env, "backup", "show", "20990101T000000Z-deadbeef")
    assert result.returncode == 2
    assert "20990101T000000Z-deadbeef" in result.stderr


def test_corrupted_object_restore_exits_1_naming_the_cause(
    base_env: dict[str, str], platform_db: PostgresTarget, tmp_path: Path, pg: object
) -> None:
    env = platform_env(base_env, platform_db)
    manifest = json.loads(ops(env, "backup", "full", "--json").stdout)
    path = tmp_path / "backups" / manifest["key"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target_db = f"ops_test_cli_bad_{manifest['id'][-8:]}"
    pg.created.append(target_db)  # type: ignore[attr-defined]
    result = ops(env, "backup", "restore", manifest["id"], "--target-db", target_db)
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr


def test_restore_refuses_a_target_name_postgres_would_truncate(
    base_env: dict[str, str], platform_db: PostgresTarget
) -> None:
    env = platform_env(base_env, platform_db)
    manifest = json.loads(ops(env, "backup", "full", "--json").stdout)
    result = ops(env, "backup", "restore", manifest["id"], "--target-db", "r" * 70)

    assert result.returncode == 2
    assert "70 bytes" in result.stderr and "truncate" in result.stderr


def test_enqueue_hands_the_job_to_the_backups_queue(
    base_env: dict[str, str], platform_db: PostgresTarget, redis_url: str
) -> None:
    env = platform_env(base_env, platform_db)
    result = ops(env, "backup", "full", "--enqueue", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["task"] == "backup.full"
    with redis.Redis.from_url(redis_url) as client:
        assert client.llen("backups") == 1


def test_enqueue_with_the_broker_down_is_one_line_and_exit_1(
    base_env: dict[str, str], platform_db: PostgresTarget
) -> None:
    env = {**platform_env(base_env, platform_db), "OPS_BROKER_URL": f"redis://:pw-never-shown@127.0.0.1:{free_port()}/0"}
    result = ops(env, "backup", "full", "--enqueue")

    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: broker") and "did not take backup.full" in result.stderr
    assert "Traceback" not in result.stderr and "pw-never-shown" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_restore_refuses_system_databases_even_with_force(
    base_env: dict[str, str], platform_db: PostgresTarget, pg: PgServer
) -> None:
    env = platform_env(base_env, platform_db)
    manifest = json.loads(ops(env, "backup", "full", "--json").stdout)
    for name in ("template1", "postgres", "template0"):
        result = ops(env, "backup", "restore", manifest["id"], "--target-db", name, "--force")
        assert result.returncode == 2, result.stderr
        assert f"--target-db {name} is a system database" in result.stderr
    template = pg.admin.with_dbname("template1")
    assert pg.scalar(template, "select count(*) from pg_tables where schemaname = 'public'") == 0


def test_check_probes_an_s3_store_through_the_store(base_env: dict[str, str], moto: MotoServer) -> None:
    bucket = moto.new_bucket()
    s3_env = {
        **base_env,
        "OPS_BACKUP_STORE": f"s3://{bucket}/platform",
        "OPS_S3_ENDPOINT_URL": moto.endpoint_url,
        "OPS_S3_ADDRESSING_STYLE": "path",
        "OPS_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    ok = ops(s3_env, "check", "--json")
    store = next(r for r in json.loads(ok.stdout) if r["service"] == "backup store")
    assert store["ok"] is True and store["detail"].startswith(f"s3://{bucket}/platform writable")

    down = ops({**s3_env, "OPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "check", "--json")
    assert down.returncode == 1
    store = next(r for r in json.loads(down.stdout) if r["service"] == "backup store")
    assert store["ok"] is False and "unreachable" in store["detail"]
