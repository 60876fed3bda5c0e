"""The organization archive format ("ops-org-copy-v1"): tables of COPY text data in length-prefixed frames.

Layout: MAGIC, then frames of (1-byte type, 4-byte big-endian length, payload):
  H header {"format", "organization_id", "database"}  once, first
  T table  {"table": "schema.name", "columns": [...]} starts a table
  D data   raw COPY ... TO STDOUT text bytes         any number per table
  E end    {"rows": N}                                ends the table
  Z end of archive (empty)                            once, last
A reader stops with CorruptBackup at anything else, so a truncated archive never restores silently.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workers.backup.process import Sink, Source
from workers.errors import CorruptBackup

ORG_FORMAT = "ops-org-copy-v1"
MAGIC = b"OPSORG\x00\x01"
_FRAME = struct.Struct(">cI")
MAX_FRAME_BYTES = 64 << 20  # a frame longer than this is corruption, not data
DATA_FRAME_BYTES = 1 << 20  # COPY hands over one row at a time; rows are gathered into frames of this size


@dataclass(frozen=True, slots=True)
class TableStart:
    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TableData:
    data: bytes


@dataclass(frozen=True, slots=True)
class TableEnd:
    rows: int


Event = TableStart | TableData | TableEnd


class ArchiveWriter:
    """Writes frames to sink."""

    def __init__(self, sink: Sink, *, organization_id: str, database: str) -> None:
        self._sink = sink
        self._pending = bytearray()
        sink.write(MAGIC)
        self._json(b"H", {"format": ORG_FORMAT, "organization_id": organization_id, "database": database})

    def _frame(self, kind: bytes, payload: bytes) -> None:
        self._sink.write(_FRAME.pack(kind, len(payload)))
        if payload:
            self._sink.write(payload)

    def _json(self, kind: bytes, doc: dict[str, Any]) -> None:
        self._frame(kind, json.dumps(doc).encode())

    def start_table(self, table: str, columns: tuple[str, ...]) -> None:
        self._json(b"T", {"table": table, "columns": list(columns)})

    def data(self, chunk: bytes | bytearray | memoryview) -> None:
        self._pending += chunk
        if len(self._pending) >= DATA_FRAME_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._frame(b"D", bytes(self._pending))
            self._pending.clear()

    def end_table(self, rows: int) -> None:
        self._flush()
        self._json(b"E", {"rows": rows})

    def finish(self) -> None:
        self._frame(b"Z", b"")


def _read_exactly(source: Source, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        chunk = source.read(remaining)
        if not chunk:
            raise CorruptBackup("organization archive ends in the middle of a frame")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _json_payload(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise CorruptBackup(f"organization archive frame is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptBackup("organization archive frame is not a JSON object")
    return doc


def read_header(source: Source) -> dict[str, Any]:
    """Check the magic and return the header frame's document."""
    if _read_exactly(source, len(MAGIC)) != MAGIC:
        raise CorruptBackup("not an organization archive (bad magic)")
    kind, length = _FRAME.unpack(_read_exactly(source, _FRAME.size))
    if kind != b"H" or length > MAX_FRAME_BYTES:
        raise CorruptBackup("organization archive has no header")
    header = _json_payload(_read_exactly(source, length))
    if header.get("format") != ORG_FORMAT:
        raise CorruptBackup(f"unsupported organization archive format {header.get('format')!r}")
    return header


def read_events(source: Source) -> Iterator[Event]:
    """The table events after the header, up to the end frame; CorruptBackup for anything malformed."""
    in_table = False
    while True:
        kind, length = _FRAME.unpack(_read_exactly(source, _FRAME.size))
        if length > MAX_FRAME_BYTES:
            raise CorruptBackup(f"organization archive frame of {length} bytes")
        payload = _read_exactly(source, length)
        if kind == b"Z" and not in_table:
            return
        if kind == b"T" and not in_table:
            doc = _json_payload(payload)
            in_table = True
            yield TableStart(str(doc["table"]), tuple(str(c) for c in doc["columns"]))
        elif kind == b"D" and in_table:
            yield TableData(payload)
        elif kind == b"E" and in_table:
            in_table = False
            yield TableEnd(int(_json_payload(payload)["rows"]))
        else:
            raise CorruptBackup(f"unexpected frame {kind!r} in organization archive")
