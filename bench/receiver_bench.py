"""Alert receiver throughput: notifications/s and alerts/s with p50/p99, beside raw Celery apply_async.

Starts `ops-workers receiver` (uvicorn, OPS_RECEIVER_WORKERS processes) on a fresh PostgreSQL state
database and a Redis broker, drives POST /alertmanager at a fixed concurrency with bodies of
distinct alerts (every alert is a new episode: inserted, enqueued and stamped), then measures a
plain loop of apply_async into the same Redis in the same run, and prints the ratio.

Two phases: saturated (every connection posts back to back: the most the receiver takes) and paced
(--rate alerts/s offered on a fixed schedule, latency counted from the scheduled send time). At a fixed
concurrency a saturated run's latency is concurrency / throughput by Little's law, so the latency target
is read from the paced phase.

    python -m bench receiver [--seconds 20] [--concurrency 32] [--alerts-per-body 10] [--rate 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import psutil
import psycopg
import redis
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
TARGET_ALERTS_PER_S = 2000
TARGET_P99_MS = 50.0


@dataclass
class Load:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    requests: int = 0


def body(run: str, index: int, alerts: int) -> bytes:
    starts = datetime.now(UTC).isoformat()
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "ops",
            "groupLabels": {"alertname": "BenchAlert"},
            "truncatedAlerts": 0,
            "alerts": [
                {
                    "status": "firing",
                    "labels": {
                        "alertname": "BenchAlert",
                        "severity": ("critical", "warning", "info")[n % 3],
                        "instance": f"{run}-{index}-{n}",
                    },
                    "annotations": {"summary": "benchmark alert"},
                    "startsAt": starts,
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus/graph",
                }
                for n in range(alerts)
            ],
        }
    ).encode()


async def one_connection(
    port: int, run: str, worker: int, alerts: int, stop_at: float, measure_from: float, load: Load,
    interval_s: float | None = None, offset_s: float = 0.0,
) -> None:
    """Keep-alive HTTP/1.1 POSTs over one connection; a minimal client so the driver costs little CPU.

    interval_s None: back to back (saturation). Otherwise one POST every interval_s on a fixed schedule,
    latency counted from the scheduled time, so a receiver that falls behind is charged for the wait.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = 0
    next_at = time.perf_counter() + offset_s
    try:
        while (now := time.perf_counter()) < stop_at:
            if interval_s is not None:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                now, next_at = next_at, next_at + interval_s
            payload = body(run, worker * 10_000_000 + index, alerts)
            index += 1
            head = (
                f"POST /alertmanager HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode()
            writer.write(head + payload)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            elapsed = time.perf_counter() - now
            status = int(status_line.split()[1])
            if now >= measure_from:
                load.requests += 1
                load.latencies_s.append(elapsed)
                if status != 200:
                    load.errors[status] = load.errors.get(status, 0) + 1
    finally:
        writer.close()


async def drive(
    port: int, concurrency: int, alerts: int, warmup_s: float, seconds: float, rate_per_s: float | None = None
) -> Load:
    """Drive the receiver over `concurrency` connections: back to back, or `rate_per_s` alerts/s in all."""
    load = Load()
    start = time.perf_counter()
    run = uuid.uuid4().hex[:8]
    interval_s = concurrency * alerts / rate_per_s if rate_per_s else None
    stop_at, measure_from = start + warmup_s + seconds, start + warmup_s
    offsets = [(interval_s or 0.0) * w / concurrency for w in range(concurrency)]  # spread the paced sends
    await asyncio.gather(
        *(
            one_connection(port, run, w, alerts, stop_at, measure_from, load, interval_s, offsets[w])
            for w in range(concurrency)
        )
    )
    return load


def raw_apply_async(broker_url: str, seconds: float) -> tuple[float, float]:
    """Tasks/s and tasks per CPU-second of a plain apply_async loop into the same Redis, production's config."""
    from workers.app import create_app
    from workers.settings import load_settings

    app = create_app(load_settings({"OPS_BROKER_URL": broker_url}), name="bench-raw")

    @app.task(name="bench.noop")
    def noop(incident_id: int) -> None:
        """Never run: only sent."""

    sent = 0
    deadline = time.perf_counter() + seconds
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline:
        noop.apply_async(args=[sent], queue="incidents", priority=3)
        sent += 1
    return sent / (time.perf_counter() - started), sent / (time.process_time() - cpu_started)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class RssSampler:
    """Peak resident memory of a process tree, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.peak_bytes = max(self.peak_bytes, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the process and its children (uvicorn workers)."""
        total = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total


def start_receiver(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start `ops-workers receiver` and return once /healthz answers (at WARNING it logs no start line)."""
    proc = subprocess.Popen([sys.executable, "-m", "workers", "receiver"], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("receiver not ready within 60s")


@dataclass
class Phase:
    name: str
    load: Load
    seconds: float
    alerts_per_body: int

    @property
    def alerts_per_s(self) -> float:
        return self.load.requests * self.alerts_per_body / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        return percentile([s * 1000 for s in self.load.latencies_s], fraction)

    def report(self) -> None:
        print(f"  {self.name}")
        print(f"    notifications/s   {self.load.requests / self.seconds:10.1f}")
        print(f"    alerts/s          {self.alerts_per_s:10.1f}")
        print(f"    latency p50       {self.percentile_ms(0.50):10.1f} ms")
        print(f"    latency p99       {self.percentile_ms(0.99):10.1f} ms")
        print(f"    non-200 answers   {sum(self.load.errors.values()):10d}   {self.load.errors or ''}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time of each phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--alerts-per-body", type=int, default=10)
    parser.add_argument("--rates", default=f"1000,1500,{TARGET_ALERTS_PER_S}",
                        help="alerts/s offered in each paced phase, comma-separated")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="receiver processes (OPS_RECEIVER_WORKERS)")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    dbname = f"ops_bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(args.postgres_url, autocommit=True)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    base = args.postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    broker = redis.Redis.from_url(args.redis_url)
    broker.flushdb()
    port = free_port()
    try:
        with TemporaryDirectory() as var_dir:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("OPS_")},
                "PYTHONPATH": str(REPO),
                "OPS_VAR_DIR": var_dir,
                "OPS_STATE_DATABASE_URL": f"{base}/{dbname}",
                "OPS_BROKER_URL": args.redis_url,
                "OPS_RECEIVER_BIND": f"127.0.0.1:{port}",
                "OPS_RECEIVER_TOKEN": TOKEN,
                "OPS_RECEIVER_WORKERS": str(args.workers),
                "OPS_LOG_LEVEL": "WARNING",
            }
            receiver = start_receiver(env, port)
            sampler = RssSampler(receiver.pid)
            cpu_marks: list[float] = []
            # The receiver's CPU over the saturated window: from the end of the warm-up to the end of the load.
            timer = threading.Timer(args.warmup, lambda: cpu_marks.append(sampler.cpu_s()))
            timer.start()
            try:
                saturated = asyncio.run(
                    drive(port, args.concurrency, args.alerts_per_body, args.warmup, args.seconds)
                )
                cpu_marks.append(sampler.cpu_s())
                paced = [
                    asyncio.run(drive(port, args.concurrency, args.alerts_per_body, args.warmup, args.seconds, rate))
                    for rate in rates
                ]
            finally:
                timer.cancel()
                sampler.stop()
                receiver.terminate()
                receiver.wait(timeout=60)
        with psycopg.connect(args.postgres_url.rsplit("/", 1)[0] + f"/{dbname}") as conn:
            recorded, stamped = conn.execute("SELECT count(*), count(enqueued_at) FROM incidents").fetchone() or (0, 0)
        queued = sum(int(broker.llen(k)) for k in broker.keys("incidents*") if broker.type(k) == b"list")
        broker.flushdb()
        raw_per_s, raw_per_cpu_s = raw_apply_async(args.redis_url, min(args.seconds, 10.0))
    finally:
        broker.flushdb()
        broker.close()
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        admin.close()

    phases = [
        Phase(f"saturated: {args.concurrency} connections back to back", saturated, args.seconds, args.alerts_per_body),
        *(Phase(f"paced: {rate:g} alerts/s offered over {args.concurrency} connections", load, args.seconds,
                args.alerts_per_body) for rate, load in zip(rates, paced, strict=True)),
    ]  # fmt: skip
    print(f"receiver: {args.workers} processes, {args.alerts_per_body} alerts per body, "
          f"{args.seconds:g}s measured per phase after {args.warmup:g}s")  # fmt: skip
    for phase in phases:
        phase.report()
    print(f"  rows recorded     {recorded:10d}   enqueued_at stamped {stamped}, messages queued {queued}")
    receiver_cpu_s = cpu_marks[-1] - cpu_marks[0] if len(cpu_marks) == 2 else float("nan")
    alerts_per_cpu_s = saturated.requests * args.alerts_per_body / receiver_cpu_s
    print(f"  receiver CPU (saturated) {receiver_cpu_s:.1f} s: {alerts_per_cpu_s:.0f} alerts per CPU-second")
    print(f"raw apply_async loop into the same Redis: {raw_per_s:10.1f} tasks/s, {raw_per_cpu_s:.0f} per CPU-second")
    print(f"  ratio saturated receiver alerts/s : raw apply_async/s = {phases[0].alerts_per_s / raw_per_s:.2f} "
          f"(per CPU-second: {alerts_per_cpu_s / raw_per_cpu_s:.2f})")  # fmt: skip
    bench_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS: receiver (all processes) {sampler.peak_bytes / 2**20:.0f} MiB, "
          f"bench driver {bench_rss / 2**20:.0f} MiB")  # fmt: skip
    load1, load5, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.1f} (1 min) {load5:.1f} (5 min) at the end")
    throughput_ok = phases[0].alerts_per_s >= TARGET_ALERTS_PER_S
    within = [rate for rate, phase in zip(rates, phases[1:], strict=True)
              if phase.percentile_ms(0.99) <= TARGET_P99_MS and phase.alerts_per_s >= 0.98 * rate]  # fmt: skip
    clean = not any(p.load.errors for p in phases) and recorded == stamped == queued
    print(f"target >= {TARGET_ALERTS_PER_S} alerts/s saturated: {'met' if throughput_ok else 'NOT met'}; "
          f"p99 <= {TARGET_P99_MS:g} ms at {TARGET_ALERTS_PER_S} alerts/s: "
          f"{'met' if TARGET_ALERTS_PER_S in within else 'NOT met'} (held up to {max(within, default=0):g} alerts/s); "
          f"every alert recorded, stamped and queued: {'yes' if clean else 'NO'}")  # fmt: skip
    return 0 if clean else 1


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
