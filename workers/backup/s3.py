"""S3Store: backups in S3 or an S3-compatible store (MinIO, R2), streamed with multipart upload."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from workers.backup.storage import DELETE_BATCH, ObjectReader, ObjectWriter, StoredObject
from workers.errors import ObjectNotFound, StorageFull, StorageRefused, StorageUnavailable
from workers.redaction import redact_text
from workers.settings import S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1 << 20
MIN_PART_BYTES = 8 * MIB  # S3's floor is 5 MiB; 8 MiB keeps request counts low for small dumps
MAX_PART_BYTES = 5 * 1024 * MIB  # S3's ceiling for one part
MAX_PARTS = 10_000  # S3's ceiling for one upload
# Parts are sized for this many so an estimate that was 10% low still fits under MAX_PARTS.
TARGET_PARTS = 9_000
_TRANSIENT_CODES = frozenset(
    (
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ServiceUnavailable",
        "InternalError",
    ),
)
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def choose_part_size(size_hint_bytes: int | None, minimum_bytes: int = MIN_PART_BYTES) -> int:
    """Equal part size (whole MiB) keeping an object of about size_hint_bytes under S3's part limit. Pure."""
    if size_hint_bytes is None or size_hint_bytes <= 0:
        return minimum_bytes
    wanted = math.ceil(size_hint_bytes / TARGET_PARTS)
    return min(MAX_PART_BYTES, max(minimum_bytes, math.ceil(wanted / MIB) * MIB))


def _translate(what: str, exc: Exception) -> Exception:
    """Our error for a boto3 failure; botocore's messages repeat the endpoint URL, user:password@ included."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(what)
        if code in _TRANSIENT_CODES or status >= 500:
            return StorageUnavailable(f"{what}: S3 answered {code or status}, try again later")
        if code == "EntityTooLarge":
            return StorageFull(f"{what}: object too large for the store ({code})")
        message = str(error.get("Message", ""))
        return StorageRefused(redact_text(f"{what}: S3 refused the request: {code or status} {message}".strip()))
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        # Missing credentials stay missing on every retry; say where boto3 looks for them.
        return StorageRefused(
            f"{what}: {redact_text(str(exc))}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE,"
            " or give the host a role"
        )
    return StorageUnavailable(f"{what}: S3 unreachable: {redact_text(str(exc))}")


class _MultipartWriter:
    """Buffers one part at a time; uploads a full part in the background while the next one fills."""

    def __init__(self, store: S3Store, key: str, part_size_bytes: int) -> None:
        self._store = store
        self._key = key
        self.part_size_bytes = part_size_bytes
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._pending: Future[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-upload")

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._buffer += data
        while len(self._buffer) >= self.part_size_bytes:
            part = bytes(self._buffer[: self.part_size_bytes])
            del self._buffer[: self.part_size_bytes]
            self._submit(part)
        return len(data)

    def _submit(self, part: bytes) -> None:
        if self._upload_id is None:
            created = self._store.call(
                self._key, self._store.client.create_multipart_upload, Key=self._store.object_name(self._key),
                **self._store.put_arguments(),
            )  # fmt: skip
            self._upload_id = str(created["UploadId"])
        self._wait()
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageFull(
                f"{self._key}: more than {MAX_PARTS} parts of {self.part_size_bytes} bytes;"
                " the size estimate was too low"
            )
        self._parts.append({"PartNumber": number})
        self._pending = self._executor.submit(self._upload_part, number, part)

    def _upload_part(self, number: int, part: bytes) -> None:
        answer = self._store.call(
            self._key, self._store.client.upload_part, Key=self._store.object_name(self._key),
            UploadId=self._upload_id, PartNumber=number, Body=part,
        )  # fmt: skip
        entry = self._parts[number - 1]
        entry["ETag"] = answer["ETag"]
        for name in _PART_CHECKSUMS:
            if answer.get(name):
                entry[name] = answer[name]

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def finish(self) -> None:
        if self._upload_id is None:
            self._store.call(
                self._key, self._store.client.put_object, Key=self._store.object_name(self._key),
                Body=bytes(self._buffer), **self._store.put_arguments(),
            )  # fmt: skip
            self.part_size_bytes = 0
            return
        if self._buffer:
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        self._wait()
        self._store.call(
            self._key, self._store.client.complete_multipart_upload, Key=self._store.object_name(self._key),
            UploadId=self._upload_id, MultipartUpload={"Parts": self._parts},
        )  # fmt: skip

    def abort(self) -> None:
        try:
            self._wait()
        except Exception:  # the upload is being abandoned anyway; the abort below is what matters
            log.debug("pending part failed during abort", exc_info=True)
        if self._upload_id is not None:
            try:
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket,
                    Key=self._store.object_name(self._key),
                    UploadId=self._upload_id,
                )
            except (BotoCoreError, ClientError):
                # Leftovers are removed by discard_incomplete() under the next backup's lock.
                log.warning("multipart upload not aborted", extra={"key": self._key}, exc_info=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class S3Store:
    """s3://BUCKET/PREFIX with server-side encryption, a storage class and paginated listing."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings, *, client: Any = None,
                 min_part_bytes: int = MIN_PART_BYTES, page_size: int = 1000) -> None:  # fmt: skip
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        if client is None:
            try:
                client = make_client(settings)
            except BotoCoreError as exc:  # e.g. partial credentials in the environment, found at creation
                raise _translate(self.url, exc) from exc
        self.client = client
        self.min_part_bytes = min_part_bytes
        self.page_size = page_size

    @classmethod
    def from_url(cls, url: str, settings: S3Settings) -> S3Store:
        parts = urlsplit(url)
        return cls(parts.netloc, parts.path, settings)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def object_name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_arguments(self) -> dict[str, str]:
        arguments = {"Bucket": self.bucket, "StorageClass": self.settings.storage_class}
        if self.settings.sse != "none":
            arguments["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse == "aws:kms" and self.settings.kms_key_id:
            arguments["SSEKMSKeyId"] = self.settings.kms_key_id
        return arguments

    def call(self, what: str, method: Callable[..., T], **arguments: Any) -> T:
        """Call one client method, translating boto errors into ours."""
        arguments.setdefault("Bucket", self.bucket)
        try:
            return method(**arguments)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(f"{self.url}/{what}", exc) from exc

    @contextmanager
    def open_writer(self, key: str, *, size_hint_bytes: int | None = None) -> Iterator[ObjectWriter]:
        writer = _MultipartWriter(self, key, choose_part_size(size_hint_bytes, self.min_part_bytes))
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            writer.close()

    @contextmanager
    def open_reader(self, key: str) -> Iterator[ObjectReader]:
        answer = self.call(key, self.client.get_object, Key=self.object_name(key))
        body = answer["Body"]
        try:
            yield _BodyReader(self, key, body)
        finally:
            body.close()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.call(key, self.client.put_object, Key=self.object_name(key), Body=data, **self.put_arguments())

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as reader:
            return reader.read()

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix, PaginationConfig={"PageSize": self.page_size}
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(str(item["Key"])[len(base) :], int(item["Size"]), item["LastModified"])
        except (BotoCoreError, ClientError) as exc:
            raise _translate(f"{self.url}/{prefix}", exc) from exc

    def delete(self, key: str) -> None:
        self.call(key, self.client.delete_object, Key=self.object_name(key))

    def delete_many(self, keys: Sequence[str]) -> None:
        if len(keys) > DELETE_BATCH:
            raise ValueError(f"at most {DELETE_BATCH} keys per delete_many()")
        if not keys:
            return
        answer = self.call(
            f"{len(keys)} objects", self.client.delete_objects,
            Delete={"Objects": [{"Key": self.object_name(k)} for k in keys], "Quiet": True},
        )  # fmt: skip
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageRefused(
                f"{self.url}: {len(errors)} of {len(keys)} deletes refused, first"
                f" {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
            )

    def discard_incomplete(
        self,
        prefix: str,
        *,
        started_before: datetime | None = None,
        dry_run: bool = False,
        spare: Collection[str] = (),
    ) -> list[str]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.object_name(prefix)
        )
        base = f"{self.prefix}/" if self.prefix else ""
        removed: list[str] = []
        try:
            for page in pages:
                for upload in page.get("Uploads", []):
                    key = str(upload["Key"])[len(base) :]
                    if started_before is not None and upload["Initiated"] >= started_before:
                        continue
                    if key.startswith(tuple(spare)):
                        continue
                    if not dry_run:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    removed.append(key)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(f"{self.url}/{prefix}", exc) from exc
        return removed

    def probe(self) -> str:
        key = ".ops-workers-probe"
        self.put_bytes(key, b"ok")
        if self.get_bytes(key) != b"ok":
            raise StorageUnavailable(f"{self.url}: probe object read back differently")
        self.delete(key)
        return f"{self.url} writable ({self.settings.storage_class}, sse {self.settings.sse})"


class _BodyReader:
    def __init__(self, store: S3Store, key: str, body: Any) -> None:
        self._store, self._key, self._body = store, key, body

    def read(self, size: int = -1, /) -> bytes:
        try:
            return bytes(self._body.read(None if size < 0 else size))
        except (BotoCoreError, ClientError) as exc:
            raise _translate(f"{self._store.url}/{self._key}", exc) from exc


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client; credentials come from boto3's usual chain (environment, profile, instance role)."""
    config = Config(
        s3={"addressing_style": settings.addressing_style},
        # boto3 >= 1.36 adds CRC checksums to every upload by default; several S3-compatible
        # stores reject them, so "when_required" is the default here.
        request_checksum_calculation=settings.request_checksum,
        response_checksum_validation=settings.request_checksum,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region or "us-east-1", config=config
    )
