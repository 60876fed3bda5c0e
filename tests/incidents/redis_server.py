"""A private redis-server process on a free port, started when a test decides (a broker that comes back)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    @contextmanager
    def reserve(cls) -> Iterator[RedisServer]:
        """A server on a port nothing listens on yet; stopped on exit."""
        with tempfile.TemporaryDirectory() as data_dir:
            server = cls(free_port(), Path(data_dir))
            try:
                yield server
            finally:
                server.stop()

    def start(self) -> None:
        """Start it and return once it accepts connections (read from its own log, not polled)."""
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        # If it is not ready in time, kill it: the read loop below then ends and the test fails.
        timer = threading.Timer(READY_TIMEOUT_S, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                if "Ready to accept connections" in line:
                    # Keep reading its log so the pipe never fills and blocks the server.
                    threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                    return
            raise AssertionError(f"redis-server on port {self.port} exited before it was ready")
        finally:
            timer.cancel()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
