"""An index on ``edi_interchange (partner, direction, digest)``: every inbound interchange is
looked up by its bytes' digest (our own earlier run of the same file after a crash), which
scanned the whole table before (workers/edi/handlers.py).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('edi_interchange', schema=None) as batch_op:
        batch_op.create_index('ix_edi_interchange_digest', ['partner', 'direction', 'digest'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('edi_interchange', schema=None) as batch_op:
        batch_op.drop_index('ix_edi_interchange_digest')
