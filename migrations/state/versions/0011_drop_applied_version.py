"""Drop ``applied_version``: ``bus.monotonic`` ("apply only when newer" in coexist's state)
had no production caller; writers check versions against what the target holds
(``workers.router.handlers.apply_write``), channel consumers in their own stores.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("applied_version")


def downgrade() -> None:
    op.create_table("applied_version",
    sa.Column("target", sa.String(length=100), nullable=False),
    sa.Column("key", sa.String(length=256), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("target", "key")
    )
