"""run_streaming(): argv lists, streamed output, stderr tails, our own deadline."""

from __future__ import annotations

import io
import sys

import pytest

from workers.backup.process import find_program, run_streaming
from workers.errors import CommandFailed, CommandNotFound, CommandTimedOut


def test_stdout_is_streamed_into_the_sink_in_chunks() -> None:
    writes: list[int] = []

    class Sink:
        def write(self, data: bytes) -> int:
            writes.append(len(data))
            return len(data)

    code = "import sys; sys.stdout.buffer.write(b'x' * (5 * 1024 * 1024))"
    size = run_streaming([sys.executable, "-c", code], env={}, timeout_s=30, sink=Sink())
    assert size == 5 * 1024 * 1024
    assert len(writes) > 1 and max(writes) <= 1 << 20


def test_source_is_fed_into_stdin() -> None:
    out = io.BytesIO(b"y" * 3_000_000)
    code = "import sys; n = len(sys.stdin.buffer.read()); sys.exit(0 if n == 3_000_000 else 3)"
    assert run_streaming([sys.executable, "-c", code], env={}, timeout_s=30, source=out) == 3_000_000


def test_nonzero_exit_carries_the_stderr_tail() -> None:
    code = "import sys; sys.stderr.write('noise\\n' * 5000 + 'the real cause'); sys.exit(4)"
    with pytest.raises(CommandFailed) as caught:
        run_streaming([sys.executable, "-c", code], env={}, timeout_s=30, sink=io.BytesIO())
    assert caught.value.returncode == 4
    assert caught.value.stderr_tail.endswith("the real cause")
    assert len(caught.value.stderr_tail) <= 4096


def test_deadline_kills_the_child() -> None:
    code = "import time; time.sleep(60)"
    with pytest.raises(CommandTimedOut):
        run_streaming([sys.executable, "-c", code], env={}, timeout_s=0.5, sink=io.BytesIO())


def test_a_failing_sink_kills_the_child_and_propagates() -> None:
    class Full(Exception):
        pass

    class Sink:
        def write(self, data: bytes) -> int:
            raise Full

    code = "import sys\nwhile True: sys.stdout.buffer.write(b'z' * 65536)"
    with pytest.raises(Full):
        run_streaming([sys.executable, "-c", code], env={}, timeout_s=30, sink=Sink())


def test_a_child_that_stops_reading_stdin_fails_cleanly() -> None:
    code = "import sys; sys.stdin.buffer.read(10); sys.exit(5)"
    with pytest.raises(CommandFailed) as caught:
        run_streaming([sys.executable, "-c", code], env={}, timeout_s=30, source=io.BytesIO(b"q" * 5_000_000))
    assert caught.value.returncode == 5


def test_missing_program_is_command_not_found(tmp_path: object) -> None:
    with pytest.raises(CommandNotFound):
        run_streaming(["/nonexistent/pg_dump"], env={}, timeout_s=5, sink=io.BytesIO())
    with pytest.raises(CommandNotFound):
        find_program("pg_dump_that_does_not_exist")


def test_the_child_sees_only_the_environment_it_is_given() -> None:
    out = io.BytesIO()
    code = "import os, sys; sys.stdout.write(','.join(sorted(k for k in os.environ if k.startswith('PG'))))"
    run_streaming([sys.executable, "-c", code], env={"PGPASSWORD": "x", "PGHOST": "h"}, timeout_s=30, sink=out)
    assert out.getvalue() == b"PGHOST,PGPASSWORD"
