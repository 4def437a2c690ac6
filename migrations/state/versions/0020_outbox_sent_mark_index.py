"""The outbox's sent mark writes one index entry fewer per row: ``ix_outbox_sent_at``
(only ``purge_sent`` used it) becomes ``ix_outbox_created_at``, BRIN on PostgreSQL.

An outbox row's sent mark sets ``sent_at``, a column the unsent partial indexes name in
their predicate, so PostgreSQL cannot update it in place (HOT): the new row version gets
an entry in every index whose predicate it meets.  ``sent_at``'s own b-tree was one of
them, and every INSERT wrote a NULL entry into it as well.  ``created_at`` is written
once; purging bounds it (a row is created before it is sent).

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_outbox_sent_at', table_name='outbox')
    op.create_index('ix_outbox_created_at', 'outbox', ['created_at'], unique=False,
                    postgresql_using='brin')


def downgrade() -> None:
    op.drop_index('ix_outbox_created_at', table_name='outbox')
    op.create_index('ix_outbox_sent_at', 'outbox', ['sent_at'], unique=False)
