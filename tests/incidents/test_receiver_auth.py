"""The receiver never serves without credentials unless allowed on loopback: in the CLI and in the app factory."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine

from tests.conftest import subprocess_env
from workers.errors import UsageError
from workers.incidents.receiver import create_receiver_app
from workers.settings import Bind, Settings

from .conftest import http_client


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("127.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("localhost.evil.example", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("", False),
    ],
)
def test_loopback_is_an_address_or_the_name_localhost(host: str, loopback: bool) -> None:
    assert Bind(host, 8080).is_loopback is loopback


REFUSALS = [
    ({}, "needs OPS_RECEIVER_TOKEN"),
    ({"OPS_RECEIVER_ALLOW_NO_AUTH": "1", "OPS_RECEIVER_BIND": "0.0.0.0:8080"}, "only applies on loopback"),
    ({"OPS_RECEIVER_ALLOW_NO_AUTH": "1", "OPS_RECEIVER_BIND": "127.evil.example:8080"}, "only applies on loopback"),
]


@pytest.mark.parametrize(("env", "message"), REFUSALS)
def test_the_app_factory_refuses_to_build_without_auth(
    ops_env: Callable[..., Settings], engine: Engine, sender: Celery, env: dict[str, str], message: str
) -> None:
    settings = ops_env(**env)
    with pytest.raises(UsageError, match=message):
        create_receiver_app(settings, engine=engine, celery_app=sender)


def test_no_auth_is_served_when_allowed_on_loopback(
    ops_env: Callable[..., Settings], engine: Engine, sender: Celery
) -> None:
    settings = ops_env(OPS_RECEIVER_ALLOW_NO_AUTH="1", OPS_RECEIVER_BIND="127.0.0.1:0")
    with http_client(create_receiver_app(settings, engine=engine, celery_app=sender)) as client:
        response = client.post("/alertmanager", json={"alerts": []})
    assert response.status_code == 200


@pytest.mark.parametrize(("env", "message"), REFUSALS)
def test_uvicorn_run_by_hand_on_the_factory_refuses_to_serve_without_auth(
    base_env: dict[str, str], env: dict[str, str], message: str
) -> None:
    argv = [
        sys.executable, "-m", "uvicorn", "workers.incidents.receiver:create_app_from_settings", "--factory",
        "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    proc = subprocess.run(argv, env=subprocess_env({**base_env, **env}), capture_output=True, text=True, timeout=60)

    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Uvicorn running" not in proc.stderr


def test_a_served_receiver_with_a_token_still_starts(base_env: dict[str, str]) -> None:
    # The same factory with a token builds its app: the refusal above is about auth, not the command line.
    env = subprocess_env({**base_env, "OPS_RECEIVER_TOKEN": "t0ken"})
    code = "from workers.incidents.receiver import create_app_from_settings as f; print(type(f()).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "Starlette", proc.stderr


def test_unauthenticated_requests_are_refused_when_a_token_is_set(client: httpx.Client) -> None:
    assert client.post("/alertmanager", json={"alerts": []}).status_code == 401
