"""The log archive: logs go into the backup store (workers.backup.storage) and are confirmed there."""

from __future__ import annotations

from pathlib import Path

from workers.backup.storage import BackupStore
from workers.errors import StorageUnavailable

CHUNK_BYTES = 1 << 20


class StoreArchive:
    """ArchiveStore over a BackupStore: an object exists only once complete, then its size is checked."""

    def __init__(self, store: BackupStore) -> None:
        self.store = store

    def describe(self, key: str) -> str:
        return f"{self.store.url}/{key}"

    def put_file(self, key: str, path: Path) -> int:
        """Copy path under key; return the stored size once the store lists it with the source's size.

        Raises:
            StorageUnavailable, StorageFull, StorageRefused: the store did not take the copy.
        """
        expected = path.stat().st_size
        with path.open("rb") as source, self.store.open_writer(key, size_hint_bytes=expected) as sink:
            while chunk := source.read(CHUNK_BYTES):
                sink.write(chunk)
        # The writer committed; read the listing back rather than trusting our own byte count.
        listed = [o for o in self.store.list_objects(key) if o.key == key]
        if not listed or listed[0].size_bytes != expected:
            stored = listed[0].size_bytes if listed else None
            raise StorageUnavailable(f"{self.describe(key)}: stored {stored} bytes, expected {expected}")
        return listed[0].size_bytes
