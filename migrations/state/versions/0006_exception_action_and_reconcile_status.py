"""Who archived or replayed an exception record, when and why (``exception_action``,
bus/exception_store.py), and ``reconcile_run.status`` wide enough for ``interrupted``
(workers/reconcile/store.py).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('exception_action',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('record_id', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('exception_action', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exception_action_record_id'), ['record_id'], unique=False)

    with op.batch_alter_table('reconcile_run', schema=None) as batch_op:
        batch_op.alter_column('status',
               existing_type=sa.VARCHAR(length=10),
               type_=sa.String(length=16),
               existing_nullable=False)



def downgrade() -> None:
    with op.batch_alter_table('reconcile_run', schema=None) as batch_op:
        batch_op.alter_column('status',
               existing_type=sa.String(length=16),
               type_=sa.VARCHAR(length=10),
               existing_nullable=False)

    with op.batch_alter_table('exception_action', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exception_action_record_id'))

    op.drop_table('exception_action')
