"""The byte path between a database client and the store: zstd, SHA-256 of the stored bytes, progress."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import zstandard

from workers.backup.process import Sink, Source
from workers.errors import ChecksumMismatch, CorruptBackup

Progress = Callable[[int], None]  # called with the bytes handled so far

# pg_restore must not see the end of an archive before its checksum is known: these last bytes
# are held back until the stored object has been read to its end and verified.
HOLDBACK_BYTES = 1 << 20


class DigestWriter:
    """Forwards writes to sink; keeps the SHA-256 and length of everything written."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._sha = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes, /) -> int:
        self._sha.update(data)
        self.size_bytes += len(data)
        self._sink.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class DigestReader:
    """Reads from source; keeps the SHA-256 and length of everything read."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._sha = hashlib.sha256()
        self.size_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._sha.update(data)
        self.size_bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class ProgressWriter:
    """Forwards writes to sink and reports the running total to progress."""

    def __init__(self, sink: Sink, progress: Progress | None) -> None:
        self._sink = sink
        self._progress = progress
        self.size_bytes = 0

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        self.size_bytes += len(data)
        if self._progress is not None:
            self._progress(self.size_bytes)
        return len(data)


def compressor(level: int, threads: int) -> zstandard.ZstdCompressor:
    """zstd at level; threads > 0 compresses on that many background threads."""
    return zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)


def check_digest(key: str, digest: DigestReader, expected_sha256: str, expected_size: int) -> None:
    """Raise ChecksumMismatch unless what was read is exactly what the manifest describes."""
    actual = digest.hexdigest()
    if actual != expected_sha256 or digest.size_bytes != expected_size:
        raise ChecksumMismatch(key, expected_sha256, f"{actual} ({digest.size_bytes} bytes)")


class VerifiedReader:
    """Decompressed bytes of a stored object, the last HOLDBACK_BYTES released only once its checksum matched.

    Raises (from read):
        ChecksumMismatch: the stored bytes differ from the manifest's sha256 or size.
        CorruptBackup: the checksum matched but the bytes are not a zstd stream.
    """

    def __init__(self, raw: Source, key: str, sha256: str, size_bytes: int, progress: Progress | None = None) -> None:
        self._digest = DigestReader(raw)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._digest,  # type: ignore[arg-type]  # zstandard only needs read()
            read_across_frames=True,
        )
        self._key, self._sha256, self._size_bytes = key, sha256, size_bytes
        self._held = bytearray()
        self._verified = False
        self._progress = progress
        self.size_bytes = 0

    def _fail_decoding(self, exc: zstandard.ZstdError) -> CorruptBackup:
        # A damaged object usually fails to decompress before its end: the checksum names the cause.
        self._digest.drain()
        check_digest(self._key, self._digest, self._sha256, self._size_bytes)
        return CorruptBackup(f"{self._key}: not a zstd stream although its checksum matches: {exc}")

    def read(self, size: int = -1, /) -> bytes:
        wanted = size if size > 0 else 1 << 20
        while not self._verified and len(self._held) < wanted + HOLDBACK_BYTES:
            try:
                chunk = self._reader.read(1 << 20)
            except zstandard.ZstdError as exc:
                raise self._fail_decoding(exc) from exc
            if not chunk:
                self._digest.drain()
                check_digest(self._key, self._digest, self._sha256, self._size_bytes)
                self._verified = True
                break
            self._held += chunk
        releasable = len(self._held) if self._verified else max(0, len(self._held) - HOLDBACK_BYTES)
        out = bytes(self._held[: min(wanted, releasable)])
        del self._held[: len(out)]
        self.size_bytes += len(out)
        if self._progress is not None and out:
            self._progress(self._digest.size_bytes)
        return out
