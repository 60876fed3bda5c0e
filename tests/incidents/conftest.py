"""Incident fixtures: the receiver (PostgreSQL state, app, client) and remediation (SQLite state, rows, servers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, insert, text, update

from workers.app import PRIORITY_SEP, PRIORITY_STEPS, create_app
from workers.incidents.operations import state_engine
from workers.incidents.receiver import create_receiver_app
from workers.queues import priority_lists
from workers.settings import Settings
from workers.state.db import create_state_engine, upgrade
from workers.state.schema import incidents

from .server import serving

if TYPE_CHECKING:
    from tests.conftest import PgServer

TOKEN = "s3cret-receiver-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CASES = Path(__file__).parent / "cases"


def state_url_for(pg: PgServer, dbname: str) -> str:
    admin = pg.admin
    return f"postgresql+psycopg://{admin.user}@{admin.host}:{admin.port}/{dbname}"


@pytest.fixture
def state_url(pg: PgServer) -> str:
    """A fresh, migrated state database on the real PostgreSQL."""
    target = pg.create_database(prefix="ops_recv")
    url = state_url_for(pg, target.dbname)
    engine = create_state_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def receiver_settings(ops_env: Callable[..., Settings], state_url: str) -> Settings:
    return ops_env(OPS_STATE_DATABASE_URL=state_url, OPS_RECEIVER_TOKEN=TOKEN, OPS_RECEIVER_MAX_BODY="65536")


@pytest.fixture
def engine(receiver_settings: Settings) -> Iterator[Engine]:
    engine = create_state_engine(receiver_settings.state_database_url.value)
    yield engine
    engine.dispose()


@pytest.fixture
def sender(receiver_settings: Settings) -> Celery:
    """The Celery app the receiver sends with: production configuration, the test Redis."""
    return create_app(receiver_settings, name="receiver-test")


@contextmanager
def http_client(app: object) -> Iterator[httpx.Client]:
    """An HTTP client talking to `app` served by a real uvicorn on a free port."""
    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture
def client(receiver_settings: Settings, engine: Engine, sender: Celery) -> Iterator[httpx.Client]:
    with http_client(create_receiver_app(receiver_settings, engine=engine, celery_app=sender)) as test_client:
        yield test_client


def incident_rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM incidents ORDER BY id")).mappings().all()
    return [dict(row) for row in rows]


def queued_messages(redis_url: str, queue: str = "incidents") -> list[dict[str, object]]:
    """Every message waiting on `queue`, across its priority lists, in the order a worker takes them."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = priority_lists(queue, PRIORITY_STEPS, PRIORITY_SEP)
        messages: list[dict[str, object]] = []
        for key in keys:
            # LPUSH adds on the left and workers pop from the right: read right to left.
            messages.extend(json.loads(raw) for raw in reversed(client.lrange(key, 0, -1)))
        return messages
    finally:
        client.close()


def load_case(name: str) -> bytes:
    return (CASES / name).read_bytes()


# --- remediation (playbooks, actions, runner) ---


@pytest.fixture
def state_db(settings: Settings) -> Engine:
    """The state database of `settings` (SQLite under tmp_path), migrated; for remediation tests."""
    engine = state_engine(settings.state_database_url.value)
    upgrade(engine)
    return engine


def insert_incident(
    engine: Engine,
    alertname: str,
    *,
    severity: str = "warning",
    labels: dict[str, str] | None = None,
    fingerprint: str | None = None,
    alert_status: str = "firing",
    starts_at: datetime | None = None,
    received_at: datetime | None = None,
    annotations: dict[str, str] | None = None,
) -> int:
    """Record one alert episode the way the receiver does; return its id."""
    now = datetime.now(UTC)
    starts = starts_at or now
    with engine.begin() as conn:
        result = conn.execute(
            insert(incidents).values(
                fingerprint=fingerprint or f"fp-{alertname}-{starts.timestamp()}",
                starts_at=starts,
                alertname=alertname,
                severity=severity,
                status="active",
                alert_status=alert_status,
                labels={"alertname": alertname, "severity": severity, **(labels or {})},
                annotations=annotations or {"summary": f"{alertname} fired"},
                received_at=received_at or now,
                created_at=now,
                updated_at=now,
                enqueued_at=now,
            )
        )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def set_alert_status(engine: Engine, incident_id: int, alert_status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(incidents)
            .where(incidents.c.id == incident_id)
            .values(alert_status=alert_status, ends_at=datetime.now(UTC) if alert_status == "resolved" else None)
        )


@pytest.fixture
def playbook_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / f"playbooks-{len(list(tmp_path.glob('playbooks-*')))}.yaml"
        path.write_text(text)
        return path

    return write


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class RecordingServer:
    """A local HTTP endpoint standing in for PagerDuty, Slack or a ticket system: records every POST."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # replies to give, in order; then 202
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout_s: float = 10) -> list[Recorded]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout_s)
        return list(self.requests)


@pytest.fixture
def recording_server() -> Iterator[Callable[[], RecordingServer]]:
    servers: list[ThreadingHTTPServer] = []

    def start() -> RecordingServer:
        holder: dict[str, RecordingServer] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                recorder = holder["server"]
                status = recorder.statuses.pop(0) if recorder.statuses else 202
                if status < 300:
                    with recorder.arrived:
                        recorder.requests.append(Recorded(self.path, dict(self.headers), json.loads(raw or b"{}")))
                        recorder.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success"}')

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(httpd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        recorder = RecordingServer(f"http://127.0.0.1:{httpd.server_address[1]}")
        holder["server"] = recorder
        return recorder

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def minutes_ago(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


@dataclass
class WorkerProcess:
    """A real `celery worker` (prefork pool) in a child process, on the test broker."""

    proc: Any
    hostname: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker_process(
    app: Any, env: dict[str, str], tmp_path: Path, *, concurrency: int = 1, queues: str = "incidents"
) -> WorkerProcess:
    """Start a prefork worker and wait until it answers a ping (raises if it does not within 60 s)."""
    import subprocess
    import sys
    import time
    import uuid

    from tests.conftest import subprocess_env

    hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
    log_path = tmp_path / f"{hostname}.log"
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "prefork",
        "-c", str(concurrency), "-Q", queues, "--hostname", hostname, "--without-mingle",
        "--without-gossip", "--loglevel", "INFO",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, env=subprocess_env(env), stdout=log_file, stderr=subprocess.STDOUT)
    worker = WorkerProcess(proc, hostname, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{worker.log()}")
        if app.control.ping(destination=[hostname], timeout=1.0):
            return worker
    proc.kill()
    proc.wait()
    raise AssertionError(f"worker did not answer a ping within 60 s:\n{worker.log()}")


def stop_worker_process(worker: WorkerProcess) -> None:
    import signal
    import subprocess

    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
