"""``CHGLOG_KEY`` on ``CHGLOG (CHGKEY, SEQ)``: a record's latest change by key, which the
writers read before every routed write to know who made the record's current state
(workers/legacy_erp/adapter.py, ``LegacyErp.get_current``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute('CREATE INDEX IF NOT EXISTS "CHGLOG_KEY" ON "CHGLOG" ("CHGKEY", "SEQ")')


def downgrade() -> None:
    op.execute('DROP INDEX IF EXISTS "CHGLOG_KEY"')
