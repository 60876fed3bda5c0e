"""Service probes for `ops-workers check` and the ops.check task: one line per service."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from workers.backup.storage import BackupStore, open_store
from workers.errors import WorkersError
from workers.settings import PostgresTarget, Settings
from workers.state.db import create_state_engine, current_revision, head_revision, redact

PROBE_TIMEOUT_S = 5


@dataclass(frozen=True, slots=True)
class ProbeResult:
    service: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"service": self.service, "ok": self.ok, "detail": self.detail}


def probe_broker(broker_url: str) -> ProbeResult:
    client = redis.Redis.from_url(broker_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    try:
        info = client.info("server")
    except redis.RedisError as exc:
        return ProbeResult("broker", False, f"unreachable: {exc}")
    finally:
        client.close()
    return ProbeResult("broker", True, f"redis {info.get('redis_version', '?')}")


def probe_state_database(url: str) -> ProbeResult:
    engine = create_state_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision, head = current_revision(engine), head_revision()
    except SQLAlchemyError as exc:
        return ProbeResult("state database", False, f"{redact(url)} unreachable: {getattr(exc, 'orig', exc)}")
    finally:
        engine.dispose()
    if revision != head:
        return ProbeResult(
            "state database", True, f"{redact(url)} at revision {revision}, {head} pending (ops-workers db upgrade)"
        )
    return ProbeResult("state database", True, f"{redact(url)} at revision {revision}")


def probe_platform_database(target: PostgresTarget | None) -> ProbeResult:
    if target is None:
        return ProbeResult("platform database", True, "not configured (OPS_DATABASE_URL unset); skipped")
    try:
        with psycopg.connect(**target.conninfo(), connect_timeout=PROBE_TIMEOUT_S) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ProbeResult("platform database", False, f"{target.redacted()} unreachable: {message}")
    return ProbeResult("platform database", True, f"{target.redacted()} (PostgreSQL {row[0] if row else '?'})")


def probe_store(store: BackupStore) -> ProbeResult:
    """Write, read back and delete a probe object through the store the backups use (file:// or s3://)."""
    try:
        return ProbeResult("backup store", True, store.probe())
    except WorkersError as exc:
        return ProbeResult("backup store", False, str(exc))


def run_probes(settings: Settings) -> list[ProbeResult]:
    """Probe every service the system depends on; never raises for an unreachable service."""
    results = [
        probe_broker(settings.broker_url.value),
        probe_state_database(settings.state_database_url.value),
        probe_platform_database(settings.database),
    ]
    results.append(probe_store(open_store(settings.backup)))
    return results
