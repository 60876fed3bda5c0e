"""`ops-workers receiver` and `ops-workers incidents ...` as operators run them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import psutil
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from tests.conftest import subprocess_env
from workers.cli import cli, process_specs
from workers.processes import require_free_port
from workers.settings import Bind, Settings

from .conftest import AUTH, TOKEN, incident_rows, load_case, queued_messages
from .redis_server import free_port

STARTUP_TIMEOUT_S = 60


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_incidents_list_show_and_reconcile(client: httpx.Client, engine: Engine, redis_url: str) -> None:
    assert client.post("/alertmanager", content=load_case("01-firing-two-alerts-empty-urls.json"),
                       headers={**AUTH, "Content-Type": "application/json"}).status_code == 200  # fmt: skip
    assert client.post("/alertmanager", content=load_case("03-resolved-single-capitalised-severity.json"),
                       headers={**AUTH, "Content-Type": "application/json"}).status_code == 200  # fmt: skip

    code, output = run_cli("incidents", "list", "--json")
    assert code == 0
    listed = json.loads(output)
    assert len(listed) == 3
    for item in listed:
        assert {"id", "alertname", "fingerprint", "starts_at", "status", "severity", "labels", "created_at",
                "updated_at"} <= item.keys()  # fmt: skip
    code, output = run_cli("incidents", "list", "--status", "resolved", "--json")
    assert [i["alertname"] for i in json.loads(output)] == ["Deployment"]
    code, output = run_cli("incidents", "list")
    assert code == 0 and "InstanceDown" in output and "f404ecabc8dd5cd7" in output

    first = listed[-1]["id"]
    code, output = run_cli("incidents", "show", str(first), "--json")
    shown = json.loads(output)
    assert shown["fingerprint"] == "f404ecabc8dd5cd7" and shown["labels"]["group"] == "production"
    code, output = run_cli("incidents", "show", str(first))
    assert "fingerprint: f404ecabc8dd5cd7" in output
    labels_line = next(line for line in output.splitlines() if line.startswith("labels: "))
    assert json.loads(labels_line.removeprefix("labels: "))["group"] == "production"  # JSON, not a Python repr

    code, output = run_cli("incidents", "reconcile", "--grace-s", "0")
    assert code == 0 and json.loads(output)["enqueued"] == 0  # the receiver already sent every task
    assert len(queued_messages(redis_url)) == 3
    assert len(incident_rows(engine)) == 3


def test_show_of_an_unknown_incident_is_a_usage_error(receiver_settings: Settings) -> None:
    result = CliRunner().invoke(cli, ["incidents", "show", "999999"])
    assert "no incident 999999" in str(result.exception)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs OPS_RECEIVER_TOKEN"),
        (
            {"OPS_RECEIVER_ALLOW_NO_AUTH": "1", "OPS_RECEIVER_BIND": "0.0.0.0:8080"},
            "only applies on loopback",
        ),
    ],
)
def test_receiver_refuses_to_start_without_auth(base_env: dict[str, str], env: dict[str, str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workers", "receiver"], env=subprocess_env({**base_env, **env}),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr


class ReceiverProcess:
    """`ops-workers receiver` as a child process, its stderr collected; ready once every worker started."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.workers = workers
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "receiver"], env=subprocess_env(env),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.started = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if sum("Application startup complete" in seen for seen in self.lines) >= self.workers:
                self.started.set()

    def wait_started(self) -> None:
        assert self.started.wait(STARTUP_TIMEOUT_S), "".join(self.lines[-20:])

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.watcher.join(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def receiver_env(base_env: dict[str, str], state_url: str, port: int, workers: int) -> dict[str, str]:
    return {**base_env, "OPS_STATE_DATABASE_URL": state_url, "OPS_RECEIVER_TOKEN": TOKEN,
            "OPS_RECEIVER_BIND": f"127.0.0.1:{port}", "OPS_RECEIVER_WORKERS": str(workers),
            "OPS_LOG_LEVEL": "INFO"}  # fmt: skip


def post_case(base: str, name: str) -> httpx.Response:
    return httpx.post(f"{base}/alertmanager", content=load_case(name),
                      headers={**AUTH, "Content-Type": "application/json"}, timeout=30)  # fmt: skip


def test_receiver_command_migrates_serves_and_records(base_env: dict[str, str], state_url: str, engine: Engine) -> None:
    port = free_port()
    receiver = ReceiverProcess(receiver_env(base_env, state_url, port, workers=2), workers=2)
    try:
        receiver.wait_started()
        base = f"http://127.0.0.1:{port}"
        response = post_case(base, "02-disk-full-relative-generator-url.json")
        assert response.status_code == 200, response.text
        assert [r["alertname"] for r in incident_rows(engine)] == ["disk_full"]
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert 'ops_alerts_received_total{severity="warning",status="firing"} 1.0' in metrics
    finally:
        assert receiver.stop() == 0
    assert TOKEN not in "".join(receiver.lines)


def _established_per_child(parent: psutil.Process, port: int) -> dict[int, int]:
    return {
        child.pid: sum(
            1 for c in child.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
        for child in parent.children()
    }


def test_receiver_workers_share_connections_and_a_dead_one_is_replaced(
    base_env: dict[str, str], state_url: str
) -> None:
    port = free_port()
    receiver = ReceiverProcess(receiver_env(base_env, state_url, port, workers=2), workers=2)
    parent = psutil.Process(receiver.proc.pid)
    clients: list[httpx.Client] = []
    try:
        receiver.wait_started()
        # A burst of keep-alive connections, as a load balancer or Alertmanager's HA peers open them.
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) for _ in range(24)]
        for client in clients:
            assert client.get("/healthz").status_code == 200
        spread = _established_per_child(parent, port)
        assert len(spread) == 2 and sum(spread.values()) == 24
        assert min(spread.values()) >= 4, spread  # one socket per process: both take a share

        victim = parent.children()[0]
        victim.kill()
        victim.wait(timeout=30)
        # New connections hashed to the dead process's socket wait in its backlog for the replacement.
        for _ in range(10):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as fresh:
                assert fresh.get("/healthz").status_code == 200
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(replaced := [c.pid for c in parent.children()]) != 2 and time.monotonic() < deadline:
            threading.Event().wait(0.1)
        assert len(replaced) == 2 and victim.pid not in replaced
    finally:
        for client in clients:
            client.close()
        children = parent.children()
        assert receiver.stop() == 0
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_receiver_workers_die_with_a_killed_parent(base_env: dict[str, str], state_url: str) -> None:
    port = free_port()
    receiver = ReceiverProcess(receiver_env(base_env, state_url, port, workers=2), workers=2)
    try:
        receiver.wait_started()
        children = psutil.Process(receiver.proc.pid).children()
        assert len(children) == 2
        receiver.proc.kill()  # SIGKILL: the parent gets no chance to stop them
        _gone, alive = psutil.wait_procs(children, timeout=STARTUP_TIMEOUT_S)
        assert not alive, [c.pid for c in alive]
    finally:
        receiver.stop()
    require_free_port(Bind("127.0.0.1", port), "OPS_RECEIVER_BIND")  # nothing holds the port any more


def test_run_supervises_the_receiver(ops_env: Callable[..., Settings]) -> None:
    settings = ops_env()
    (spec,) = [s for s in process_specs(settings, {}) if s.name == "receiver"]
    assert spec.argv[1:] == ("-m", "workers", "receiver")
    assert spec.env["OPS_RECEIVER_ALLOW_NO_AUTH"] == "1"  # loopback bind, no credentials: development only
    with_token = ops_env(OPS_RECEIVER_TOKEN=TOKEN)
    (spec,) = [s for s in process_specs(with_token, {}) if s.name == "receiver"]
    assert "OPS_RECEIVER_ALLOW_NO_AUTH" not in spec.env
