"""Diagnostics actions: capture evidence (top processes, a py-spy dump) and check the dependencies."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping

import psutil

from workers.checks import run_probes
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    integer,
    text,
)

CPU_SAMPLE_S = 0.5
DUMP_LIMIT_CHARS = 8000

CAPTURE_PARAMS: Mapping[str, Param] = {
    "top": Param(Kind.INT, default=10),
    "process_name": Param(Kind.TEXT, default="", templated=True),
}

DEPENDENCIES_PARAMS: Mapping[str, Param] = {}


def _top_processes(count: int) -> dict[str, list[dict[str, object]]]:
    procs = list(psutil.process_iter(["pid", "name", "username"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(CPU_SAMPLE_S)  # cpu_percent compares two readings; this is the sampling interval
    rows: list[dict[str, object]] = []
    for proc in procs:
        try:
            rows.append(
                {
                    "pid": proc.pid,
                    "name": proc.info["name"],
                    "user": proc.info["username"],
                    "rss_bytes": proc.memory_info().rss,
                    "cpu_percent": proc.cpu_percent(None),
                }
            )
        except psutil.Error:
            continue
    by_rss = sorted(rows, key=lambda r: int(str(r["rss_bytes"])), reverse=True)[:count]
    by_cpu = sorted(rows, key=lambda r: float(str(r["cpu_percent"])), reverse=True)[:count]
    return {"by_rss": by_rss, "by_cpu": by_cpu}


def _py_spy_dump(name: str, timeout_s: float) -> dict[str, object]:
    program = shutil.which("py-spy")
    if program is None:
        return {"process_name": name, "dump": None, "reason": "py-spy is not installed"}
    pids = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]
    if not pids:
        return {"process_name": name, "dump": None, "reason": "no such process"}
    try:
        done = subprocess.run(
            [program, "dump", "--pid", str(pids[0])], capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"process_name": name, "pid": pids[0], "dump": None, "reason": "py-spy timed out"}
    output = (done.stdout or done.stderr).decode("utf-8", "replace")[:DUMP_LIMIT_CHARS]
    return {"process_name": name, "pid": pids[0], "dump": output, "returncode": done.returncode}


def capture_diagnostics(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Top processes by RSS and CPU, and a py-spy dump of process_name where available; read-only."""
    evidence: dict[str, object] = dict(_top_processes(integer(params, "top")))
    name = text(params, "process_name")
    if name:
        evidence["py_spy"] = _py_spy_dump(name, ctx.timeout_s)
    return ActionResult(True, f"captured {len(evidence['by_rss'])} processes", evidence)  # type: ignore[arg-type]


def check_dependencies(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Probe Redis, the state database, the platform database and the store; ok when all answer."""
    results = [r.to_json() for r in run_probes(ctx.settings)]
    down = [str(r["service"]) for r in results if not r["ok"]]
    summary = "all dependencies up" if not down else "down: " + ", ".join(down)
    return ActionResult(not down, summary, {"probes": results})


CAPTURE = ActionSpec(capture_diagnostics, CAPTURE_PARAMS, "capture top processes and a py-spy dump")
DEPENDENCIES = ActionSpec(check_dependencies, DEPENDENCIES_PARAMS, "probe Redis, PostgreSQL and the store")
