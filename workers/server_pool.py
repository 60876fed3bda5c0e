"""Several HTTP server processes on one address, each accepting on its own SO_REUSEPORT socket.

uvicorn's --workers shares one listening socket: the process that wakes first accepts a whole burst of
connections, and keep-alive clients (Alertmanager among them) stay where they landed; one worker was
measured at 94% CPU beside another at 3%. With a socket per process the kernel spreads connections
across the processes by hash. The parent holds every socket, so a process that dies is replaced on
the same socket and no connection is refused meanwhile (they wait in its backlog).

This is an entry-point module: it hands its environment to the processes it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from workers.parent_death import die_with_parent
from workers.settings import Bind

log = logging.getLogger(__name__)

BACKLOG = 2048
STOP_GRACE_S = 35.0  # uvicorn's own graceful shutdown (30 s) plus a margin, then SIGKILL
QUICK_EXIT_S = 10.0  # a process that dies sooner than this after its start counts towards giving up
MAX_QUICK_EXITS = 5  # consecutive quick deaths of one slot: the command is broken, restarting won't help
POLL_S = 0.2

ArgvForFd = Callable[[int], Sequence[str]]


def reuseport_sockets(bind: Bind, count: int) -> list[socket.socket]:
    """count listening sockets on bind, each with SO_REUSEPORT; port 0 becomes one free port for all.

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sockets: list[socket.socket] = []
    port = bind.port
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((bind.host, port))
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ServerPool:
    """One child per socket, started as argv_for_fd(fd); a child that dies is started again on its socket."""

    def __init__(self, argv_for_fd: ArgvForFd, sockets: Sequence[socket.socket], env: dict[str, str]) -> None:
        self.argv_for_fd = argv_for_fd
        self.sockets = sockets
        self.env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(sockets)
        self.started_at = [0.0] * len(sockets)
        self.quick_exits = [0] * len(sockets)
        self._stop = threading.Event()

    def _start(self, slot: int) -> None:
        fd = self.sockets[slot].fileno()
        self.procs[slot] = subprocess.Popen(
            list(self.argv_for_fd(fd)), env=self.env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
            # A pool whose parent was SIGKILLed must not keep serving (and holding the port) on its own.
            preexec_fn=die_with_parent(signal.SIGTERM),
        )  # fmt: skip
        self.started_at[slot] = time.monotonic()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def _replace_exited(self) -> bool:
        """Start again every child that exited; False once one keeps dying right after its start."""
        for slot, proc in enumerate(self.procs):
            if proc is None or proc.poll() is None:
                continue
            lived_s = time.monotonic() - self.started_at[slot]
            self.quick_exits[slot] = self.quick_exits[slot] + 1 if lived_s < QUICK_EXIT_S else 0
            log.warning("server process exited; starting another on its socket",
                        extra={"pid": proc.pid, "returncode": proc.returncode, "lived_s": round(lived_s, 1),
                               "slot": slot})  # fmt: skip
            if self.quick_exits[slot] >= MAX_QUICK_EXITS:
                log.error("server process keeps exiting at start; stopping the pool",
                          extra={"slot": slot, "quick_exits": self.quick_exits[slot]})  # fmt: skip
                return False
            self._start(slot)
        return True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until a child cannot be kept running (1)."""
        for slot in range(len(self.sockets)):
            self._start(slot)
        healthy = True
        while healthy and not self._stop.wait(POLL_S):
            healthy = self._replace_exited()
        self._stop_children()
        return 0 if healthy else 1

    def _stop_children(self) -> None:
        running = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("server process did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        for sock in self.sockets:
            sock.close()


def serve_pool(argv_for_fd: ArgvForFd, bind: Bind, processes: int, env: Mapping[str, str]) -> int:
    """Run `processes` servers on bind, env added to theirs, until SIGTERM/SIGINT; return the exit status.

    Raises:
        OSError: bind cannot be listened on.
    """
    pool = ServerPool(argv_for_fd, reuseport_sockets(bind, processes), {**os.environ, **env})
    previous = {sig: signal.signal(sig, pool.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return pool.run()
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
