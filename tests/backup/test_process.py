"""run_streaming(): argv lists, streamed output, stderr tails, our own deadline."""

from __future__ import annotations

import io
import sys

import pytest

from workers.backup.maintenance_tasks import TRANSIENT as MAINTENANCE_TRANSIENT
from workers.backup.process import command_failure, find_program, run_streaming
from workers.backup.tasks import TRANSIENT
from workers.errors import CommandFailed, CommandInterrupted, CommandNotFound, CommandTimedOut


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


# Tails as pg_dump 15 writes them.
PASSING = {
    "lock wait timed out behind DDL": 'pg_dump: error: query failed: ERROR:  canceling statement due to statement'
    " timeout\npg_dump: detail: Query was: LOCK TABLE public.molecules IN ACCESS SHARE MODE",
    "lock not obtained": 'pg_dump: error: could not obtain lock on relation "public.molecules"',
    "lock timeout": "pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout",
    "connection lost": "pg_dump: error: Dumping the contents of table \"molecules\" failed: PQgetResult() failed."
    "\npg_dump: detail: Error message from server: server closed the connection unexpectedly\n"
    "\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.",
    "connection refused": 'pg_dump: error: connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    "\n\tIs the server running on that host and accepting TCP/IP connections?",
    "too many clients": 'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  sorry, too many'
    " clients already",
    "server restarting": "pg_dump: error: query failed: FATAL:  terminating connection due to administrator command",
}
PERMANENT = {
    "wrong password": 'pg_dump: error: connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:  password'
    ' authentication failed for user "backup"',
    "unknown role": 'pg_dump: error: connection to server at "127.0.0.1", port 5432 failed: FATAL:  role "nobody"'
    " does not exist",
    "no privilege": "pg_dump: error: query failed: ERROR:  permission denied for table molecules\n"
    "pg_dump: detail: Query was: LOCK TABLE public.molecules IN ACCESS SHARE MODE",
    "server statement_timeout": "pg_dump: error: Dumping the contents of table \"molecules\" failed: PQgetResult()"
    " failed.\npg_dump: detail: Error message from server: ERROR:  canceling statement due to statement timeout",
    "version mismatch": "pg_dump: error: aborting because of server version mismatch",
    "killed": "",
}


@pytest.mark.parametrize("tail", PASSING.values(), ids=PASSING.keys())
def test_a_passing_database_condition_is_a_transient_command_failure(tail: str) -> None:
    error = command_failure("pg_dump", 1, tail)
    assert isinstance(error, CommandInterrupted)
    assert isinstance(error, CommandFailed) and error.stderr_tail == tail  # still a failed command, with its cause
    assert isinstance(error, TRANSIENT) and isinstance(error, MAINTENANCE_TRANSIENT)  # backup.full/org retry it


@pytest.mark.parametrize("tail", PERMANENT.values(), ids=PERMANENT.keys())
def test_any_other_command_failure_is_permanent(tail: str) -> None:
    error = command_failure("pg_dump", -9 if not tail else 1, tail)
    assert type(error) is CommandFailed
    assert not isinstance(error, TRANSIENT)


def test_run_streaming_raises_the_classified_failure() -> None:
    code = "import sys; sys.stderr.write('server closed the connection unexpectedly'); sys.exit(1)"
    with pytest.raises(CommandInterrupted):
        run_streaming([sys.executable, "-c", code], env={}, timeout_s=30, sink=io.BytesIO())
