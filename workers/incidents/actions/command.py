"""Run an allow-listed command: argv from the configuration, never a shell; fixed environment and cwd."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Mapping

from workers.errors import ActionError, UnsafeParameter
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    text,
)
from workers.incidents.templates import render
from workers.parent_death import die_with_parent

OUTPUT_LIMIT_BYTES = 4000
FIXED_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
WORKING_DIRECTORY = "/"
# A label substituted into an argument must look like a name: no leading dash (an option), no
# whitespace, no shell or path syntax. The command never runs through a shell anyway.
SAFE_ARGUMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@=-]{0,127}")

PARAMS: Mapping[str, Param] = {
    "command": Param(Kind.TEXT, required=True),  # a name from `commands:` in the playbooks file
}


def _kill_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the command and everything it started (its own process group), then reap it; return its code."""
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def check_label_argument(field: str, value: str) -> str:
    """value, when it may stand as one command-line argument.

    Raises:
        UnsafeParameter: value starts with '-', holds whitespace, path or shell syntax, or is empty.
    """
    if not SAFE_ARGUMENT.fullmatch(value):
        raise UnsafeParameter(field, f"label value {value!r} is not a plain name")
    return value


def run_command(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Run the named allow-listed argv with a deadline; ok when it exits 0. Output is captured and truncated.

    Raises:
        ActionError: the command is not in the allow-list or cannot be started.
        UnsafeParameter: a label substituted into the argv is not a plain name.
    """
    name = text(params, "command")
    template = ctx.commands.get(name)
    if template is None:
        raise ActionError(f"command {name!r} is not in the allow-list")
    argv = [render(f"commands.{name}", part, ctx.labels, ctx.variables, check_label_argument) for part in template]
    if ctx.dry_run:
        return ActionResult(True, f"would run {name}", {"command": name, "argv": argv})
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=FIXED_ENV,
                cwd=WORKING_DIRECTORY,
                # Its own session and process group (id = its pid): on a deadline the whole group is
                # killed, so a command that forked (sh -c "a & b") leaves nothing running.
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),  # dies with the worker process running it
            )
        except OSError as exc:
            raise ActionError(f"command {name!r} could not start: {exc.strerror or exc}") from exc
        timed_out = False
        try:
            returncode = proc.wait(timeout=ctx.timeout_s)
        except subprocess.TimeoutExpired:
            returncode = _kill_group(proc)
            timed_out = True
        except BaseException:
            _kill_group(proc)  # a task time limit or shutdown interrupted the wait: leave nothing behind
            raise
        size = output.tell()
        output.seek(max(0, size - OUTPUT_LIMIT_BYTES))
        tail = output.read().decode("utf-8", "replace")
    detail = {
        "command": name,
        "argv": argv,
        "returncode": returncode,
        "output": tail,
        "output_truncated": size > OUTPUT_LIMIT_BYTES,
        "timed_out": timed_out,
    }
    if timed_out:
        return ActionResult(False, f"{name} killed after {ctx.timeout_s:g}s", detail)
    return ActionResult(returncode == 0, f"{name} exited with {returncode}", detail)


RUN = ActionSpec(run_command, PARAMS, "run an allow-listed command")
