"""What PostgreSQL's and libpq's error messages mean for a retry. Pure: text in, a verdict out.

A client program (pg_dump, pg_restore) reports a failure only as text on stderr, and psycopg's
connection errors carry the same libpq texts. Permanent: wrong credentials, names or privileges,
which a retry cannot change. Passing: a lock held by DDL, a connection refused or dropped, a
server restarting, which the next attempt may not meet.
"""

from __future__ import annotations

import re

# Credentials, roles, databases or privileges are wrong: retrying cannot help.
PERMANENT_PHRASES = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
)

_PASSING = tuple(
    re.compile(pattern)
    for pattern in (
        r"could not obtain lock",  # a NOWAIT lock, e.g. parallel pg_dump workers
        r"canceling statement due to lock timeout",
        # pg_dump's --lock-wait-timeout is a statement_timeout around its LOCK TABLE statements; any
        # other statement timeout is a server setting, which the next attempt meets again.
        r"canceling statement due to statement timeout[\s\S]*LOCK TABLE",
        r"server closed the connection unexpectedly",
        r"connection to server .* failed",  # refused, timed out, too many clients, starting up ...
        r"terminating connection due to administrator command",  # a restart, or a terminated backend
        r"the database system is (?:starting up|shutting down|in recovery mode)",
        r"could not (?:receive data from|send data to) server",
        r"no connection to the server",
    )
)


def is_permanent(message: str) -> bool:
    """Whether message says credentials, names or privileges are wrong."""
    return any(phrase in message for phrase in PERMANENT_PHRASES)


def is_passing(message: str) -> bool:
    """Whether message reports a passing condition (a lock, a lost or refused connection) and no permanent one."""
    return not is_permanent(message) and any(pattern.search(message) for pattern in _PASSING)
