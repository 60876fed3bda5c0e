"""Readings of the host and the platform database for the system metrics: psutil and pg_stat_activity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from workers.errors import DatabaseUnavailable
from workers.settings import PostgresTarget

CONNECT_TIMEOUT_S = 3
# Mounts that hold no data anyone can run out of: kernel and container pseudo file systems.
PSEUDO_FILESYSTEMS = frozenset(
    {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "overlay", "squashfs", "nsfs",
     "mqueue", "debugfs", "tracefs", "securityfs", "pstore", "bpf", "autofs", "fusectl", "configfs",
     "hugetlbfs", "binfmt_misc", "ramfs", "rpc_pipefs", "efivarfs"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DiskUsage:
    mountpoint: str
    device: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    percent: float


@dataclass(frozen=True, slots=True)
class ConnectionCount:
    database: str
    active: int  # client sessions on the database, in any state (idle in transaction included)
    limit: int  # the database's CONNECTION LIMIT, else max_connections less the reserved slots


def cpu_percent() -> float:
    """CPU use of the whole host since the previous call, in percent (0-100)."""
    return float(psutil.cpu_percent(interval=None))


def memory_percent() -> float:
    """Memory in use on the host, in percent (0-100), as the kernel's MemAvailable sees it."""
    return float(psutil.virtual_memory().percent)


def disk_usage(mounts: Sequence[str] = ()) -> list[DiskUsage]:
    """Usage of the given mount points, or of every real mounted file system if none are given."""
    if mounts:
        targets = [(mount, mount) for mount in mounts]
    else:
        seen: set[str] = set()
        targets = []
        for part in psutil.disk_partitions(all=True):
            if part.fstype in PSEUDO_FILESYSTEMS or part.mountpoint in seen or not part.fstype:
                continue
            seen.add(part.mountpoint)
            targets.append((part.mountpoint, part.device))
    usages: list[DiskUsage] = []
    for mountpoint, device in targets:
        try:
            usage = psutil.disk_usage(mountpoint)
        except OSError:
            continue  # unmounted between listing and reading, or not readable by us
        usages.append(DiskUsage(mountpoint, device, usage.total, usage.used, usage.free, usage.percent))
    return usages


CONNECTIONS_SQL = """
SELECT
    (SELECT count(*) FROM pg_stat_activity
      WHERE datname = current_database() AND backend_type = 'client backend'),
    (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
    current_setting('max_connections')::int
      - current_setting('superuser_reserved_connections')::int
"""


def count_connections(target: PostgresTarget) -> ConnectionCount:
    """Client sessions on the platform database and the limit they run into.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    conninfo = make_conninfo(**target.conninfo(), connect_timeout=str(CONNECT_TIMEOUT_S))
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(CONNECTIONS_SQL).fetchone()
    except psycopg.Error as exc:
        reason = type(exc).__name__
        raise DatabaseUnavailable(f"cannot count connections on {target.redacted()}: {reason}") from exc
    assert row is not None
    active, database_limit, server_limit = (int(str(v)) for v in row)
    # Our own probe session is not load: leave it out of the count.
    limit = database_limit if database_limit >= 0 else server_limit
    return ConnectionCount(target.dbname, max(active - 1, 0), limit)
