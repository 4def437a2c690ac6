"""Baseline: the state schema as coexist 0.1.0 created it (bus and state tables).

A 0.1.0 database (made by ``create_all``, no revision) is stamped with this revision
instead of running it (``workers.migrate``), so this file must keep describing 0.1.0
exactly: change the schema in a new revision, never here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("applied_version",
    sa.Column("target", sa.String(length=100), nullable=False),
    sa.Column("key", sa.String(length=256), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("target", "key")
    )
    op.create_table("exception_record",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("message_id", sa.String(length=128), nullable=True),
    sa.Column("queue_name", sa.String(length=200), nullable=False),
    sa.Column("actor_name", sa.String(length=200), nullable=False),
    sa.Column("domain", sa.String(length=64), nullable=True),
    sa.Column("key", sa.String(length=256), nullable=True),
    sa.Column("correlation_id", sa.String(length=128), nullable=True),
    sa.Column("failure_class", sa.String(length=16), nullable=False),
    sa.Column("error_type", sa.String(length=200), nullable=False),
    sa.Column("error_message", sa.Text(), nullable=False),
    sa.Column("call_site", sa.String(length=400), nullable=False),
    sa.Column("group_key", sa.String(length=16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("envelope", sa.Text(), nullable=True),
    sa.Column("raw", sa.LargeBinary(), nullable=True),
    sa.Column("message", sa.Text(), nullable=True),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("replay_count", sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("message_id", "actor_name", name="uq_exception_record_message")
    )
    op.create_index(op.f("ix_exception_record_correlation_id"), "exception_record", ["correlation_id"], unique=False)
    op.create_index(op.f("ix_exception_record_domain"), "exception_record", ["domain"], unique=False)
    op.create_index(op.f("ix_exception_record_group_key"), "exception_record", ["group_key"], unique=False)
    op.create_index(op.f("ix_exception_record_status"), "exception_record", ["status"], unique=False)
    op.create_table("inbox",
    sa.Column("consumer", sa.String(length=200), nullable=False),
    sa.Column("message_id", sa.String(length=128), nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("consumer", "message_id")
    )
    op.create_index(op.f("ix_inbox_processed_at"), "inbox", ["processed_at"], unique=False)
    op.create_table("outbox",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("message_id", sa.String(length=128), nullable=False),
    sa.Column("queue_name", sa.String(length=200), nullable=False),
    sa.Column("actor_name", sa.String(length=200), nullable=False),
    sa.Column("domain", sa.String(length=64), nullable=False),
    sa.Column("partition_key", sa.String(length=256), nullable=False),
    sa.Column("correlation_id", sa.String(length=128), nullable=True),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("quarantined_until", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("message_id")
    )
    op.create_index(op.f("ix_outbox_correlation_id"), "outbox", ["correlation_id"], unique=False)
    op.create_index("ix_outbox_sent_at", "outbox", ["sent_at"], unique=False)
    op.create_index("ix_outbox_unsent", "outbox", ["id"], unique=False, postgresql_where=sa.text("sent_at IS NULL"), sqlite_where=sa.text("sent_at IS NULL"))
    op.create_index("ix_outbox_unsent_key", "outbox", ["partition_key", "id"], unique=False, postgresql_where=sa.text("sent_at IS NULL"), sqlite_where=sa.text("sent_at IS NULL"))
    op.create_table("outbox_lease",
    sa.Column("name", sa.String(length=64), nullable=False),
    sa.Column("holder", sa.String(length=200), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("name")
    )
    op.create_table("cdc_checkpoint",
    sa.Column("feed", sa.String(length=100), nullable=False),
    sa.Column("cursor", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("feed")
    )
    op.create_table("flag_audit",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("domain", sa.String(length=40), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=False),
    sa.Column("reason", sa.String(length=2000), nullable=False),
    sa.Column("action", sa.String(length=20), nullable=False),
    sa.Column("forced", sa.Boolean(), nullable=False),
    sa.Column("overridden", sa.String(), nullable=False),
    sa.Column("from_mode", sa.String(length=20), nullable=False),
    sa.Column("to_mode", sa.String(length=20), nullable=False),
    sa.Column("from_state", sa.String(), nullable=False),
    sa.Column("to_state", sa.String(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("domain", "version", name="uq_flag_audit_domain_version")
    )
    op.create_index(op.f("ix_flag_audit_domain"), "flag_audit", ["domain"], unique=False)
    op.create_table("reconcile_finding",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("run_id", sa.String(length=36), nullable=False),
    sa.Column("domain", sa.String(length=20), nullable=False),
    sa.Column("kind", sa.String(length=20), nullable=False),
    sa.Column("key", sa.String(length=80), nullable=False),
    sa.Column("field", sa.String(length=200), nullable=True),
    sa.Column("data", sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_reconcile_finding_run_id"), "reconcile_finding", ["run_id"], unique=False)
    op.create_table("reconcile_run",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("domain", sa.String(length=20), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("status", sa.String(length=10), nullable=False),
    sa.Column("mode", sa.String(length=16), nullable=False),
    sa.Column("rows_legacy", sa.Integer(), nullable=False),
    sa.Column("rows_cloud", sa.Integer(), nullable=False),
    sa.Column("exclusive_legacy", sa.Integer(), nullable=False),
    sa.Column("exclusive_cloud", sa.Integer(), nullable=False),
    sa.Column("mismatched", sa.Integer(), nullable=False),
    sa.Column("unchanged", sa.Integer(), nullable=False),
    sa.Column("duplicates", sa.Integer(), nullable=False),
    sa.Column("orphans", sa.Integer(), nullable=False),
    sa.Column("findings", sa.Integer(), nullable=False),
    sa.Column("drift_pct", sa.Float(), nullable=True),
    sa.Column("max_drift_pct", sa.Float(), nullable=True),
    sa.Column("tolerances", sa.Text(), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_index(op.f("ix_reconcile_run_domain"), "reconcile_run", ["domain"], unique=False)
    op.create_index(op.f("ix_reconcile_run_finished_at"), "reconcile_run", ["finished_at"], unique=False)
    op.create_table("record_route",
    sa.Column("domain", sa.String(length=32), nullable=False),
    sa.Column("key", sa.String(length=256), nullable=False),
    sa.Column("pinned_sor", sa.String(length=16), nullable=True),
    sa.Column("last_version", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("domain", "key")
    )
    op.create_table("xref",
    sa.Column("domain", sa.String(length=20), nullable=False),
    sa.Column("canonical_key", sa.String(length=40).with_variant(sa.String(length=40, collation="C"), "postgresql"), nullable=False),
    sa.Column("legacy_key", sa.String(length=80).with_variant(sa.String(length=80, collation="C"), "postgresql"), nullable=True),
    sa.Column("cloud_id", sa.String(length=80).with_variant(sa.String(length=80, collation="C"), "postgresql"), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("domain", "canonical_key"),
    sa.UniqueConstraint("domain", "cloud_id", name="uq_xref_cloud_id"),
    sa.UniqueConstraint("domain", "legacy_key", name="uq_xref_legacy_key")
    )


def downgrade() -> None:
    op.drop_table("xref")
    op.drop_table("record_route")
    op.drop_table("reconcile_run")
    op.drop_table("reconcile_finding")
    op.drop_table("flag_audit")
    op.drop_table("cdc_checkpoint")
    op.drop_table("outbox_lease")
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_table("exception_record")
    op.drop_table("applied_version")
