"""postgres.terminate_queries / cancel_queries against the real PostgreSQL server."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgServer
from workers.backup.storage import LocalStore
from workers.incidents.actions.base import ActionContext, ParamValue
from workers.incidents.actions.postgres import cancel_queries, terminate_queries
from workers.incidents.archive import StoreArchive
from workers.settings import PostgresTarget, Settings


def _context(settings: Settings, tmp_path: Path, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(settings, dry_run, 10.0, {}, StoreArchive(LocalStore(tmp_path / "archive")))


def _params(**overrides: ParamValue) -> dict[str, ParamValue]:
    return {
        "min_duration": 0.5, "states": ("active", "idle in transaction"), "database": "",
        "exclude_users": (), "exclude_applications": (), "limit": 50, **overrides,
    }  # fmt: skip


Admin = psycopg.Connection[tuple[object, ...]]


class Sessions:
    """Client sessions on one database, each in a known state, cleaned up afterwards."""

    def __init__(self, target: PostgresTarget) -> None:
        self.target = target
        self.connections: list[psycopg.Connection[tuple[object, ...]]] = []
        self.threads: list[threading.Thread] = []

    def open(
        self, application: str = "platform-api", user: str | None = None
    ) -> psycopg.Connection[tuple[object, ...]]:
        info = self.target.conninfo()
        if user:
            info["user"] = user
        conn = psycopg.connect(**info, application_name=application)  # type: ignore[arg-type]
        self.connections.append(conn)
        return conn

    def idle_in_transaction(self, **kwargs: str) -> int:
        conn = self.open(**kwargs)
        conn.execute("SELECT 1")  # opens the transaction and leaves it open
        return conn.info.backend_pid

    def sleeping(self, seconds: int = 30, **kwargs: str) -> int:
        conn = self.open(**kwargs)
        pid = conn.info.backend_pid

        def sleep() -> None:
            # Terminated or cancelled is what the test wants to see.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_sleep(%s)", (seconds,))

        thread = threading.Thread(target=sleep, daemon=True)
        thread.start()
        self.threads.append(thread)
        return pid

    def alive(self, pid: int, admin: psycopg.Connection[tuple[object, ...]]) -> bool:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        return bool(row and row[0])

    def close(self, admin: psycopg.Connection[tuple[object, ...]]) -> None:
        for conn in self.connections:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        for thread in self.threads:
            thread.join(timeout=10)
        for conn in self.connections:
            conn.close()


Platform = tuple[PostgresTarget, Sessions, Admin]


@pytest.fixture
def platform(
    pg: PgServer,
) -> Iterator[Platform]:
    target = pg.create_database(seed="CREATE TABLE orders (id int); INSERT INTO orders VALUES (1);")
    sessions = Sessions(target)
    with pg.connect() as admin:
        yield target, sessions, admin
        sessions.close(admin)


@pytest.fixture
def excluded_role(pg: PgServer) -> Iterator[str]:
    role = f"ops_keep_{uuid.uuid4().hex[:8]}"
    with pg.connect() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    with pg.connect() as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _wait_until_active(admin: psycopg.Connection[tuple[object, ...]], pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'active'", (pids,)
        ).fetchone()
        if row and row[0] == len(pids):
            return
        time.sleep(0.05)
    raise AssertionError("sessions never became active")


def test_terminates_long_queries_and_idle_transactions_but_not_ours_or_excluded(
    ops_env: Callable[..., Settings], platform: Platform,
    excluded_role: str, tmp_path: Path,
) -> None:  # fmt: skip
    target, sessions, admin = platform
    settings = ops_env(OPS_DATABASE_URL=target.redacted().replace(":***", ""),
                       OPS_REMEDIATION_EXCLUDE_APPLICATIONS="billing-batch")  # fmt: skip
    idle = sessions.idle_in_transaction()
    long_query = sessions.sleeping()
    ours = sessions.sleeping(application="ops-workers-reporter")
    excluded_user = sessions.sleeping(user=excluded_role)
    excluded_application = sessions.idle_in_transaction(application="billing-batch")
    _wait_until_active(admin, [long_query, ours, excluded_user])
    time.sleep(0.6)  # every session is now older than min_duration

    result = terminate_queries(_params(exclude_users=(excluded_role,)), _context(settings, tmp_path))

    ended = {s["pid"] for s in result.detail["sessions"]}  # type: ignore[attr-defined]
    assert result.ok and ended == {idle, long_query}, result
    for pid in (idle, long_query):
        assert not sessions.alive(pid, admin) or _terminating(admin, pid)
    for pid in (ours, excluded_user, excluded_application):
        assert sessions.alive(pid, admin)
    assert "terminated 2 session(s)" in result.summary


def _terminating(admin: psycopg.Connection[tuple[object, ...]], pid: int) -> bool:
    # pg_terminate_backend signals; the backend may need a moment to leave pg_stat_activity.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == 0:
            return True
        time.sleep(0.05)
    return False


def test_dry_run_lists_without_terminating(
    ops_env: Callable[..., Settings], platform: Platform,
    tmp_path: Path,
) -> None:  # fmt: skip
    target, sessions, admin = platform
    settings = ops_env(OPS_DATABASE_URL=target.redacted())
    idle = sessions.idle_in_transaction()
    time.sleep(0.6)

    result = terminate_queries(_params(), _context(settings, tmp_path, dry_run=True))

    assert [s["pid"] for s in result.detail["sessions"]] == [idle]  # type: ignore[attr-defined]
    assert result.summary == "would terminate 1 session(s)"
    assert sessions.alive(idle, admin)


def test_cancel_stops_the_query_but_keeps_the_session(
    ops_env: Callable[..., Settings], platform: Platform,
    tmp_path: Path,
) -> None:  # fmt: skip
    target, sessions, admin = platform
    settings = ops_env(OPS_DATABASE_URL=target.redacted())
    long_query = sessions.sleeping()
    _wait_until_active(admin, [long_query])
    time.sleep(0.6)

    result = cancel_queries(_params(states=("active",)), _context(settings, tmp_path))

    assert [s["pid"] for s in result.detail["sessions"]] == [long_query]  # type: ignore[attr-defined]
    sessions.threads[0].join(timeout=10)
    assert not sessions.threads[0].is_alive(), "the query was not cancelled"
    assert sessions.alive(long_query, admin)


def test_hostile_database_label_is_only_ever_a_value(
    ops_env: Callable[..., Settings], platform: Platform,
    pg: PgServer, tmp_path: Path,
) -> None:  # fmt: skip
    target, sessions, admin = platform
    settings = ops_env(OPS_DATABASE_URL=target.redacted())
    idle = sessions.idle_in_transaction()
    time.sleep(0.6)

    hostile = f"{target.dbname}'; DROP TABLE orders; --"
    result = terminate_queries(_params(database=hostile), _context(settings, tmp_path))

    assert result.detail["sessions"] == []
    assert sessions.alive(idle, admin)
    assert pg.scalar(target, "SELECT count(*) FROM orders") == 1
