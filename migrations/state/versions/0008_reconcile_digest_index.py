"""Digest indexes of both ERPs for reconciliation (workers/reconcile/index.py):
``reconcile_index`` (one digest per record and side), ``reconcile_bucket`` (the bucket
sums kept incrementally) and ``reconcile_index_side`` (when each side was rebuilt, and
its writers' lock).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reconcile_bucket',
    sa.Column('domain', sa.String(length=20), nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('unknown', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'side', 'bucket')
    )
    op.create_table('reconcile_index',
    sa.Column('domain', sa.String(length=20), nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('digest', sa.BigInteger(), nullable=True),
    sa.Column('nk', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('domain', 'side', 'key')
    )
    op.create_index('ix_reconcile_index_bucket', 'reconcile_index',
                    ['domain', 'side', 'bucket'], unique=False)
    op.create_index('ix_reconcile_index_nk', 'reconcile_index', ['domain', 'side', 'nk'],
                    unique=False)
    op.create_index('ix_reconcile_index_key', 'reconcile_index', ['domain', 'key'],
                    unique=False)
    op.create_table('reconcile_index_side',
    sa.Column('domain', sa.String(length=20), nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('domain', 'side')
    )


def downgrade() -> None:
    op.drop_table('reconcile_index_side')
    op.drop_index('ix_reconcile_index_key', table_name='reconcile_index')
    op.drop_index('ix_reconcile_index_nk', table_name='reconcile_index')
    op.drop_index('ix_reconcile_index_bucket', table_name='reconcile_index')
    op.drop_table('reconcile_index')
    op.drop_table('reconcile_bucket')
