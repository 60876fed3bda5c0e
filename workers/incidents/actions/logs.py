"""Log actions: archive old logs to the store (originals go only once the copy is confirmed), rotate."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from workers.errors import ActionError
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    flag,
    integer,
    number,
    text,
)
from workers.incidents.actions.paths import confine, regular_files

ARCHIVE_PARAMS: Mapping[str, Param] = {
    "path": Param(Kind.TEXT, required=True, templated=True),
    "pattern": Param(Kind.TEXT, default="*.log*"),
    "older_than": Param(Kind.DURATION, default=86400.0),
    "recursive": Param(Kind.BOOL, default=True),
    "max_files": Param(Kind.INT, default=1000),
}

ROTATE_PARAMS: Mapping[str, Param] = {
    "path": Param(Kind.TEXT, required=True, templated=True),
    "pidfile": Param(Kind.TEXT, default=""),
    "signal": Param(Kind.TEXT, default="HUP", choices=("HUP", "USR1", "USR2")),
}


def _archive_key(top: Path, path: Path, mtime: float) -> str:
    stamp = datetime.fromtimestamp(mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
    relative = path.relative_to(top).as_posix()
    return f"logs/{socket.gethostname()}/{top.name}/{relative}.{stamp}.gz"


def archive_logs(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Gzip each old log, store it, and delete the original only after the store confirmed the copy.

    Raises:
        PathNotAllowed: path resolves outside the allowed roots.
        StorageUnavailable: the store refused a copy (that original and the rest are kept).
    """
    top = confine("path", text(params, "path"), ctx.allowed_roots)
    cutoff = time.time() - number(params, "older_than")
    deadline = time.monotonic() + ctx.timeout_s
    archived: list[dict[str, object]] = []
    candidates = [
        f for f in regular_files(top, text(params, "pattern"), recursive=flag(params, "recursive")) if f.mtime < cutoff
    ][: integer(params, "max_files")]
    if ctx.dry_run:
        listed = [{"path": str(f.path), "key": _archive_key(top, f.path, f.mtime)} for f in candidates]
        return ActionResult(True, f"would archive {len(listed)} log file(s) under {top}", {"files": listed})
    with tempfile.TemporaryDirectory(prefix="ops-logs-") as scratch:
        for found in candidates:
            if time.monotonic() > deadline:
                break
            confine("path", str(found.path), (top,))
            key = _archive_key(top, found.path, found.mtime)
            packed = Path(scratch) / "packed.gz"
            with found.path.open("rb") as source, gzip.open(packed, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            stored = ctx.archive.put_file(key, packed)
            # put_file returned: the copy is durable and its size confirmed, so the original may go.
            os.unlink(found.path)
            archived.append(
                {"path": str(found.path), "key": key, "size_bytes": found.size_bytes, "stored_bytes": stored}
            )
    return ActionResult(
        len(archived) == len(candidates),
        f"archived {len(archived)} of {len(candidates)} log file(s) under {top}",
        {"files": archived, "store": ctx.archive.describe("logs")},
    )


def _read_pid(pidfile: str, ctx: ActionContext) -> int:
    path = confine("pidfile", pidfile, ctx.allowed_roots)
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ActionError(f"pidfile {path}: no process id in it ({exc})") from exc


def rotate_log(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Rotate one log: rename it and signal its writer (pidfile), or copy it aside and truncate it.

    Raises:
        PathNotAllowed: the log or the pidfile lies outside the allowed roots.
        ActionError: the pidfile holds no live process.
    """
    path = confine("path", text(params, "path"), ctx.allowed_roots)
    if not path.is_file():
        return ActionResult(True, f"{path} does not exist; nothing to rotate", {"path": str(path)})
    rotated = path.with_name(f"{path.name}.{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
    pidfile = text(params, "pidfile")
    method = "signal" if pidfile else "copytruncate"
    detail: dict[str, object] = {"path": str(path), "rotated_to": str(rotated), "method": method}
    if ctx.dry_run:
        return ActionResult(True, f"would rotate {path} by {method}", detail)
    if pidfile:
        pid = _read_pid(pidfile, ctx)
        os.rename(path, rotated)
        try:
            os.kill(pid, getattr(signal, f"SIG{text(params, 'signal')}"))
        except ProcessLookupError as exc:
            raise ActionError(f"pidfile names process {pid}, which is not running") from exc
        detail["pid"] = pid
    else:
        # copytruncate loses what the writer appends between the copy and the truncate; it is the
        # fallback for writers that cannot reopen their log on a signal.
        shutil.copy2(path, rotated)
        with path.open("r+b") as handle:
            handle.truncate(0)
    return ActionResult(True, f"rotated {path} by {method}", detail)


ARCHIVE = ActionSpec(archive_logs, ARCHIVE_PARAMS, "gzip old logs into the store, then delete them")
ROTATE = ActionSpec(rotate_log, ROTATE_PARAMS, "rotate a log file (signal via pidfile, or copytruncate)")
