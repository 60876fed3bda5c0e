"""The manifest: JSON written last, beside a backup's object. A backup without a manifest does not exist."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workers.backup.naming import MANIFEST_SUFFIX, BackupKind, is_backup_id, manifest_key, parse_key
from workers.backup.storage import BackupStore
from workers.errors import BackupNotFound, CorruptBackup, UsageError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup is and how to check it. JSON keys are the field names, except size and part_size."""

    id: str
    kind: BackupKind
    database: str
    organization_id: str | None
    started_at: datetime
    finished_at: datetime
    pg_dump_version: str | None  # None for org backups (read with COPY, not pg_dump)
    server_version: str
    format: str  # "pg_dump-custom" (full) or "ops-org-copy-v1" (org)
    compression: str  # "zstd"
    key: str  # the object's key, relative to the store's root
    size_bytes: int  # of the object as stored (compressed)
    sha256: str  # of the object as stored, so `sha256sum` on a downloaded copy matches
    tables: Mapping[str, int] = field(default_factory=dict)  # "schema.table" -> rows in the snapshot
    part_size_bytes: int = 0  # multipart part size used for the upload; 0 for a single write
    tool_version: str = ""

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.key)

    @property
    def taken_at(self) -> datetime:
        return self.started_at

    def to_json(self) -> dict[str, object]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "id": self.id,
            "kind": str(self.kind),
            "database": self.database,
            "organization_id": self.organization_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "pg_dump_version": self.pg_dump_version,
            "server_version": self.server_version,
            "format": self.format,
            "compression": self.compression,
            "key": self.key,
            "size": self.size_bytes,
            "sha256": self.sha256,
            "tables": dict(self.tables),
            "part_size": self.part_size_bytes,
            "tool_version": self.tool_version,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Manifest:
        """Parse a manifest document; CorruptBackup when a field is missing or has the wrong type."""
        try:
            return cls(
                id=str(doc["id"]),
                kind=BackupKind(doc["kind"]),
                database=str(doc["database"]),
                organization_id=None if doc.get("organization_id") is None else str(doc["organization_id"]),
                started_at=datetime.fromisoformat(doc["started_at"]),
                finished_at=datetime.fromisoformat(doc["finished_at"]),
                pg_dump_version=None if doc.get("pg_dump_version") is None else str(doc["pg_dump_version"]),
                server_version=str(doc["server_version"]),
                format=str(doc["format"]),
                compression=str(doc["compression"]),
                key=str(doc["key"]),
                size_bytes=int(doc["size"]),
                sha256=str(doc["sha256"]),
                tables={str(k): int(v) for k, v in dict(doc["tables"]).items()},
                part_size_bytes=int(doc.get("part_size", 0)),
                tool_version=str(doc.get("tool_version", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptBackup(f"manifest {doc.get('id', '?')!r} is malformed: {exc!r}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise CorruptBackup(f"manifest is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise CorruptBackup("manifest is not a JSON object")
        return cls.from_json(doc)


def write_manifest(store: BackupStore, manifest: Manifest) -> None:
    """Publish the backup: the manifest goes in last, once the object is complete."""
    store.put_bytes(manifest.manifest_key, manifest.to_bytes())


def read_manifest(store: BackupStore, key: str) -> Manifest:
    """The manifest stored at key (a manifest key)."""
    return Manifest.from_bytes(store.get_bytes(key))


def iter_manifests(store: BackupStore, prefix: str = "") -> Iterator[Manifest]:
    """Every readable manifest under prefix, in key order; unreadable ones are logged and skipped."""
    for stored in store.list_objects(prefix):
        if not stored.key.endswith(MANIFEST_SUFFIX):
            continue
        try:
            parse_key(stored.key)
            yield read_manifest(store, stored.key)
        except (ValueError, CorruptBackup):
            log.warning("unreadable manifest skipped", extra={"key": stored.key}, exc_info=True)


def list_manifests(store: BackupStore, kind: BackupKind | None = None) -> list[Manifest]:
    """Every backup in the store (optionally of one kind), newest first."""
    prefix = f"{kind}/" if kind is not None else ""
    return sorted(iter_manifests(store, prefix), key=lambda m: (m.started_at, m.id), reverse=True)


def find_manifest(store: BackupStore, backup_id: str) -> Manifest:
    """The manifest of the backup with this id.

    Raises:
        UsageError: backup_id is not shaped like one.
        BackupNotFound: no manifest has this id (objects without a manifest don't count).
    """
    if not is_backup_id(backup_id):
        shown = backup_id[:80]
        raise UsageError(f"{shown!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxxxx); see `ops-workers backup list`")
    wanted = f"/{backup_id}{MANIFEST_SUFFIX}"
    for stored in store.list_objects(""):
        if stored.key.endswith(wanted):
            return read_manifest(store, stored.key)
    raise BackupNotFound(backup_id)
