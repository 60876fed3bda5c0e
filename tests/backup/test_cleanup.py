"""Cleanup against both stores (S3 through a moto server process) and the real PostgreSQL for leases."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgServer
from workers.backup.cleanup import CleanupReport, prune
from workers.backup.lease import deletion_claims, reading_lease
from workers.backup.lock import backup_lock, held_backup_locks
from workers.backup.maintenance import cleanup_backups
from workers.backup.manifest import Manifest, list_manifests, write_manifest
from workers.backup.naming import BackupKind, new_backup_id, object_key, scope_prefix
from workers.backup.retention import Policy, Verification
from workers.backup.s3 import S3Store
from workers.backup.scratch import (
    list_scratch_databases,
    new_scratch_name,
    scratch_database,
    sweep_scratch_databases,
)
from workers.backup.storage import PARTIAL_SUFFIX, BackupStore, LocalStore
from workers.backup.verification import Reason, VerificationResult, verification_key, write_verification
from workers.errors import BackupInUse, ConfigError
from workers.settings import PostgresTarget, Settings, load_settings

Store = LocalStore | S3Store
STORES = ["local", "s3"]
NOW = datetime.now(UTC).replace(microsecond=0)
POLICY = Policy(retention_days=30, keep_min=3)
GRACE = timedelta(days=1)


class Crash(Exception):
    pass


def stored_backup(
    store: BackupStore,
    days_old: float,
    *,
    kind: BackupKind = BackupKind.FULL,
    database: str = "platform",
    organization_id: str | None = None,
    verified: Verification | None = None,
) -> Manifest:
    """A published backup (object, then manifest) taken days_old before NOW; optionally with a verification."""
    taken_at = NOW - timedelta(days=days_old)
    backup_id = new_backup_id(taken_at, secrets.token_hex(4))
    key = object_key(kind, database, backup_id, organization_id)
    payload = f"archive {backup_id}".encode()
    store.put_bytes(key, payload)
    manifest = Manifest(
        id=backup_id, kind=kind, database=database, organization_id=organization_id,
        started_at=taken_at, finished_at=taken_at + timedelta(minutes=5), pg_dump_version=None,
        server_version="15", format="pg_dump-custom", compression="zstd", key=key,
        size_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(), tables={"public.t": 1},
    )  # fmt: skip
    write_manifest(store, manifest)
    if verified is not None:
        write_verification(store, verification(manifest, verified))
    return manifest


def verification(manifest: Manifest, outcome: Verification) -> VerificationResult:
    failed = outcome is Verification.FAILED
    return VerificationResult(
        backup_id=manifest.id, kind=str(manifest.kind), database=manifest.database,
        organization_id=manifest.organization_id, key=manifest.key, started_at=NOW, finished_at=NOW,
        outcome=outcome, reason=Reason.ROW_COUNT if failed else None,
        first_mismatch="public.t: 0 rows restored, the manifest says 1" if failed else None,
        tables_checked=1, scratch_database="ops_verify_x",
    )  # fmt: skip


def keys(store: BackupStore) -> set[str]:
    return {o.key for o in store.list_objects("")}


def ids(store: BackupStore) -> set[str]:
    return {m.id for m in list_manifests(store)}


def run_prune(
    store: BackupStore, server: PostgresTarget, *, now: datetime = NOW, dry_run: bool = False, **kwargs: object
) -> CleanupReport:
    with deletion_claims(server) as claims:
        return prune(store, POLICY, claims, now=now, orphan_grace=GRACE, dry_run=dry_run, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", STORES)
def test_cleanup_deletes_expired_backups_whole_and_keeps_every_floor(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    keep = [stored_backup(store, d, verified=Verification.OK if d == 1 else None) for d in (1, 2, 3, 10)]
    expired = [stored_backup(store, d, verified=Verification.FAILED if d == 40 else None) for d in (40, 50)]
    org = [stored_backup(store, d, kind=BackupKind.ORG, organization_id="org-1") for d in (1, 2, 3, 60)]

    report = run_prune(store, pg_admin)

    assert ids(store) == {m.id for m in keep + org}
    for gone in expired:
        assert not {gone.key, gone.manifest_key, verification_key(gone.key)} & keys(store)
    deleted = [(d.backup_id, d.rule) for d in report.deletions if d.what == "backup"]
    assert deleted == [(expired[1].id, "expired"), (expired[0].id, "expired")]  # oldest first
    # The org series never passed verification: held whole, and reported.
    assert report.held == [{"kind": "org", "series": "platform/org-1", "backups": 4}]


@pytest.mark.parametrize(
    ("kind", "per_series"),
    [
        # 3 series x 720 backups (every 2 hours for 60 days): 2,160 backups, 4,320 objects, 1,080 expired.
        ("local", 720),
        # Fewer on S3 (every request crosses HTTP to the moto process), with 250-key pages: 1,440
        # backups, 2,880 objects over 12 pages, 720 expired, 1,440 keys deleted after the manifests.
        ("s3", 480),
    ],
)
def test_cleanup_over_thousands_of_backups_pages_and_batches(
    kind: str, per_series: int, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    if isinstance(store, S3Store):
        store.page_size = 250
    step_hours = 60 * 24 // per_series
    plan = [(series, hours / 24) for series in ("db1", "db2", "db3") for hours in range(0, 60 * 24, step_hours)]
    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(lambda item: stored_backup(store, item[1], database=item[0]), plan))
    for series in ("db1", "db2", "db3"):
        newest = max((m for m in made if m.database == series), key=lambda m: m.started_at)
        write_verification(store, verification(newest, Verification.OK))

    report = run_prune(store, pg_admin)

    expected_gone = {m.id for m in made if m.started_at <= NOW - timedelta(days=30)}
    assert len(expected_gone) == 3 * per_series // 2
    assert report.count("backup") == len(expected_gone)
    remaining = ids(store)
    assert len(remaining) == len(made) - len(expected_gone)
    assert not remaining & expected_gone
    assert len(keys(store)) == 2 * len(remaining) + 3  # object + manifest each, 3 verification records


@pytest.mark.parametrize("kind", STORES)
def test_a_crash_between_the_two_deletes_leaves_no_manifest_without_its_object(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    for d in (0, 1, 2):
        stored_backup(store, d, verified=Verification.OK)
    doomed = [stored_backup(store, d) for d in (31, 32)]

    def crash(object_keys: Sequence[str]) -> None:
        raise Crash(f"killed after deleting the manifests of {len(object_keys)} backups")

    with pytest.raises(Crash):
        run_prune(store, pg_admin, after_manifests=crash)

    # The backups are gone (no manifest), their objects are orphans: never a manifest pointing at nothing.
    for manifest in doomed:
        assert manifest.manifest_key not in keys(store)
        assert manifest.key in keys(store)
    for stored in store.list_objects(""):
        if stored.key.endswith(".manifest.json"):
            assert stored.key.replace(".manifest.json", ".dump.zst") in keys(store)

    # Within the grace period the orphans stay (a backup being written looks the same) ...
    report = run_prune(store, pg_admin)
    assert report.count("orphan") == 0
    # ... and once they are older than it, the next run collects them.
    report = run_prune(store, pg_admin, now=NOW + GRACE + timedelta(minutes=5))
    assert sorted(d.key for d in report.deletions if d.what == "orphan") == sorted(m.key for m in doomed)
    assert not {m.key for m in doomed} & keys(store)


@pytest.mark.parametrize("kind", STORES)
def test_a_backup_being_verified_or_restored_is_never_deleted(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    for d in (0, 1, 2):
        stored_backup(store, d, verified=Verification.OK)
    in_use, free = stored_backup(store, 40), stored_backup(store, 41)

    with reading_lease(pg_admin, in_use.id):
        report = run_prune(store, pg_admin)
        assert report.skipped_in_use == [in_use.id]
        assert in_use.id in ids(store) and free.id not in ids(store)
        # Meanwhile a reader waiting on a backup that cleanup holds gives up with a clear error.
        with deletion_claims(pg_admin) as claims:
            assert claims.claim([free.id]) == {free.id}
            with pytest.raises(BackupInUse, match="being deleted"), reading_lease(pg_admin, free.id, wait_s=0.2):
                pass

    report = run_prune(store, pg_admin)
    assert [d.backup_id for d in report.deletions] == [in_use.id]


@pytest.mark.parametrize("kind", STORES)
def test_dry_run_reports_the_same_deletions_and_deletes_nothing(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    for d in (0, 1, 2):
        stored_backup(store, d, verified=Verification.OK)
    for d in (45, 46):
        stored_backup(store, d)
    store.put_bytes(object_key(BackupKind.FULL, "platform", new_backup_id(NOW, "0badf00d")), b"orphan")
    before = keys(store)

    later = NOW + GRACE * 2
    dry = run_prune(store, pg_admin, now=later, dry_run=True)
    assert keys(store) == before
    real = run_prune(store, pg_admin, now=later)
    assert [d.to_json() for d in dry.deletions] == [d.to_json() for d in real.deletions]
    assert dry.count("backup") == 2 and dry.count("orphan") == 1


@pytest.mark.parametrize("kind", STORES)
def test_recent_orphans_and_foreign_objects_are_left_alone(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    stored_backup(store, 0, verified=Verification.OK)
    in_flight = object_key(BackupKind.FULL, "platform", new_backup_id(NOW, "1234abcd"))
    store.put_bytes(in_flight, b"a backup whose manifest is about to be written")
    store.put_bytes("notes/readme.txt", b"not ours")
    store.put_bytes("full/platform/garbage.dump.zst", b"not a key of ours")

    report = run_prune(store, pg_admin, now=NOW + timedelta(hours=1))

    assert report.deletions == []
    assert {in_flight, "notes/readme.txt", "full/platform/garbage.dump.zst"} <= keys(store)


def test_incomplete_multipart_uploads_older_than_a_day_are_aborted(s3_store: S3Store, pg_admin: PostgresTarget) -> None:
    client = s3_store.client
    name = s3_store.object_name(object_key(BackupKind.FULL, "platform", new_backup_id(NOW, "aaaabbbb")))
    client.create_multipart_upload(Bucket=s3_store.bucket, Key=name)
    [upload] = client.list_multipart_uploads(Bucket=s3_store.bucket)["Uploads"]
    # moto reports one fixed Initiated time for every upload; the clock is ours, so move it instead.
    initiated = upload["Initiated"].astimezone(UTC)

    report = run_prune(s3_store, pg_admin, now=initiated + timedelta(hours=23))
    assert report.count("incomplete_upload") == 0
    assert len(client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", [])) == 1

    report = run_prune(s3_store, pg_admin, now=initiated + timedelta(days=1, minutes=5))
    assert [(d.what, d.key) for d in report.deletions] == [("incomplete_upload", name.removeprefix("platform/"))]
    assert client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []


def test_stale_partial_files_of_the_local_store_are_removed(local_store: LocalStore, pg_admin: PostgresTarget) -> None:
    final = local_store.root / object_key(BackupKind.FULL, "platform", new_backup_id(NOW, "ccccdddd"))
    # What a writer killed mid-way (SIGKILL: no cleanup ran) leaves behind.
    final.parent.mkdir(parents=True)
    partial = final.parent / f".{final.name}.0123abcd{PARTIAL_SUFFIX}"
    partial.write_bytes(b"half a dump")
    assert run_prune(local_store, pg_admin).count("incomplete_upload") == 0
    report = run_prune(local_store, pg_admin, now=datetime.now(UTC) + timedelta(days=1, minutes=5))
    assert [(d.what, d.key) for d in report.deletions] == [
        ("incomplete_upload", partial.relative_to(local_store.root).as_posix())
    ]
    assert not list(local_store.root.rglob("*.partial"))


def test_each_deletion_is_logged_once_with_its_key_and_rule_and_a_dry_run_logs_none(
    local_store: LocalStore, pg_admin: PostgresTarget, caplog: pytest.LogCaptureFixture
) -> None:
    for d in (0, 1, 2):
        stored_backup(local_store, d, verified=Verification.OK)
    expired = stored_backup(local_store, 40)
    orphan = object_key(BackupKind.FULL, "platform", new_backup_id(NOW, "0badf00d"))
    local_store.put_bytes(orphan, b"an object whose manifest was never written")
    partial = local_store.root / "full/platform/2026/01/01/.x.dump.zst.0123abcd.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a dump")
    later = datetime.now(UTC) + GRACE + timedelta(minutes=5)
    caplog.set_level(logging.INFO, logger="workers.backup.cleanup")

    run_prune(local_store, pg_admin, now=later, dry_run=True)
    assert [r for r in caplog.records if r.getMessage() == "backup deleted"] == []

    report = run_prune(local_store, pg_admin, now=later)
    logged = [
        (r.what, r.key, r.rule)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "backup deleted"
    ]
    assert logged == [(d.what, d.key, d.rule) for d in report.deletions]
    assert logged == [
        ("backup", expired.key, "expired"),
        ("orphan", orphan, "orphan_object"),
        ("incomplete_upload", "full/platform/2026/01/01/.x.dump.zst.0123abcd.partial", "incomplete_upload"),
    ]


def url_of(target: PostgresTarget) -> str:
    return f"postgresql://{target.user}@{target.host}:{target.port}/{target.dbname}"


@pytest.mark.parametrize("kind", STORES)
def test_a_held_backup_lock_protects_an_old_orphan_and_releasing_it_lets_cleanup_remove_it(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = ops_env(OPS_DATABASE_URL=url_of(pg_admin))
    store = make_store(kind)
    # A backup that has stored its object and not yet its manifest (S3 dates a multipart object from
    # the start of its upload, so a long one looks old), and an orphan of another scope.
    writing = object_key(BackupKind.FULL, "platform", new_backup_id(NOW, "1234abcd"))
    store.put_bytes(writing, b"a complete object whose manifest is about to be written")
    elsewhere = object_key(BackupKind.FULL, "other", new_backup_id(NOW, "5678abcd"))
    store.put_bytes(elsewhere, b"a dead backup's object")
    later = datetime.now(UTC) + GRACE + timedelta(minutes=5)

    with backup_lock(settings.platform_database(), scope_prefix(BackupKind.FULL, "platform")):
        report = cleanup_backups(settings, store=store, now=later)
        assert [(d.what, d.key) for d in report.deletions if d.what == "orphan"] == [("orphan", elsewhere)]
        assert report.skipped_in_progress == [writing]
        assert writing in keys(store)

    report = cleanup_backups(settings, store=store, now=later)
    assert [(d.what, d.key, d.rule) for d in report.deletions if d.what == "orphan"] == [
        ("orphan", writing, "orphan_object")
    ]
    assert writing not in keys(store)


@pytest.mark.parametrize("kind", STORES)
def test_a_held_backup_lock_protects_an_unfinished_upload_older_than_a_day(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    name = object_key(BackupKind.ORG, "platform", new_backup_id(NOW, "aaaabbbb"), "org-1")
    if isinstance(store, S3Store):
        store.client.create_multipart_upload(Bucket=store.bucket, Key=store.object_name(name))
        [upload] = store.client.list_multipart_uploads(Bucket=store.bucket)["Uploads"]
        # moto reports one fixed Initiated time for every upload; the clock is ours, so move it instead.
        later = upload["Initiated"].astimezone(UTC) + timedelta(days=1, minutes=5)
        unfinished = name
    else:
        partial = store.root / name
        partial = partial.with_name(f".{partial.name}.0123abcd{PARTIAL_SUFFIX}")
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"half a dump, still being written")
        later = datetime.now(UTC) + timedelta(days=1, minutes=5)
        unfinished = partial.relative_to(store.root).as_posix()
    scope = scope_prefix(BackupKind.ORG, "platform", "org-1")

    def running(scopes: Collection[str]) -> set[str]:
        return held_backup_locks(pg_admin, scopes)

    with backup_lock(pg_admin, scope):
        report = run_prune(store, pg_admin, now=later, running=running)
        assert report.deletions == [] and report.skipped_in_progress == [unfinished]
        assert store.discard_incomplete("", dry_run=True) == [unfinished]

    report = run_prune(store, pg_admin, now=later, running=running)
    assert [(d.what, d.key) for d in report.deletions] == [("incomplete_upload", unfinished)]
    assert store.discard_incomplete("", dry_run=True) == []


@pytest.mark.parametrize("kind", STORES)
def test_an_object_whose_manifest_appears_during_cleanup_is_not_an_orphan(
    kind: str, make_store: Callable[[str], Store], pg_admin: PostgresTarget
) -> None:
    store = make_store(kind)
    manifest = stored_backup(store, 0)
    store.delete(manifest.manifest_key)  # listed as an object without a manifest ...

    def backup_finishes(scopes: Collection[str]) -> set[str]:
        # ... and, by the time cleanup asks whether its scope is locked, the backup has published its
        # manifest and let its lock go.
        write_manifest(store, manifest)
        return set()

    report = run_prune(store, pg_admin, now=NOW + GRACE * 2, running=backup_finishes)
    assert report.deletions == []
    assert manifest.id in ids(store)


@pytest.mark.parametrize(
    ("grace", "timeout", "problem"),
    [
        ("86400", None, None),  # the defaults: a day against six hours
        ("7201", "7200", None),
        ("7200", "7200", "OPS_BACKUP_ORPHAN_GRACE_S: must be larger than OPS_BACKUP_DUMP_TIMEOUT_S (7200 <= 7200)"),
        ("3600", None, "OPS_BACKUP_ORPHAN_GRACE_S: must be larger than OPS_BACKUP_DUMP_TIMEOUT_S (3600 <= 21600)"),
    ],
)
def test_the_orphan_grace_must_exceed_the_dump_timeout(grace: str, timeout: str | None, problem: str | None) -> None:
    environ = {"OPS_BACKUP_ORPHAN_GRACE_S": grace}
    if timeout is not None:
        environ["OPS_BACKUP_DUMP_TIMEOUT_S"] = timeout
    if problem is None:
        assert load_settings(environ).backup.orphan_grace_s == float(grace)
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    [reported] = caught.value.problems
    assert reported.startswith(problem)


def test_stale_scratch_databases_are_dropped_and_live_ones_kept(pg_admin: PostgresTarget) -> None:
    stale = new_scratch_name(NOW)
    with psycopg.connect(**pg_admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(stale)))
    try:
        with scratch_database(pg_admin, NOW) as live:
            assert stale in sweep_scratch_databases(pg_admin, dry_run=True)
            assert stale in list_scratch_databases(pg_admin)
            assert stale in sweep_scratch_databases(pg_admin)
            remaining = list_scratch_databases(pg_admin)
            assert live.dbname in remaining and stale not in remaining
        assert live.dbname not in list_scratch_databases(pg_admin)
    finally:
        with psycopg.connect(**pg_admin.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(stale)))


def test_a_live_drill_locked_from_another_database_is_not_swept(pg: PgServer, pg_admin: PostgresTarget) -> None:
    # Advisory locks belong to a database: a drill of another deployment on the same server locks in
    # its own database, and the sweep must still see it.
    elsewhere = pg.create_database()
    with scratch_database(pg_admin, NOW) as live:
        assert live.dbname not in sweep_scratch_databases(elsewhere)
        assert live.dbname in list_scratch_databases(elsewhere)
