"""``api_inquiry``: sampled inquiry calls of the governed API for ``coexist trace``
(workers/api/trace.py), bounded by a per-process rate cap and a retention window.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_inquiry',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
              nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('domain', sa.String(length=20), nullable=False),
    sa.Column('object_key', sa.String(length=80), nullable=False),
    sa.Column('consumer', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('path', sa.String(length=400), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('answered_by', sa.Text(), nullable=False),
    sa.Column('cached', sa.Boolean(), nullable=False),
    sa.Column('stale', sa.Boolean(), nullable=False),
    sa.Column('age_s', sa.Float(), nullable=False),
    sa.Column('correlation_id', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('api_inquiry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_inquiry_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_inquiry_object_key'), ['object_key'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_api_inquiry_correlation_id'), ['correlation_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('api_inquiry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_inquiry_correlation_id'))
        batch_op.drop_index(batch_op.f('ix_api_inquiry_object_key'))
        batch_op.drop_index(batch_op.f('ix_api_inquiry_at'))
    op.drop_table('api_inquiry')
