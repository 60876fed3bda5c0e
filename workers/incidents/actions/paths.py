"""Path confinement for file actions: every path must resolve, symlinks and '..' followed, inside a root."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from workers.errors import PathNotAllowed


def confine(field: str, raw: str, roots: Sequence[Path]) -> Path:
    """The real path of raw when it lies inside one of roots.

    Raises:
        PathNotAllowed: raw is relative, or resolves (through '..' or symlinks) outside every root.
    """
    if not raw or not os.path.isabs(raw) or "\x00" in raw:
        raise PathNotAllowed(field, raw)
    real = os.path.realpath(raw)
    for root in roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return Path(real)
    raise PathNotAllowed(field, raw)


@dataclass(frozen=True, slots=True)
class FoundFile:
    path: Path
    size_bytes: int
    mtime: float


def regular_files(top: Path, pattern: str, *, recursive: bool) -> Iterator[FoundFile]:
    """Regular files under top whose names match pattern; symlinks are never followed."""
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        if not recursive:
            dirnames.clear()
        for name in sorted(filenames):
            if not fnmatch(name, pattern):
                continue
            path = Path(dirpath) / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield FoundFile(path, info.st_size, info.st_mtime)
