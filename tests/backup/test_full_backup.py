"""Full backups: pg_dump streamed through zstd into a store, counts from the same snapshot, manifest last."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.backup.conftest import row_counts
from workers.backup.lock import backup_lock
from workers.backup.manifest import find_manifest, list_manifests
from workers.backup.naming import BackupKind, scope_prefix
from workers.backup.operations import take_full_backup
from workers.backup.s3 import S3Store
from workers.backup.storage import LocalStore
from workers.errors import AlreadyRunning
from workers.settings import PostgresTarget, Settings

Store = LocalStore | S3Store


def platform_settings(ops_env: Callable[..., Settings], target: PostgresTarget, **extra: str) -> Settings:
    password = f":{target.password.value}" if target.password else ""
    url = f"postgresql://{target.user}{password}@{target.host}:{target.port}/{target.dbname}"
    return ops_env(OPS_DATABASE_URL=url, **extra)


def restore_with_cli(store: Store, key: str, tmp_path: Path, target: PostgresTarget) -> None:
    archive = tmp_path / "restore.dump.zst"
    archive.write_bytes(store.get_bytes(key))
    dump = subprocess.run(["zstd", "-dc", str(archive)], check=True, capture_output=True).stdout
    subprocess.run(
        ["pg_restore", "--exit-on-error", "--no-owner", "-h", target.host, "-p", str(target.port),
         "-U", target.user, "-d", target.dbname],
        input=dump, check=True, capture_output=True,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_full_backup_is_a_restorable_pg_dump_with_a_matching_manifest(
    kind: str,
    make_store: Callable[[str], Store],
    platform_db: PostgresTarget,
    ops_env: Callable[..., Settings],
    pg: Any,
    tmp_path: Path,
) -> None:
    settings = platform_settings(ops_env, platform_db)
    store = make_store(kind)

    manifest = take_full_backup(settings, store=store)

    assert manifest.kind is BackupKind.FULL
    assert manifest.database == platform_db.dbname
    assert manifest.key.startswith(f"full/{platform_db.dbname}/")
    assert manifest.format == "pg_dump-custom" and manifest.compression == "zstd"
    assert manifest.pg_dump_version and "pg_dump" in manifest.pg_dump_version
    assert manifest.server_version.split(".")[0].isdigit()
    assert manifest.finished_at >= manifest.started_at
    stored = store.get_bytes(manifest.key)
    assert len(stored) == manifest.size_bytes
    assert hashlib.sha256(stored).hexdigest() == manifest.sha256
    assert stored[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert {k: v for k, v in manifest.tables.items()} == row_counts(platform_db)
    assert list_manifests(store) == [manifest]
    assert find_manifest(store, manifest.id) == manifest

    scratch = pg.create_database()
    restore_with_cli(store, manifest.key, tmp_path, scratch)
    assert row_counts(scratch) == manifest.tables


def test_row_counts_and_dump_come_from_the_same_snapshot(
    local_store: LocalStore,
    fresh_platform_db: PostgresTarget,
    ops_env: Callable[..., Settings],
    pg: Any,
    tmp_path: Path,
) -> None:
    settings = platform_settings(ops_env, fresh_platform_db)
    before = row_counts(fresh_platform_db)
    inserted = []

    def insert_while_dumping(_: int) -> None:
        # Runs while pg_dump streams and the counter counts: the new rows must be in neither.
        if not inserted:
            with psycopg.connect(**fresh_platform_db.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO molecules (organization_id, name, smiles, molecular_weight)"
                    " SELECT organization_id, 'late', 'C', 12 FROM molecules LIMIT 50"
                )
            inserted.append(True)

    manifest = take_full_backup(settings, store=local_store, progress=insert_while_dumping)

    assert inserted
    assert row_counts(fresh_platform_db)["public.molecules"] == before["public.molecules"] + 50
    assert dict(manifest.tables) == before
    scratch = pg.create_database()
    restore_with_cli(local_store, manifest.key, tmp_path, scratch)
    assert row_counts(scratch) == before


def test_the_password_travels_in_the_environment_never_in_argv(
    local_store: LocalStore, medium_platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    # The test server trusts 127.0.0.1, so any password connects; what matters is where it travels.
    # The medium database's dump outgrows the pipe, so pg_dump is still running at the first chunk.
    db = medium_platform_db
    target = PostgresTarget(db.host, db.port, db.user, db.dbname)
    settings = ops_env(
        OPS_DATABASE_URL=f"postgresql://{target.user}:Sup3r-Secret-pw@{target.host}:{target.port}/{target.dbname}"
    )
    seen: list[tuple[list[str], str]] = []

    def inspect_children(_: int) -> None:
        if seen:
            return
        for child in psutil.Process().children(recursive=True):
            try:
                if child.name() == "pg_dump":
                    environ = Path(f"/proc/{child.pid}/environ").read_bytes().decode()
                    seen.append((child.cmdline(), environ))
            except (psutil.Error, OSError):
                continue  # a child that just exited

    take_full_backup(settings, store=local_store, progress=inspect_children)

    assert seen, "pg_dump was not seen running"
    argv, environ = seen[0]
    assert not any("Sup3r-Secret-pw" in arg for arg in argv)
    assert "PGPASSWORD=Sup3r-Secret-pw" in environ.split("\0")
    assert any(arg.startswith("--snapshot=") for arg in argv)
    assert any(arg.startswith("--lock-wait-timeout=") for arg in argv)


def test_a_second_backup_of_the_same_database_is_refused_and_stores_nothing(
    local_store: LocalStore, platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, platform_db)
    with (
        backup_lock(platform_db, scope_prefix(BackupKind.FULL, platform_db.dbname)),
        pytest.raises(AlreadyRunning, match="already running"),
    ):
        take_full_backup(settings, store=local_store)
    assert list(local_store.list_objects()) == []
    # The lock died with its session: the next backup runs.
    assert take_full_backup(settings, store=local_store).kind is BackupKind.FULL
