"""`ops-workers run`: every process starts; SIGTERM stops them all; a dead child stops the rest."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60


class Running:
    """An `ops-workers run` process whose output lines are collected by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "run", "--no-embedded"],
            env=subprocess_env(env),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, needle: str, count: int = 1, timeout: float = START_TIMEOUT_S) -> None:
        while sum(needle in line for line in self.seen) < count:
            try:
                self.seen.append(self.lines.get(timeout=timeout))
            except queue.Empty:
                raise AssertionError(f"never saw {needle!r} x{count}; output:\n" + "\n".join(self.seen)) from None

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@pytest.fixture
def running(base_env: dict[str, str]) -> Iterator[Running]:
    env = {**base_env, "OPS_RECEIVER_TOKEN": "test-token-not-secret", "OPS_LOG_LEVEL": "INFO"}
    run = Running(env)
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()
    run.reader.join(timeout=10)
    assert run.proc.stdout is not None
    run.proc.stdout.close()


def test_run_starts_every_process_and_sigterm_leaves_none(running: Running) -> None:
    running.wait_for("started beat")
    running.wait_for("ready.", count=2)  # both workers report ready
    family = running.descendants()
    names = {line.split("started ")[1].split(" ")[0] for line in running.seen if "| started " in line}
    assert {"worker-incidents", "worker-backups", "beat"} <= names
    assert len(family) >= 3
    # Migrated by `run` before any child starts, so the workers never race the receiver to create it.
    migrated = next(i for i, line in enumerate(running.seen) if "run | state database at revision" in line)
    assert migrated < next(i for i, line in enumerate(running.seen) if "| started " in line)

    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(timeout=60) == 0

    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left running: {[p.pid for p in alive]}"


def test_run_exits_nonzero_and_stops_the_rest_when_a_child_dies(running: Running) -> None:
    running.wait_for("started beat")
    running.wait_for("ready.", count=2)
    family = running.descendants()
    beat_pid = int(next(line for line in running.seen if "started beat" in line).split("pid ")[1].split(")")[0])

    psutil.Process(beat_pid).kill()

    assert running.proc.wait(timeout=60) == 1
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []
    running.wait_for("beat exited with")
