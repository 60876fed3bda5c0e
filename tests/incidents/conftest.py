"""Fixtures of the alert receiver tests: a migrated PostgreSQL state database, the receiver app, a client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, text

from workers.app import create_app
from workers.incidents.receiver import create_receiver_app
from workers.settings import Settings
from workers.state.db import create_state_engine, upgrade

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
        keys = [queue, *(f"{queue}:{step}" for step in range(1, 10))]
        messages: list[dict[str, object]] = []
        for key in keys:
            # LPUSH adds on the left and workers pop from the right: read right to left.
            messages.extend(json.loads(raw) for raw in reversed(client.lrange(key, 0, -1)))
        return messages
    finally:
        client.close()


def load_case(name: str) -> bytes:
    return (CASES / name).read_bytes()
