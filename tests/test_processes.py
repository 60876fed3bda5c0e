"""How processes are launched: worker pool sizes, node names; the supervisor behind `ops-workers run`."""

from __future__ import annotations

import io
import os
import socket
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from workers.errors import UsageError
from workers.processes import ProcessSpec, Supervisor, node_name, worker_concurrency


@pytest.mark.parametrize(
    ("queues", "requested", "expected"),
    [
        (["backups"], None, 1),
        (["backups", "default"], None, 1),
        (["backups"], 1, 1),
        (["incidents", "default"], None, 2),
        (["incidents"], 4, 4),
        (["default"], 1, 1),
    ],
)
def test_worker_concurrency_is_one_with_the_backups_queue(
    queues: list[str], requested: int | None, expected: int
) -> None:
    assert worker_concurrency(queues, requested) == expected


def test_more_than_one_process_with_the_backups_queue_is_refused_saying_why() -> None:
    with pytest.raises(UsageError, match="one pg_dump at a time"):
        worker_concurrency(["default", "backups"], 2)


def test_node_name_expands_the_host_as_celery_does() -> None:
    host = socket.gethostname()

    assert node_name("backups@%h") == f"backups@{host}"
    assert node_name("backups-2@fixed") == "backups-2@fixed"
    assert node_name("just-a-host") == "celery@just-a-host"  # celery reads a bare value as the host


class Output(io.StringIO):
    """The supervisor's prefixed output; wait_for() blocks until a line holding text arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            written = super().write(text)
            self.changed.notify_all()
        return written

    def wait_for(self, text: str, count: int, timeout_s: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.getvalue().count(text) >= count, timeout_s), self.getvalue()


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", textwrap.dedent(code))


def started_supervisor(specs: list[ProcessSpec], ready: int) -> Supervisor:
    """A supervisor of specs, once each of them printed 'ready'."""
    out = Output()
    supervisor = Supervisor(specs, out)
    supervisor.start()
    out.wait_for("| ready", count=ready)
    return supervisor


def stop(supervisor: Supervisor) -> None:
    supervisor.request_stop()
    assert supervisor.wait() == 0


def survivors(processes: list[psutil.Process], timeout_s: float = 10) -> list[psutil.Process]:
    """Those of processes still running after timeout_s; a zombie has ended, whoever reaps it."""
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return [p for p in alive if _status(p) not in (None, psutil.STATUS_ZOMBIE)]


def _status(process: psutil.Process) -> str | None:
    try:
        return str(process.status())
    except psutil.NoSuchProcess:
        return None


def test_infrastructure_is_stopped_only_after_the_processes_that_use_it(tmp_path: Path) -> None:
    events = tmp_path / "events"
    # The broker stands for the embedded Redis (started first); the worker needs a moment to
    # finish in warm shutdown and must not lose the broker meanwhile.
    broker = python(f"""
        import signal, sys, time
        def stop(*_):
            open({str(events)!r}, "a").write("broker got SIGTERM\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    """)
    worker = python(f"""
        import signal, sys, time
        def stop(*_):
            time.sleep(0.5)
            open({str(events)!r}, "a").write("worker finished\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    """)
    specs = [ProcessSpec("redis", broker, infrastructure=True), ProcessSpec("worker", worker)]

    stop(started_supervisor(specs, ready=2))

    assert events.read_text().splitlines() == ["worker finished", "broker got SIGTERM"]


def test_no_process_of_a_childs_group_survives_even_when_its_leader_exited(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # Leaves its own child running when it exits, as a crashed server leaves its workers.
    leaver = python(f"""
        import os, signal, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pid_file)!r}, "w").write(str(grandchild.pid))
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        print("ready", flush=True)
        time.sleep(300)
    """)

    supervisor = started_supervisor([ProcessSpec("leaver", leaver)], ready=1)
    group = os.getpgid(supervisor.procs["leaver"].pid)
    grandchild = psutil.Process(int(pid_file.read_text()))
    assert os.getpgid(grandchild.pid) == group

    stop(supervisor)

    assert survivors([grandchild]) == []
    assert survivors([p for p in psutil.process_iter() if _group(p) == group]) == []


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None
