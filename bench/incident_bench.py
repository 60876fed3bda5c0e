"""Alert-to-action latency: the real receiver and a real prefork worker, alerts posted at a steady rate.

    python -m bench incident [--rate 50] [--duration 60] [--processes 4]

Latency is measured from the receiver accepting an alert (incidents.received_at) to the first
playbook step starting (incident_actions.started_at), both stamped by our processes in the state
database on PostgreSQL. Needs PostgreSQL and Redis (see --postgres-url, --redis-url).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import psycopg
import redis
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
TARGET_P99_S = 0.250
SENDERS = 16  # concurrent connections posting alerts
TOKEN = "bench-token"
PLAYBOOKS = """
playbooks:
  - name: bench
    match: {{alertname: BenchAlert}}
    target: "{{labels.instance}}"
    cooldown: 0s
    budget_per_hour: 1000000
    steps:
      - action: http.check
        params: {{url: "{target}/healthz", expect_status: 200}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


class PeakRss:
    """Samples the summed RSS of a process tree every 0.2 s; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                total = 0
                for proc in tree:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                return
            self.peak_bytes = max(self.peak_bytes, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    name = f"ops_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def process(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(ready: object, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not become ready within {timeout_s:g}s")


def notification(index: int, run: str) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    labels = {"alertname": "BenchAlert", "severity": "warning", "instance": f"bench-{run}-{index}"}
    return {
        "version": "4", "status": "firing", "receiver": "ops-workers", "groupKey": f"bench-{run}-{index}",
        "truncatedAlerts": 0, "groupLabels": {"alertname": "BenchAlert"}, "commonLabels": labels,
        "commonAnnotations": {}, "externalURL": "http://alertmanager.invalid",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": "bench"},
                    "startsAt": now, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                    "fingerprint": uuid.uuid4().hex[:16]}],
    }  # fmt: skip


def send_alerts(base_url: str, rate: float, duration_s: float) -> tuple[list[float], int]:
    """Post one alert every 1/rate seconds from a pool of connections (a slow answer never delays the
    next alert's departure, as with Alertmanager); return the HTTP answer times and the refusals."""
    run = uuid.uuid4().hex[:6]
    total = int(rate * duration_s)
    answers: list[float] = []
    refused: list[int] = []
    lock = threading.Lock()
    local = threading.local()

    def post(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
        sent = time.monotonic()
        response = local.client.post("/alertmanager", json=notification(index, run))
        with lock:
            answers.append(time.monotonic() - sent)
            if response.status_code != 200:
                refused.append(response.status_code)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        for index in range(total):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, index)
    return answers, len(refused)


class Target(BaseHTTPRequestHandler):
    """The endpoint the playbook's http.check calls: answers 200 at once."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def latencies(state_url: str, expected: int, timeout_s: float) -> list[float]:
    """Seconds from received_at to the first step's start, per incident; waits for all to start."""
    query = """
        SELECT extract(epoch FROM min(a.started_at) - i.received_at)
        FROM incidents i JOIN incident_actions a ON a.incident_id = i.id AND a.step IS NOT NULL
        GROUP BY i.id
    """
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(state_url, autocommit=True) as conn:
        while True:
            rows = conn.execute(query).fetchall()
            if len(rows) >= expected or time.monotonic() > deadline:
                return [float(r[0]) for r in rows]
            time.sleep(0.5)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench incident", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="alerts per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sustained load")
    parser.add_argument("--processes", type=int, default=4, help="prefork pool size of the worker")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL",
                        "postgresql://postgres@127.0.0.1:5432/postgres"))  # fmt: skip
    args = parser.parse_args(argv)

    redis.Redis.from_url(args.redis_url).flushdb()
    with tempfile.TemporaryDirectory(prefix="ops-bench-") as scratch, scratch_database(args.postgres_url) as state:
        port = free_port()
        receiver_url = f"http://127.0.0.1:{port}"
        target = ThreadingHTTPServer(("127.0.0.1", 0), Target)
        threading.Thread(target=target.serve_forever, daemon=True).start()
        playbooks = Path(scratch) / "playbooks.yaml"
        playbooks.write_text(PLAYBOOKS.format(target=f"http://127.0.0.1:{target.server_address[1]}"))
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
        env = {
            **clean, "PYTHONPATH": str(REPO), "OPS_BROKER_URL": args.redis_url,
            "OPS_STATE_DATABASE_URL": state, "OPS_VAR_DIR": str(Path(scratch) / "var"),
            "OPS_RECEIVER_BIND": f"127.0.0.1:{port}", "OPS_RECEIVER_TOKEN": TOKEN,
            "OPS_PLAYBOOKS": str(playbooks), "OPS_METRICS_BIND": "127.0.0.1:0", "OPS_LOG_LEVEL": "WARNING",
            "OPS_REMEDIATION_BUDGET_PER_HOUR": "1000000",
        }  # fmt: skip
        receiver_argv = [sys.executable, "-m", "workers", "receiver"]
        worker_argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "prefork",
                       "-c", str(args.processes), "-Q", "incidents", "--without-mingle", "--without-gossip",
                       "--hostname", f"bench-{uuid.uuid4().hex[:6]}@localhost", "--loglevel", "WARNING"]  # fmt: skip
        with (
            process(receiver_argv, env, Path(scratch) / "receiver.log") as receiver,
            process(worker_argv, env, Path(scratch) / "worker.log") as worker,
        ):
            wait_until(lambda: httpx.get(f"{receiver_url}/healthz", timeout=1).status_code == 200, "receiver")
            # The worker is ready once it has run a playbook end to end: one warm-up alert.
            send_alerts(receiver_url, 1.0, 1.0)
            wait_until(lambda: len(latencies(state, 1, 0)) >= 1, "worker")
            worker_rss, receiver_rss = PeakRss(worker.pid), PeakRss(receiver.pid)
            started = time.monotonic()
            answers, refused = send_alerts(receiver_url, args.rate, args.duration)
            sending_s = time.monotonic() - started
            expected = 1 + len(answers)
            measured = latencies(state, expected, timeout_s=120)[1:]
            worker_peak, receiver_peak = worker_rss.stop(), receiver_rss.stop()
        target.shutdown()
    if not measured:
        print("no alert reached an action", file=sys.stderr)
        return 1
    p50, p90, p99 = (percentile(measured, f) for f in (0.50, 0.90, 0.99))
    http_p50, http_p99 = percentile(answers, 0.50), percentile(answers, 0.99)
    print(f"alerts sent: {len(answers)} at {len(answers) / sending_s:.1f}/s for {sending_s:.1f}s "
          f"({refused} refused); {len(measured)} reached an action")  # fmt: skip
    print(f"worker: 1 prefork worker, {args.processes} processes")
    print(f"alert-to-action  p50 {p50 * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
          f"max {max(measured) * 1000:7.1f} ms  mean {statistics.fmean(measured) * 1000:7.1f} ms")  # fmt: skip
    print(f"receiver answer  p50 {http_p50 * 1000:7.1f} ms  p99 {http_p99 * 1000:7.1f} ms")
    print(f"ratio alert-to-action p99 / receiver answer p99: {p99 / http_p99:.1f}x")
    print(f"target p99 <= {TARGET_P99_S * 1000:.0f} ms: {'met' if p99 <= TARGET_P99_S else 'MISSED'} "
          f"(p99 is {p99 / TARGET_P99_S:.2f} of the target)")  # fmt: skip
    print(f"peak RSS: worker (main + pool) {worker_peak / 2**20:.0f} MiB, receiver {receiver_peak / 2**20:.0f} MiB")
    lost = expected - 1 - len(measured)
    if lost:
        print(f"{lost} alert(s) never reached an action within 120 s", file=sys.stderr)
    return 0 if p99 <= TARGET_P99_S and not lost and not refused else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
