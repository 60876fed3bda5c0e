"""PostgreSQL session actions: cancel or terminate long queries and sessions idle in transaction."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import make_conninfo

from workers.errors import ActionError
from workers.incidents.actions.base import (
    ActionContext,
    ActionResult,
    ActionSpec,
    Kind,
    Param,
    ParamValue,
    integer,
    number,
    text,
    text_list,
)

log = logging.getLogger(__name__)

# Our own connections carry this application_name, so no action ever ends a session of ours.
APPLICATION_NAME = "ops-workers-remediation"
OWN_APPLICATION_PREFIX = "ops-workers"
STATES = ("active", "idle in transaction", "idle in transaction (aborted)", "fastpath function call")

# Only client backends: replication (walsender), autovacuum and background workers are never touched.
# The age is measured from the start of the query for active sessions and from the last state change
# for the idle ones, so "idle in transaction for 10 min" means exactly that.
_CANDIDATES = """
SELECT pid, usename, application_name, state,
       extract(epoch FROM now() - CASE WHEN state = 'active' THEN query_start ELSE state_change END) AS age_s,
       left(query, 200) AS query
FROM pg_stat_activity
WHERE datname = %(database)s
  AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND state = ANY(%(states)s)
  AND coalesce(application_name, '') NOT LIKE %(own_prefix)s
  AND NOT (coalesce(usename, '') = ANY(%(exclude_users)s))
  AND NOT (coalesce(application_name, '') = ANY(%(exclude_applications)s))
  AND now() - CASE WHEN state = 'active' THEN query_start ELSE state_change END
      > make_interval(secs => %(min_age_s)s)
ORDER BY age_s DESC
LIMIT %(limit)s
"""

_END_SESSION = {
    "terminate": "SELECT pg_terminate_backend(%s)",
    "cancel": "SELECT pg_cancel_backend(%s)",
}

PARAMS: Mapping[str, Param] = {
    "min_duration": Param(Kind.DURATION, default=300.0),
    "states": Param(Kind.TEXT_LIST, default=("active",), choices=STATES),
    "database": Param(Kind.TEXT, default="", templated=True),
    "exclude_users": Param(Kind.TEXT_LIST, default=()),
    "exclude_applications": Param(Kind.TEXT_LIST, default=()),
    "limit": Param(Kind.INT, default=50),
}


def _end_sessions(params: Mapping[str, ParamValue], ctx: ActionContext, function: str) -> ActionResult:
    settings = ctx.settings
    target = settings.platform_database()
    database = text(params, "database") or target.dbname
    query_args = {
        "database": database,
        "states": list(text_list(params, "states")),
        "own_prefix": OWN_APPLICATION_PREFIX + "%",
        "exclude_users": [*settings.remediation.exclude_users, *text_list(params, "exclude_users")],
        "exclude_applications": [
            *settings.remediation.exclude_applications,
            *text_list(params, "exclude_applications"),
        ],
        "min_age_s": number(params, "min_duration"),
        "limit": integer(params, "limit"),
    }
    timeout_ms = max(1, int(ctx.timeout_s * 1000))
    try:
        with psycopg.connect(
            make_conninfo(**target.conninfo()),
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=max(1, int(ctx.timeout_s)),
            options=f"-c statement_timeout={timeout_ms}",
        ) as conn:
            rows = conn.execute(_CANDIDATES, query_args).fetchall()
            sessions = [
                {
                    "pid": r[0],
                    "user": r[1],
                    "application": r[2],
                    "state": r[3],
                    "age_s": round(float(r[4]), 1),
                    "query": r[5],
                }
                for r in rows
            ]
            if ctx.dry_run:
                return ActionResult(True, f"would {function} {len(sessions)} session(s)", {"sessions": sessions})
            ended = []
            for session in sessions:
                # pg_terminate_backend is false when the session ended on its own meanwhile.
                row = conn.execute(_END_SESSION[function], (session["pid"],)).fetchone()
                session["ended"] = bool(row and row[0])
                ended.append(session)
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ActionError(f"{target.redacted()}: {first_line}") from exc
    count = sum(1 for s in ended if s["ended"])
    verb = "terminated" if function == "terminate" else "cancelled"
    return ActionResult(True, f"{verb} {count} session(s) on {database}", {"sessions": ended})


def terminate_queries(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """End the matching sessions (pg_terminate_backend): their transactions roll back, connections close."""
    return _end_sessions(params, ctx, "terminate")


def cancel_queries(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """Cancel the running statement of matching sessions (pg_cancel_backend); connections stay."""
    return _end_sessions(params, ctx, "cancel")


TERMINATE = ActionSpec(terminate_queries, PARAMS, "terminate sessions running or idle in transaction too long")
CANCEL = ActionSpec(cancel_queries, PARAMS, "cancel queries running too long")
