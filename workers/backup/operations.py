"""Backup operations as the tasks and the CLI run them: build the edges from Settings, lock, call the core."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from workers.backup.dump import DumpOptions, create_full_backup
from workers.backup.lock import backup_lock
from workers.backup.manifest import Manifest
from workers.backup.naming import BackupKind, new_backup_id, scope_prefix
from workers.backup.process import find_program
from workers.backup.storage import BackupStore, open_store
from workers.backup.stream import Progress
from workers.settings import Settings

log = logging.getLogger(__name__)


def dump_options(settings: Settings) -> DumpOptions:
    backup = settings.backup
    return DumpOptions(
        pg_dump=find_program("pg_dump", backup.pg_bin_dir),
        timeout_s=backup.dump_timeout_s,
        lock_wait_timeout_s=backup.lock_wait_timeout_s,
        zstd_level=backup.zstd_level,
        zstd_threads=backup.zstd_threads,
    )


def take_full_backup(
    settings: Settings, *, store: BackupStore | None = None, progress: Progress | None = None
) -> Manifest:
    """Back up the platform database now; used by the backup.full task and `ops-workers backup full`.

    Raises:
        AlreadyRunning: a full backup of this database is in progress elsewhere; nothing was stored.
    """
    target = settings.platform_database()
    store = store if store is not None else open_store(settings.backup)
    options = dump_options(settings)
    started_at = datetime.now(UTC)
    backup_id = new_backup_id(started_at, secrets.token_hex(4))
    scope = scope_prefix(BackupKind.FULL, target.dbname)
    with backup_lock(target, scope):
        # Holding the lock, any unfinished upload in this scope belongs to a dead backup.
        discarded = store.discard_incomplete(scope)
        if discarded:
            log.warning("unfinished uploads discarded", extra={"scope": scope, "count": discarded})
        return create_full_backup(
            target, store, backup_id=backup_id, started_at=started_at, options=options, progress=progress
        )
