"""Embedded defaults of `ops-workers run`: a Redis server of our own when none answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from workers.embedded import embedded_environment
from workers.settings import environment, load_settings


def test_an_embedded_redis_is_started_when_the_default_broker_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPS_BROKER_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here either
    # Settings as if the default address had nothing listening (port 1 never answers here).
    settings = load_settings(
        {"OPS_BROKER_URL": "redis://127.0.0.1:1/0", "OPS_VAR_DIR": str(tmp_path), "OPS_DATABASE_URL": "postgresql://x@h/db"}
    )
    said: list[str] = []

    extra = embedded_environment(settings, echo=said.append)

    assert [spec.name for spec in extra.specs] == ["redis"]
    url = extra.env["OPS_BROKER_URL"]
    server = subprocess.Popen(list(extra.specs[0].argv), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        for line in server.stdout:  # redis-server says so once it accepts connections
            if "Ready to accept connections" in line:
                break
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        assert client.ping()
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
        assert server.stdout is not None
        server.stdout.close()
    assert any("embedded" in line for line in said)


def test_a_configured_broker_is_never_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPS_BROKER_URL", "redis://127.0.0.1:1/0")
    settings = load_settings(
        {"OPS_BROKER_URL": "redis://127.0.0.1:1/0", "OPS_VAR_DIR": str(tmp_path), "OPS_DATABASE_URL": "postgresql://x@h/db"}
    )

    extra = embedded_environment(settings, echo=lambda _: None)

    assert extra.specs == [] and "OPS_BROKER_URL" not in extra.env


def test_a_broker_configured_in_the_env_file_is_never_replaced_and_is_reported_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPS_BROKER_URL", raising=False)
    (tmp_path / ".env").write_text("OPS_BROKER_URL=redis://127.0.0.1:1/0\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environment())
    said: list[str] = []

    extra = embedded_environment(settings, echo=said.append)

    assert settings.broker_url.value == "redis://127.0.0.1:1/0"
    assert extra.specs == [] and "OPS_BROKER_URL" not in extra.env
    assert any("OPS_BROKER_URL does not answer" in line for line in said), said
