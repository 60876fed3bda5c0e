"""`ops-workers exporter`: one process serving the system, database, worker-count, queue and pause metrics.

A dedicated process rather than beat or a worker: it must keep answering while workers are saturated
(a backlog is exactly when its numbers matter), and beat stays a scheduler only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import redis
from celery import Celery
from kombu.exceptions import KombuError
from prometheus_client import start_http_server

from workers.errors import BrokerUnavailable
from workers.incidents.rails import Rails
from workers.metrics import ExporterSources, exporter_registry
from workers.settings import Bind, Settings

log = logging.getLogger(__name__)


def ping_counter(app: Celery, timeout_s: float) -> Callable[[], int]:
    """A function returning how many workers answer a broadcast ping within timeout_s."""

    def count_workers() -> int:
        try:
            replies = app.control.ping(timeout=timeout_s)
        # kombu wraps a refused connection in its own OperationalError, which is not an OSError.
        except (KombuError, redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot ping workers: {exc}") from exc
        return len(replies or [])

    return count_workers


def pause_reader(rails: Rails) -> Callable[[], bool]:
    """A function telling whether remediation is paused, as every worker sees it (raises BrokerUnavailable)."""

    def is_paused() -> bool:
        return rails.paused() is not None

    return is_paused


@dataclass(frozen=True, slots=True)
class BrokerLayout:
    """Where the app keeps things on the broker: queue names, priority lists, RedBeat's keys."""

    queues: tuple[str, ...]
    priority_steps: tuple[int, ...]
    priority_sep: str
    beat_key_prefix: str


def exporter_sources(settings: Settings, app: Celery, layout: BrokerLayout) -> ExporterSources:
    """What the exporter reads, built from settings and the Celery app's broker layout."""
    broker = redis.Redis.from_url(settings.broker_url.value, socket_connect_timeout=3, socket_timeout=5)
    return ExporterSources(
        broker=broker,
        queues=layout.queues,
        priority_steps=layout.priority_steps,
        priority_sep=layout.priority_sep,
        beat_key_prefix=layout.beat_key_prefix,
        platform_database=settings.database,
        disk_mounts=settings.exporter.disk_mounts,
        count_workers=ping_counter(app, settings.exporter.ping_timeout_s),
        remediation_paused=pause_reader(Rails(broker, settings.remediation.lock_ttl_s)),
    )


def start_exporter(sources: ExporterSources, bind: Bind) -> tuple[WSGIServer, threading.Thread]:
    """Serve the exporter's /metrics on bind in a daemon thread; return server and thread."""
    server, thread = start_http_server(bind.port, addr=bind.host, registry=exporter_registry(sources))
    log.info("exporter serving", extra={"bind": f"{bind.host}:{server.server_port}"})
    return server, thread
