"""Baseline: what coexist 0.1.0 installed into the legacy ERP (change log, side tables).

The capture triggers are not here: ``workers.migrate`` replaces them after every
upgrade.  A 0.1.0 legacy database (no revision) is stamped with this revision, so this
file must keep describing 0.1.0 exactly: change the schema in a new revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("CHGLOG",
    sa.Column("SEQ", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("TABNAME", sa.String(length=10), nullable=False),
    sa.Column("CHGKEY", sa.String(length=120), nullable=False),
    sa.Column("OP", sa.String(length=1), nullable=False),
    sa.Column("CHGTS", sa.BigInteger(), nullable=False),
    sa.Column("LCHGUSER", sa.String(length=10), nullable=False),
    sa.PrimaryKeyConstraint("SEQ"),
    sqlite_autoincrement=True
    )
    op.create_table("XCOEXIDM",
    sa.Column("IDEMKEY", sa.String(length=200), nullable=False),
    sa.Column("FPRINT", sa.String(length=64), nullable=False),
    sa.Column("DOMAIN", sa.String(length=12), nullable=False),
    sa.Column("RECKEY", sa.String(length=60), nullable=False),
    sa.Column("RESULT", sa.String(length=1), nullable=False),
    sa.Column("SRCVER", sa.BigInteger(), nullable=False),
    sa.Column("CURVER", sa.BigInteger(), nullable=False),
    sa.Column("CRTTS", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("IDEMKEY")
    )
    op.create_index("XCOEXIDM_CRTTS", "XCOEXIDM", ["CRTTS"], unique=False)
    op.create_table("XCOEXTXN",
    sa.Column("WRITER", sa.String(length=10), nullable=False)
    )
    op.create_table("XCOEXVER",
    sa.Column("DOMAIN", sa.String(length=12), nullable=False),
    sa.Column("RECKEY", sa.String(length=60), nullable=False),
    sa.Column("SRCVER", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("DOMAIN", "RECKEY")
    )
    op.create_table("XCOEXWRT",
    sa.Column("WRITER", sa.String(length=10), nullable=False),
    sa.PrimaryKeyConstraint("WRITER")
    )


def downgrade() -> None:
    op.drop_table("XCOEXWRT")
    op.drop_table("XCOEXVER")
    op.drop_table("XCOEXTXN")
    op.drop_table("XCOEXIDM")
    op.drop_table("CHGLOG")
