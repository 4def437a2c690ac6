"""Routers: what coexist last observed of each ERP record, who made it and how capture
classified it (workers/router/observed.py); the writers' condition reads it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('observed_revision',
    sa.Column('system', sa.String(length=16), nullable=False),
    sa.Column('domain', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=256), nullable=False),
    sa.Column('revision', sa.String(length=128), nullable=False),
    sa.Column('writer', sa.String(length=64), nullable=False),
    sa.Column('classification', sa.String(length=16), nullable=False),
    sa.Column('flag_version', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('system', 'domain', 'key')
    )


def downgrade() -> None:
    op.drop_table('observed_revision')
