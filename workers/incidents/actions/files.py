"""File clean-up: delete old files under the allowed roots only."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

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

PARAMS: Mapping[str, Param] = {
    "path": Param(Kind.TEXT, required=True, templated=True),
    "pattern": Param(Kind.TEXT, default="*"),
    "older_than": Param(Kind.DURATION, default=86400.0),
    "recursive": Param(Kind.BOOL, default=True),
    "max_files": Param(Kind.INT, default=10000),
}


def cleanup_files(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Delete regular files matching pattern and older than older_than under path (inside an allowed root).

    Raises:
        PathNotAllowed: path resolves outside the allowed roots.
    """
    top = confine("path", text(params, "path"), ctx.allowed_roots)
    if not top.is_dir():
        return ActionResult(True, f"{top} does not exist; nothing to delete", {"path": str(top), "deleted": []})
    cutoff = time.time() - number(params, "older_than")
    deadline = time.monotonic() + ctx.timeout_s
    deleted: list[str] = []
    freed = 0
    complete = True
    for found in regular_files(top, text(params, "pattern"), recursive=flag(params, "recursive")):
        if len(deleted) >= integer(params, "max_files") or time.monotonic() > deadline:
            complete = False
            break
        if found.mtime >= cutoff:
            continue
        # Re-check right before deleting: a directory swapped for a symlink meanwhile must not lead out.
        confine("path", str(found.path), (top,))
        if not ctx.dry_run:
            try:
                os.unlink(found.path)
            except FileNotFoundError:
                continue
        deleted.append(str(found.path))
        freed += found.size_bytes
    verb = "would delete" if ctx.dry_run else "deleted"
    return ActionResult(
        True,
        f"{verb} {len(deleted)} file(s), {freed} bytes under {top}" + ("" if complete else " (stopped early)"),
        {
            "path": str(top),
            "deleted": deleted[:200],
            "deleted_count": len(deleted),
            "freed_bytes": freed,
            "complete": complete,
        },
    )


CLEANUP = ActionSpec(cleanup_files, PARAMS, "delete old files under an allowed root")
