"""Initial state schema: incidents, their audit trail, alert fetches, backup verifications.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("alertname", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("alert_status", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("annotations", sa.JSON, nullable=False),
        sa.Column("generator_url", sa.Text, nullable=True),
        sa.Column("ends_at", TS, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("enqueued_at", TS, nullable=True),
        sa.Column("acknowledged_by", sa.String(200), nullable=True),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("postmortem", sa.Text, nullable=True),
        sa.UniqueConstraint("fingerprint", "starts_at", name="uq_incidents_episode"),
    )
    op.create_index("ix_incidents_status", "incidents", ["status"])
    op.create_index("ix_incidents_pending", "incidents", ["enqueued_at"])
    op.create_table(
        "incident_actions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("incident_id", Id, sa.ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer, nullable=True),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_incident_actions_incident", "incident_actions", ["incident_id"])
    op.create_table(
        "alert_fetches",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("receiver", sa.String(200), nullable=False),
        sa.Column("group_labels", sa.JSON, nullable=False),
        sa.Column("truncated_alerts", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("fetched_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_alert_fetches_pending", "alert_fetches", ["fetched_at"])
    op.create_table(
        "remediation_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("incident_id", Id, sa.ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("playbook", sa.String(200), nullable=False),
        sa.Column("target", sa.String(500), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.UniqueConstraint("incident_id", name="uq_remediation_runs_incident"),
    )
    op.create_table(
        "backup_verifications",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("backup_id", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("database", sa.String(200), nullable=False),
        sa.Column("organization_id", sa.String(200), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("first_mismatch", sa.Text, nullable=True),
        sa.Column("duration_s", sa.Float, nullable=False),
    )
    op.create_index("ix_backup_verifications_backup", "backup_verifications", ["backup_id"])


def downgrade() -> None:
    op.drop_table("backup_verifications")
    op.drop_table("alert_fetches")
    op.drop_table("remediation_runs")
    op.drop_table("incident_actions")
    op.drop_table("incidents")
