"""``repair_wait``: repairs waiting for the SoR to hold the record's last routed version
(``handlers.SorBehind``), shown by ``coexist status`` / ``cutover status`` and waited for
by ``cutover set`` (workers/router/waits.py).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('repair_wait',
    sa.Column('message_id', sa.String(length=128), nullable=False),
    sa.Column('domain', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=256), nullable=False),
    sa.Column('target', sa.String(length=16), nullable=False),
    sa.Column('sor', sa.String(length=16), nullable=False),
    sa.Column('waits_for', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('message_id')
    )
    op.create_index(op.f('ix_repair_wait_domain'), 'repair_wait', ['domain'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_repair_wait_domain'), table_name='repair_wait')
    op.drop_table('repair_wait')
