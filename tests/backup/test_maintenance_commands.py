"""`ops-workers backup verify` and `backup cleanup` as an operator runs them: a child process, real services."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from tests.backup.test_cleanup import NOW, stored_backup
from tests.conftest import PgServer, subprocess_env
from workers.backup.manifest import Manifest, list_manifests, write_manifest
from workers.backup.naming import BackupKind, new_backup_id, object_key
from workers.backup.operations import take_full_backup
from workers.backup.retention import Verification
from workers.backup.scratch import list_scratch_databases, sweep_scratch_databases
from workers.backup.storage import LocalStore
from workers.settings import PostgresTarget, Settings

TIMEOUT_S = 150


def url_of(target: PostgresTarget) -> str:
    return f"postgresql://{target.user}@{target.host}:{target.port}/{target.dbname}"


def ops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        env=subprocess_env(env), capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


@pytest.fixture
def drill_env(base_env: dict[str, str], platform_db: PostgresTarget) -> dict[str, str]:
    return {**base_env, "OPS_DATABASE_URL": url_of(platform_db)}


def store_of(env: dict[str, str]) -> LocalStore:
    return LocalStore(Path(env["OPS_BACKUP_STORE"][len("file://") :]))


def test_verify_exits_0_when_verified_and_1_naming_the_first_mismatch(
    drill_env: dict[str, str], ops_env: Callable[..., Settings]
) -> None:
    settings = ops_env(**drill_env)
    manifest = take_full_backup(settings)

    ok = ops(drill_env, "backup", "verify", "latest", "--kind", "full", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["outcome"] == "ok"

    doc = manifest.to_json()
    doc["tables"] = {**manifest.tables, "public.docking_jobs": 7}
    write_manifest(store_of(drill_env), Manifest.from_json(doc))
    failed = ops(drill_env, "backup", "verify", manifest.id)
    assert failed.returncode == 1
    assert "FAILED full backup" in failed.stdout
    assert "public.docking_jobs" in failed.stdout and "the manifest says 7" in failed.stdout


def test_a_drill_that_cannot_run_exits_1_and_backup_show_carries_it(
    drill_env: dict[str, str], ops_env: Callable[..., Settings], tmp_path: Path
) -> None:
    manifest = take_full_backup(ops_env(**drill_env))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pg_dump").symlink_to(shutil.which("pg_dump") or "/usr/bin/pg_dump")  # and no pg_restore
    failed = ops({**drill_env, "OPS_PG_BIN_DIR": str(bin_dir)}, "backup", "verify", manifest.id)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("error: ") and "pg_restore not found" in failed.stderr

    shown = ops(drill_env, "backup", "show", manifest.id)
    assert "verification: FAILED" in shown.stdout and "(drill_error)" in shown.stdout, shown.stdout
    history = json.loads(ops(drill_env, "backup", "show", manifest.id, "--json").stdout)["verification_history"]
    assert [(h["outcome"], h["reason"]) for h in history] == [("failed", "drill_error")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backup", "verify", "20260101T000000Z-deadbeef"], "no backup with id"),
        (["backup", "verify", "nightly-1"], "is not a backup id"),
        (["backup", "verify", "latest", "--kind", "org"], "no org backup in the store yet"),
        (["backup", "verify", "latest", "--kind", "nightly"], "Invalid value for '--kind'"),
        (["backup", "verify", "20260101T000000Z-deadbeef", "--kind", "org"], "--kind only applies to 'latest'"),
    ],
)
def test_verify_usage_errors_exit_2(drill_env: dict[str, str], args: list[str], message: str) -> None:
    result = ops(drill_env, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def test_cleanup_dry_run_lists_each_deletion_with_its_rule(
    drill_env: dict[str, str], ops_env: Callable[..., Settings]
) -> None:
    settings = ops_env(**drill_env)
    take_full_backup(settings)
    result = ops(drill_env, "backup", "cleanup", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["kept_backups"] == 1
    assert report["held_series"][0]["kind"] == "full"  # never verified: held, and said so

    text = ops(drill_env, "backup", "cleanup", "--dry-run")
    assert text.returncode == 0
    assert "would delete: backup=0" in text.stdout
    assert "none of its recent backups passed verification" in text.stderr


def test_cleanup_lists_each_deletion_it_made_with_its_rule(drill_env: dict[str, str]) -> None:
    store = store_of(drill_env)
    for days in (0, 1, 2):
        stored_backup(store, days, verified=Verification.OK)
    expired = [stored_backup(store, days) for days in (40, 50)]
    orphan = object_key(BackupKind.FULL, "platform", new_backup_id(NOW - timedelta(days=3), "0badf00d"))
    store.put_bytes(orphan, b"an object whose manifest was never written")
    two_days_ago = time.time() - 2 * 86400  # older than OPS_BACKUP_ORPHAN_GRACE_S (a day)
    os.utime(store.root / orphan, (two_days_ago, two_days_ago))
    expected = [("backup", expired[1].key, "expired"), ("backup", expired[0].key, "expired"),
                ("orphan", orphan, "orphan_object")]  # fmt: skip

    def ours(deletions: list[dict[str, object]]) -> list[tuple[object, ...]]:
        # Throwaway databases of other runs' dead drills on the shared server may be swept too.
        return [(d["what"], d["key"], d["rule"]) for d in deletions if d["what"] != "scratch_database"]

    planned = ops(drill_env, "backup", "cleanup", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert ours(json.loads(planned.stdout)["deletions"]) == expected

    result = ops(drill_env, "backup", "cleanup")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for what, key, rule in expected:
        assert any(line.startswith(f"deleted {what} {key}  [{rule}: ") for line in lines), result.stdout
    assert any(line.startswith("deleted: backup=2, orphan=1, incomplete_upload=0, ") for line in lines)
    # ... and each deletion is one log line with its key and rule, as a worker running the task writes it.
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert ours([e for e in events if e["event"] == "backup deleted"]) == expected
    assert {m.id for m in list_manifests(store)} & {m.id for m in expired} == set()
    assert orphan not in {o.key for o in store.list_objects("")}


# Big enough that the restore takes seconds, so the drill can be killed in the middle.
BIG = "create table big (id bigint primary key, payload text); " \
      "insert into big select g, md5(g::text) from generate_series(1, 400000) g;"  # fmt: skip


def test_a_killed_drill_leaves_a_database_that_the_next_run_drops(
    pg: PgServer, base_env: dict[str, str], ops_env: Callable[..., Settings]
) -> None:
    source = pg.create_database(seed=BIG)
    env = {**base_env, "OPS_DATABASE_URL": url_of(source)}
    manifest = take_full_backup(ops_env(**env))
    before = set(list_scratch_databases(source))

    drill = subprocess.Popen(
        [sys.executable, "-m", "workers", "backup", "verify", manifest.id],
        env=subprocess_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        # Nothing to wait on but the server itself: look for the drill's database, up to a deadline.
        deadline = time.monotonic() + 60
        while not set(list_scratch_databases(source)) - before:
            assert drill.poll() is None, "the drill finished before it could be killed"
            assert time.monotonic() < deadline, "the drill never created its database"
            time.sleep(0.05)
        os.killpg(drill.pid, signal.SIGKILL)  # the CLI and its pg_restore child, like a lost container
    finally:
        drill.wait(30)
    [left] = set(list_scratch_databases(source)) - before
    # The server ends the dead drill's session (and frees its lock) when it notices the closed socket;
    # under load that takes a moment. Cleanup runs long after a crash in real life: wait for that state.
    deadline = time.monotonic() + 30
    while left not in sweep_scratch_databases(source, dry_run=True):
        assert time.monotonic() < deadline, "the killed drill's session still holds its lock after 30 s"
        time.sleep(0.1)

    result = ops(env, "backup", "cleanup", "--json")
    assert result.returncode == 0, result.stderr
    swept = [d["key"] for d in json.loads(result.stdout)["deletions"] if d["what"] == "scratch_database"]
    assert left in swept
    assert left not in list_scratch_databases(source)


def test_list_and_show_carry_the_verification(drill_env: dict[str, str], ops_env: Callable[..., Settings]) -> None:
    settings = ops_env(**drill_env)
    unverified = take_full_backup(settings)
    verified = take_full_backup(settings)
    assert ops(drill_env, "backup", "verify", verified.id).returncode == 0

    listed = {m["id"]: m for m in json.loads(ops(drill_env, "backup", "list", "--json").stdout)}
    assert listed[unverified.id]["verification"] is None
    assert listed[verified.id]["verification"]["outcome"] == "ok"
    text = ops(drill_env, "backup", "list").stdout
    assert "unverified" in text and "verified 20" in text

    shown = json.loads(ops(drill_env, "backup", "show", verified.id, "--json").stdout)
    assert shown["verification"]["backup_id"] == verified.id
    assert [(h["backup_id"], h["outcome"]) for h in shown["verification_history"]] == [(verified.id, "ok")]
    assert "verification: verified" in ops(drill_env, "backup", "show", verified.id).stdout
