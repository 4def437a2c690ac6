"""CRM: onboarding decisions linking CRM accounts to customers (workers/crm/state.py).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('crm_onboarding',
    sa.Column('crm_account_id', sa.String(length=18), nullable=False),
    sa.Column('customer_key', sa.String(length=40), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('allocated', sa.Integer(), nullable=True),
    sa.Column('name_key', sa.String(length=200), nullable=False),
    sa.Column('postal_keys', sa.String(length=200), nullable=False),
    sa.Column('tax_key', sa.String(length=40), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('crm_account_id'),
    sa.UniqueConstraint('allocated')
    )
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_crm_onboarding_customer_key'), ['customer_key'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_crm_onboarding_customer_key'))

    op.drop_table('crm_onboarding')
