"""Bad input and faults: each ends with a specific error, a failure metric, and nothing published."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import REGISTRY

from tests.backup.conftest import MotoServer, PasswordServer, free_port
from tests.backup.test_full_backup import platform_settings
from tests.conftest import PgServer
from workers.backup.operations import take_full_backup
from workers.backup.s3 import MIB, S3Store
from workers.backup.storage import LocalStore
from workers.backup.tasks import TRANSIENT
from workers.errors import (
    CommandFailed,
    CommandInterrupted,
    CommandNotFound,
    DatabaseAuthenticationFailed,
    DatabaseUnavailable,
    StorageFull,
    StorageRefused,
    StorageUnavailable,
)
from workers.settings import PostgresTarget, Settings


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("ops_backup_failures_total", {"kind": "full", "reason": reason}) or 0.0


def kill_children(name: str) -> Callable[[int], None]:
    """A progress callback that SIGKILLs our child process `name` the first time it is called."""
    done: list[int] = []

    def kill(_: int) -> None:
        if done:
            return
        for child in psutil.Process().children(recursive=True):
            try:
                if child.name() == name:
                    child.send_signal(signal.SIGKILL)
                    done.append(child.pid)
            except psutil.Error:
                continue

    return kill


def test_unreachable_database_is_retryable_and_stores_nothing(
    local_store: LocalStore, ops_env: Callable[..., Settings]
) -> None:
    settings = ops_env(OPS_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/platform")
    before = failures("database_unavailable")
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        take_full_backup(settings, store=local_store)
    assert failures("database_unavailable") == before + 1
    assert list(local_store.list_objects()) == []


def test_wrong_password_is_permanent_and_never_shows_the_password(
    local_store: LocalStore, password_pg: PasswordServer, ops_env: Callable[..., Settings]
) -> None:
    t = password_pg.target
    settings = ops_env(OPS_DATABASE_URL=f"postgresql://{t.user}:Wr0ng-Passw0rd@{t.host}:{t.port}/{t.dbname}")
    with pytest.raises(DatabaseAuthenticationFailed, match="password authentication failed") as caught:
        take_full_backup(settings, store=local_store)
    assert "Wr0ng-Passw0rd" not in str(caught.value)
    assert list(local_store.list_objects()) == []
    # The right password, given the same way, works: the password reaches pg_dump through PGPASSWORD.
    settings = ops_env(OPS_DATABASE_URL=f"postgresql://{t.user}:right-password@{t.host}:{t.port}/{t.dbname}")
    assert take_full_backup(settings, store=local_store).tables["public.organizations"] == 3


def test_a_lock_held_by_ddl_is_a_transient_failure_and_stores_nothing(
    pg: PgServer, local_store: LocalStore, ops_env: Callable[..., Settings]
) -> None:
    source = pg.create_database(seed="create table t (x int); insert into t values (1);")
    settings = platform_settings(ops_env, source, OPS_BACKUP_LOCK_WAIT_TIMEOUT_S="0.2")
    before = failures("database_unavailable")
    with pg.connect(source) as ddl, ddl.transaction():
        ddl.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(CommandInterrupted, match=r"LOCK TABLE public\.t") as caught:
            take_full_backup(settings, store=local_store)
    assert isinstance(caught.value, TRANSIENT)  # backup.full retries it with backoff
    assert failures("database_unavailable") == before + 1
    assert list(local_store.list_objects()) == []


def test_missing_or_partial_s3_credentials_are_permanent(
    moto: MotoServer, aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = moto.new_bucket()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to fall back on here
    store = S3Store(bucket, "p", moto.settings())
    with pytest.raises(StorageRefused, match="Unable to locate credentials; set AWS_ACCESS_KEY_ID") as caught:
        store.put_bytes("full/db/x.manifest.json", b"{}")
    assert not isinstance(caught.value, TRANSIENT)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # and no secret key: boto3 says so when the client is made
    with pytest.raises(StorageRefused, match="Partial credentials found") as caught:
        S3Store(bucket, "p", moto.settings())
    assert not isinstance(caught.value, TRANSIENT)


def test_missing_pg_dump_is_reported_and_stores_nothing(
    local_store: LocalStore, platform_db: PostgresTarget, ops_env: Callable[..., Settings], tmp_path: Path
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    settings = platform_settings(ops_env, platform_db, OPS_PG_BIN_DIR=str(empty_bin))
    with pytest.raises(CommandNotFound, match="pg_dump"):
        take_full_backup(settings, store=local_store)
    assert list(local_store.list_objects()) == []


def test_pg_dump_killed_mid_stream_publishes_nothing(
    local_store: LocalStore, medium_platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, medium_platform_db)
    before = failures("dump_failed")
    with pytest.raises(CommandFailed, match="pg_dump exited with -9"):
        take_full_backup(settings, store=local_store, progress=kill_children("pg_dump"))
    assert failures("dump_failed") == before + 1
    assert list(local_store.list_objects()) == []
    assert not any(local_store.root.rglob("*.partial"))


def test_store_unreachable_mid_upload_publishes_nothing(
    private_moto: MotoServer, aws_credentials: None, medium_platform_db: PostgresTarget,
    ops_env: Callable[..., Settings],
) -> None:  # fmt: skip
    settings = platform_settings(ops_env, medium_platform_db)
    bucket = private_moto.new_bucket()
    store = S3Store(bucket, "p", private_moto.settings())
    killed: list[bool] = []

    def kill_store(size_bytes: int) -> None:
        if size_bytes > 2 * MIB and not killed:
            private_moto.process.kill()
            private_moto.process.wait()
            killed.append(True)

    with pytest.raises(StorageUnavailable, match="unreachable"):
        take_full_backup(settings, store=store, progress=kill_store)
    assert killed


def test_s3_part_upload_failing_mid_stream_raises_storage_unavailable(
    private_moto: MotoServer, aws_credentials: None
) -> None:
    store = S3Store(private_moto.new_bucket(), "p", private_moto.settings(), min_part_bytes=5 * MIB)
    with pytest.raises(StorageUnavailable), store.open_writer("full/db/x.dump.zst") as writer:
        writer.write(os.urandom(6 * MIB))  # the first part goes up in the background
        private_moto.process.kill()
        private_moto.process.wait()
        writer.write(os.urandom(6 * MIB))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"cannot mount a tmpfs: {mounted.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mount_point
    if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # still busy: detach it now


def test_local_disk_full_publishes_nothing_and_leaves_no_partial(
    tiny_disk: Path, medium_platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, medium_platform_db)  # about 1.3 MB compressed
    store = LocalStore(tiny_disk / "backups")
    before = failures("storage_full")
    with pytest.raises(StorageFull, match="no space left"):
        take_full_backup(settings, store=store)
    assert failures("storage_full") == before + 1
    assert [p for p in tiny_disk.rglob("*") if p.is_file()] == []


def test_success_sets_the_last_success_size_and_duration_metrics(
    local_store: LocalStore, platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, platform_db)
    count = REGISTRY.get_sample_value("ops_backup_duration_seconds_count", {"kind": "full"}) or 0.0
    manifest = take_full_backup(settings, store=local_store)
    assert REGISTRY.get_sample_value("ops_backup_duration_seconds_count", {"kind": "full"}) == count + 1
    assert REGISTRY.get_sample_value("ops_backup_size_bytes", {"kind": "full"}) == manifest.size_bytes
    last = REGISTRY.get_sample_value("ops_backup_last_success_timestamp_seconds", {"kind": "full"})
    assert last is not None and last >= manifest.finished_at.timestamp() - 1
