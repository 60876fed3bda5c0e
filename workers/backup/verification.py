"""Verification records: the result of one restore drill, stored beside the manifest and in the state database."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from workers.backup.manifest import Manifest
from workers.backup.naming import MANIFEST_SUFFIX, OBJECT_SUFFIX
from workers.backup.retention import Verification
from workers.backup.storage import BackupStore
from workers.errors import CorruptBackup, DatabaseUnavailable, ObjectNotFound
from workers.state.schema import backup_verifications

log = logging.getLogger(__name__)

VERIFICATION_SUFFIX = ".verification.json"


class Reason(StrEnum):
    """Why a verification failed: a closed set, used as a metric label."""

    DOWNLOAD = "download"  # the object is missing or the store could not be read
    CHECKSUM = "checksum"  # size or SHA-256 of the stored bytes differ from the manifest
    DECODE = "decode"  # the checksum matched but the bytes are not a zstd stream
    RESTORE = "restore"  # pg_restore (or the org restore) reported an error
    ROW_COUNT = "row_count"  # a table's restored row count differs from the manifest
    TIMEOUT = "timeout"  # the restore did not finish in time
    SERVER = "server"  # the drill could not run as configured (no schema source for org backups)
    DRILL_ERROR = "drill_error"  # the drill could not run: pg_restore missing, credentials or privileges refused ...


def verification_key(object_key: str) -> str:
    """The verification record's key for a backup object key (beside the manifest)."""
    if not object_key.endswith(OBJECT_SUFFIX):
        raise ValueError(f"{object_key!r} is not a backup object key")
    return object_key[: -len(OBJECT_SUFFIX)] + VERIFICATION_SUFFIX


def object_key_of_verification(key: str) -> str:
    if not key.endswith(VERIFICATION_SUFFIX):
        raise ValueError(f"{key!r} is not a verification key")
    return key[: -len(VERIFICATION_SUFFIX)] + OBJECT_SUFFIX


def manifest_key_of_verification(key: str) -> str:
    return key[: -len(VERIFICATION_SUFFIX)] + MANIFEST_SUFFIX


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """One restore drill of one backup."""

    backup_id: str
    kind: str
    database: str
    organization_id: str | None
    key: str  # the backup object's key
    started_at: datetime
    finished_at: datetime
    outcome: Verification  # OK or FAILED
    reason: Reason | None
    first_mismatch: str | None
    tables_checked: int
    scratch_database: str

    @property
    def ok(self) -> bool:
        return self.outcome is Verification.OK

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self) -> dict[str, object]:
        return {
            "backup_id": self.backup_id,
            "kind": self.kind,
            "database": self.database,
            "organization_id": self.organization_id,
            "key": self.key,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "outcome": str(self.outcome),
            "reason": None if self.reason is None else str(self.reason),
            "first_mismatch": self.first_mismatch,
            "tables_checked": self.tables_checked,
            "scratch_database": self.scratch_database,
            "duration_s": round(self.duration_s, 3),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VerificationResult:
        """Parse a stored record; CorruptBackup when a field is missing or has the wrong type."""
        try:
            return cls(
                backup_id=str(doc["backup_id"]),
                kind=str(doc["kind"]),
                database=str(doc["database"]),
                organization_id=None if doc.get("organization_id") is None else str(doc["organization_id"]),
                key=str(doc["key"]),
                started_at=datetime.fromisoformat(doc["started_at"]),
                finished_at=datetime.fromisoformat(doc["finished_at"]),
                outcome=Verification(doc["outcome"]),
                reason=None if doc.get("reason") is None else Reason(doc["reason"]),
                first_mismatch=None if doc.get("first_mismatch") is None else str(doc["first_mismatch"]),
                tables_checked=int(doc.get("tables_checked", 0)),
                scratch_database=str(doc.get("scratch_database", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptBackup(f"verification record is malformed: {exc!r}") from exc


def drill_error(
    manifest: Manifest, error: Exception, *, started_at: datetime, finished_at: datetime
) -> VerificationResult:
    """The failed verification of a drill that could not run (no verdict on the bytes, but no success either)."""
    return VerificationResult(
        backup_id=manifest.id,
        kind=str(manifest.kind),
        database=manifest.database,
        organization_id=manifest.organization_id,
        key=manifest.key,
        started_at=started_at,
        finished_at=finished_at,
        outcome=Verification.FAILED,
        reason=Reason.DRILL_ERROR,
        first_mismatch=" ".join(str(error).split()) or type(error).__name__,  # one line, for `backup list`
        tables_checked=0,
        scratch_database="",
    )


def write_verification(store: BackupStore, result: VerificationResult) -> None:
    """Store the record beside the manifest (replacing an older one)."""
    data = (json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n").encode()
    store.put_bytes(verification_key(result.key), data)


def read_verification(store: BackupStore, key: str) -> VerificationResult | None:
    """The record stored at key (a verification key); None when there is none or it is unreadable."""
    try:
        doc = json.loads(store.get_bytes(key))
        if not isinstance(doc, dict):
            raise CorruptBackup("verification record is not a JSON object")
        return VerificationResult.from_json(doc)
    except ObjectNotFound:
        return None
    except (ValueError, CorruptBackup):
        log.warning("unreadable verification record ignored", extra={"key": key}, exc_info=True)
        return None


def verification_of(store: BackupStore, manifest: Manifest) -> VerificationResult | None:
    """The latest verification of one backup, from the store."""
    return read_verification(store, verification_key(manifest.key))


def verifications_in(store: BackupStore, prefix: str = "") -> dict[str, VerificationResult]:
    """Backup id -> latest verification, for every record under prefix (one listing, one read per record)."""
    found: dict[str, VerificationResult] = {}
    for stored in store.list_objects(prefix):
        if stored.key.endswith(VERIFICATION_SUFFIX):
            result = read_verification(store, stored.key)
            if result is not None:
                found[result.backup_id] = result
    return found


def record_in_state(engine: Engine, result: VerificationResult) -> None:
    """Append the result to backup_verifications.

    Raises:
        DatabaseUnavailable: the state database could not be written.
    """
    try:
        with engine.begin() as conn:
            conn.execute(
                backup_verifications.insert().values(
                    backup_id=result.backup_id,
                    kind=result.kind,
                    database=result.database,
                    organization_id=result.organization_id,
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                    outcome=str(result.outcome),
                    reason=None if result.reason is None else str(result.reason),
                    first_mismatch=result.first_mismatch,
                    duration_s=result.duration_s,
                )
            )
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"state database: recording the verification failed: {exc}") from exc


def state_history(engine: Engine, backup_ids: Iterable[str]) -> list[dict[str, object]]:
    """Every recorded verification of these backups, newest first (for `backup show`)."""
    ids = list(backup_ids)
    query = (
        select(backup_verifications)
        .where(backup_verifications.c.backup_id.in_(ids))
        .order_by(backup_verifications.c.finished_at.desc(), backup_verifications.c.id.desc())
    )
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"state database: reading verifications failed: {exc}") from exc
