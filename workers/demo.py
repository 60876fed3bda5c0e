"""The demo platform database: the platform's schema and realistic generated rows, made inside PostgreSQL."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from workers.errors import DatabaseUnavailable, UsageError
from workers.settings import PostgresTarget

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE organizations (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    slug text NOT NULL UNIQUE,
    plan text NOT NULL CHECK (plan IN ('free', 'team', 'enterprise')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE molecules (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    smiles text NOT NULL,
    molecular_weight numeric(10, 3) NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE pipelines (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name text NOT NULL,
    engine text NOT NULL,
    parameters jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE docking_jobs (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    pipeline_id bigint NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    molecule_id bigint NOT NULL REFERENCES molecules(id) ON DELETE CASCADE,
    status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    parameters jsonb NOT NULL DEFAULT '{}',
    submitted_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE job_results (
    id bigserial PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    job_id bigint NOT NULL REFERENCES docking_jobs(id) ON DELETE CASCADE,
    pose integer NOT NULL,
    score double precision NOT NULL,
    rmsd double precision NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX molecules_org ON molecules (organization_id);
CREATE INDEX pipelines_org ON pipelines (organization_id);
CREATE INDEX docking_jobs_org ON docking_jobs (organization_id);
CREATE INDEX job_results_org ON job_results (organization_id);
"""

# Real drug-like molecules; generated rows pick one and vary its name and properties.
SMILES = (
    "CC(=O)OC1=CC=CC=C1C(=O)O",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O",
    "CC(=O)NC1=CC=C(C=C1)O",
    "CN1CCC[C@H]1C2=CN=CC=C2",
    "C1=CC=C2C(=C1)C(=CN2)CCN",
    "COC1=CC=C(C=C1)CCN",
    "CC12CCC3C(C1CCC2O)CCC4=CC(=O)CCC34C",
    "C1CCC(CC1)NC(=O)C2=CC=CC=C2",
    "O=C(O)C1=CC=CC=C1O",
    "CC(C)NCC(O)COC1=CC=CC2=CC=CC=C21",
    "CN(C)C(=N)N=C(N)N",
    "CC1=C(C=C(C=C1)NC(=O)C2=CC=C(C=C2)CN3CCN(CC3)C)NC4=NC=CC(=N4)C5=CN=CC=C5",
    "COC1=C(C=C2C(=C1)N=CN=C2NC3=CC(=C(C=C3)F)Cl)OCCCN4CCOCC4",
    "C1=CC(=CC=C1C(=O)O)N",
    "CC(=O)OCC(=O)C12CCC3C(C1CCC2)CCC4=CC(=O)CCC34C",
)

STATEMENTS = (
    """
    INSERT INTO organizations (id, name, slug, plan, created_at)
    SELECT md5('org-' || g)::uuid, 'Organisation ' || g, 'org-' || g,
           (ARRAY['free', 'team', 'enterprise'])[1 + g %% 3], now() - (g || ' days')::interval
    FROM generate_series(1, %(orgs)s) AS g
    """,
    """
    INSERT INTO molecules (organization_id, name, smiles, molecular_weight, properties, created_at)
    SELECT o.id, 'MOL-' || lpad(m::text, 7, '0'),
           (%(smiles)s::text[])[1 + (m + o.n) %% %(smiles_count)s],
           round((120 + random() * 480)::numeric, 3),
           jsonb_build_object('logp', round((random() * 6 - 1)::numeric, 2),
                              'hbd', (random() * 5)::int, 'hba', (random() * 10)::int,
                              'tpsa', round((random() * 140)::numeric, 1),
                              'source', (ARRAY['zinc', 'chembl', 'inhouse'])[1 + m %% 3]),
           now() - random() * 365 * interval '1 day'
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM organizations) AS o,
         generate_series(1, %(molecules)s) AS m
    """,
    """
    INSERT INTO pipelines (organization_id, name, engine, parameters)
    SELECT o.id, 'pipeline-' || p, (ARRAY['vina', 'gnina', 'smina', 'diffdock'])[1 + p %% 4],
           jsonb_build_object('exhaustiveness', 8 * p, 'num_modes', 9, 'box_size', jsonb_build_array(20, 20, 20))
    FROM organizations AS o, generate_series(1, %(pipelines)s) AS p
    """,
    """
    INSERT INTO docking_jobs (organization_id, pipeline_id, molecule_id, status, parameters, submitted_at, finished_at)
    SELECT m.organization_id,
           (SELECT min(p.id) FROM pipelines p WHERE p.organization_id = m.organization_id),
           m.id,
           (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'running', 'queued', 'cancelled'])[1 + m.id %% 7],
           jsonb_build_object('seed', m.id, 'cpu', 4, 'receptor', 'PDB:' || (1000 + m.id %% 9000)),
           now() - interval '2 days', now() - interval '1 day'
    FROM molecules AS m, generate_series(1, %(jobs_per_molecule)s) AS j
    """,
    """
    INSERT INTO job_results (organization_id, job_id, pose, score, rmsd, payload)
    SELECT j.organization_id, j.id, r, -4 - random() * 8, random() * 3,
           jsonb_build_object('affinity_kcal_mol', round((-4 - random() * 8)::numeric, 2),
                              'pose_pdbqt', repeat('ATOM ', 20), 'contacts', (random() * 30)::int)
    FROM docking_jobs AS j, generate_series(1, %(results_per_job)s) AS r
    WHERE j.status = 'succeeded'
    """,
)


@dataclass(frozen=True, slots=True)
class SeedSize:
    organizations: int = 5
    molecules_per_org: int = 200
    pipelines_per_org: int = 3
    jobs_per_molecule: int = 1
    results_per_job: int = 3


@dataclass(frozen=True, slots=True)
class SeedResult:
    database: str
    created: bool
    rows: dict[str, int]


def _admin_connect(target: PostgresTarget) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(**target.with_dbname("postgres").conninfo(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {target.redacted()}: {exc}") from exc


# Written on every database `demo seed` creates; `--reset` drops only a database that carries it (or holds no
# tables), so pointing the command at the platform's real database cannot wipe it.
DEMO_MARKER = "ops-workers demo platform database"
_SYSTEM_DATABASES = frozenset({"postgres", "template0", "template1"})


def _may_drop(admin: psycopg.Connection[tuple[object, ...]], target: PostgresTarget) -> bool:
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (target.dbname,)
    ).fetchone()
    if row is not None and row[0] == DEMO_MARKER:
        return True
    with psycopg.connect(**target.conninfo(), connect_timeout=5) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%'"
        ).fetchone()
    return tables == (0,)


def ensure_database(target: PostgresTarget, *, reset: bool) -> bool:
    """Create target's database (dropping it first when reset); return True when it was created.

    Raises:
        UsageError: reset of a system database, or of one that is neither a demo database nor empty.
    """
    if reset and target.dbname in _SYSTEM_DATABASES:
        raise UsageError(f"--reset refuses to drop the system database {target.dbname}")
    with _admin_connect(target) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,)).fetchone()
        if exists and not reset:
            return False
        if exists:
            if not _may_drop(admin, target):
                raise UsageError(
                    f"--reset refuses to drop {target.dbname}: it holds tables and was not created by `demo seed`"
                )
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target.dbname)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(target.dbname),
                                                                     sql.Literal(DEMO_MARKER)))  # fmt: skip
        return True


def count_rows(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for table in ("organizations", "molecules", "pipelines", "docking_jobs", "job_results"):
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        rows[table] = int(row[0]) if row else 0  # type: ignore[call-overload]
    return rows


def seed(target: PostgresTarget, size: SeedSize, *, reset: bool = False) -> SeedResult:
    """Create the demo platform database and fill it; an already seeded database is left as it is.

    Raises:
        DatabaseUnavailable: PostgreSQL could not be reached.
        UsageError: the database exists but holds something other than the demo schema.
    """
    created = ensure_database(target, reset=reset)
    try:
        with psycopg.connect(**target.conninfo(), connect_timeout=5) as conn:
            has_schema = conn.execute("SELECT to_regclass('public.organizations') IS NOT NULL").fetchone()
            if has_schema and has_schema[0]:
                return SeedResult(target.dbname, created, count_rows(conn))
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
            if not created and tables != (0,):
                raise UsageError(f"database {target.dbname} exists and is not the demo database; use another name")
            conn.execute(SCHEMA)
            params = {
                "orgs": size.organizations,
                "molecules": size.molecules_per_org,
                "pipelines": size.pipelines_per_org,
                "jobs_per_molecule": size.jobs_per_molecule,
                "results_per_job": size.results_per_job,
                "smiles": list(SMILES),
                "smiles_count": len(SMILES),
            }
            for statement in STATEMENTS:
                conn.execute(statement, params)
            conn.execute("ANALYZE")
            rows = count_rows(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {target.redacted()}: {exc}") from exc
    log.info("demo database seeded", extra={"database": target.dbname, "rows": rows})
    return SeedResult(target.dbname, True, rows)
