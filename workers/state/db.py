"""The state database: engine creation and schema migrations (Alembic), shared by every process."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from workers.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates this schema.
_MIGRATION_LOCK_ID = 0x6F7073  # "ops"


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def create_state_engine(url: str, *, pre_ping: bool = True, pool_size: int = 5) -> Engine:
    """An engine for the state database; SQLite gets WAL and a busy timeout so processes can share it.

    pre_ping=False saves a round trip per checkout; the caller must then retry on OperationalError
    (a pooled connection the server dropped fails once and is discarded).

    Raises:
        DatabaseUnavailable: the directory of a SQLite file cannot be created.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            parent = Path(parsed.database).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"state database {parsed.database}: cannot create {parent} ({exc.strerror}); "
                    "set OPS_VAR_DIR or OPS_STATE_DATABASE_URL to a writable place"
                ) from None
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(
        url, pool_pre_ping=pre_ping, pool_size=pool_size, max_overflow=10, connect_args={"connect_timeout": 5}
    )


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations across processes starting at once (receiver, workers, `run`, backup maintenance)."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ":memory:"
        lock_path = Path(database + ".migrate.lock") if database != ":memory:" else None
        if lock_path is None:
            yield
            return
        try:
            handle = lock_path.open("w")
        except OSError as exc:
            raise DatabaseUnavailable(
                f"state database {database}: cannot write {lock_path} ({exc.strerror}); "
                "set OPS_VAR_DIR or OPS_STATE_DATABASE_URL to a writable place"
            ) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            conn.commit()


@contextmanager
def state_connection(engine: Engine) -> Iterator[Connection]:
    """A connection to the state database; an unreachable server becomes DatabaseUnavailable.

    Raises:
        DatabaseUnavailable: the state database could not be reached or dropped the connection.
    """
    try:
        with engine.connect() as conn:
            yield conn
    except OperationalError as exc:
        raise DatabaseUnavailable(f"state database {redact(str(engine.url))} unreachable: {exc.orig}") from exc


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the state database is at; None when it was never migrated.

    Raises:
        DatabaseUnavailable: the state database could not be reached.
    """
    with state_connection(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def migrate(url: str) -> str | None:
    """Apply every pending migration to the state database at url; return its revision. For entry points
    that migrate before starting processes, so that on a fresh var/ no two race to create the schema.

    Raises:
        DatabaseUnavailable: the state database could not be reached or migrated.
    """
    engine = create_state_engine(url)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()


def upgrade(engine: Engine) -> str | None:
    """Apply every pending migration; return the revision the database is now at.

    Raises:
        DatabaseUnavailable: the state database could not be reached.
    """
    try:
        with _migration_lock(engine), engine.begin() as conn:
            config = _alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        revision = current_revision(engine)
    except OperationalError as exc:
        where = redact(str(engine.url))
        raise DatabaseUnavailable(f"state database {where} unreachable: {exc.orig}") from exc
    except SQLAlchemyError as exc:
        where = redact(str(engine.url))
        raise DatabaseUnavailable(f"state database {where} migration failed: {exc}") from exc
    log.info("state database migrated", extra={"revision": revision})
    return revision
