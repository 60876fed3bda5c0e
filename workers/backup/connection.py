"""Connections to the platform's PostgreSQL, with connection errors translated into ours."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from workers.backup.pg_messages import is_permanent
from workers.errors import DatabaseAuthenticationFailed, DatabaseRefused, DatabaseUnavailable
from workers.settings import PostgresTarget

CONNECT_TIMEOUT_S = 10
APPLICATION_NAME = "ops-workers-backup"


def _first_line(exc: psycopg.Error) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def connection_error(target: PostgresTarget, exc: psycopg.Error) -> Exception:
    """Our error for a failed connection or a dropped one; the message never holds the password."""
    text = _first_line(exc)
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return DatabaseUnavailable(f"{target.redacted()}: {text} (a lock is held, e.g. by DDL; retry later)")
    if is_permanent(text):
        return DatabaseAuthenticationFailed(f"{target.redacted()}: {text}")
    return DatabaseUnavailable(f"{target.redacted()} unreachable: {text}")


def database_error(target: PostgresTarget, exc: psycopg.Error) -> Exception:
    """Our error for any psycopg error on target: connection_error() for an OperationalError (a lost or
    refused connection, a lock or statement timeout), else DatabaseRefused, permanent, saying what to do."""
    if isinstance(exc, psycopg.OperationalError):
        return connection_error(target, exc)
    text = _first_line(exc)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return DatabaseRefused(
            f"{target.redacted()}: {text}; grant role {target.user!r} that privilege or connect as a role that has"
            f" it (a backup reads every table: GRANT pg_read_all_data TO {target.user}; a restore drill needs"
            " CREATEDB)"
        )
    return DatabaseRefused(f"{target.redacted()}: {text} (SQLSTATE {exc.sqlstate}); retrying will not help")


def connect(target: PostgresTarget, *, autocommit: bool = False, **options: Any) -> psycopg.Connection[Any]:
    """A connection to target.

    Raises:
        DatabaseUnavailable: the server cannot be reached (safe to retry).
        DatabaseAuthenticationFailed: credentials, role or database rejected (not worth retrying).
    """
    try:
        return psycopg.connect(
            make_conninfo("", **target.conninfo()),
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=APPLICATION_NAME,
            **options,
        )
    except psycopg.OperationalError as exc:
        raise connection_error(target, exc) from exc
