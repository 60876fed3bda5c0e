"""Settings: frozen values built once from OPS_* variables. The only module that reads the environment."""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, quote, unquote, urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from workers.errors import ConfigError

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "console")
_CRON_FIELD = re.compile(r"^[0-9*/,\-a-zA-Z]+$")


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that never shows in repr(), logs or tracebacks."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class Bind:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """A loopback address (127.0.0.0/8, ::1, ::ffff:127.x) or the name localhost; "127.evil.example" is not."""
        if self.host.lower() == "localhost":
            return True
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return False  # any other name: it resolves wherever DNS says
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """One PostgreSQL database; the password stays out of argv and logs."""

    host: str
    port: int
    user: str
    dbname: str
    password: Secret | None = None
    sslmode: str | None = None

    def with_dbname(self, dbname: str) -> PostgresTarget:
        return replace(self, dbname=dbname)

    def conninfo(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect(); holds the password, never log it."""
        params: dict[str, Any] = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": self.dbname}
        if self.password is not None:
            params["password"] = self.password.value
        if self.sslmode:
            params["sslmode"] = self.sslmode
        return params

    def child_env(self) -> dict[str, str]:
        """libpq variables for a child process (pg_dump ...): the password travels here, not in argv."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": self.dbname}
        if self.password is not None:
            env["PGPASSWORD"] = self.password.value
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def redacted(self) -> str:
        auth = f"{quote(self.user)}:***" if self.password is not None else quote(self.user)
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """Crontab expressions (minute hour day-of-month month day-of-week), UTC."""

    backup_full: str
    backup_orgs: str
    backup_verify: str
    backup_verify_orgs: str
    backup_cleanup: str
    incidents_reconcile: str
    ops_check: str


@dataclass(frozen=True, slots=True)
class S3Settings:
    sse: str  # "AES256", "aws:kms" or "none"
    kms_key_id: str | None
    storage_class: str
    endpoint_url: str | None
    region: str | None
    addressing_style: str  # "auto", "path" or "virtual"
    request_checksum: str  # "when_required" or "when_supported"


@dataclass(frozen=True, slots=True)
class BackupSettings:
    store: str  # "file:///abs/dir" or "s3://bucket/prefix"
    s3: S3Settings
    dump_timeout_s: float
    lock_wait_timeout_s: float
    zstd_level: int
    zstd_threads: int
    tenant_tables: tuple[str, ...]
    tenant_column: str
    tenant_id_pattern: str
    retention_days: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_min: int
    orphan_grace_s: float
    verify_org_sample: int
    pg_bin_dir: Path | None = None  # where pg_dump/pg_restore live; None: found on PATH
    # Server for restore drills (throwaway databases) and backup leases; None: the platform database's server.
    verify_database: PostgresTarget | None = None


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    bind: Bind
    token: Secret | None
    basic_auth: Secret | None  # "user:password"
    allow_no_auth: bool
    max_body_bytes: int
    alertmanager_url: str | None = field(repr=False)  # may carry user:password@
    workers: int  # uvicorn worker processes


@dataclass(frozen=True, slots=True)
class RemediationSettings:
    """Incident playbooks and the safety rails around them."""

    playbooks_file: Path | None  # None: the bundled default playbooks
    dry_run: bool  # global: every action only reports what it would do
    allowed_roots: tuple[Path, ...]  # file and log actions never touch anything outside these
    cooldown_s: float  # default per (playbook, target); a playbook may set its own
    budget_per_hour: int  # runs per playbook per hour
    flap_threshold: int  # more fired-and-resolved episodes than this in the window: escalate instead
    flap_window_s: float
    lock_ttl_s: float  # per-target lock; renewed while a run is alive, expires when its worker died
    action_timeout_s: float  # default deadline of one action
    exclude_users: tuple[str, ...]  # PostgreSQL roles whose sessions are never cancelled or terminated
    exclude_applications: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Notification channels; a channel without its address set is off."""

    pagerduty_routing_key: Secret | None
    pagerduty_url: str
    ticket_url: Secret | None
    ticket_token: Secret | None
    slack_webhook_url: Secret | None
    smtp_host: str | None
    smtp_port: int
    smtp_user: str | None
    smtp_password: Secret | None
    smtp_from: str
    smtp_to: tuple[str, ...]
    smtp_starttls: bool
    smtp_ca_file: Path | None
    timeout_s: float
    attempts: int
    backoff_s: float


@dataclass(frozen=True, slots=True)
class FlowerSettings:
    bind: Bind
    basic_auth: Secret | None


@dataclass(frozen=True, slots=True)
class ExporterSettings:
    """`ops-workers exporter` (system and queue metrics) and the reference celery-exporter beside it."""

    bind: Bind
    disk_mounts: tuple[str, ...]  # empty: every real mounted file system
    ping_timeout_s: float  # how long a scrape waits for workers to answer the ping
    celery_exporter_bind: Bind


@dataclass(frozen=True, slots=True)
class Settings:
    broker_url: Secret
    database: PostgresTarget | None  # the platform database; None until configured
    state_database_url: Secret
    var_dir: Path
    metrics_bind: Bind
    log_level: str
    log_format: str
    longest_task_s: int
    result_expires_s: int
    schedule: ScheduleSettings
    backup: BackupSettings
    receiver: ReceiverSettings
    flower: FlowerSettings
    remediation: RemediationSettings
    notify: NotifySettings
    metrics_dir: Path | None  # PROMETHEUS_MULTIPROC_DIR: metrics of prefork children are shared here
    exporter: ExporterSettings

    def platform_database(self) -> PostgresTarget:
        """The platform database, or ConfigError naming the variable to set."""
        if self.database is None:
            raise ConfigError(["OPS_DATABASE_URL: not set; point it at the platform's PostgreSQL database"])
        return self.database


class _Reader:
    """Reads OPS_* values from a mapping and collects every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _convert(self, name: str, default: T, convert: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc} (got {_shown(name, raw)})")
            return default

    def string(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def secret(self, name: str) -> Secret | None:
        raw = self._raw(name)
        return Secret(raw) if raw is not None else None

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        def convert(raw: str) -> int:
            try:
                value = int(raw.replace("_", ""))
            except ValueError:
                raise ValueError("must be a whole number") from None
            _check_range(value, minimum, maximum)
            return value

        return self._convert(name, default, convert)

    def seconds(self, name: str, default: float, minimum: float = 0.0) -> float:
        def convert(raw: str) -> float:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError("must be a number of seconds") from None
            if not math.isfinite(value):
                raise ValueError("must be a finite number of seconds")
            _check_range(value, minimum, None)
            return value

        return self._convert(name, default, convert)

    def boolean(self, name: str, default: bool) -> bool:
        def convert(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be one of 1/0, true/false, yes/no, on/off")

        return self._convert(name, default, convert)

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
        def convert(raw: str) -> str:
            value = raw.upper() if upper else raw.lower()
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}")
            return value

        return self._convert(name, default, convert)

    def bind(self, name: str, default: str) -> Bind:
        return self._convert(name, parse_bind(default), parse_bind)

    def cron(self, name: str, default: str) -> str:
        def convert(raw: str) -> str:
            fields = raw.split()
            if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
                raise ValueError("must be a crontab expression of five fields, e.g. '0 2 * * *'")
            # Celery's own parser, so beat never meets a value it refuses (minute 61, weekday 9, 31 February).
            from celery.schedules import crontab

            minute, hour, day_of_month, month_of_year, day_of_week = fields
            try:
                crontab(minute, hour, day_of_week, day_of_month, month_of_year)
            except ValueError as exc:
                raise ValueError(f"is not a valid crontab expression: {exc}") from None
            return " ".join(fields)

        return self._convert(name, default, convert)

    def csv(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def check(self, name: str, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(f"{name}: {message}")


def _shown(name: str, raw: str) -> str:
    # Credentials may hide in any value that has a user part (scheme://user:password@host).
    if "@" in raw or any(word in name for word in ("TOKEN", "PASSWORD", "AUTH", "SECRET", "KEY")):
        return "a value that is not shown"
    return repr(raw)


def _check_range(value: float, minimum: float, maximum: float | None) -> None:
    if value < minimum:
        raise ValueError(f"must be at least {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum:g}")


def parse_bind(raw: str) -> Bind:
    """HOST:PORT -> Bind.

    Raises:
        ValueError: raw is not HOST:PORT with a port from 0 to 65535.
    """
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return Bind(host.strip("[]"), port)


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # libpq's


def parse_postgres_url(raw: str) -> PostgresTarget:
    """postgresql://user[:password]@host[:port]/dbname[?sslmode=...] -> PostgresTarget."""
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql://")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ValueError("must name a database, e.g. postgresql://user@host:5432/platform")
    try:
        port = parts.port or 5432
    except ValueError:
        raise ValueError("has an invalid port") from None
    sslmode = None
    for pair in filter(None, parts.query.split("&")):
        key, _, value = pair.partition("=")
        if key != "sslmode":
            raise ValueError(
                f"has query parameter {key!r}; only sslmode is read from the URL "
                "(set libpq's own variables, e.g. PGSSLROOTCERT, for the rest)"
            )
        if value not in SSL_MODES:
            raise ValueError(f"has sslmode={value!r}; use one of {', '.join(SSL_MODES)}")
        sslmode = value
    password = Secret(unquote(parts.password)) if parts.password else None
    return PostgresTarget(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username) if parts.username else "postgres",
        dbname=dbname,
        password=password,
        sslmode=sslmode,
    )


def _store_url(raw: str) -> str:
    if raw.startswith("s3://"):
        bucket = urlsplit(raw).netloc
        if not bucket:
            raise ValueError("s3:// must name a bucket, e.g. s3://backups/platform")
        return raw.rstrip("/")
    if raw.startswith("file://"):
        path = raw[len("file://") :]
        if not path:
            raise ValueError("file:// must name a directory, e.g. file://./var/backups")
        return "file://" + str(Path(path).expanduser().absolute())
    raise ValueError("must be file://DIR or s3://BUCKET/PREFIX")


def _directory(raw: str) -> Path | None:
    path = Path(raw).expanduser().absolute()
    if not path.is_dir():
        raise ValueError("must be an existing directory holding pg_dump and pg_restore")
    return path


def _check_port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018  # urllib parses the port only when asked, and raises then
    except ValueError:
        raise ValueError("has an invalid port (a number from 1 to 65535)") from None


def _sqlalchemy_url(raw: str) -> Secret:
    if raw.startswith("sqlite:"):
        path = raw[len("sqlite:///") :] if raw.startswith("sqlite:///") else ""
        # An in-memory database would hold the incidents and the audit trail only until the process ends.
        if not path or path.startswith(":memory:") or "mode=memory" in path:
            raise ValueError("must name a file, e.g. sqlite:///var/state.db (an in-memory database loses everything)")
        return Secret(raw)
    if raw.startswith(("postgresql://", "postgresql+psycopg://")):
        parts = urlsplit(raw)
        _check_port(parts)
        if not unquote(parts.path.lstrip("/")):
            raise ValueError("must name a database, e.g. postgresql://user@host:5432/ops_state")
        if raw.startswith("postgresql://"):
            raw = "postgresql+psycopg://" + raw[len("postgresql://") :]
        return Secret(raw)
    raise ValueError("must be sqlite:///PATH or postgresql://...")


def _broker_url(raw: str) -> str:
    if raw.startswith("unix://"):
        return raw
    if not raw.startswith(("redis://", "rediss://")):
        raise ValueError("must be a redis:// URL")
    parts = urlsplit(raw)
    _check_port(parts)
    # Celery (kombu) refuses a database that is not a number; redis-py would quietly use database 0.
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError("must end in a database number, e.g. redis://127.0.0.1:6379/0")
    return raw


def _read_schedule(r: _Reader) -> ScheduleSettings:
    return ScheduleSettings(
        backup_full=r.cron("OPS_SCHEDULE_BACKUP_FULL", "0 2 * * *"),
        backup_orgs=r.cron("OPS_SCHEDULE_BACKUP_ORGS", "30 2 * * *"),
        backup_verify=r.cron("OPS_SCHEDULE_BACKUP_VERIFY", "0 4 * * *"),
        backup_verify_orgs=r.cron("OPS_SCHEDULE_BACKUP_VERIFY_ORGS", "30 4 * * *"),
        backup_cleanup=r.cron("OPS_SCHEDULE_BACKUP_CLEANUP", "0 3 * * mon"),
        incidents_reconcile=r.cron("OPS_SCHEDULE_INCIDENTS_RECONCILE", "* * * * *"),
        ops_check=r.cron("OPS_SCHEDULE_OPS_CHECK", "17 * * * *"),
    )


def _read_s3(r: _Reader) -> S3Settings:
    def sse_mode(raw: str) -> str:
        # S3's own spellings, whatever the case they were written in.
        canonical = {"aes256": "AES256", "aws:kms": "aws:kms", "none": "none"}
        if raw.lower() not in canonical:
            raise ValueError(f"must be one of {', '.join(canonical.values())}")
        return canonical[raw.lower()]

    sse = r._convert("OPS_S3_SSE", "AES256", sse_mode)
    kms_key_id = r.optional("OPS_S3_KMS_KEY_ID")
    r.check("OPS_S3_KMS_KEY_ID", sse != "aws:kms" or kms_key_id is not None, "required when OPS_S3_SSE=aws:kms")
    endpoint_url = r.optional("OPS_S3_ENDPOINT_URL")
    if endpoint_url is not None:
        r.check("OPS_S3_ENDPOINT_URL", endpoint_url.startswith(("http://", "https://")), "must be an http(s) URL")
    return S3Settings(
        sse=sse,
        kms_key_id=kms_key_id,
        storage_class=r.choice(
            "OPS_S3_STORAGE_CLASS",
            "STANDARD_IA",
            ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "REDUCED_REDUNDANCY"),
            upper=True,
        ),
        endpoint_url=endpoint_url,
        region=r.optional("OPS_S3_REGION"),
        addressing_style=r.choice("OPS_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")),
        request_checksum=r.choice(
            "OPS_S3_REQUEST_CHECKSUM", "when_required", ("when_required", "when_supported")
        ),
    )


def _read_backup(r: _Reader) -> BackupSettings:
    tenant_id_pattern = r.string(
        "OPS_TENANT_ID_PATTERN", r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )
    try:
        re.compile(tenant_id_pattern)
    except re.error as exc:
        r.check("OPS_TENANT_ID_PATTERN", False, f"is not a valid regular expression: {exc}")
    tenant_tables = r.csv(
        "OPS_TENANT_TABLES", ("organizations", "molecules", "pipelines", "docking_jobs", "job_results")
    )
    r.check(
        "OPS_TENANT_TABLES",
        all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", t) for t in tenant_tables),
        "each entry must be a plain table name ([schema.]name of letters, digits and _)",
    )
    tenant_column = r.string("OPS_TENANT_COLUMN", "organization_id")
    r.check(
        "OPS_TENANT_COLUMN",
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tenant_column) is not None,
        "must be a plain column name",
    )
    dump_timeout_s = r.seconds("OPS_BACKUP_DUMP_TIMEOUT_S", 6 * 3600.0, minimum=1)
    orphan_grace_s = r.seconds("OPS_BACKUP_ORPHAN_GRACE_S", 86400.0)
    # S3 dates a multipart object from the start of its upload: a dump that ran for longer than the
    # grace would be an "old" object without a manifest, i.e. garbage, before its manifest is written.
    if not any(p.startswith(("OPS_BACKUP_DUMP_TIMEOUT_S:", "OPS_BACKUP_ORPHAN_GRACE_S:")) for p in r.problems):
        r.check(
            "OPS_BACKUP_ORPHAN_GRACE_S",
            orphan_grace_s > dump_timeout_s,
            f"must be larger than OPS_BACKUP_DUMP_TIMEOUT_S ({orphan_grace_s:g} <= {dump_timeout_s:g}), or cleanup"
            " may take a backup still being written for an orphan",
        )
    return BackupSettings(
        store=r._convert("OPS_BACKUP_STORE", _store_url("file://./var/backups"), _store_url),
        s3=_read_s3(r),
        dump_timeout_s=dump_timeout_s,
        lock_wait_timeout_s=r.seconds("OPS_BACKUP_LOCK_WAIT_TIMEOUT_S", 30.0, minimum=0.1),
        zstd_level=r.integer("OPS_BACKUP_ZSTD_LEVEL", 3, minimum=1, maximum=19),
        zstd_threads=r.integer("OPS_BACKUP_ZSTD_THREADS", 2, minimum=0, maximum=64),
        tenant_tables=tenant_tables,
        tenant_column=tenant_column,
        tenant_id_pattern=tenant_id_pattern,
        retention_days=r.integer("OPS_BACKUP_RETENTION_DAYS", 30, minimum=1),
        keep_daily=r.integer("OPS_BACKUP_KEEP_DAILY", 0),
        keep_weekly=r.integer("OPS_BACKUP_KEEP_WEEKLY", 0),
        keep_monthly=r.integer("OPS_BACKUP_KEEP_MONTHLY", 0),
        keep_min=r.integer("OPS_BACKUP_KEEP_MIN", 3, minimum=1),
        orphan_grace_s=orphan_grace_s,
        verify_org_sample=r.integer("OPS_BACKUP_VERIFY_ORG_SAMPLE", 3),
        pg_bin_dir=r._convert("OPS_PG_BIN_DIR", None, _directory),
        verify_database=r._convert("OPS_BACKUP_VERIFY_DATABASE_URL", None, parse_postgres_url),
    )


def _is_user_password(value: Secret | None) -> bool:
    """None, or USER:PASSWORD with both parts given (an empty password would let anyone in)."""
    if value is None:
        return True
    user, sep, password = value.value.partition(":")
    return bool(sep and user and password)


def _read_receiver(r: _Reader) -> ReceiverSettings:
    bind = r.bind("OPS_RECEIVER_BIND", "127.0.0.1:8080")
    token = r.secret("OPS_RECEIVER_TOKEN")
    basic_auth = r.secret("OPS_RECEIVER_BASIC_AUTH")
    r.check("OPS_RECEIVER_BASIC_AUTH", _is_user_password(basic_auth), "must be USER:PASSWORD, neither part empty")
    allow_no_auth = r.boolean("OPS_RECEIVER_ALLOW_NO_AUTH", False)
    alertmanager_url = r.optional("OPS_ALERTMANAGER_URL")
    if alertmanager_url is not None:
        r.check("OPS_ALERTMANAGER_URL", alertmanager_url.startswith(("http://", "https://")), "must be an http(s) URL")
    return ReceiverSettings(
        bind=bind,
        token=token,
        basic_auth=basic_auth,
        allow_no_auth=allow_no_auth,
        max_body_bytes=r.integer("OPS_RECEIVER_MAX_BODY", 10 * 1024 * 1024, minimum=1024),
        alertmanager_url=alertmanager_url.rstrip("/") if alertmanager_url else None,
        workers=r.integer("OPS_RECEIVER_WORKERS", 1, minimum=1, maximum=64),
    )


def _read_remediation(r: _Reader, var_dir: Path) -> RemediationSettings:
    playbooks = r.optional("OPS_PLAYBOOKS")
    playbooks_file = Path(playbooks).expanduser().absolute() if playbooks else None
    r.check("OPS_PLAYBOOKS", playbooks_file is None or playbooks_file.is_file(), "must name an existing YAML file")
    roots = r.csv("OPS_REMEDIATION_ALLOWED_ROOTS", (str(var_dir / "tmp"), str(var_dir / "logs")))
    r.check("OPS_REMEDIATION_ALLOWED_ROOTS", all(Path(p).is_absolute() for p in roots), "every root must be absolute")
    return RemediationSettings(
        playbooks_file=playbooks_file,
        dry_run=r.boolean("OPS_REMEDIATION_DRY_RUN", False),
        allowed_roots=tuple(Path(p) for p in roots),
        cooldown_s=r.seconds("OPS_REMEDIATION_COOLDOWN_S", 900.0),
        budget_per_hour=r.integer("OPS_REMEDIATION_BUDGET_PER_HOUR", 6, minimum=1),
        flap_threshold=r.integer("OPS_REMEDIATION_FLAP_THRESHOLD", 3, minimum=1),
        flap_window_s=r.seconds("OPS_REMEDIATION_FLAP_WINDOW_S", 3600.0, minimum=1),
        lock_ttl_s=r.seconds("OPS_REMEDIATION_LOCK_TTL_S", 60.0, minimum=1),
        action_timeout_s=r.seconds("OPS_REMEDIATION_ACTION_TIMEOUT_S", 60.0, minimum=0.1),
        exclude_users=r.csv("OPS_REMEDIATION_EXCLUDE_USERS", ()),
        exclude_applications=r.csv("OPS_REMEDIATION_EXCLUDE_APPLICATIONS", ()),
    )


def _read_notify(r: _Reader) -> NotifySettings:
    for name in ("OPS_PAGERDUTY_URL", "OPS_TICKET_WEBHOOK_URL", "OPS_SLACK_WEBHOOK_URL"):
        value = r.optional(name)
        r.check(name, value is None or value.startswith(("http://", "https://")), "must be an http(s) URL")
    ca_file = r.optional("OPS_SMTP_CA_FILE")
    r.check("OPS_SMTP_CA_FILE", ca_file is None or Path(ca_file).is_file(), "must name an existing PEM file")
    return NotifySettings(
        pagerduty_routing_key=r.secret("OPS_PAGERDUTY_ROUTING_KEY"),
        pagerduty_url=r.string("OPS_PAGERDUTY_URL", "https://events.pagerduty.com/v2/enqueue"),
        ticket_url=r.secret("OPS_TICKET_WEBHOOK_URL"),
        ticket_token=r.secret("OPS_TICKET_WEBHOOK_TOKEN"),
        slack_webhook_url=r.secret("OPS_SLACK_WEBHOOK_URL"),
        smtp_host=r.optional("OPS_SMTP_HOST"),
        smtp_port=r.integer("OPS_SMTP_PORT", 587, minimum=1, maximum=65535),
        smtp_user=r.optional("OPS_SMTP_USER"),
        smtp_password=r.secret("OPS_SMTP_PASSWORD"),
        smtp_from=r.string("OPS_SMTP_FROM", "ops-workers@localhost"),
        smtp_to=r.csv("OPS_SMTP_TO", ()),
        smtp_starttls=r.boolean("OPS_SMTP_STARTTLS", True),
        smtp_ca_file=Path(ca_file) if ca_file else None,
        timeout_s=r.seconds("OPS_NOTIFY_TIMEOUT_S", 10.0, minimum=0.1),
        attempts=r.integer("OPS_NOTIFY_ATTEMPTS", 3, minimum=1, maximum=10),
        backoff_s=r.seconds("OPS_NOTIFY_BACKOFF_S", 1.0),
    )


def _metrics_bind(r: _Reader) -> Bind:
    bind = r.bind("OPS_METRICS_BIND", "127.0.0.1:9540")
    # `ops-workers run` gives the backups worker the next port.
    r.check("OPS_METRICS_BIND", bind.port < 65535, "port must be at most 65534 (run serves backups on port+1)")
    return bind


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from OPS_* variables; raise ConfigError listing every problem."""
    r = _Reader(environ)
    broker_url = r._convert("OPS_BROKER_URL", "redis://127.0.0.1:6379/0", _broker_url)
    database = r._convert("OPS_DATABASE_URL", None, parse_postgres_url)
    var_dir = Path(r.string("OPS_VAR_DIR", "./var")).expanduser().absolute()
    r.check("OPS_VAR_DIR", not var_dir.exists() or var_dir.is_dir(), f"{var_dir} exists and is not a directory")
    state_url = r._convert("OPS_STATE_DATABASE_URL", Secret(f"sqlite:///{var_dir / 'state.db'}"), _sqlalchemy_url)
    flower_auth = r.secret("OPS_FLOWER_BASIC_AUTH")
    r.check("OPS_FLOWER_BASIC_AUTH", _is_user_password(flower_auth), "must be USER:PASSWORD, neither part empty")
    settings = Settings(
        broker_url=Secret(broker_url),
        database=database,
        state_database_url=state_url,
        var_dir=var_dir,
        metrics_bind=_metrics_bind(r),
        log_level=r.choice("OPS_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        log_format=r.choice("OPS_LOG_FORMAT", "json", LOG_FORMATS),
        longest_task_s=r.integer("OPS_LONGEST_TASK_S", 6 * 3600, minimum=60),
        result_expires_s=r.integer("OPS_RESULT_EXPIRES_S", 86400, minimum=60),
        schedule=_read_schedule(r),
        backup=_read_backup(r),
        receiver=_read_receiver(r),
        flower=FlowerSettings(bind=r.bind("OPS_FLOWER_BIND", "127.0.0.1:5555"), basic_auth=flower_auth),
        remediation=_read_remediation(r, var_dir),
        notify=_read_notify(r),
        metrics_dir=Path(environ["PROMETHEUS_MULTIPROC_DIR"]) if environ.get("PROMETHEUS_MULTIPROC_DIR") else None,
        exporter=ExporterSettings(
            bind=r.bind("OPS_EXPORTER_BIND", "127.0.0.1:9545"),
            disk_mounts=r.csv("OPS_EXPORTER_DISK_MOUNTS", ()),
            ping_timeout_s=r.seconds("OPS_EXPORTER_PING_TIMEOUT_S", 1.0, minimum=0.05),
            celery_exporter_bind=r.bind("OPS_CELERY_EXPORTER_BIND", "127.0.0.1:9808"),
        ),
    )
    # A misspelt variable would otherwise be ignored and its default used; OPS_TEST_* belong to the tests.
    unknown = sorted(
        name
        for name in environ
        if name.startswith("OPS_") and not name.startswith("OPS_TEST_") and name not in KNOWN_VARIABLES
    )
    for name in unknown:
        r.problems.append(f"{name}: unknown setting (a typo?); see the settings table in README.md")
    if r.problems:
        raise ConfigError(r.problems)
    return settings


def environment() -> dict[str, str]:
    """The process environment over the values of ./.env (the environment wins).

    Raises:
        ConfigError: a line of ./.env cannot be parsed (each one named by number).
    """
    merged: dict[str, str] = {}
    if Path(".env").is_file():
        try:
            with Path(".env").open(encoding="utf-8") as stream:
                # A line python-dotenv cannot parse would otherwise be skipped with a warning, silently
                # dropping a setting. The line's text is not shown: it may hold a secret.
                bad = [b.original.line for b in parse_stream(stream) if b.error]
            if bad:
                raise ConfigError([f".env line {n}: cannot be parsed (expected NAME=value)" for n in bad])
            merged = {k: v for k, v in dotenv_values(".env", encoding="utf-8").items() if v is not None}
        except UnicodeDecodeError as exc:
            raise ConfigError([f".env: not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from None
        except OSError as exc:
            raise ConfigError([f".env: cannot be read ({exc.strerror})"]) from None
    merged.update(os.environ)
    return merged


def is_given(name: str) -> bool:
    """Whether name is set to a value in the environment or ./.env, rather than left to its default.

    Raises:
        ConfigError: a line of ./.env cannot be parsed.
    """
    value = environment().get(name)
    return value is not None and value.strip() != ""


@functools.cache
def get_settings() -> Settings:
    """Settings of this process, read once. Only entry points call this."""
    return load_settings(environment())


def iter_known_variables() -> Iterator[str]:
    yield from sorted(KNOWN_VARIABLES)


# Every OPS_* variable load_settings() reads; an unknown OPS_* name is reported as a probable typo.
KNOWN_VARIABLES = frozenset(
    {
        "OPS_BROKER_URL",
        "OPS_DATABASE_URL",
        "OPS_STATE_DATABASE_URL",
        "OPS_VAR_DIR",
        "OPS_METRICS_BIND",
        "OPS_LOG_LEVEL",
        "OPS_LOG_FORMAT",
        "OPS_LONGEST_TASK_S",
        "OPS_RESULT_EXPIRES_S",
        "OPS_SCHEDULE_BACKUP_FULL",
        "OPS_SCHEDULE_BACKUP_ORGS",
        "OPS_SCHEDULE_BACKUP_VERIFY",
        "OPS_SCHEDULE_BACKUP_VERIFY_ORGS",
        "OPS_SCHEDULE_BACKUP_CLEANUP",
        "OPS_SCHEDULE_INCIDENTS_RECONCILE",
        "OPS_SCHEDULE_OPS_CHECK",
        "OPS_BACKUP_STORE",
        "OPS_S3_SSE",
        "OPS_S3_KMS_KEY_ID",
        "OPS_S3_STORAGE_CLASS",
        "OPS_S3_ENDPOINT_URL",
        "OPS_S3_REGION",
        "OPS_S3_ADDRESSING_STYLE",
        "OPS_S3_REQUEST_CHECKSUM",
        "OPS_BACKUP_DUMP_TIMEOUT_S",
        "OPS_BACKUP_LOCK_WAIT_TIMEOUT_S",
        "OPS_BACKUP_ZSTD_LEVEL",
        "OPS_BACKUP_ZSTD_THREADS",
        "OPS_TENANT_TABLES",
        "OPS_TENANT_COLUMN",
        "OPS_TENANT_ID_PATTERN",
        "OPS_BACKUP_RETENTION_DAYS",
        "OPS_BACKUP_KEEP_DAILY",
        "OPS_BACKUP_KEEP_WEEKLY",
        "OPS_BACKUP_KEEP_MONTHLY",
        "OPS_BACKUP_KEEP_MIN",
        "OPS_BACKUP_ORPHAN_GRACE_S",
        "OPS_BACKUP_VERIFY_ORG_SAMPLE",
        "OPS_PG_BIN_DIR",
        "OPS_BACKUP_VERIFY_DATABASE_URL",
        "OPS_RECEIVER_BIND",
        "OPS_RECEIVER_TOKEN",
        "OPS_RECEIVER_BASIC_AUTH",
        "OPS_RECEIVER_ALLOW_NO_AUTH",
        "OPS_RECEIVER_MAX_BODY",
        "OPS_ALERTMANAGER_URL",
        "OPS_RECEIVER_WORKERS",
        "OPS_FLOWER_BIND",
        "OPS_FLOWER_BASIC_AUTH",
        "OPS_EXPORTER_BIND",
        "OPS_EXPORTER_DISK_MOUNTS",
        "OPS_EXPORTER_PING_TIMEOUT_S",
        "OPS_CELERY_EXPORTER_BIND",
        "OPS_PLAYBOOKS",
        "OPS_REMEDIATION_DRY_RUN",
        "OPS_REMEDIATION_ALLOWED_ROOTS",
        "OPS_REMEDIATION_COOLDOWN_S",
        "OPS_REMEDIATION_BUDGET_PER_HOUR",
        "OPS_REMEDIATION_FLAP_THRESHOLD",
        "OPS_REMEDIATION_FLAP_WINDOW_S",
        "OPS_REMEDIATION_LOCK_TTL_S",
        "OPS_REMEDIATION_ACTION_TIMEOUT_S",
        "OPS_REMEDIATION_EXCLUDE_USERS",
        "OPS_REMEDIATION_EXCLUDE_APPLICATIONS",
        "OPS_PAGERDUTY_ROUTING_KEY",
        "OPS_PAGERDUTY_URL",
        "OPS_TICKET_WEBHOOK_URL",
        "OPS_TICKET_WEBHOOK_TOKEN",
        "OPS_SLACK_WEBHOOK_URL",
        "OPS_SMTP_HOST",
        "OPS_SMTP_PORT",
        "OPS_SMTP_USER",
        "OPS_SMTP_PASSWORD",
        "OPS_SMTP_FROM",
        "OPS_SMTP_TO",
        "OPS_SMTP_STARTTLS",
        "OPS_SMTP_CA_FILE",
        "OPS_NOTIFY_TIMEOUT_S",
        "OPS_NOTIFY_ATTEMPTS",
        "OPS_NOTIFY_BACKOFF_S",
    }
)
