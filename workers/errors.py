"""Every error this package raises on purpose; one hierarchy, named for what happened."""

from __future__ import annotations

from collections.abc import Sequence


class WorkersError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(WorkersError):
    """Settings are missing or invalid. Raised at startup; lists every problem at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class UsageError(WorkersError):
    """An operator asked for something that can never work as given (bad id, bad target)."""


class ServiceUnavailable(WorkersError):
    """A service we depend on could not be reached. Safe to retry."""


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL (platform or state database) could not be reached or the connection dropped."""


class BrokerUnavailable(ServiceUnavailable):
    """The Redis broker could not be reached."""


class StorageUnavailable(ServiceUnavailable):
    """The backup store could not be reached. Safe to retry."""


class PortInUse(WorkersError):
    """A server could not take its address: another process holds it, or the host has no such address."""

    def __init__(self, variable: str, bind: str, reason: str) -> None:
        super().__init__(
            f"cannot listen on {bind} ({variable}): {reason}; stop the process holding it or set {variable}"
        )
        self.variable = variable
        self.bind = bind


class CommandError(WorkersError):
    """A child process (pg_dump, pg_restore, psql, an allow-listed command) did not succeed."""


class CommandNotFound(CommandError):
    def __init__(self, program: str) -> None:
        super().__init__(f"{program} not found on PATH; install it (e.g. the postgresql-client package)")
        self.program = program


class CommandFailed(CommandError):
    def __init__(self, program: str, returncode: int, stderr_tail: str) -> None:
        super().__init__(f"{program} exited with {returncode}: {stderr_tail}".rstrip(": "))
        self.program = program
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class CommandInterrupted(CommandFailed, DatabaseUnavailable):
    """A client program failed because the database was briefly unusable: its lock wait timed out behind
    DDL, or the connection was refused or dropped. Safe to retry, so it is also a DatabaseUnavailable."""


class CommandTimedOut(CommandError):
    def __init__(self, program: str, timeout_s: float) -> None:
        super().__init__(f"{program} did not finish within {timeout_s:g}s and was killed")
        self.program = program
        self.timeout_s = timeout_s


class AlreadyRunning(WorkersError):
    """Work that must not overlap is already running elsewhere; nothing was done."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is already running; nothing was done")
        self.what = what


class DatabaseAuthenticationFailed(WorkersError):
    """PostgreSQL refused our credentials (or the role/database does not exist). Retrying won't help."""


class DatabaseRefused(WorkersError):
    """PostgreSQL rejected a statement for a reason a retry cannot change (a missing privilege, say)."""


class StorageFull(WorkersError):
    """The backup store ran out of space; nothing was published."""


class BackupNotFound(UsageError):
    """No backup with this id exists in the store (a backup without a manifest does not exist)."""

    def __init__(self, backup_id: str, message: str | None = None) -> None:
        super().__init__(message or f"no backup with id {backup_id!r} in the store; see `ops-workers backup list`")
        self.backup_id = backup_id


class InvalidOrganizationId(UsageError):
    """An organization id does not match OPS_TENANT_ID_PATTERN; nothing was read or stored."""


class ChecksumMismatch(WorkersError):
    """A stored object's bytes do not match its manifest's SHA-256; nothing was restored."""

    def __init__(self, key: str, expected: str, actual: str) -> None:
        super().__init__(f"{key}: checksum mismatch (manifest sha256 {expected}, object {actual}); nothing restored")
        self.key = key
        self.expected = expected
        self.actual = actual


class RestoreRefused(UsageError):
    """A restore target is the source database or is not empty, and --force was not given."""


class StorageRefused(WorkersError):
    """The backup store rejected the request (access denied, no such bucket, bad request). Retrying won't help."""


class ObjectNotFound(WorkersError):
    """A key the caller expected is not in the backup store."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: not found in the backup store")
        self.key = key


class CorruptBackup(WorkersError):
    """A stored backup cannot be decoded although its checksum matches (a bug or a foreign object)."""


class RowCountMismatch(CorruptBackup):
    """A table restored from a backup holds another number of rows than its manifest says; nothing committed."""

    def __init__(self, key: str, table: str, restored: int, expected: int) -> None:
        super().__init__(f"{key}: {table}: {restored} rows restored, the manifest says {expected}")
        self.key = key
        self.table = table
        self.restored = restored
        self.expected = expected


class InvalidAlert(WorkersError):
    """A webhook body that can never be accepted as sent; names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class AlertmanagerUnavailable(ServiceUnavailable):
    """Alertmanager's API could not be reached or answered with something other than alerts."""


class OrganizationNotFound(UsageError):
    """No organization with this id exists in the database; nothing was stored."""


class RestoreFailed(WorkersError):
    """A restore ran and did not succeed; nothing was committed (the message names the cause)."""


class BackupInUse(WorkersError):
    """A backup is held by another operation (being deleted, or verified/restored); nothing was done to it."""

    def __init__(self, backup_id: str, why: str) -> None:
        super().__init__(f"backup {backup_id} is in use: {why}")
        self.backup_id = backup_id


class IncidentNotFound(UsageError):
    """No incident has this id."""

    def __init__(self, incident_id: int) -> None:
        super().__init__(f"no incident with id {incident_id}")
        self.incident_id = incident_id


class ActionError(WorkersError):
    """A remediation action could not do what it was asked; the runner records it as failed."""


class UnsafeParameter(ActionError):
    """A parameter, after label substitution, would leave its lane (a path outside the roots, a flag)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"parameter {field}: {reason}")
        self.field = field
        self.reason = reason


class PathNotAllowed(UnsafeParameter):
    """A path resolves outside every allowed root (directly, through '..' or through a symlink)."""

    def __init__(self, field: str, path: str) -> None:
        super().__init__(field, f"{path!r} is outside the allowed roots")
        self.path = path


class NotificationFailed(WorkersError):
    """A notification channel refused or could not be reached after every attempt."""

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"{channel}: {reason}")
        self.channel = channel
        self.reason = reason
