"""create_full_backup(): pg_dump -Fc -Z0 -> zstd -> SHA-256 -> store, in one snapshot; manifest last."""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from workers import __version__
from workers.backup.manifest import Manifest, write_manifest
from workers.backup.naming import BackupKind, object_key
from workers.backup.process import run_streaming
from workers.backup.snapshot import Snapshot, exported_snapshot
from workers.backup.storage import BackupStore
from workers.backup.stream import DigestWriter, Progress, ProgressWriter, compressor
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

FULL_FORMAT = "pg_dump-custom"
COMPRESSION = "zstd"
VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DumpOptions:
    pg_dump: str  # absolute path of the pg_dump binary (see process.find_program)
    timeout_s: float
    lock_wait_timeout_s: float
    zstd_level: int
    zstd_threads: int


def pg_dump_argv(pg_dump: str, snapshot_id: str, lock_wait_timeout_s: float) -> list[str]:
    """pg_dump's argv: connection details and the password travel in the environment, never here."""
    return [
        pg_dump,
        "--format=custom",
        # zstd compresses after us, on several threads, far faster than pg_dump's own zlib.
        "--compress=0",
        "--no-password",
        f"--snapshot={snapshot_id}",
        # Fail fast instead of queueing behind DDL (and making everything else queue behind us).
        f"--lock-wait-timeout={max(1, int(lock_wait_timeout_s * 1000))}",
    ]


def client_env(target: PostgresTarget) -> dict[str, str]:
    """libpq variables for a client program; PGPASSWORD is the only way the password reaches it."""
    return {**target.child_env(), "PGAPPNAME": "ops-workers-backup", "PGCONNECT_TIMEOUT": "10"}


def program_version(program: str) -> str:
    """`program --version`, e.g. 'pg_dump (PostgreSQL) 15.20'."""
    out = io.BytesIO()
    run_streaming([program, "--version"], env={}, timeout_s=VERSION_TIMEOUT_S, sink=out)
    return out.getvalue().decode("utf-8", "replace").strip()


class _RowCounter(threading.Thread):
    """Counts rows in the snapshot while pg_dump streams, so the counts cost no wall time."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(name="row-counter", daemon=True)
        self._snapshot = snapshot
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.counts = self._snapshot.count_rows(self._snapshot.user_tables())
        except BaseException as exc:  # handed to the caller by result()
            self.error = exc

    def result(self) -> dict[str, int]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.counts


def create_full_backup(
    target: PostgresTarget,
    store: BackupStore,
    *,
    backup_id: str,
    started_at: datetime,
    options: DumpOptions,
    progress: Progress | None = None,
) -> Manifest:
    """Dump target into store under a key from backup_id; publish the manifest last and return it.

    Call it under backup_lock(). Nothing is published unless every step succeeded.

    Raises:
        DatabaseUnavailable, DatabaseAuthenticationFailed: PostgreSQL could not be used.
        CommandNotFound, CommandFailed, CommandTimedOut: pg_dump did not succeed.
        StorageUnavailable, StorageFull, StorageRefused: the store did not take the object.
    """
    version = program_version(options.pg_dump)
    key = object_key(BackupKind.FULL, target.dbname, backup_id)
    with exported_snapshot(target, lock_wait_timeout_s=options.lock_wait_timeout_s) as snapshot:
        counter = _RowCounter(snapshot)
        counter.start()
        try:
            with store.open_writer(key, size_hint_bytes=snapshot.database_size_bytes) as writer:
                digest = DigestWriter(writer)
                with compressor(options.zstd_level, options.zstd_threads).stream_writer(
                    digest,  # type: ignore[arg-type]  # zstandard only needs write()
                    closefd=False,
                    write_return_read=True,
                ) as zstd_sink:
                    run_streaming(
                        pg_dump_argv(options.pg_dump, snapshot.snapshot_id, options.lock_wait_timeout_s),
                        env=client_env(target),
                        timeout_s=options.timeout_s,
                        sink=ProgressWriter(zstd_sink, progress),
                    )
                tables = counter.result()
                part_size_bytes = writer.part_size_bytes
        finally:
            counter.join()  # the snapshot's connection must be idle before the transaction ends
    manifest = Manifest(
        id=backup_id,
        kind=BackupKind.FULL,
        database=target.dbname,
        organization_id=None,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        pg_dump_version=version,
        server_version=snapshot.server_version,
        format=FULL_FORMAT,
        compression=COMPRESSION,
        key=key,
        size_bytes=digest.size_bytes,
        sha256=digest.hexdigest(),
        tables=tables,
        part_size_bytes=part_size_bytes,
        tool_version=f"ops-workers {__version__}",
    )
    write_manifest(store, manifest)
    log.info(
        "backup stored",
        extra={"kind": "full", "database": target.dbname, "key": key, "size_bytes": digest.size_bytes},
    )
    return manifest
