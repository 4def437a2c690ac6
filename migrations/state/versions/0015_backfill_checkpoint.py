"""``backfill_checkpoint``: how far a streaming backfill (``reconcile --repair --yes``) got,
per domain and direction (target ERP), so an interrupted run resumes behind the last key
it committed (workers/reconcile/backfill.py).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('backfill_checkpoint',
    sa.Column('domain', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=16), nullable=False),
    sa.Column('last_key', sa.String(length=256), nullable=False),
    sa.Column('pending_hi', sa.String(length=256), nullable=True),
    sa.Column('written', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'target')
    )


def downgrade() -> None:
    op.drop_table('backfill_checkpoint')
