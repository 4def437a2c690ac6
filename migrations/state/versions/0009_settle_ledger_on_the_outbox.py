"""The settle ledger on the outbox (bus/ledger.py): each row's flag version, and when and
how a consumer finished with its message, so a cutover switch waits for what the broker
holds, not only for unsent rows.

Rows sent before this revision are marked settled (outcome ``before_ledger``): whether
their consumer finished is not known, and leaving them open would hold every switch until
its wait times out.  Upgrade with the write queues drained (``coexist status``).  Unsent
rows get the flag version their envelope carries and stay unsettled.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('flag_version', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('outcome', sa.String(length=16), nullable=True))
    bind = op.get_bind()
    op.execute("UPDATE outbox SET settled_at = sent_at, outcome = 'before_ledger' "
               "WHERE sent_at IS NOT NULL")
    if bind.dialect.name == 'postgresql':
        op.execute("UPDATE outbox SET flag_version = "
                   "COALESCE((payload::json ->> 'flag_version')::bigint, 0) "
                   "WHERE sent_at IS NULL")
    else:
        op.execute("UPDATE outbox SET flag_version = "
                   "COALESCE(json_extract(payload, '$.flag_version'), 0) "
                   "WHERE sent_at IS NULL")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_unsettled', ['domain', 'flag_version'], unique=False, postgresql_where=sa.text('settled_at IS NULL'), sqlite_where=sa.text('settled_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_unsettled', postgresql_where=sa.text('settled_at IS NULL'), sqlite_where=sa.text('settled_at IS NULL'))
        batch_op.drop_column('outcome')
        batch_op.drop_column('settled_at')
        batch_op.drop_column('flag_version')
