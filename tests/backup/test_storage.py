"""Both stores honour the BackupStore contract; S3Store runs against a real S3-protocol server (moto)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.backup.conftest import MotoServer
from workers.backup.s3 import MAX_PARTS, MIB, S3Store, choose_part_size
from workers.backup.storage import LocalStore
from workers.errors import ObjectNotFound, StorageRefused, StorageUnavailable

Store = LocalStore | S3Store
STORES = ["local", "s3"]


class Boom(Exception):
    pass


@pytest.mark.parametrize("kind", STORES)
def test_written_object_reads_back_and_lists(kind: str, make_store: Callable[[str], Store]) -> None:
    store = make_store(kind)
    with store.open_writer("full/db/2026/03/09/a.dump.zst") as writer:
        writer.write(b"hello ")
        writer.write(b"world")
    store.put_bytes("full/db/2026/03/09/a.manifest.json", b"{}")

    with store.open_reader("full/db/2026/03/09/a.dump.zst") as reader:
        assert reader.read() == b"hello world"
    listed = [(o.key, o.size_bytes) for o in store.list_objects("full/")]
    assert listed == [("full/db/2026/03/09/a.dump.zst", 11), ("full/db/2026/03/09/a.manifest.json", 2)]
    assert list(store.list_objects("org/")) == []


@pytest.mark.parametrize("kind", STORES)
def test_a_writer_that_fails_stores_nothing(kind: str, make_store: Callable[[str], Store]) -> None:
    store = make_store(kind)
    with pytest.raises(Boom), store.open_writer("full/db/x.dump.zst") as writer:
        writer.write(b"partial data")
        raise Boom
    assert list(store.list_objects()) == []
    assert store.discard_incomplete("full/") == []


@pytest.mark.parametrize("kind", STORES)
def test_missing_object_is_object_not_found(kind: str, make_store: Callable[[str], Store]) -> None:
    store = make_store(kind)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("full/db/nothing.manifest.json")
    store.delete("full/db/nothing.manifest.json")  # deleting a missing key is fine


@pytest.mark.parametrize("kind", STORES)
def test_probe_writes_and_cleans_up(kind: str, make_store: Callable[[str], Store]) -> None:
    store = make_store(kind)
    assert "writable" in store.probe()
    assert list(store.list_objects()) == []


def test_local_store_discards_partials_left_by_a_dead_writer(local_store: LocalStore) -> None:
    leftover = local_store.root / "full/db/2026/03/09/.x.dump.zst.1234abcd.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a dump")
    assert list(local_store.list_objects()) == []  # never listed
    assert local_store.discard_incomplete("org/") == []
    assert local_store.discard_incomplete("full/db/") == ["full/db/2026/03/09/.x.dump.zst.1234abcd.partial"]
    assert not leftover.exists()


def test_local_store_refuses_keys_outside_its_root(local_store: LocalStore) -> None:
    with pytest.raises(ValueError):
        local_store.put_bytes("../escape", b"x")


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, 8 * MIB),
        (0, 8 * MIB),
        (100 * MIB, 8 * MIB),
        (100 * 1024 * MIB, 12 * MIB),  # 100 GiB: 8,534 parts of 12 MiB
        (10 * 1024 * 1024 * MIB, 1166 * MIB),  # 10 TiB: 9,000 parts of 1,166 MiB
        (100 * 1024 * 1024 * MIB, 5 * 1024 * MIB),  # 100 TiB: capped at the 5 GiB part ceiling
    ],
)
def test_part_size_keeps_uploads_under_the_part_limit(hint: int | None, expected: int) -> None:
    size = choose_part_size(hint)
    assert size == expected
    if hint and size < 5 * 1024 * MIB:
        assert hint / size < MAX_PARTS * 0.95


def test_s3_multipart_upload_has_equal_parts_sse_and_storage_class(moto: MotoServer, aws_credentials: None) -> None:
    bucket = moto.new_bucket()
    store = S3Store(bucket, "pre/fix", moto.settings(), min_part_bytes=5 * MIB)
    data = os.urandom(12 * MIB + 123)
    with store.open_writer("full/db/big.dump.zst", size_hint_bytes=len(data)) as writer:
        for offset in range(0, len(data), 1_000_000):
            writer.write(data[offset : offset + 1_000_000])
        assert writer.part_size_bytes == 5 * MIB

    client = moto.client()
    head = client.head_object(Bucket=bucket, Key="pre/fix/full/db/big.dump.zst", PartNumber=1)
    assert head["PartsCount"] == 3
    assert head["ContentLength"] == 5 * MIB
    head = client.head_object(Bucket=bucket, Key="pre/fix/full/db/big.dump.zst")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
    assert hashlib.sha256(store.get_bytes("full/db/big.dump.zst")).digest() == hashlib.sha256(data).digest()


def test_s3_failed_multipart_upload_is_aborted(moto: MotoServer, aws_credentials: None) -> None:
    bucket = moto.new_bucket()
    store = S3Store(bucket, "p", moto.settings(), min_part_bytes=5 * MIB)
    with pytest.raises(Boom), store.open_writer("full/db/x.dump.zst") as writer:
        writer.write(os.urandom(11 * MIB))  # two parts uploaded
        raise Boom
    client = moto.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_s3_discard_incomplete_aborts_uploads_of_a_dead_writer(moto: MotoServer, aws_credentials: None) -> None:
    bucket = moto.new_bucket()
    client = moto.client()
    client.create_multipart_upload(Bucket=bucket, Key="p/full/db/2026/03/09/x.dump.zst")
    client.create_multipart_upload(Bucket=bucket, Key="p/full/other/2026/03/09/y.dump.zst")
    store = S3Store(bucket, "p", moto.settings())
    assert store.discard_incomplete("full/db/") == ["full/db/2026/03/09/x.dump.zst"]  # relative to the prefix
    remaining = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert remaining == ["p/full/other/2026/03/09/y.dump.zst"]


def test_s3_listing_is_not_capped_at_one_page(moto: MotoServer, aws_credentials: None) -> None:
    bucket = moto.new_bucket()
    store = S3Store(bucket, "p", moto.settings(), page_size=3)
    keys = [f"full/db/2026/03/{d:02d}/k.manifest.json" for d in range(1, 11)]
    for key in keys:
        store.put_bytes(key, b"{}")
    assert [o.key for o in store.list_objects("full/")] == keys


@pytest.mark.parametrize(
    "overrides",
    [
        {"sse": "none", "storage_class": "STANDARD"},
        {"sse": "aws:kms", "kms_key_id": "alias/backups", "request_checksum": "when_supported"},
        {"addressing_style": "virtual"},
    ],
)
def test_s3_settings_variants_write_and_read(
    moto: MotoServer, aws_credentials: None, overrides: dict[str, Any]
) -> None:
    store = S3Store(moto.new_bucket(), "", moto.settings(**overrides), min_part_bytes=5 * MIB)
    data = os.urandom(6 * MIB)  # two parts, so checksums travel with a multipart upload too
    with store.open_writer("full/db/x.dump.zst") as writer:
        writer.write(data)
    assert store.get_bytes("full/db/x.dump.zst") == data


def test_s3_missing_bucket_is_refused_not_retried(moto: MotoServer, aws_credentials: None) -> None:
    store = S3Store("no-such-bucket-here", "p", moto.settings())
    with pytest.raises(StorageRefused, match="NoSuchBucket"):
        store.put_bytes("full/x", b"x")


def test_s3_unreachable_endpoint_is_storage_unavailable(aws_credentials: None) -> None:
    from tests.backup.conftest import free_port

    # Credentials in the endpoint URL: botocore repeats the URL in its messages, ours must not.
    endpoint = f"http://user:EndpointPw@127.0.0.1:{free_port()}"
    settings = MotoServer(endpoint, None).settings()  # type: ignore[arg-type]
    store = S3Store("bucket", "p", settings)
    with pytest.raises(StorageUnavailable, match="unreachable") as raised:
        store.probe()
    assert "EndpointPw" not in str(raised.value)
