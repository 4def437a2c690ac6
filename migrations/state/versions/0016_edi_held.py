"""``edi_held``: an 810 waiting for the 856 of its order, held durably in the state
database (released by the 856's batch or by the poller once the 856 is out or the hold
is over) instead of by bus retries that may give up before the hold ends.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('edi_held',
    sa.Column('partner', sa.String(length=40), nullable=False),
    sa.Column('invoice_key', sa.String(length=64), nullable=False),
    sa.Column('order_key', sa.String(length=64), nullable=False),
    sa.Column('envelope', sa.Text(), nullable=False),
    sa.Column('held_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('release_after', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('partner', 'invoice_key')
    )
    op.create_index('ix_edi_held_order', 'edi_held', ['partner', 'order_key'], unique=False)
    op.create_index('ix_edi_held_release', 'edi_held', ['release_after'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_edi_held_release', table_name='edi_held')
    op.drop_index('ix_edi_held_order', table_name='edi_held')
    op.drop_table('edi_held')
