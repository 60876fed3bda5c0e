"""ops_remediation_paused comes from the exporter, read from Redis at each scrape, whoever paused."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from workers.app import PRIORITY_SEP, PRIORITY_STEPS, QUEUES, REDBEAT_KEY_PREFIX
from workers.exporter import BrokerLayout, exporter_sources, start_exporter
from workers.incidents.operations import pause_remediation, resume_remediation
from workers.settings import Bind, Settings

LAYOUT = BrokerLayout(QUEUES, tuple(PRIORITY_STEPS), PRIORITY_SEP, REDBEAT_KEY_PREFIX)


@pytest.fixture
def quick(ops_env: Callable[..., Settings]) -> Settings:
    return ops_env(OPS_EXPORTER_PING_TIMEOUT_S="0.2")  # each scrape pings the workers; none run here


@pytest.fixture
def exporter_url(quick: Settings, worker_app: Celery) -> Iterator[str]:
    sources = exporter_sources(quick, worker_app, LAYOUT)
    server, thread = start_exporter(sources, Bind("127.0.0.1", 0))
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    sources.broker.close()


def _sample(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(url, timeout=30).text
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == name and s.labels == labels]  # fmt: skip
    return values[0] if values else None


def test_pause_and_resume_show_in_the_exporters_scrape(quick: Settings, exporter_url: str) -> None:
    assert _sample(exporter_url, "ops_remediation_paused") == 0

    pause_remediation(quick, "alice", "database migration")  # in this process, as the CLI does: not scraped
    assert _sample(exporter_url, "ops_remediation_paused") == 1
    assert _sample(exporter_url, "ops_exporter_source_up", source="remediation") == 1

    resume_remediation(quick)
    assert _sample(exporter_url, "ops_remediation_paused") == 0


def test_an_unreachable_broker_reports_the_source_down_not_a_guess(
    ops_env: Callable[..., Settings], worker_app: Celery
) -> None:
    settings = ops_env(OPS_BROKER_URL="redis://127.0.0.1:1/0", OPS_EXPORTER_PING_TIMEOUT_S="0.2")
    sources = exporter_sources(settings, worker_app, LAYOUT)
    server, thread = start_exporter(sources, Bind("127.0.0.1", 0))
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        assert _sample(url, "ops_remediation_paused") is None
        assert _sample(url, "ops_exporter_source_up", source="remediation") == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        sources.broker.close()
