"""The whole system on this machine, for the closed loop: our processes, a real Prometheus and Alertmanager.

Everything listens on free loopback ports and keeps its data under one temporary directory, so the
stack never touches the daemons the Debian packages may have started on the default ports.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import yaml
from psycopg import sql

from demo.rules import REPO, alertmanager_config, prometheus_config, render_rules
from workers.demo import SeedSize, seed
from workers.embedded import free_port
from workers.settings import PostgresTarget, parse_postgres_url

RULE_FOR = "3s"  # every `for:` of the rules, instead of minutes
CONNECTION_LIMIT = 20  # the demo platform database's CONNECTION LIMIT (DatabaseConnectionHigh at 80%)
START_TIMEOUT_S = 90.0

DEMO_PLAYBOOKS = """\
# Playbooks of the closed-loop demo: the shipped ones' actions, with thresholds a demo can reach.
routing:
  critical: [log]
  warning: [log]
  info: [log]
playbooks:
  - name: database-connection-exhaustion
    match: {alertname: DatabaseConnectionHigh}
    target: "{labels.database}"
    cooldown: 1m
    steps:
      - action: postgres.terminate_queries
        params: {min_duration: 1s, states: ["idle in transaction", "idle in transaction (aborted)"]}
  - name: backup-too-old
    match: {alertname: BackupTooOld}
    target: "{labels.kind}"
    cooldown: 1m
    steps:
      - action: backup.trigger
        params: {task: backup.full}
  - name: queue-backlog
    match: {alertname: QueueBacklogHigh}
    target: "{labels.queue}"
    cooldown: 1m
    steps:
      - action: celery.scale
        params: {queue: "{labels.queue}", increment: 3, max_concurrency: 6}
"""


def wait_until(what: str, ready: Callable[[], bool], timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
               interval_s: float = 0.2) -> float:  # fmt: skip
    """Poll ready() until true; return the time it became true. Raises TimeoutError naming what."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            if ready():
                return time.time()
        except (httpx.HTTPError, OSError, psycopg.Error):
            pass  # not up yet
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not ready within {timeout_s:g}s")


def http_ok(client: httpx.Client, url: str) -> Callable[[], bool]:
    return lambda: client.get(url, timeout=2).status_code == 200


@dataclass
class Stack:
    """Started by start_stack(); stop() ends every process and drops the databases it made."""

    root: Path
    redis_url: str
    admin: PostgresTarget
    platform: PostgresTarget
    state_dbname: str
    env: dict[str, str]
    ports: dict[str, int]
    token: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    # One client for every poll: a new one per request would load the CA bundle each time.
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def child_env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not (k.startswith("OPS_") and not k.startswith("OPS_TEST_"))}
        clean.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return {**clean, **self.env, "PYTHONPATH": str(REPO)}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.root / "logs" / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(argv, env={**self.child_env(), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)  # fmt: skip
        self.procs[name] = proc
        return proc

    def ops(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `ops-workers ARGS` with the stack's settings."""
        return subprocess.run([sys.executable, "-m", "workers", *args], env=self.child_env(), cwd=self.root,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    def prometheus_alerts(self, alertname: str) -> list[dict[str, object]]:
        alerts = self.http.get(f"{self.url('prometheus')}/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alertname]

    def query(self, expr: str) -> list[dict[str, object]]:
        body = self.http.get(f"{self.url('prometheus')}/api/v1/query", params={"query": expr}).json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('error')}")
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def sample_times(self, expr: str, start: float, end: float | None = None) -> list[float]:
        """Timestamps (1 s steps) at which expr returned anything between start and end."""
        params: dict[str, str | float] = {"query": expr, "start": start, "end": end or time.time(), "step": "1s"}
        body = self.http.get(f"{self.url('prometheus')}/api/v1/query_range", params=params).json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('error')}")
        return sorted({float(t) for series in body["data"]["result"] for t, _value in series["values"]})

    def receiver_api(self, path: str) -> Any:
        """GET an authenticated receiver endpoint (the incidents API); its JSON."""
        response = self.http.get(f"{self.url('receiver')}{path}", headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            del name
        for log in self.logs:
            log.close()
        self.http.close()
        with psycopg.connect(**self.admin.conninfo(), autocommit=True) as conn:
            for dbname in (self.platform.dbname, self.state_dbname):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def _create_databases(admin: PostgresTarget, suffix: str) -> tuple[PostgresTarget, str]:
    platform = admin.with_dbname(f"ops_loop_platform_{suffix}")
    seed(platform, SeedSize(organizations=2, molecules_per_org=50, results_per_job=1))
    state = f"ops_loop_state_{suffix}"
    with psycopg.connect(**admin.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(state)))
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
            sql.Identifier(platform.dbname), sql.Literal(CONNECTION_LIMIT)))  # fmt: skip
    return platform, state


def _settings_env(root: Path, redis_url: str, admin: PostgresTarget, platform: PostgresTarget, state: str,
                  ports: dict[str, int], token: str) -> dict[str, str]:  # fmt: skip
    (root / "playbooks.yaml").write_text(DEMO_PLAYBOOKS)
    return {
        "OPS_BROKER_URL": redis_url,
        "OPS_DATABASE_URL": f"postgresql://{platform.user}@{platform.host}:{platform.port}/{platform.dbname}",
        "OPS_STATE_DATABASE_URL": f"postgresql://{admin.user}@{admin.host}:{admin.port}/{state}",
        "OPS_VAR_DIR": str(root / "var"),
        "OPS_BACKUP_STORE": f"file://{root / 'backups'}",
        "OPS_RECEIVER_BIND": f"127.0.0.1:{ports['receiver']}",
        "OPS_RECEIVER_TOKEN": token,
        "OPS_EXPORTER_BIND": f"127.0.0.1:{ports['exporter']}",
        "OPS_EXPORTER_PING_TIMEOUT_S": "0.3",
        "OPS_ALERTMANAGER_URL": f"http://127.0.0.1:{ports['alertmanager']}",
        "OPS_PLAYBOOKS": str(root / "playbooks.yaml"),
        "OPS_LOG_LEVEL": "INFO",
    }


def start_stack(root: Path, redis_url: str, postgres_url: str) -> Stack:
    """Databases, our processes, Prometheus and Alertmanager, each waited for; stop() undoes all of it."""
    for binary in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not installed (Debian packages prometheus, prometheus-alertmanager)")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    admin = parse_postgres_url(postgres_url)
    platform, state = _create_databases(admin, uuid.uuid4().hex[:8])
    names = ("receiver", "exporter", "prometheus", "alertmanager", "m-incidents", "m-default", "m-backups")
    ports = {name: free_port() for name in names}
    token = secrets.token_urlsafe(24)
    stack = Stack(root, redis_url, admin, platform, state,
                  _settings_env(root, redis_url, admin, platform, state, ports, token), ports, token)  # fmt: skip
    try:
        _start_processes(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_processes(stack: Stack) -> None:
    migrate = stack.ops("db", "upgrade")
    if migrate.returncode != 0:
        raise RuntimeError(f"ops-workers db upgrade failed: {migrate.stderr[-2000:]}")
    python = [sys.executable, "-m", "workers"]
    workers = {"incidents": ("incidents", "2"), "default": ("default", "1"), "backups": ("backups", "1")}
    for name, (queues, concurrency) in workers.items():
        metrics_bind = f"127.0.0.1:{stack.ports['m-' + name]}"
        stack.start(f"worker-{name}", [*python, "worker", "-Q", queues, "-c", concurrency,
                                       "--hostname", f"{name}@loop", "--metrics-bind", metrics_bind])  # fmt: skip
    stack.start("receiver", [*python, "receiver"])
    stack.start("beat", [*python, "beat"])
    stack.start("exporter", [*python, "exporter"])
    ours = {
        "receiver": http_ok(stack.http, f"{stack.url('receiver')}/healthz"),
        "exporter": http_ok(stack.http, f"{stack.url('exporter')}/metrics"),
        **{f"worker-{n}": http_ok(stack.http, f"http://127.0.0.1:{stack.ports['m-' + n]}/metrics") for n in workers},
    }
    # Alertmanager and Prometheus start once the receiver answers, so no first notification is lost
    # to a refused connection (Alertmanager would retry, but only after its backoff).
    for name, ready in ours.items():
        wait_until(name, ready, START_TIMEOUT_S, stack.procs[name])
    token_file = stack.root / "receiver-token"
    token_file.write_text(stack.token)
    token_file.chmod(0o600)
    am_config = stack.root / "alertmanager.yml"
    am_config.write_text(yaml.safe_dump(alertmanager_config(f"{stack.url('receiver')}/alertmanager", token_file)))
    stack.start("alertmanager", [
        "prometheus-alertmanager", f"--config.file={am_config}", f"--storage.path={stack.root / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{stack.ports['alertmanager']}", "--cluster.listen-address=",
        "--log.level=debug",
    ])  # fmt: skip
    jobs = {
        "receiver": [f"127.0.0.1:{stack.ports['receiver']}"],
        "workers": [f"127.0.0.1:{stack.ports['m-' + n]}" for n in workers],
        "ops-exporter": [f"127.0.0.1:{stack.ports['exporter']}"],
    }
    rules = render_rules(stack.root / "rules", RULE_FOR)
    prom_config = stack.root / "prometheus.yml"
    alertmanager = f"127.0.0.1:{stack.ports['alertmanager']}"
    prom_config.write_text(yaml.safe_dump(prometheus_config(rules, alertmanager, jobs)))
    stack.start("prometheus", [
        "prometheus", f"--config.file={prom_config}", f"--storage.tsdb.path={stack.root / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{stack.ports['prometheus']}",
        # Firing alerts are re-sent every minute by default; a first send that finds no Alertmanager
        # yet would otherwise wait that long.
        "--rules.alert.resend-delay=2s",
    ])  # fmt: skip
    for name in ("alertmanager", "prometheus"):
        wait_until(name, http_ok(stack.http, f"{stack.url(name)}/-/ready"), START_TIMEOUT_S, stack.procs[name])
    # Every target scraped at least once, so the rules see real series from here on.
    wait_until("prometheus targets", lambda: all(
        t["health"] == "up" for t in stack.http.get(f"{stack.url('prometheus')}/api/v1/targets")
        .json()["data"]["activeTargets"]), START_TIMEOUT_S)  # fmt: skip
