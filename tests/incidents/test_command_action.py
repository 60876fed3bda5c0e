"""command.run against real child processes: a deadline kills the command's whole process group."""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

from workers.backup.storage import LocalStore
from workers.incidents.actions.base import ActionContext
from workers.incidents.actions.command import run_command
from workers.incidents.archive import StoreArchive
from workers.settings import Settings


def _context(
    settings: Settings, tmp_path: Path, commands: dict[str, tuple[str, ...]], timeout_s: float
) -> ActionContext:
    return ActionContext(settings, False, timeout_s, commands, StoreArchive(LocalStore(tmp_path / "store")))


def _ended(pid: int, timeout_s: float) -> bool:
    """Whether the process has exited (zombie or reaped), waiting up to timeout_s for it to do so."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([handle], [], [], timeout_s)[0])  # a pidfd reads ready once the process exits
    finally:
        os.close(handle)


def test_a_timed_out_command_leaves_none_of_its_children_behind(settings: Settings, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The shell starts a background child, records its pid, then waits in the foreground.
    commands = {"spawner": ("/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60")}

    result = run_command({"command": "spawner"}, _context(settings, tmp_path, commands, timeout_s=1.0))

    assert not result.ok and result.detail["timed_out"] is True
    grandchild = int(pidfile.read_text())
    try:
        assert _ended(grandchild, timeout_s=10), f"the command's child {grandchild} is still running"
    finally:
        if not _ended(grandchild, timeout_s=0):  # only when the assertion failed: clean up what leaked
            group = os.getpgid(grandchild)
            if group != os.getpgid(0):
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(grandchild, signal.SIGKILL)


def test_a_command_runs_in_its_own_session(settings: Settings, tmp_path: Path) -> None:
    commands = {"ids": ("/bin/sh", "-c", 'echo "$$ $(ps -o sid= -p $$) $(ps -o pgid= -p $$)"')}

    result = run_command({"command": "ids"}, _context(settings, tmp_path, commands, timeout_s=10.0))

    assert result.ok, result.detail
    pid, sid, pgid = (int(word) for word in str(result.detail["output"]).split())
    assert pid == sid == pgid != os.getpgid(0)
