"""Per-organization backups: COPY in one snapshot with the id bound, never spliced; restore in FK order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.backup.test_full_backup import platform_settings
from workers.backup.manifest import list_manifests
from workers.backup.naming import BackupKind
from workers.backup.operations import organization_ids, restore_backup, take_full_backup, take_org_backup
from workers.backup.s3 import S3Store
from workers.backup.storage import LocalStore
from workers.backup.tenant import dependency_order, validate_organization_id
from workers.demo import SCHEMA
from workers.errors import (
    InvalidOrganizationId,
    OrganizationNotFound,
    RestoreRefused,
    UsageError,
)
from workers.settings import PostgresTarget, Settings

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TENANT_TABLES = ("organizations", "molecules", "pipelines", "docking_jobs", "job_results")


def org_rows(target: PostgresTarget, organization_id: str) -> dict[str, int]:
    with psycopg.connect(**target.conninfo()) as conn:  # type: ignore[arg-type]
        counts = {}
        for table in TENANT_TABLES:
            column = "id" if table == "organizations" else "organization_id"
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s", (organization_id,)).fetchone()
            counts[f"public.{table}"] = int(row[0]) if row else 0  # type: ignore[call-overload]
    return counts


def first_org(target: PostgresTarget) -> str:
    with psycopg.connect(**target.conninfo()) as conn:  # type: ignore[arg-type]
        row = conn.execute("SELECT id FROM organizations ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize(
    ("tables", "references", "expected"),
    [
        (["b", "a"], {"b": {"a"}}, ["a", "b"]),
        (["jr", "dj", "p", "m", "o"], {"jr": {"dj", "o"}, "dj": {"p", "m", "o"}, "p": {"o"}, "m": {"o"}},
         ["o", "p", "m", "dj", "jr"]),
        (["t"], {"t": {"t"}}, ["t"]),  # a self-reference is not a cycle between tables
    ],
)  # fmt: skip
def test_dependency_order_puts_referenced_tables_first(
    tables: list[str], references: dict[str, set[str]], expected: list[str]
) -> None:
    assert dependency_order(tables, references) == expected


def test_dependency_order_rejects_cycles() -> None:
    with pytest.raises(UsageError, match="cycle"):
        dependency_order(["a", "b"], {"a": {"b"}, "b": {"a"}})


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-uuid",
        "0f8fad5b-d9cb-469f-a165-70867728950e' OR '1'='1",
        "0f8fad5b-d9cb-469f-a165-70867728950e; DROP TABLE molecules; --",
        "0f8fad5b-d9cb-469f-a165-70867728950e\n",
        "') TO PROGRAM 'touch /tmp/pwned' --",
        "0f8fad5b-d9cb-469f-a165-70867728950e\x00",
    ],
)
def test_malformed_organization_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidOrganizationId, match="OPS_TENANT_ID_PATTERN"):
        validate_organization_id(bad, UUID_PATTERN)


def test_a_uuid_in_capitals_is_the_same_organization_as_in_lower_case() -> None:
    # One organization, one key prefix and one backup series, however the operator typed it.
    upper = "0F8FAD5B-D9CB-469F-A165-70867728950E"
    assert validate_organization_id(upper, UUID_PATTERN) == upper.lower()
    assert validate_organization_id("Tenant-A", r"[A-Za-z-]+") == "Tenant-A"  # not a UUID: kept as given


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_org_backup_holds_exactly_that_organizations_rows_and_restores_them(
    kind: str,
    make_store: Callable[[str], LocalStore | S3Store],
    platform_db: PostgresTarget,
    ops_env: Callable[..., Settings],
    pg: Any,
) -> None:
    settings = platform_settings(ops_env, platform_db)
    store = make_store(kind)
    organization_id = first_org(platform_db)

    manifest = take_org_backup(settings, organization_id, store=store)

    assert manifest.kind is BackupKind.ORG and manifest.organization_id == organization_id
    assert manifest.format == "ops-org-copy-v1" and manifest.pg_dump_version is None
    assert list(manifest.tables) == [f"public.{t}" for t in ("organizations", "molecules", "pipelines",
                                                              "docking_jobs", "job_results")]  # fmt: skip
    assert dict(manifest.tables) == org_rows(platform_db, organization_id)
    assert manifest.tables["public.organizations"] == 1
    assert list_manifests(store, BackupKind.ORG) == [manifest]

    scratch = pg.create_database(seed=SCHEMA)
    # restore_backup reads the configured store: point the settings at this one.
    settings = configure_store(ops_env, platform_db, store)
    result = restore_backup(settings, manifest.id, scratch.dbname)

    assert result.tables == dict(manifest.tables)
    assert org_rows(scratch, organization_id) == dict(manifest.tables)
    with psycopg.connect(**scratch.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        # Sequences moved past the restored ids: new rows don't collide.
        conn.execute(
            "INSERT INTO molecules (organization_id, name, smiles, molecular_weight) VALUES (%s, 'new', 'C', 1)",
            (organization_id,),
        )
        other = conn.execute("SELECT count(*) FROM organizations WHERE id <> %s", (organization_id,)).fetchone()
    assert other == (0,)


def configure_store(
    ops_env: Callable[..., Settings], platform_db: PostgresTarget, store: LocalStore | S3Store
) -> Settings:
    if isinstance(store, LocalStore):
        return platform_settings(ops_env, platform_db, OPS_BACKUP_STORE=f"file://{store.root}")
    return platform_settings(
        ops_env,
        platform_db,
        OPS_BACKUP_STORE=store.url,
        OPS_S3_ENDPOINT_URL=str(store.settings.endpoint_url),
        OPS_S3_ADDRESSING_STYLE="path",
        OPS_S3_REGION="us-east-1",
    )


def test_injection_attempts_store_nothing_and_touch_nothing(
    local_store: LocalStore, fresh_platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, fresh_platform_db)
    before = org_rows(fresh_platform_db, first_org(fresh_platform_db))
    for attempt in ("x' OR '1'='1", "00000000-0000-0000-0000-000000000000'; DROP TABLE molecules; --"):
        with pytest.raises(InvalidOrganizationId):
            take_org_backup(settings, attempt, store=local_store)
    assert list(local_store.list_objects()) == []
    assert org_rows(fresh_platform_db, first_org(fresh_platform_db)) == before


def test_a_permissive_id_pattern_still_cannot_inject(
    local_store: LocalStore, fresh_platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    # An operator loosened the pattern: the id still travels as a bound value, never as SQL.
    settings = platform_settings(ops_env, fresh_platform_db, OPS_TENANT_ID_PATTERN=r"^.+$")
    with pytest.raises(UsageError):
        take_org_backup(settings, "x' OR '1'='1", store=local_store)
    assert list(local_store.list_objects()) == []


def test_unknown_organization_is_refused_and_stores_nothing(
    local_store: LocalStore, platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, platform_db)
    with pytest.raises(OrganizationNotFound):
        take_org_backup(settings, "00000000-0000-0000-0000-000000000000", store=local_store)
    assert list(local_store.list_objects()) == []


# A configured tenant table without the tenant column that is not the organizations table.
WITH_AUDIT_LOG = """
create table organizations (id uuid primary key, name text);
create table molecules (id bigserial primary key, organization_id uuid references organizations(id));
create table audit_log (id uuid primary key, note text);
insert into organizations values ('0b6c1c8e-34a5-4c53-9d1a-0a3b6e1f2d4c', 'acme');
insert into molecules (organization_id) values ('0b6c1c8e-34a5-4c53-9d1a-0a3b6e1f2d4c');
insert into audit_log values (gen_random_uuid(), 'acme did something');
"""
ACME = "0b6c1c8e-34a5-4c53-9d1a-0a3b6e1f2d4c"


def test_a_tenant_table_without_the_tenant_column_is_refused_not_filtered_by_its_key(
    pg: Any, local_store: LocalStore, ops_env: Callable[..., Settings]
) -> None:
    source = pg.create_database(seed=WITH_AUDIT_LOG)
    settings = platform_settings(ops_env, source, OPS_TENANT_TABLES="organizations,molecules,audit_log")
    with pytest.raises(UsageError, match="tenant table 'audit_log'") as caught:
        take_org_backup(settings, ACME, store=local_store)
    assert "OPS_TENANT_TABLES" in str(caught.value) and "OPS_TENANT_COLUMN" in str(caught.value)
    assert list(local_store.list_objects()) == []
    with pytest.raises(UsageError, match="tenant table 'audit_log'"):
        organization_ids(settings)

    # Without it, the organizations table is still filtered by its primary key.
    settings = platform_settings(ops_env, source, OPS_TENANT_TABLES="organizations,molecules")
    manifest = take_org_backup(settings, ACME, store=local_store)
    assert manifest.tables == {"public.organizations": 1, "public.molecules": 1}


def test_organization_ids_lists_every_organization(
    platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    ids = organization_ids(platform_settings(ops_env, platform_db))
    assert len(ids) == 3 and ids == sorted(ids)


def test_org_restore_refuses_source_and_populated_targets_without_force(
    fresh_platform_db: PostgresTarget, ops_env: Callable[..., Settings], tmp_path: Any
) -> None:
    settings = platform_settings(ops_env, fresh_platform_db)
    organization_id = first_org(fresh_platform_db)
    manifest = take_org_backup(settings, organization_id)
    with pytest.raises(RestoreRefused, match="came from"):
        restore_backup(settings, manifest.id, fresh_platform_db.dbname)

    # The organization is deleted by mistake; --force puts it back into the source database.
    with psycopg.connect(**fresh_platform_db.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute("DELETE FROM organizations WHERE id = %s", (organization_id,))
    restore_backup(settings, manifest.id, fresh_platform_db.dbname, force=True)
    assert org_rows(fresh_platform_db, organization_id) == dict(manifest.tables)

    # Restoring again with --force replaces the rows rather than duplicating them.
    restore_backup(settings, manifest.id, fresh_platform_db.dbname, force=True)
    assert org_rows(fresh_platform_db, organization_id) == dict(manifest.tables)


def test_org_restore_into_a_database_without_the_schema_rolls_back(
    platform_db: PostgresTarget, ops_env: Callable[..., Settings], pg: Any
) -> None:
    settings = platform_settings(ops_env, platform_db)
    manifest = take_org_backup(settings, first_org(platform_db))
    empty = pg.create_database()
    with pytest.raises(UsageError, match="does not exist"):
        restore_backup(settings, manifest.id, empty.dbname)


def test_full_and_org_backups_list_newest_first(
    local_store: LocalStore, platform_db: PostgresTarget, ops_env: Callable[..., Settings]
) -> None:
    settings = platform_settings(ops_env, platform_db)
    org = take_org_backup(settings, first_org(platform_db), store=local_store)
    full = take_full_backup(settings, store=local_store)
    assert [m.id for m in list_manifests(local_store)] == [full.id, org.id]
    assert [m.id for m in list_manifests(local_store, BackupKind.ORG)] == [org.id]
