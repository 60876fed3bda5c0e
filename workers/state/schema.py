"""The state database's tables (SQLAlchemy Core): incidents, their audit trail, backup verifications."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

# One row per alert episode: (fingerprint, starts_at). Repeated deliveries update, never insert.
incidents = Table(
    "incidents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("alertname", String(200), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # active | acknowledged | resolved
    Column("alert_status", String(16), nullable=False),  # firing | resolved (as Alertmanager last said)
    Column("labels", JSON, nullable=False),
    Column("annotations", JSON, nullable=False),
    Column("generator_url", Text, nullable=True),
    Column("ends_at", DateTime(timezone=True), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=True),  # NULL: reconcile must enqueue it
    Column("acknowledged_by", String(200), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("postmortem", Text, nullable=True),
    UniqueConstraint("fingerprint", "starts_at", name="uq_incidents_episode"),
)
Index("ix_incidents_status", incidents.c.status)
Index("ix_incidents_pending", incidents.c.enqueued_at)

# The audit trail: every attempted action, skip and notification, in order.
incident_actions = Table(
    "incident_actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("incident_id", Id, ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False),
    Column("step", Integer, nullable=True),  # position in the playbook; NULL for notifications etc.
    Column("action", String(100), nullable=False),
    Column("params", JSON, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("detail", JSON, nullable=True),
    Column("error", Text, nullable=True),
)
Index("ix_incident_actions_incident", incident_actions.c.incident_id)

# A notification that said Alertmanager left alerts out (truncatedAlerts > 0): reconcile reads the
# whole group back from Alertmanager's API and records what was missing.
alert_fetches = Table(
    "alert_fetches",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("receiver", String(200), nullable=False),
    Column("group_labels", JSON, nullable=False),
    Column("truncated_alerts", Integer, nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=True),  # NULL: reconcile must fetch
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
)
Index("ix_alert_fetches_pending", alert_fetches.c.fetched_at)

# One playbook run per episode: redelivery of incidents.handle resumes or finds it finished.
remediation_runs = Table(
    "remediation_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("incident_id", Id, ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False),
    Column("playbook", String(200), nullable=False),
    Column("target", String(500), nullable=False),
    Column("status", String(32), nullable=False),  # running | completed | failed | escalated | skipped_* ...
    Column("attempts", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("incident_id", name="uq_remediation_runs_incident"),
)

# One row per verification attempt of a backup (restore drill).
backup_verifications = Table(
    "backup_verifications",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("backup_id", String(100), nullable=False),
    Column("kind", String(8), nullable=False),  # full | org
    Column("database", String(200), nullable=False),
    Column("organization_id", String(200), nullable=True),  # org backups
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(16), nullable=False),  # ok | failed
    Column("reason", String(64), nullable=True),
    Column("first_mismatch", Text, nullable=True),
    Column("duration_s", Float, nullable=False),
)
Index("ix_backup_verifications_backup", backup_verifications.c.backup_id)
