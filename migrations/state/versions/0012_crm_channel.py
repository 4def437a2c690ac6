"""``crm_channel``: the CRM channel's pause (until when, why) and the API budget it last
saw (workers/crm/state.py), written by its consumers and poller, read by ``coexist status``;
``crm_onboarding.allocated`` 64-bit (the numbers coexist allocates from 9000000001 overflowed
PostgreSQL's ``integer``).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('crm_channel',
    sa.Column('name', sa.String(length=20), nullable=False),
    sa.Column('paused_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pause_reason', sa.String(length=500), nullable=False),
    sa.Column('budget_used', sa.Integer(), nullable=True),
    sa.Column('budget_max', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.alter_column('allocated', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.alter_column('allocated', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=True)
    op.drop_table('crm_channel')
