"""Backup keys <-> (kind, database, organization, time, id). Pure: no I/O, no clock.

Keys are relative to the store's root (an S3 store puts its PREFIX in front) and sort by time
within a scope: ``full/DB/YYYY/MM/DD/YYYYMMDDTHHMMSSZ-XXXXXXXX.dump.zst`` and
``org/DB/ORG_ID/YYYY/MM/DD/...``; the manifest sits beside the object as ``....manifest.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import quote, unquote

OBJECT_SUFFIX = ".dump.zst"
MANIFEST_SUFFIX = ".manifest.json"
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_ID = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)-(?P<token>[0-9a-f]{8})$")


class BackupKind(StrEnum):
    FULL = "full"
    ORG = "org"


@dataclass(frozen=True, slots=True)
class KeyParts:
    kind: BackupKind
    database: str
    organization_id: str | None
    taken_at: datetime
    backup_id: str


def new_backup_id(taken_at: datetime, token: str) -> str:
    """The id of a backup started at taken_at; token is 8 random hex digits chosen by the caller."""
    if not re.fullmatch(r"[0-9a-f]{8}", token):
        raise ValueError("token must be 8 lowercase hex digits")
    return f"{taken_at.astimezone(UTC).strftime(_STAMP_FORMAT)}-{token}"


# PostgreSQL truncates identifiers beyond 63 bytes (NAMEDATALEN - 1) without an error: a longer
# name would restore into a database other than the one asked for.
MAX_DATABASE_NAME_BYTES = 63
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")


def database_name_problem(name: str) -> str | None:
    """Why name is not a database to restore into, or None when it is. Pure.

    Letters, digits, `_`, `$` and `-`, starting with a letter or `_`, at most 63 bytes: names that
    never need quoting in psql and that PostgreSQL keeps exactly as given.
    """
    if not _DATABASE_NAME.fullmatch(name):
        return "use letters, digits, '_', '$' and '-', starting with a letter or '_'"
    size = len(name.encode())
    if size > MAX_DATABASE_NAME_BYTES:
        return f"it is {size} bytes; PostgreSQL keeps only {MAX_DATABASE_NAME_BYTES} and would truncate it"
    return None


def is_backup_id(text: str) -> bool:
    return _ID.match(text) is not None


def taken_at_of(backup_id: str) -> datetime:
    """The start time encoded in a backup id; ValueError for anything that is not one."""
    match = _ID.match(backup_id)
    if match is None:
        raise ValueError(f"{backup_id!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxxxx)")
    return datetime.strptime(match["stamp"], _STAMP_FORMAT).replace(tzinfo=UTC)


def scope_prefix(kind: BackupKind, database: str, organization_id: str | None = None) -> str:
    """The key prefix under which every backup of one scope (a database, or one organization of it) lives."""
    if kind is BackupKind.ORG:
        if organization_id is None:
            raise ValueError("an org backup needs an organization id")
        return f"org/{_segment(database)}/{_segment(organization_id)}/"
    return f"full/{_segment(database)}/"


def scope_of_key(key: str) -> str | None:
    """The scope prefix (see scope_prefix) a key lies under, or None for a key outside every scope.

    Works for any key below a scope, also an unfinished write's (`.ID.dump.zst.xxxx.partial`).
    """
    parts = key.split("/")
    if parts[0] == BackupKind.FULL and len(parts) > 2 and parts[1]:
        return f"{BackupKind.FULL}/{parts[1]}/"
    if parts[0] == BackupKind.ORG and len(parts) > 3 and parts[1] and parts[2]:
        return f"{BackupKind.ORG}/{parts[1]}/{parts[2]}/"
    return None


def object_key(kind: BackupKind, database: str, backup_id: str, organization_id: str | None = None) -> str:
    """Where the backup's archive is stored."""
    taken_at = taken_at_of(backup_id)
    day = taken_at.strftime("%Y/%m/%d")
    return f"{scope_prefix(kind, database, organization_id)}{day}/{backup_id}{OBJECT_SUFFIX}"


def manifest_key(key: str) -> str:
    """The manifest's key for an object key."""
    if not key.endswith(OBJECT_SUFFIX):
        raise ValueError(f"{key!r} is not a backup object key")
    return key[: -len(OBJECT_SUFFIX)] + MANIFEST_SUFFIX


def object_key_of(manifest: str) -> str:
    """The object key a manifest key describes."""
    if not manifest.endswith(MANIFEST_SUFFIX):
        raise ValueError(f"{manifest!r} is not a manifest key")
    return manifest[: -len(MANIFEST_SUFFIX)] + OBJECT_SUFFIX


def parse_key(key: str) -> KeyParts:
    """Split an object or manifest key into its parts; ValueError when it is not one of ours."""
    parts = key.split("/")
    if parts and parts[0] == BackupKind.FULL and len(parts) == 6:
        kind, database, organization_id = BackupKind.FULL, unquote(parts[1]), None
    elif parts and parts[0] == BackupKind.ORG and len(parts) == 7:
        kind, database, organization_id = BackupKind.ORG, unquote(parts[1]), unquote(parts[2])
    else:
        raise ValueError(f"{key!r} is not a backup key")
    name = parts[-1]
    for suffix in (OBJECT_SUFFIX, MANIFEST_SUFFIX):
        if name.endswith(suffix):
            backup_id = name[: -len(suffix)]
            break
    else:
        raise ValueError(f"{key!r} does not end in {OBJECT_SUFFIX} or {MANIFEST_SUFFIX}")
    taken_at = taken_at_of(backup_id)
    if "/".join(parts[-4:-1]) != taken_at.strftime("%Y/%m/%d"):
        raise ValueError(f"{key!r}: the date folders do not match the id")
    return KeyParts(kind, database, organization_id, taken_at, backup_id)


def _segment(value: str) -> str:
    # A database name may hold '/' or '%'; quoting keeps one name one path segment.
    if not value or value in (".", ".."):
        raise ValueError(f"{value!r} cannot be a key segment")
    return quote(value, safe="")
