"""Restore drills against the real PostgreSQL, pg_dump/pg_restore and both stores."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from tests.backup.test_cleanup import stored_backup
from tests.backup.test_org_backup import ACME, WITH_AUDIT_LOG
from workers.backup.cleanup import CleanupReport
from workers.backup.maintenance import cleanup_backups, org_sample, verify
from workers.backup.maintenance_tasks import TRANSIENT as MAINTENANCE_TRANSIENT
from workers.backup.manifest import Manifest, read_manifest, write_manifest
from workers.backup.naming import BackupKind
from workers.backup.operations import organization_ids, take_full_backup, take_org_backup
from workers.backup.retention import Verification
from workers.backup.s3 import S3Store
from workers.backup.scratch import list_scratch_databases
from workers.backup.storage import BackupStore, LocalStore, ObjectReader
from workers.backup.verification import Reason, verification_of
from workers.errors import (
    BackupNotFound,
    CommandInterrupted,
    CommandNotFound,
    ConfigError,
    DatabaseAuthenticationFailed,
    UsageError,
)
from workers.settings import PostgresTarget, Settings
from workers.state.db import create_state_engine, upgrade
from workers.state.schema import backup_verifications

Store = LocalStore | S3Store


def url_of(target: PostgresTarget) -> str:
    return f"postgresql://{target.user}@{target.host}:{target.port}/{target.dbname}"


@pytest.fixture
def drill_settings(ops_env: Callable[..., Settings], platform_db: PostgresTarget) -> Settings:
    return ops_env(OPS_DATABASE_URL=url_of(platform_db))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextmanager
def no_scratch_left(server: PostgresTarget) -> Iterator[None]:
    before = set(list_scratch_databases(server))
    yield
    assert set(list_scratch_databases(server)) <= before, "a throwaway database was left behind"


def state_rows(settings: Settings) -> list[dict[str, Any]]:
    engine = create_state_engine(settings.state_database_url.value)
    try:
        upgrade(engine)  # the table exists only once something was recorded
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(backup_verifications))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_full_backup_verifies_and_the_result_is_recorded_everywhere(
    kind: str, make_store: Callable[[str], Store], drill_settings: Settings, platform_db: PostgresTarget
) -> None:
    store = make_store(kind)
    manifest = take_full_backup(drill_settings, store=store)
    successes_before = metric("ops_backup_verify_last_success_timestamp_seconds", kind="full")

    with no_scratch_left(platform_db):
        result = verify(drill_settings, "latest", store=store)

    assert result.ok, result.first_mismatch
    assert result.backup_id == manifest.id
    assert result.tables_checked == len(manifest.tables) >= 5
    assert {"public.organizations", "public.molecules", "public.docking_jobs"} <= set(manifest.tables)
    stored = verification_of(store, manifest)
    assert stored is not None and stored.outcome is Verification.OK
    [row] = state_rows(drill_settings)
    assert (row["backup_id"], row["outcome"], row["kind"]) == (manifest.id, "ok", "full")
    assert metric("ops_backup_verify_last_success_timestamp_seconds", kind="full") > successes_before


def rewrite_object(store: BackupStore, manifest: Manifest, change: Callable[[bytes], bytes]) -> None:
    data = store.get_bytes(manifest.key)
    store.put_bytes(manifest.key, change(data))


def flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def truncate(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def recount(manifest: Manifest, tables: dict[str, int]) -> Manifest:
    doc = manifest.to_json()
    doc["tables"] = tables
    return Manifest.from_json(json.loads(json.dumps(doc)))


CORRUPTIONS: list[tuple[str, Callable[[BackupStore, Manifest], None], Reason, str]] = [
    ("flipped byte", lambda s, m: rewrite_object(s, m, flip_byte), Reason.CHECKSUM, "checksum mismatch"),
    ("truncated object", lambda s, m: rewrite_object(s, m, truncate), Reason.CHECKSUM, "checksum mismatch"),
    (
        "manifest count disagrees",
        lambda s, m: write_manifest(s, recount(m, {**m.tables, "public.molecules": m.tables["public.molecules"] + 1})),
        Reason.ROW_COUNT,
        "public.molecules: 120 rows restored, the manifest says 121",
    ),
    (
        "manifest misses a table",
        lambda s, m: write_manifest(s, recount(m, {t: n for t, n in m.tables.items() if t != "public.pipelines"})),
        Reason.ROW_COUNT,
        "public.pipelines: restored but not listed in the manifest",
    ),
    (
        "manifest names a table the dump lacks",
        lambda s, m: write_manifest(s, recount(m, {**m.tables, "public.ghosts": 0})),
        Reason.ROW_COUNT,
        "public.ghosts: missing after restore",
    ),
    ("object deleted", lambda s, m: s.delete(m.key), Reason.DOWNLOAD, "not found"),
]


@pytest.mark.parametrize(
    ("corrupt", "reason", "mismatch"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_each_corruption_is_a_failed_verification(
    corrupt: Callable[[BackupStore, Manifest], None],
    reason: Reason,
    mismatch: str,
    local_store: LocalStore,
    drill_settings: Settings,
    platform_db: PostgresTarget,
) -> None:
    manifest = take_full_backup(drill_settings, store=local_store)
    corrupt(local_store, manifest)
    failures_before = metric("ops_backup_verify_failures_total", kind="full", reason=str(reason))

    with no_scratch_left(platform_db):
        result = verify(drill_settings, manifest.id, store=local_store)

    assert result.outcome is Verification.FAILED
    assert result.reason is reason
    assert result.first_mismatch is not None and mismatch in result.first_mismatch
    assert metric("ops_backup_verify_failures_total", kind="full", reason=str(reason)) == failures_before + 1
    stored = verification_of(local_store, read_manifest(local_store, manifest.manifest_key))
    assert stored is not None and stored.reason is reason
    assert [r["outcome"] for r in state_rows(drill_settings)] == ["failed"]


def test_a_flipped_byte_fails_on_s3_too(
    s3_store: S3Store, drill_settings: Settings, platform_db: PostgresTarget
) -> None:
    manifest = take_full_backup(drill_settings, store=s3_store)
    rewrite_object(s3_store, manifest, flip_byte)
    with no_scratch_left(platform_db):
        result = verify(drill_settings, manifest.id, store=s3_store)
    assert (result.outcome, result.reason) == (Verification.FAILED, Reason.CHECKSUM)


# An expression index whose function reads another table without a schema: pg_dump runs the restore
# with an empty search_path, so building the index fails. A real, classic "restores with errors" dump.
BROKEN_ON_RESTORE = """
create table helper (n int); insert into helper values (1);
create table t (x int); insert into t select generate_series(1, 100);
create function plus_helper(int) returns int language sql immutable as 'select $1 + (select n from helper)';
create index t_plus on t (plus_helper(x));
"""


def test_a_dump_that_restores_with_errors_is_a_failed_verification(
    pg: Any, ops_env: Callable[..., Settings], local_store: LocalStore
) -> None:
    source = pg.create_database(seed=BROKEN_ON_RESTORE)
    settings = ops_env(OPS_DATABASE_URL=url_of(source))
    manifest = take_full_backup(settings, store=local_store)

    with no_scratch_left(source):
        result = verify(settings, manifest.id, store=local_store)

    assert (result.outcome, result.reason) == (Verification.FAILED, Reason.RESTORE)
    assert result.first_mismatch is not None and "pg_restore exited" in result.first_mismatch
    assert "helper" in result.first_mismatch


# A partitioned table (its parent holds no rows of its own) and a materialized view (pg_dump stores its
# query, not its rows): neither is in the manifest, and a good backup of them must still verify.
PARTITIONED = """
create table m (id int, at date not null) partition by range (at);
create table m_2025 partition of m for values from ('2025-01-01') to ('2026-01-01');
create table m_2026 partition of m for values from ('2026-01-01') to ('2027-01-01');
insert into m select g, date '2025-06-01' + g from generate_series(1, 300) g;
create materialized view mv as select at, count(*) as n from m group by at;
"""


def test_partitioned_tables_and_materialized_views_verify_and_a_missing_partition_still_fails(
    pg: Any, ops_env: Callable[..., Settings], local_store: LocalStore
) -> None:
    source = pg.create_database(seed=PARTITIONED)
    settings = ops_env(OPS_DATABASE_URL=url_of(source))
    manifest = take_full_backup(settings, store=local_store)
    assert manifest.tables == {"public.m_2025": 213, "public.m_2026": 87}

    with no_scratch_left(source):
        verified = verify(settings, manifest.id, store=local_store)
        assert verified.ok, verified.first_mismatch
        assert verified.tables_checked == 2

        write_manifest(local_store, recount(manifest, {"public.m_2025": 213}))
        failed = verify(settings, manifest.id, store=local_store)
    assert (failed.outcome, failed.reason) == (Verification.FAILED, Reason.ROW_COUNT)
    assert failed.first_mismatch == "public.m_2026: restored but not listed in the manifest"


def fake_bin_dir(tmp_path: Path, pg_restore_stderr: str) -> Path:
    """A directory with the real pg_dump and a pg_restore that reads its input, then fails with this stderr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pg_dump").symlink_to(shutil.which("pg_dump") or "/usr/bin/pg_dump")
    script = bin_dir / "pg_restore"
    script.write_text(f"#!/bin/sh\ncat > /dev/null\necho {shlex.quote(pg_restore_stderr)} >&2\nexit 1\n")
    script.chmod(0o755)
    return bin_dir


def test_a_drill_server_that_drops_the_restore_is_no_verdict_and_is_retried(
    local_store: LocalStore, drill_settings: Settings, ops_env: Callable[..., Settings], platform_db: PostgresTarget,
    tmp_path: Path,
) -> None:  # fmt: skip
    manifest = take_full_backup(drill_settings, store=local_store)
    dropped = "pg_restore: error: could not execute query: server closed the connection unexpectedly"
    settings = ops_env(OPS_DATABASE_URL=url_of(platform_db), OPS_PG_BIN_DIR=str(fake_bin_dir(tmp_path, dropped)))

    with no_scratch_left(platform_db), pytest.raises(CommandInterrupted) as caught:
        verify(settings, manifest.id, store=local_store)

    assert isinstance(caught.value, MAINTENANCE_TRANSIENT)  # backup.verify retries it
    assert verification_of(local_store, manifest) is None  # an outage is not a verdict on the backup
    assert state_rows(settings) == []


def test_an_org_backup_whose_rows_disagree_with_the_manifest_names_the_table(
    local_store: LocalStore, drill_settings: Settings, platform_db: PostgresTarget
) -> None:
    manifest = take_org_backup(drill_settings, organization_ids(drill_settings)[2], store=local_store)
    write_manifest(local_store, recount(manifest, {**manifest.tables, "public.pipelines": 99}))
    with no_scratch_left(platform_db):
        result = verify(drill_settings, manifest.id, store=local_store)
    assert (result.outcome, result.reason) == (Verification.FAILED, Reason.ROW_COUNT)
    restored = manifest.tables["public.pipelines"]
    assert result.first_mismatch == f"{manifest.key}: public.pipelines: {restored} rows restored, the manifest says 99"


def only_pg_dump(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "only-pg-dump"
    bin_dir.mkdir()
    (bin_dir / "pg_dump").symlink_to(shutil.which("pg_dump") or "/usr/bin/pg_dump")
    return bin_dir


DRILL_ERRORS: list[tuple[str, BackupKind, Callable[[Path], dict[str, str]], type[Exception], str]] = [
    ("pg_restore missing", BackupKind.FULL, lambda tmp: {"OPS_PG_BIN_DIR": str(only_pg_dump(tmp))},
     CommandNotFound, "pg_restore not found"),
    ("drill role refused", BackupKind.FULL,
     lambda _: {"OPS_BACKUP_VERIFY_DATABASE_URL": "postgresql://ops_no_such_role@127.0.0.1:5432/postgres"},
     DatabaseAuthenticationFailed, 'role "ops_no_such_role" does not exist'),
    ("tenant column missing", BackupKind.ORG, lambda _: {"OPS_TENANT_COLUMN": "tenant_id"},
     UsageError, "has no column 'tenant_id' (OPS_TENANT_COLUMN)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "breakage", "error", "message"), [d[1:] for d in DRILL_ERRORS], ids=[d[0] for d in DRILL_ERRORS]
)
def test_a_drill_that_cannot_run_is_recorded_and_counted_as_a_drill_error(
    kind: BackupKind,
    breakage: Callable[[Path], dict[str, str]],
    error: type[Exception],
    message: str,
    pg: Any,
    ops_env: Callable[..., Settings],
    local_store: LocalStore,
    tmp_path: Path,
) -> None:
    source = pg.create_database(seed=WITH_AUDIT_LOG)
    env = {"OPS_DATABASE_URL": url_of(source), "OPS_TENANT_TABLES": "organizations,molecules"}
    good = ops_env(**env)
    manifest = take_full_backup(good, store=local_store) if kind is BackupKind.FULL else (
        take_org_backup(good, ACME, store=local_store)
    )  # fmt: skip
    settings = ops_env(**env, **breakage(tmp_path))
    before = metric("ops_backup_verify_failures_total", kind=str(kind), reason="drill_error")

    with no_scratch_left(source), pytest.raises(error, match=re.escape(message)):
        verify(settings, manifest.id, store=local_store)

    stored = verification_of(local_store, manifest)
    assert stored is not None and (stored.outcome, stored.reason) == (Verification.FAILED, Reason.DRILL_ERROR)
    assert stored.first_mismatch is not None and message in stored.first_mismatch
    [row] = state_rows(settings)
    assert (row["backup_id"], row["outcome"], row["reason"]) == (manifest.id, "failed", "drill_error")
    assert metric("ops_backup_verify_failures_total", kind=str(kind), reason="drill_error") == before + 1
    last_failure = metric("ops_backup_verify_last_failure_timestamp_seconds", kind=str(kind))
    assert last_failure >= stored.finished_at.timestamp() - 1


def test_settings_missing_for_a_drill_record_no_verdict(
    ops_env: Callable[..., Settings], drill_settings: Settings, local_store: LocalStore
) -> None:
    manifest = take_full_backup(drill_settings, store=local_store)
    without_platform = ops_env()  # no OPS_DATABASE_URL: where would the throwaway database go?

    with pytest.raises(ConfigError, match="OPS_DATABASE_URL"):
        verify(without_platform, manifest.id, store=local_store)

    assert verification_of(local_store, manifest) is None
    assert state_rows(drill_settings) == []


def test_an_unknown_backup_id_is_a_usage_error(local_store: LocalStore, drill_settings: Settings) -> None:
    with pytest.raises(BackupNotFound):
        verify(drill_settings, "20260101T000000Z-deadbeef", store=local_store)
    with pytest.raises(BackupNotFound):
        verify(drill_settings, "latest", store=local_store)


class GatedStore:
    """The real store, except that reading an object waits for a gate: holds a drill mid-restore."""

    def __init__(self, store: BackupStore) -> None:
        self._store = store
        self.reading = threading.Event()
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def open_reader(self, key: str) -> AbstractContextManager[ObjectReader]:
        if key.endswith(".dump.zst"):
            self.reading.set()
            assert self.gate.wait(120), "the test never opened the gate"
        return self._store.open_reader(key)


def test_verify_and_cleanup_at_the_same_time(
    local_store: LocalStore, drill_settings: Settings, platform_db: PostgresTarget
) -> None:
    # Three newer verified backups (a day apart: backup ids have one-second resolution) make the one
    # under test expendable; cleanup runs a year later.
    target = take_full_backup(drill_settings, store=local_store)
    for days in (1, 2, 3):
        stored_backup(local_store, -days, database=target.database, verified=Verification.OK)
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    gated = GatedStore(local_store)
    outcome: list[object] = []
    drill = threading.Thread(
        target=lambda: outcome.append(verify(drill_settings, target.id, store=gated))  # type: ignore[arg-type]
    )
    drill.start()
    try:
        assert gated.reading.wait(60), "the drill never started reading"
        report: CleanupReport = cleanup_backups(drill_settings, store=local_store, now=later)
        assert report.skipped_in_use == [target.id], report.to_json()
        assert [d.key for d in report.deletions if d.what == "scratch_database"] == []
    finally:
        gated.gate.set()
        drill.join(120)
    [result] = outcome
    assert result.ok  # type: ignore[attr-defined]

    report = cleanup_backups(drill_settings, store=local_store, now=later)
    assert [d.backup_id for d in report.deletions if d.what == "backup"] == [target.id]
    assert verification_of(local_store, target) is None


def test_an_org_backup_is_restored_into_a_scratch_database_with_the_schema_and_compared(
    local_store: LocalStore, drill_settings: Settings, platform_db: PostgresTarget
) -> None:
    organization_id = organization_ids(drill_settings)[0]
    manifest = take_org_backup(drill_settings, organization_id, store=local_store)

    with no_scratch_left(platform_db):
        result = verify(drill_settings, "latest", BackupKind.ORG, store=local_store)

    assert result.ok, result.first_mismatch
    assert (result.backup_id, result.kind, result.organization_id) == (manifest.id, "org", organization_id)
    assert result.tables_checked == len(manifest.tables) >= 5
    assert metric("ops_backup_verify_last_success_timestamp_seconds", kind="org") > 0


def test_an_org_backup_whose_manifest_counts_disagree_fails(
    local_store: LocalStore, drill_settings: Settings, platform_db: PostgresTarget
) -> None:
    manifest = take_org_backup(drill_settings, organization_ids(drill_settings)[1], store=local_store)
    write_manifest(local_store, recount(manifest, {**manifest.tables, "public.molecules": 1}))

    with no_scratch_left(platform_db):
        result = verify(drill_settings, manifest.id, store=local_store)

    assert (result.outcome, result.reason) == (Verification.FAILED, Reason.ROW_COUNT)


def test_the_org_sample_prefers_organizations_verified_longest_ago(
    local_store: LocalStore, drill_settings: Settings
) -> None:
    first, second, third = organization_ids(drill_settings)[:3]
    verified = take_org_backup(drill_settings, first, store=local_store)
    assert verify(drill_settings, verified.id, store=local_store).ok
    never = take_org_backup(drill_settings, second, store=local_store)

    assert org_sample(local_store, 1) == [never.id]
    assert org_sample(local_store, 5) == [never.id, verified.id]  # each organization once, at most 5
    also_never = take_org_backup(drill_settings, third, store=local_store)
    assert set(org_sample(local_store, 2)) == {never.id, also_never.id}
    # Three organizations to cover within 1.5 days: two a day, whatever the configured minimum.
    assert set(org_sample(local_store, 1, cycle_days=1.5)) == {never.id, also_never.id}
    assert len(org_sample(local_store, 1, cycle_days=30)) == 1
