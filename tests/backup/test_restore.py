"""Restore: full into a new or empty database, refusals without --force, checksum verified before commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.backup.conftest import row_counts
from tests.backup.test_full_backup import platform_settings
from workers.backup.naming import BackupKind
from workers.backup.operations import restore_backup, take_full_backup, take_org_backup
from workers.backup.storage import LocalStore, open_store
from workers.errors import BackupNotFound, ChecksumMismatch, RestoreRefused, UsageError
from workers.settings import PostgresTarget, Settings


def database_exists(pg: Any, name: str) -> bool:
    with pg.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def corrupt(store: LocalStore, key: str, offset: int) -> None:
    path = store.root / key
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_full_restore_creates_the_target_and_restores_every_row(
    platform_db: PostgresTarget, ops_env: Callable[..., Settings], pg: Any
) -> None:
    settings = platform_settings(ops_env, platform_db)
    manifest = take_full_backup(settings)
    name = f"ops_test_restored_{manifest.id[-8:]}"
    pg.created.append(name)

    result = restore_backup(settings, manifest.id, name)

    assert result.kind is BackupKind.FULL and result.created_database
    assert row_counts(platform_db.with_dbname(name)) == dict(manifest.tables)


def test_full_restore_refuses_the_source_and_non_empty_targets_without_force(
    platform_db: PostgresTarget, ops_env: Callable[..., Settings], pg: Any
) -> None:
    settings = platform_settings(ops_env, platform_db)
    manifest = take_full_backup(settings)
    with pytest.raises(RestoreRefused, match="came from"):
        restore_backup(settings, manifest.id, platform_db.dbname)
    occupied = pg.create_database(seed="CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1);")
    with pytest.raises(RestoreRefused, match="not empty"):
        restore_backup(settings, manifest.id, occupied.dbname)
    assert pg.scalar(occupied, "SELECT count(*) FROM keep_me") == 1

    empty = pg.create_database()
    restore_backup(settings, manifest.id, empty.dbname)  # an existing empty database is fine
    assert row_counts(empty) == dict(manifest.tables)
    restore_backup(settings, manifest.id, empty.dbname, force=True)  # --force: cleaned, restored again
    assert row_counts(empty) == dict(manifest.tables)


@pytest.mark.parametrize("where", ["start", "middle", "last byte"])
def test_corrupted_full_backup_aborts_before_anything_commits(
    where: str, platform_db: PostgresTarget, ops_env: Callable[..., Settings], pg: Any
) -> None:
    settings = platform_settings(ops_env, platform_db)
    store = open_store(settings.backup)
    assert isinstance(store, LocalStore)
    manifest = take_full_backup(settings)
    corrupt(store, manifest.key, {"start": 100, "middle": manifest.size_bytes // 2, "last byte": -1}[where])
    name = f"ops_test_corrupt_{manifest.id[-8:]}"
    pg.created.append(name)

    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        restore_backup(settings, manifest.id, name)
    assert not database_exists(pg, name)  # the database we created is gone again

    empty = pg.create_database()
    with pytest.raises(ChecksumMismatch):
        restore_backup(settings, manifest.id, empty.dbname)
    assert pg.scalar(empty, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


def test_corrupted_org_backup_rolls_back(fresh_platform_db: PostgresTarget, ops_env: Callable[..., Settings]) -> None:
    settings = platform_settings(ops_env, fresh_platform_db)
    store = open_store(settings.backup)
    assert isinstance(store, LocalStore)
    with psycopg.connect(**fresh_platform_db.conninfo()) as conn:  # type: ignore[arg-type]
        row = conn.execute("SELECT id FROM organizations ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    organization_id = str(row[0])
    manifest = take_org_backup(settings, organization_id)
    corrupt(store, manifest.key, -1)
    with psycopg.connect(**fresh_platform_db.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute("DELETE FROM organizations WHERE id = %s", (organization_id,))

    with pytest.raises(ChecksumMismatch):
        restore_backup(settings, manifest.id, fresh_platform_db.dbname, force=True)
    with psycopg.connect(**fresh_platform_db.conninfo()) as conn:  # type: ignore[arg-type]
        assert conn.execute(
            "SELECT count(*) FROM molecules WHERE organization_id = %s", (organization_id,)
        ).fetchone() == (0,)


def test_unknown_and_malformed_backup_ids_are_usage_errors(
    platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, platform_db)
    with pytest.raises(BackupNotFound, match="20990101T000000Z-deadbeef"):
        restore_backup(settings, "20990101T000000Z-deadbeef", "whatever")
    with pytest.raises(UsageError, match="not a backup id"):
        restore_backup(settings, "../../etc/passwd", "whatever")
