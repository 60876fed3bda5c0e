"""run_streaming(): the one way to run pg_dump, pg_restore and friends, streaming, with our own deadline."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from workers.backup.pg_messages import is_passing
from workers.errors import CommandFailed, CommandInterrupted, CommandNotFound, CommandTimedOut

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
STDERR_TAIL_BYTES = 4096
_F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe means fewer, larger reads than the 64 KiB default
_PIPE_BYTES = 1 << 20


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def find_program(name: str, bin_dir: Path | None = None) -> str:
    """Absolute path of a client program, from bin_dir when given, else from PATH.

    Raises:
        CommandNotFound: it is not there.
    """
    if bin_dir is not None:
        candidate = bin_dir / name
        if candidate.is_file():
            return str(candidate)
        raise CommandNotFound(str(candidate))
    found = shutil.which(name)
    if found is None:
        raise CommandNotFound(name)
    return found


def command_failure(program: str, returncode: int, stderr_tail: str) -> CommandFailed:
    """The error for a child that exited non-zero. Pure.

    CommandInterrupted (a DatabaseUnavailable: retried) when its stderr says the database was briefly
    unusable, e.g. pg_dump's lock wait timed out behind DDL or the connection was lost or refused;
    CommandFailed (permanent) for anything else, a bad dump, bad credentials or a kill included.
    """
    if is_passing(stderr_tail):
        return CommandInterrupted(program, returncode, stderr_tail)
    return CommandFailed(program, returncode, stderr_tail)


def run_streaming(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    sink: Sink | None = None,
    source: Source | None = None,
) -> int:
    """Run argv; copy its stdout into sink or feed source into its stdin; return the bytes copied.

    The sink and the source are never buffered whole: chunks of CHUNK_BYTES flow through. If the
    sink or the source raises, the child is killed and the exception propagates unchanged.

    Raises:
        CommandNotFound: argv[0] cannot be executed.
        CommandTimedOut: the deadline passed and the child was killed.
        CommandInterrupted: the child exited non-zero because the database was briefly unusable (retry).
        CommandFailed: the child exited non-zero otherwise; carries the tail of its stderr.
    """
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    program = Path(argv[0]).name
    with tempfile.TemporaryFile() as stderr_file:
        try:
            # stderr goes to a file, not a pipe: a child blocked on a full stderr pipe stops
            # writing stdout, and we would wait on it forever.
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if sink is not None else subprocess.DEVNULL,
                stderr=stderr_file,
                env=dict(env),
                bufsize=0,  # raw pipes: one read() returns what is there, one write() is not held back
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            raise CommandNotFound(argv[0]) from None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            if sink is not None:
                assert proc.stdout is not None
                size = _drain(proc.stdout, sink)
            else:
                assert proc.stdin is not None and source is not None
                size = _feed(source, proc.stdin)
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # leaving early because the sink or source failed: don't orphan the child
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(BrokenPipeError):
                        stream.close()
        if expired.is_set():
            raise CommandTimedOut(program, timeout_s)
        if returncode != 0:
            raise command_failure(program, returncode, _tail(stderr_file))
        log.debug("child finished", extra={"program": program, "bytes": size})
        return size


def _enlarge_pipe(stream: IO[bytes]) -> None:
    # Not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe works, just slower.
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)


def _drain(stdout: IO[bytes], sink: Sink) -> int:
    _enlarge_pipe(stdout)
    size = 0
    while chunk := stdout.read(CHUNK_BYTES):
        sink.write(chunk)
        size += len(chunk)
    return size


def _feed(source: Source, stdin: IO[bytes]) -> int:
    _enlarge_pipe(stdin)
    size = 0
    try:
        while chunk := source.read(CHUNK_BYTES):
            view = memoryview(chunk)
            while view:
                written = stdin.write(view) or 0
                view = view[written:]
            size += len(chunk)
        stdin.close()
    except BrokenPipeError:
        # The child stopped reading (it failed); its exit status and stderr tell why.
        pass
    return size


def _tail(stderr_file: IO[bytes]) -> str:
    stderr_file.seek(0, 2)
    length = stderr_file.tell()
    stderr_file.seek(max(0, length - STDERR_TAIL_BYTES))
    return stderr_file.read().decode("utf-8", "replace").strip()
