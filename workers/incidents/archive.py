"""Where archived logs go: the log archive behind the ArchiveStore protocol (a directory store)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from workers.errors import StorageUnavailable

PARTIAL_SUFFIX = ".partial"


class DirectoryArchive:
    """Archive objects as files under a directory; an object is complete only after fsync and rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid archive key {key!r}")
        return self.root.joinpath(*parts)

    def describe(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def put_file(self, key: str, path: Path) -> int:
        """Copy path under key; return the stored size once it is durable and equal to the source's.

        Raises:
            StorageUnavailable: the copy failed or the stored size does not match.
        """
        destination = self._path(key)
        partial = destination.with_name(f"{destination.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(partial, destination)
            directory = os.open(destination.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            stored, expected = destination.stat().st_size, path.stat().st_size
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise StorageUnavailable(f"archive {self.describe(key)}: {exc.strerror or exc}") from exc
        if stored != expected:
            raise StorageUnavailable(
                f"archive {self.describe(key)}: stored {stored} bytes, expected {expected}"
            )
        return stored
