"""Where backups live: the BackupStore protocol, LocalStore (a directory) and S3Store (boto3)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from workers.errors import ObjectNotFound, StorageFull, StorageUnavailable
from workers.settings import BackupSettings

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
DELETE_BATCH = 1000  # S3's DeleteObjects accepts at most 1,000 keys per request


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size_bytes: int
    modified_at: datetime


class ObjectWriter(Protocol):
    """What open_writer() yields: a write-only byte sink."""

    @property
    def part_size_bytes(self) -> int:
        """Multipart part size in use (0 when the store writes one stream)."""
        ...

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class ObjectReader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class BackupStore(Protocol):
    """A place for backup objects, addressed by keys relative to its root ("full/db/2026/...")."""

    @property
    def url(self) -> str:
        """file://DIR or s3://BUCKET/PREFIX; holds no credentials."""
        ...

    def open_writer(self, key: str, *, size_hint_bytes: int | None = None) -> AbstractContextManager[ObjectWriter]:
        """A writer whose object appears under key only if the block exits cleanly; else nothing is stored.

        Raises:
            StorageUnavailable, StorageFull, StorageRefused: on the way in or out of the block.
        """
        ...

    def open_reader(self, key: str) -> AbstractContextManager[ObjectReader]:
        """Stream the object's bytes. Raises ObjectNotFound."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object atomically (manifests)."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """A small object's bytes. Raises ObjectNotFound."""
        ...

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every complete object whose key starts with prefix, in key order (no page limit)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove up to DELETE_BATCH objects in one request; missing keys are not an error.

        Raises:
            ValueError: more than DELETE_BATCH keys.
            StorageUnavailable, StorageRefused: the store did not delete every key.
        """
        ...

    def discard_incomplete(
        self,
        prefix: str,
        *,
        started_before: datetime | None = None,
        dry_run: bool = False,
        spare: Collection[str] = (),
    ) -> list[str]:
        """Remove unfinished writes under prefix (a killed writer's leftovers); return their keys.

        Only call this while holding the backup lock of the scope, or a live writer's upload is lost;
        or with started_before well in the past (cleanup), which leaves every recent upload alone, and
        the scopes whose lock is held now in spare (key prefixes left alone). dry_run lists without
        removing. A key names the unfinished write itself (a local `.partial` file, or the key of an S3
        multipart upload), relative to the store's root.
        """
        ...

    def probe(self) -> str:
        """Write, read back and delete a probe object; return one line. Raises StorageUnavailable."""
        ...


class _FileWriter:
    part_size_bytes = 0

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("xb")

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            raise _os_error(self._path, exc) from exc

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        # Only reached to discard the write (finish() closed it otherwise): a flush that fails here,
        # e.g. on a full disk, must not hide the error that got us here.
        with contextlib.suppress(OSError):
            self._file.close()


def _os_error(path: Path, exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{path}: no space left on device; nothing was stored")
    return StorageUnavailable(f"{path}: {exc.strerror or exc}")


class LocalStore:
    """A directory: writes go to a hidden .partial file and are renamed into place when complete."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or key.startswith("/"):
            raise ValueError(f"{key!r} escapes the store root")
        return path

    @contextmanager
    def open_writer(self, key: str, *, size_hint_bytes: int | None = None) -> Iterator[ObjectWriter]:
        final = self._path(key)
        partial = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            writer = _FileWriter(partial)
        except OSError as exc:
            raise _os_error(final.parent, exc) from exc
        try:
            yield writer
            try:
                writer.finish()
                os.replace(partial, final)
                _fsync_dir(final.parent)
            except OSError as exc:
                raise _os_error(final, exc) from exc
        finally:
            writer.close()
            partial.unlink(missing_ok=True)

    @contextmanager
    def open_reader(self, key: str) -> Iterator[ObjectReader]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise _os_error(path, exc) from exc
        with handle:
            yield handle

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_writer(key) as writer:
            writer.write(data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as reader:
            return reader.read()

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not start.is_dir():
            return
        found: list[StoredObject] = []
        for directory, _, files in os.walk(start):
            for name in files:
                if name.startswith("."):
                    continue  # partial writes and probes
                path = Path(directory, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = path.stat()
                    found.append(StoredObject(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        if len(keys) > DELETE_BATCH:
            raise ValueError(f"at most {DELETE_BATCH} keys per delete_many()")
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise _os_error(self._path(key), exc) from exc

    def discard_incomplete(
        self,
        prefix: str,
        *,
        started_before: datetime | None = None,
        dry_run: bool = False,
        spare: Collection[str] = (),
    ) -> list[str]:
        start = self.root / prefix
        if not start.is_dir():
            return []
        removed: list[str] = []
        for path in sorted(start.rglob(f".*{PARTIAL_SUFFIX}")):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(tuple(spare)):
                continue
            if started_before is not None:
                # ctime moves with every write: a partial file still being written always looks recent.
                try:
                    started = datetime.fromtimestamp(path.stat().st_ctime, UTC)
                except FileNotFoundError:
                    continue  # finished or discarded meanwhile
                if started >= started_before:
                    continue
            if not dry_run:
                path.unlink(missing_ok=True)
            removed.append(key)
        return removed

    def probe(self) -> str:
        probe = self.root / ".ops-workers-probe"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            if probe.read_bytes() != b"ok":
                raise StorageUnavailable(f"{self.url}: probe object read back differently")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(f"{self.url} not writable: {exc.strerror or exc}") from exc
        return f"{self.url} writable"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(settings: BackupSettings) -> BackupStore:
    """The store OPS_BACKUP_STORE names."""
    if settings.store.startswith("s3://"):
        from workers.backup.s3 import S3Store

        return S3Store.from_url(settings.store, settings.s3)
    return LocalStore(Path(settings.store[len("file://") :]))
