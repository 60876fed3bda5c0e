"""How each long-running process is launched (argv + environment), and the supervisor behind `ops-workers run`.

This is an entry-point module: it hands environment variables to child processes, so it may touch os.environ.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from celery.utils.nodenames import default_nodename, host_format

from workers.errors import PortInUse, UsageError
from workers.parent_death import die_with_parent
from workers.settings import Bind

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # how long each stop stage gets to finish after SIGTERM before SIGKILL


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    listens: str | None = None
    # Infrastructure (the embedded Redis) is stopped only once every other process has exited:
    # a worker in warm shutdown still needs the broker to acknowledge the task it finishes.
    infrastructure: bool = False


def python_module_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", *args)


def worker_argv(queues: str, concurrency: int, hostname: str, loglevel: str) -> tuple[str, ...]:
    return python_module_argv(
        "celery", "-A", "workers.app", "worker",
        "-Q", queues, "-c", str(concurrency), "--hostname", hostname,
        "--loglevel", loglevel, "--without-mingle", "-E",
    )  # fmt: skip


def worker_concurrency(queues: Sequence[str], requested: int | None) -> int:
    """The pool size of a worker on queues: 1 when it serves backups, else requested or 2.

    Raises:
        UsageError: more than one process asked for a worker that serves the backups queue.
    """
    if "backups" not in queues:
        return requested or 2
    if requested is not None and requested > 1:
        # Each pool process would run its own pg_dump; the per-database lock would only make the
        # extra ones wait, holding a connection and a message for the whole length of a backup.
        raise UsageError(
            f"-c {requested} with the backups queue: a worker runs one pg_dump at a time "
            "(the backup lock serialises per database anyway); use -c 1, or more workers"
        )
    return 1


def node_name(hostname: str) -> str:
    """The Celery node name a --hostname gives (%h, %n, %d expanded), as the worker itself computes it."""
    return str(host_format(default_nodename(hostname)))


def beat_argv(loglevel: str) -> tuple[str, ...]:
    return python_module_argv("celery", "-A", "workers.app", "beat", "--loglevel", loglevel)


# The reference celery-exporter pins old redis/prometheus-client releases, so it has its own venv
# (`make exporter`); the PyPI package ships no console script, so it is started through its click command.
EXPORTER_VENV = Path(__file__).resolve().parent.parent / ".venv-exporter"
EXPORTER_INSTALLED_STAMP = ".installed"
CELERY_EXPORTER_MAIN = "from src.cli import cli; cli(prog_name='celery-exporter', auto_envvar_prefix='CE')"
QUEUE_NAMES = "incidents,backups,default"  # the app's queues (workers.app.QUEUES), as the exporter's -Q


def celery_exporter_spec(venv: Path, bind: Bind, queues: str) -> ProcessSpec | None:
    """How to start the celery-exporter of venv; None when `make exporter` has not installed it.

    The broker URL is read from CE_BROKER_URL in its environment (the caller adds it), never argv.
    """
    python = venv / "bin" / "python"
    if not (venv / EXPORTER_INSTALLED_STAMP).is_file() or not python.is_file():
        return None
    argv = (str(python), "-c", CELERY_EXPORTER_MAIN, "--host", bind.host, "--port", str(bind.port),
            "--queues", queues, "--retry-interval", "5", "--accept-content", "json")  # fmt: skip
    return ProcessSpec("celery-exporter", argv, {}, listens=f"metrics http://{bind}/metrics")


def require_free_port(bind: Bind, variable: str) -> None:
    """Fail with a named error before starting a server whose address another process holds.

    Raises:
        PortInUse: bind is taken (or not an address of this host).
    """
    if bind.port == 0:
        return
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            probe.bind((bind.host, bind.port))
        except OSError as exc:
            raise PortInUse(variable, str(bind), exc.strerror or str(exc)) from exc


def fresh_metrics_dir(path: Path) -> Path:
    """Empty the multiprocess metrics directory; stale files from a previous run would add old samples."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def exec_process(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with argv, so signals reach it directly (used by `ops-workers worker` etc.)."""
    os.execve(argv[0], list(argv), {**os.environ, **env})


class Supervisor:
    """Start children, prefix their output, stop them all on SIGTERM/SIGINT or when one dies."""

    def __init__(self, specs: Sequence[ProcessSpec], out: IO[str]) -> None:
        self.specs = specs
        self.out = out
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._width = max(len(s.name) for s in specs)

    def _emit(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{name:<{self._width}} | {line}\n")
            self.out.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._emit(name, raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def start(self) -> None:
        for spec in self.specs:
            proc = subprocess.Popen(
                list(spec.argv),
                env={**os.environ, **spec.env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # The child gets SIGTERM if the supervisor dies, even by SIGKILL, so nothing is orphaned.
                preexec_fn=die_with_parent(signal.SIGTERM, new_group=True),
            )
            self.procs[spec.name] = proc
            assert proc.stdout is not None
            threading.Thread(target=self._pump, args=(spec.name, proc.stdout), daemon=True).start()
            where = f" listening on {spec.listens}" if spec.listens else ""
            self._emit("run", f"started {spec.name} (pid {proc.pid}){where}")

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def wait(self) -> int:
        """Block until a stop is requested or a child exits; stop the rest; 0 only if none died on its own."""
        died: str | None = None
        while not self._stop.is_set() and died is None:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    died = name
                    self._emit("run", f"{name} exited with {proc.returncode}; stopping the others")
                    break
            self._stop.wait(0.2)
        self.stop_all()
        return 1 if died is not None else 0

    def stop_all(self) -> None:
        """Stop the applications, then the infrastructure they use; then kill what is left of each group."""
        infrastructure = {spec.name for spec in self.specs if spec.infrastructure}
        self._stop_stage([name for name in self.procs if name not in infrastructure])
        self._stop_stage([name for name in self.procs if name in infrastructure])
        # A leader that exited may leave its own children behind (uvicorn workers, a pool process
        # whose parent was killed): each child leads its own process group, so end the whole group.
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._emit("run", "all processes stopped")

    def _stop_stage(self, names: Sequence[str]) -> None:
        """SIGTERM names at once; SIGKILL the process group of any still running after the grace period."""
        for name in names:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name in names:
            proc = self.procs[name]
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._emit("run", f"{name} did not stop within {STOP_GRACE_S:g}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def supervise(specs: Sequence[ProcessSpec], out: IO[str]) -> int:
    """Run specs until SIGTERM/SIGINT or until one of them exits; return the exit status for `run`."""
    supervisor = Supervisor(specs, out)
    previous = {sig: signal.signal(sig, supervisor.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start()
        return supervisor.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
