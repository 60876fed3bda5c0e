"""Backup benchmark: wall time and peak RSS of pg_dump alone, the original design, and ours, side by side.

    python -m bench backup [--molecules-per-org 30000,300000] [--repeat 1]

For each database size (generated with workers.demo.seed) it runs, one after the other:
  (a) floor     pg_dump -Fc -Z0 > /dev/null
  (b) original  pg_dump -Fc to a local file, then boto3 upload_file to S3 (SSE AES256, STANDARD_IA)
  (c) ours      pg_dump -Fc -Z0 -> zstd -> SHA-256 -> S3 multipart (and -> a local directory)
S3 is a moto server process on 127.0.0.1. Peak RSS is the largest sum of RSS over the process tree
of each variant (pg_dump included, the PostgreSQL server excluded), sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from workers.demo import SeedSize, seed
from workers.settings import PostgresTarget, S3Settings, parse_postgres_url

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
S3_SETTINGS = {
    "sse": "AES256", "kms_key_id": None, "storage_class": "STANDARD_IA", "region": "us-east-1",
    "addressing_style": "path", "request_checksum": "when_required",
}  # fmt: skip


@dataclass
class Measured:
    name: str
    wall_s: float
    peak_rss_bytes: int
    detail: str = ""


def sample_peak_rss(proc: subprocess.Popen[bytes], stop: threading.Event, peak: list[int]) -> None:
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        return
    while not stop.is_set():
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            break
        peak[0] = max(peak[0], total)
        stop.wait(0.02)


def measure(name: str, argv: list[str], env: dict[str, str] | None = None, stdout: int | None = None) -> Measured:
    """Run argv to completion; its wall time and the peak RSS of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=stdout if stdout is not None else subprocess.PIPE)
    peak = [0]
    stop = threading.Event()
    sampler = threading.Thread(target=sample_peak_rss, args=(proc, stop, peak), daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed with {proc.returncode}")
    return Measured(name, wall, peak[0], (out or b"").decode().strip())


def child_env(target: PostgresTarget, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(target.child_env())
    env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "PYTHONPATH": str(REPO),
                "BENCH_S3_ENDPOINT": endpoint})  # fmt: skip
    return env


# ---- the child processes (python -m bench.backup_bench --child ...) ----


def child_original(target: PostgresTarget, bucket: str, workdir: Path) -> None:
    """The original design: pg_dump -Fc into a file, then upload the file."""
    import boto3

    path = workdir / "original.dump"
    with path.open("wb") as out:
        subprocess.run([shutil.which("pg_dump") or "pg_dump", "-Fc", "--no-password"], stdout=out, check=True)
    client = boto3.session.Session().client("s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], region_name="us-east-1")
    client.upload_file(
        str(path), bucket, f"original/{uuid.uuid4().hex}.dump",
        ExtraArgs={"ServerSideEncryption": "AES256", "StorageClass": "STANDARD_IA"},
    )  # fmt: skip
    print(path.stat().st_size)
    path.unlink()


def child_ours(target: PostgresTarget, store_kind: str, location: str, level: int, threads: int) -> None:
    from workers.backup.dump import DumpOptions, create_full_backup
    from workers.backup.naming import new_backup_id
    from workers.backup.process import find_program
    from workers.backup.s3 import S3Store
    from workers.backup.storage import BackupStore, LocalStore

    store: BackupStore
    if store_kind == "s3":
        settings = S3Settings(endpoint_url=os.environ["BENCH_S3_ENDPOINT"], **S3_SETTINGS)  # type: ignore[arg-type]
        store = S3Store(location, "bench", settings)
    else:
        store = LocalStore(Path(location))
    options = DumpOptions(find_program("pg_dump"), 6 * 3600, 30, level, threads)
    fed = [0]

    def count(size: int) -> None:
        fed[0] = size

    now = time.time()
    from datetime import UTC, datetime

    started = datetime.fromtimestamp(now, UTC)
    manifest = create_full_backup(
        target, store, backup_id=new_backup_id(started, uuid.uuid4().hex[:8]), started_at=started,
        options=options, progress=count,
    )  # fmt: skip
    print(json.dumps({"stored": manifest.size_bytes, "dump": fed[0], "part_size": manifest.part_size_bytes}))


# ---- the parent ----


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (workdir / "moto.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/moto-api/", timeout=0.5)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def run_size(admin: PostgresTarget, molecules_per_org: int, args: argparse.Namespace, url: str,
             workdir: Path) -> list[Measured]:  # fmt: skip
    import boto3

    target = admin.with_dbname(f"ops_bench_{molecules_per_org}")
    size = SeedSize(organizations=args.organizations, molecules_per_org=molecules_per_org)
    started = time.perf_counter()
    result = seed(target, size, reset=args.reseed)
    print(f"database {target.dbname}: {'seeded' if result.created else 'reused'} in "
          f"{time.perf_counter() - started:.0f}s; {sum(result.rows.values()):,} rows", flush=True)  # fmt: skip
    env = child_env(target, url)
    client = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench").client(
        "s3", endpoint_url=url, region_name="us-east-1"
    )
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    me = [sys.executable, "-m", "bench.backup_bench", "--child"]
    results: list[Measured] = []
    for _ in range(args.repeat):
        results.append(measure("a floor: pg_dump -Fc -Z0 > /dev/null",
                               [shutil.which("pg_dump") or "pg_dump", "-Fc", "-Z0", "--no-password"],
                               env, stdout=subprocess.DEVNULL))  # fmt: skip
        results.append(measure("b original: pg_dump -Fc > file; upload", [*me, "original", bucket, str(workdir)], env))
        results.append(measure("c ours -> S3", [*me, "ours", "s3", bucket, str(args.zstd_level),
                                                 str(args.zstd_threads)], env))  # fmt: skip
        local = workdir / "store"
        results.append(measure("c ours -> local dir", [*me, "ours", "local", str(local), str(args.zstd_level),
                                                        str(args.zstd_threads)], env))  # fmt: skip
        shutil.rmtree(local, ignore_errors=True)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
    return results


def report(molecules_per_org: int, results: list[Measured]) -> None:
    by_name: dict[str, list[Measured]] = {}
    for r in results:
        by_name.setdefault(r.name, []).append(r)
    best = {name: min(rs, key=lambda r: r.wall_s) for name, rs in by_name.items()}
    floor = best["a floor: pg_dump -Fc -Z0 > /dev/null"].wall_s
    original = best["b original: pg_dump -Fc > file; upload"].wall_s
    ours = next((json.loads(r.detail) for r in results if r.name == "c ours -> S3"), {})
    print(
        f"\nmolecules/org {molecules_per_org:,}: pg_dump -Z0 output {ours.get('dump', 0) / MIB:,.0f} MiB, "
        f"ours stored {ours.get('stored', 0) / MIB:,.0f} MiB (part size {ours.get('part_size', 0) / MIB:.0f} MiB)"
    )
    print("| variant | wall s | vs (a) | vs (b) | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for name, r in best.items():
        print(f"| {name} | {r.wall_s:.1f} | {r.wall_s / floor:.2f}x | {r.wall_s / original:.2f}x | "
              f"{r.peak_rss_bytes / MIB:.0f} |")  # fmt: skip
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        # The connection comes from the PG* variables the parent set.
        env_target = PostgresTarget(os.environ["PGHOST"], int(os.environ["PGPORT"]), os.environ["PGUSER"],
                                    os.environ["PGDATABASE"])  # fmt: skip
        if argv[1] == "original":
            child_original(env_target, argv[2], Path(argv[3]))
        else:
            child_ours(env_target, argv[2], argv[3], int(argv[4]), int(argv[5]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--organizations", type=int, default=5)
    parser.add_argument(
        "--molecules-per-org",
        default="30000,300000",
        help="comma-separated sizes; 300000 gives about 1.1 GB of pg_dump -Z0 output",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest is reported")
    parser.add_argument("--zstd-level", type=int, default=3)
    parser.add_argument("--zstd-threads", type=int, default=2)
    parser.add_argument("--reseed", action="store_true", help="drop and regenerate the databases")
    args = parser.parse_args(argv)
    admin = parse_postgres_url(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="ops-backup-bench-"))
    moto, url = start_moto(workdir)
    print(f"{os.cpu_count()} CPUs; zstd level {args.zstd_level}, {args.zstd_threads} threads; S3: moto at {url}")
    try:
        for molecules in [int(x) for x in args.molecules_per_org.split(",")]:
            report(molecules, run_size(admin, molecules, args, url, workdir))
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
