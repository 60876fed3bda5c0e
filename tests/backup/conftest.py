"""Backup fixtures: an S3 server process (moto), stores, a seeded platform database."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import require
from workers.backup.s3 import S3Store
from workers.backup.storage import LocalStore
from workers.demo import SeedSize, seed
from workers.settings import PostgresTarget, S3Settings, Secret

if TYPE_CHECKING:
    from conftest import PgServer

MOTO_START_TIMEOUT_S = 30.0
SMALL_SEED = SeedSize(organizations=3, molecules_per_org=40, pipelines_per_org=2, results_per_job=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """An S3-protocol server in its own process, reached over HTTP like any S3-compatible store."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    def settings(self, **overrides: Any) -> S3Settings:
        values: dict[str, Any] = {
            "sse": "AES256",
            "kms_key_id": None,
            "storage_class": "STANDARD_IA",
            "endpoint_url": self.endpoint_url,
            "region": "us-east-1",
            "addressing_style": "path",
            "request_checksum": "when_required",
        }
        values.update(overrides)
        return S3Settings(**values)

    def client(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("s3", endpoint_url=self.endpoint_url)

    def new_bucket(self) -> str:
        name = f"backups-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def start_moto(log_path: Path) -> MotoServer:
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    with httpx.Client() as http:
        # Wait until it answers; connection refused until the server has bound its port.
        transport_deadline = MOTO_START_TIMEOUT_S
        for _ in range(int(transport_deadline * 10)):
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}; see {log_path}")
            try:
                http.get(f"{url}/moto-api/", timeout=0.5)
                return MotoServer(url, process)
            except httpx.TransportError:
                process_wait(process, 0.1)
    process.kill()
    raise RuntimeError(f"moto server did not answer within {MOTO_START_TIMEOUT_S}s")


def process_wait(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the session; each test gets its own bucket."""
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    stop(server.process)


@pytest.fixture
def private_moto(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto server for one test, which may kill it."""
    server = start_moto(tmp_path / "moto.log")
    yield server
    stop(server.process)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for boto3's default chain (what S3Store uses outside tests) pointing at nothing real."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3_store(moto: MotoServer, aws_credentials: None) -> S3Store:
    """An S3Store on a fresh bucket, under a prefix, with production settings (SSE, STANDARD_IA)."""
    return S3Store(moto.new_bucket(), "platform", moto.settings())


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def make_store(local_store: LocalStore, s3_store: S3Store) -> Callable[[str], LocalStore | S3Store]:
    return lambda kind: local_store if kind == "local" else s3_store


@pytest.fixture(scope="session")
def platform_db(pg_admin: PostgresTarget) -> Iterator[PostgresTarget]:
    """The demo platform database, seeded once per session; tests only read it."""
    target = pg_admin.with_dbname(f"ops_test_platform_{uuid.uuid4().hex[:10]}")
    seed(target, SMALL_SEED)
    yield target
    drop_database(pg_admin, target.dbname)


@pytest.fixture
def fresh_platform_db(pg: PgServer) -> PostgresTarget:
    """A demo platform database for one test, which may change it."""
    target = pg.admin.with_dbname(f"ops_test_platform_{uuid.uuid4().hex[:12]}")
    pg.created.append(target.dbname)
    seed(target, SMALL_SEED)
    return target


def drop_database(admin: PostgresTarget, name: str) -> None:
    with psycopg.connect(**admin.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def row_counts(target: PostgresTarget) -> dict[str, int]:
    counts: dict[str, int] = {}
    with psycopg.connect(**target.conninfo()) as conn:  # type: ignore[arg-type]
        for table in ("organizations", "molecules", "pipelines", "docking_jobs", "job_results"):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            counts[f"public.{table}"] = int(row[0]) if row else 0  # type: ignore[call-overload]
    return counts


MEDIUM_SEED = SeedSize(organizations=5, molecules_per_org=3000)  # about 11 MB of pg_dump output


@pytest.fixture(scope="session")
def medium_platform_db(pg_admin: PostgresTarget) -> Iterator[PostgresTarget]:
    """A platform database big enough that pg_dump is still writing when a test interferes."""
    target = pg_admin.with_dbname(f"ops_test_platform_m_{uuid.uuid4().hex[:10]}")
    seed(target, MEDIUM_SEED)
    yield target
    drop_database(pg_admin, target.dbname)


@dataclass
class PasswordServer:
    """A private PostgreSQL cluster that checks passwords (the shared test server trusts everyone)."""

    target: PostgresTarget  # with the right password


PG_SERVER_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


def _can_start_a_private_cluster() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("starting a private PostgreSQL cluster needs root (initdb runs as user postgres)")
    if not (PG_SERVER_BIN_DIR / "initdb").is_file():
        raise RuntimeError(f"no PostgreSQL 15 server binaries in {PG_SERVER_BIN_DIR} (package postgresql-15)")


@pytest.fixture(scope="session")
def password_pg(pg_admin: PostgresTarget) -> Iterator[PasswordServer]:
    # Like every service fixture: skipped on a laptop without it, a failure in CI, so the
    # wrong-password test can never turn green by not running.
    require("a private password-checking PostgreSQL cluster", _can_start_a_private_cluster)
    bin_dir = PG_SERVER_BIN_DIR
    import pwd

    postgres = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="ops-pw-pg-"))
    os.chown(base, postgres.pw_uid, postgres.pw_gid)
    password_file = base / "pw"
    password_file.write_text("right-password\n")
    os.chown(password_file, postgres.pw_uid, postgres.pw_gid)
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", "postgres",
         "-A", "scram-sha-256", f"--pwfile={password_file}"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-w", "-l", str(base / "log"),
         "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        target = PostgresTarget("127.0.0.1", port, "postgres", "postgres", Secret("right-password"))
        seed(target.with_dbname("platform"), SMALL_SEED)
        yield PasswordServer(target.with_dbname("platform"))
    finally:
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
