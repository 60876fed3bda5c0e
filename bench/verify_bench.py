"""Restore-drill and cleanup benchmark.

    python -m bench verify [--molecules-per-org 300000] [--cleanup-sizes 5000,10000,20000] [--part all]

verify: one full backup of a generated database (workers.demo.seed, the same `ops_bench_<N>`
database the backup benchmark uses, reused when it exists) is taken into a local store; then, in one
run, side by side:
  (a) plain   zstd -dc OBJECT | pg_restore into an empty database (created beforehand, not timed)
  (b) ours    verify_backup(): stream + SHA-256 + zstd -> pg_restore into a throwaway database,
              row counts of every table compared, the database dropped
cleanup: N backups (half of them past retention) are stored, then prune() runs in a child process:
wall time and the child's peak RSS, for each N, on a local directory and on S3 (a moto server process).
Setting the stores up is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg
from psycopg import sql

from workers.backup.dump import DumpOptions, create_full_backup
from workers.backup.manifest import Manifest, write_manifest
from workers.backup.naming import BackupKind, new_backup_id, object_key
from workers.backup.retention import Policy, Verification
from workers.backup.s3 import S3Store
from workers.backup.storage import BackupStore, LocalStore
from workers.backup.verification import VerificationResult, write_verification
from workers.demo import SeedSize, seed
from workers.settings import PostgresTarget, S3Settings, parse_postgres_url

MIB = 1 << 20
S3 = S3Settings(
    sse="AES256", kms_key_id=None, storage_class="STANDARD_IA", endpoint_url=None, region="us-east-1",
    addressing_style="path", request_checksum="when_required",
)  # fmt: skip
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class Measured:
    name: str
    wall_s: float
    peak_rss_bytes: int


def _sample_peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        total = 0
        try:
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
        except psutil.Error:
            break
        peak[0] = max(peak[0], total)
        stop.wait(0.02)


def measure(name: str, argv: list[str], env: dict[str, str]) -> Measured:
    """Run argv to completion: its wall time and the peak RSS of its process tree (sampled every 20 ms)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    peak = [0]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_peak_rss, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    proc.wait()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name} exited with {proc.returncode}")
    return Measured(name, wall, peak[0])


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (workdir / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
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


def admin_sql(admin: PostgresTarget, statement: sql.Composable) -> None:
    with psycopg.connect(**admin.conninfo(), autocommit=True) as conn:
        conn.execute(statement)


def child_verify(store_root: str, manifest_key: str) -> None:
    from workers.backup.manifest import read_manifest
    from workers.backup.verify import DrillOptions, verify_backup

    server = PostgresTarget(os.environ["PGHOST"], int(os.environ["PGPORT"]), os.environ["PGUSER"], "postgres")
    store = LocalStore(Path(store_root))
    manifest = read_manifest(store, manifest_key)
    options = DrillOptions(shutil.which("pg_restore") or "pg_restore", shutil.which("pg_dump") or "pg_dump", 7200)
    result = verify_backup(manifest, store, server, options)
    if not result.ok:
        raise SystemExit(f"verification failed: {result.first_mismatch}")
    print(f"{result.tables_checked} tables", flush=True)


def bench_verify(admin: PostgresTarget, molecules_per_org: int, organizations: int, workdir: Path) -> None:
    target = admin.with_dbname(f"ops_bench_{molecules_per_org}")
    started = time.perf_counter()
    seeded = seed(target, SeedSize(organizations=organizations, molecules_per_org=molecules_per_org))
    print(f"database {target.dbname}: {'seeded' if seeded.created else 'reused'} in "
          f"{time.perf_counter() - started:.0f}s; {sum(seeded.rows.values()):,} rows", flush=True)  # fmt: skip
    store = LocalStore(workdir / "store")
    options = DumpOptions(shutil.which("pg_dump") or "pg_dump", 7200, 30, 3, 2)
    taken_at = datetime.now(UTC)
    started = time.perf_counter()
    manifest = create_full_backup(
        target, store, backup_id=new_backup_id(taken_at, secrets.token_hex(4)), started_at=taken_at, options=options
    )
    print(f"backup: {manifest.size_bytes / MIB:,.0f} MiB stored in {time.perf_counter() - started:.0f}s", flush=True)
    env = {**os.environ, "PGHOST": admin.host, "PGPORT": str(admin.port), "PGUSER": admin.user}
    plain_db = f"ops_bench_plain_{uuid.uuid4().hex[:8]}"
    admin_sql(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(plain_db)))
    obj = store.root / manifest.key
    try:
        plain = measure(
            "(a) plain: zstd -dc | pg_restore",
            ["sh", "-c", 'zstd -dc -- "$1" | pg_restore --exit-on-error --no-owner --no-privileges'
             ' --no-password --dbname="$2"', "sh", str(obj), plain_db],
            env,
        )  # fmt: skip
    finally:
        admin_sql(admin, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(plain_db)))
    ours = measure(
        "(b) ours: verify_backup()",
        [sys.executable, "-m", "bench.verify_bench", "--child-verify", str(store.root), manifest.manifest_key],
        env,
    )
    print(f"\nverification of a {manifest.size_bytes / MIB:,.0f} MiB backup "
          f"({sum(manifest.tables.values()):,} rows in {len(manifest.tables)} tables):")  # fmt: skip
    print("| variant | wall s | vs (a) | peak RSS MiB |\n|---|---:|---:|---:|")
    for r in (plain, ours):
        print(f"| {r.name} | {r.wall_s:.1f} | {r.wall_s / plain.wall_s:.2f}x | {r.peak_rss_bytes / MIB:.0f} |")
    sys.stdout.flush()


def fabricate(store: BackupStore, count: int) -> None:
    """count backups in 10 series, spread evenly over 60 days before NOW (half of them past 30 days);
    the newest of each series passed verification, so retention may delete."""
    per_series = count // 10
    step = timedelta(days=60) / per_series

    def one(item: tuple[int, int]) -> None:
        series, index = item
        taken_at = NOW - step * index
        backup_id = new_backup_id(taken_at, secrets.token_hex(4))
        key = object_key(BackupKind.FULL, f"db{series}", backup_id)
        payload = backup_id.encode()
        store.put_bytes(key, payload)
        manifest = Manifest(
            id=backup_id, kind=BackupKind.FULL, database=f"db{series}", organization_id=None,
            started_at=taken_at, finished_at=taken_at, pg_dump_version=None, server_version="15",
            format="pg_dump-custom", compression="zstd", key=key, size_bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(), tables={"public.t": 1},
        )  # fmt: skip
        write_manifest(store, manifest)
        if index == 0:
            write_verification(store, VerificationResult(
                backup_id=backup_id, kind="full", database=manifest.database, organization_id=None, key=key,
                started_at=NOW, finished_at=NOW, outcome=Verification.OK, reason=None, first_mismatch=None,
                tables_checked=1, scratch_database="ops_verify_bench",
            ))  # fmt: skip

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, [(s, i) for s in range(10) for i in range(per_series)]))


class NoReaders:
    """Nobody verifies during the benchmark; the lease round trips (one per 1,000 backups) are in the tests."""

    def claim(self, backup_ids: Sequence[str]) -> set[str]:
        return set(backup_ids)

    def release_all(self) -> None:
        pass


def open_bench_store(kind: str, location: str, endpoint: str) -> BackupStore:
    if kind == "s3":
        bucket, _, prefix = location.partition("/")
        return S3Store(bucket, prefix, replace(S3, endpoint_url=endpoint))
    return LocalStore(Path(location))


def child_cleanup(kind: str, location: str, endpoint: str) -> None:
    from workers.backup.cleanup import prune

    store = open_bench_store(kind, location, endpoint)
    started = time.perf_counter()
    report = prune(store, Policy(retention_days=30, keep_min=3), NoReaders(), now=NOW, orphan_grace=timedelta(days=1))
    wall = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{report.listed_objects} {report.count('backup')} {len(report.held)} {wall} {rss}", flush=True)


def bench_cleanup(sizes: dict[str, list[int]], workdir: Path, endpoint: str) -> None:
    import boto3

    client = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench").client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    )
    rows: list[str] = []
    for kind in ("local", "s3"):
        for count in sizes[kind]:
            if kind == "s3":
                bucket = f"bench-{uuid.uuid4().hex[:8]}"
                client.create_bucket(Bucket=bucket)
                location = f"{bucket}/platform"
            else:
                location = str(workdir / f"cleanup-{count}")
            started = time.perf_counter()
            fabricate(open_bench_store(kind, location, endpoint), count)
            setup_s = time.perf_counter() - started
            out = subprocess.run(
                [sys.executable, "-m", "bench.verify_bench", "--child-cleanup", kind, location, endpoint],
                check=True, capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            listed, deleted, held, wall, rss = int(out[0]), int(out[1]), int(out[2]), float(out[3]), int(out[4])
            rows.append(
                f"| {kind} | {count:,} | {listed:,} | {deleted:,} | {wall:.2f} | {wall / count * 1e6:.0f} |"
                f" {rss / MIB:.0f} | {setup_s:.0f} |"
            )
            print(rows[-1], flush=True)
            if held:
                print(f"  warning: {held} series held", flush=True)
    print("\ncleanup (prune over N stored backups, half expired):")
    print("| store | backups | objects listed | deleted | wall s | us per backup | peak RSS MiB | setup s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child-verify":
        child_verify(argv[1], argv[2])
        return 0
    if argv and argv[0] == "--child-cleanup":
        child_cleanup(argv[1], argv[2], argv[3])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--organizations", type=int, default=5)
    parser.add_argument(
        "--molecules-per-org",
        type=int,
        default=300000,
        help="300000 gives about 1.1 GB of pg_dump -Z0 output (as in the backup benchmark)",
    )
    parser.add_argument("--cleanup-sizes", default="5000,10000,20000", help="backups per cleanup run")
    parser.add_argument("--s3-sizes", default=None, help="backups per cleanup run on S3 (default: --cleanup-sizes)")
    parser.add_argument("--part", choices=("all", "verify", "cleanup"), default="all")
    args = parser.parse_args(argv)
    admin = parse_postgres_url(args.database_url)
    workdir = Path(tempfile.mkdtemp(prefix="ops-verify-bench-"))
    print(f"{os.cpu_count()} CPUs", flush=True)
    try:
        if args.part in ("all", "verify"):
            bench_verify(admin, args.molecules_per_org, args.organizations, workdir)
        if args.part in ("all", "cleanup"):
            moto, endpoint = start_moto(workdir)
            # boto3's default chain (what S3Store uses) must find credentials; moto accepts any.
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            try:
                sizes = {
                    "local": [int(x) for x in args.cleanup_sizes.split(",")],
                    "s3": [int(x) for x in (args.s3_sizes or args.cleanup_sizes).split(",")],
                }
                bench_cleanup(sizes, workdir, endpoint)
            finally:
                moto.terminate()
                moto.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
