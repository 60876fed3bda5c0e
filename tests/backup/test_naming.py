"""Backup keys: pure, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workers.backup.naming import (
    BackupKind,
    database_name_problem,
    manifest_key,
    new_backup_id,
    object_key,
    object_key_of,
    parse_key,
    scope_of_key,
    scope_prefix,
    taken_at_of,
)

T0 = datetime(2026, 3, 9, 2, 0, 5, tzinfo=UTC)
ORG = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_backup_id_encodes_the_start_time_to_the_second() -> None:
    backup_id = new_backup_id(T0, "00c0ffee")
    assert backup_id == "20260309T020005Z-00c0ffee"
    assert taken_at_of(backup_id) == T0


@pytest.mark.parametrize(
    ("kind", "database", "organization_id", "expected"),
    [
        (BackupKind.FULL, "platform", None, "full/platform/2026/03/09/20260309T020005Z-00c0ffee.dump.zst"),
        (
            BackupKind.ORG,
            "platform",
            ORG,
            f"org/platform/{ORG}/2026/03/09/20260309T020005Z-00c0ffee.dump.zst",
        ),
        (
            BackupKind.FULL,
            "we/ird%db",
            None,
            "full/we%2Fird%25db/2026/03/09/20260309T020005Z-00c0ffee.dump.zst",
        ),
    ],
)
def test_object_key_round_trips_through_parse_key(
    kind: BackupKind, database: str, organization_id: str | None, expected: str
) -> None:
    key = object_key(kind, database, "20260309T020005Z-00c0ffee", organization_id)
    assert key == expected
    parts = parse_key(manifest_key(key))
    assert (parts.kind, parts.database, parts.organization_id, parts.taken_at) == (
        kind,
        database,
        organization_id,
        T0,
    )
    assert object_key_of(manifest_key(key)) == key


def test_keys_of_one_scope_sort_by_time() -> None:
    times = [datetime(2026, m, d, h, tzinfo=UTC) for m, d, h in [(12, 31, 23), (1, 2, 0), (10, 1, 9), (1, 10, 1)]]
    keys = [object_key(BackupKind.FULL, "db", new_backup_id(t, "abcdef01")) for t in times]
    assert [taken_at_of(parse_key(k).backup_id) for k in sorted(keys)] == sorted(times)


@pytest.mark.parametrize(
    "key",
    [
        "full/db/2026/03/09/not-an-id.dump.zst",
        "full/db/2026/03/10/20260309T020005Z-00c0ffee.dump.zst",  # date folders disagree with the id
        "full/db/2026/03/09/20260309T020005Z-00c0ffee.tar",
        "other/db/2026/03/09/20260309T020005Z-00c0ffee.dump.zst",
        "org/db/2026/03/09/20260309T020005Z-00c0ffee.dump.zst",
    ],
)
def test_parse_key_rejects_what_is_not_ours(key: str) -> None:
    with pytest.raises(ValueError):
        parse_key(key)


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_a_database_name_cannot_escape_its_folder(bad: str) -> None:
    with pytest.raises(ValueError):
        scope_prefix(BackupKind.FULL, bad)


def test_org_scope_needs_an_organization() -> None:
    with pytest.raises(ValueError):
        scope_prefix(BackupKind.ORG, "db")
    assert scope_prefix(BackupKind.ORG, "db", ORG) == f"org/db/{ORG}/"


@pytest.mark.parametrize("name", ["ops_restore", "Platform-2026", "_tmp$1", "a" * 63])
def test_plain_database_names_are_accepted(name: str) -> None:
    assert database_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "letters, digits"),
        ("-h", "letters, digits"),
        ("9lives", "starting with a letter"),
        ('x"; DROP DATABASE platform; --', "letters, digits"),
        ("db name", "letters, digits"),
        ("a" * 64, "64 bytes"),
    ],
)
def test_database_names_postgres_would_change_or_that_need_quoting_are_refused(name: str, why: str) -> None:
    problem = database_name_problem(name)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    ("key", "scope"),
    [
        ("full/platform/2026/03/09/20260309T020000Z-0a1b2c3d.dump.zst", "full/platform/"),
        ("full/platform/2026/03/09/.20260309T020000Z-0a1b2c3d.dump.zst.0123abcd.partial", "full/platform/"),
        ("org/platform/0b6c%2Fx/2026/03/09/20260309T020000Z-0a1b2c3d.manifest.json", "org/platform/0b6c%2Fx/"),
        ("full/platform", None),
        ("org/platform/2026", None),
        ("notes/readme.txt", None),
        ("", None),
    ],
)
def test_scope_of_key_matches_the_scope_prefix(key: str, scope: str | None) -> None:
    assert scope_of_key(key) == scope
    if scope is not None:
        assert key.startswith(scope)


def test_scope_of_key_agrees_with_scope_prefix_for_quoted_names() -> None:
    for kind, database, organization_id in [(BackupKind.FULL, "my/db%", None), (BackupKind.ORG, "db", "a/b")]:
        key = object_key(kind, database, "20260309T020000Z-0a1b2c3d", organization_id)
        assert scope_of_key(key) == scope_prefix(kind, database, organization_id)
