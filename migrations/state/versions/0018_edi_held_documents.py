"""``edi_held`` holds any outbound document that waits for the one of its order it must
follow (an 856 for its order's 855, an 810 for its 856), not only 810s: keyed by
(partner, document type, business key), with the document it waits for.  Rows held by
0016 (810s waiting for their 856) are kept.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

_0016 = sa.table('edi_held', sa.column('partner'), sa.column('invoice_key'),
                 sa.column('order_key'), sa.column('envelope'), sa.column('held_at'),
                 sa.column('release_after'))
_0018 = sa.table('edi_held', sa.column('partner'), sa.column('doc_type'),
                 sa.column('business_key'), sa.column('order_key'), sa.column('waits_for'),
                 sa.column('envelope'), sa.column('held_at'), sa.column('release_after'))


def _drop() -> None:
    op.drop_index('ix_edi_held_release', table_name='edi_held')
    op.drop_index('ix_edi_held_order', table_name='edi_held')
    op.drop_table('edi_held')


def _indexes() -> None:
    op.create_index('ix_edi_held_order', 'edi_held', ['partner', 'order_key'], unique=False)
    op.create_index('ix_edi_held_release', 'edi_held', ['release_after'], unique=False)


def upgrade() -> None:
    # The primary key changes, so the table is made again (a held row is a handful of
    # bytes and there are few: read, recreate, write back, in the migration's transaction).
    bind = op.get_bind()
    rows = [dict(r._mapping) for r in bind.execute(sa.select(_0016))]
    _drop()
    op.create_table('edi_held',
    sa.Column('partner', sa.String(length=40), nullable=False),
    sa.Column('doc_type', sa.String(length=4), nullable=False),
    sa.Column('business_key', sa.String(length=64), nullable=False),
    sa.Column('order_key', sa.String(length=64), nullable=False),
    sa.Column('waits_for', sa.String(length=4), nullable=False),
    sa.Column('envelope', sa.Text(), nullable=False),
    sa.Column('held_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('release_after', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('partner', 'doc_type', 'business_key')
    )
    _indexes()
    if rows:
        bind.execute(_0018.insert(), [{
            'partner': r['partner'], 'doc_type': '810', 'business_key': r['invoice_key'],
            'order_key': r['order_key'], 'waits_for': '856', 'envelope': r['envelope'],
            'held_at': r['held_at'], 'release_after': r['release_after']} for r in rows])


def downgrade() -> None:
    # 0016 knows only 810s held for their 856: those are kept.  A held 856 (waiting for
    # its 855) has no place there, and its event was acked: refuse rather than lose it.
    bind = op.get_bind()
    held_856 = bind.execute(sa.select(sa.func.count()).select_from(_0018).where(
        _0018.c.doc_type != '810')).scalar_one()
    if held_856:
        raise RuntimeError(f"edi_held holds {held_856} 856(s) waiting for their 855, which "
                           "revision 0016 cannot hold: send them first (coexist edi poll "
                           "once their 855 is out or their hold is over), then downgrade")
    rows = [dict(r._mapping) for r in bind.execute(
        sa.select(_0018).where(_0018.c.doc_type == '810'))]
    _drop()
    op.create_table('edi_held',
    sa.Column('partner', sa.String(length=40), nullable=False),
    sa.Column('invoice_key', sa.String(length=64), nullable=False),
    sa.Column('order_key', sa.String(length=64), nullable=False),
    sa.Column('envelope', sa.Text(), nullable=False),
    sa.Column('held_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('release_after', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('partner', 'invoice_key')
    )
    _indexes()
    if rows:
        bind.execute(_0016.insert(), [{
            'partner': r['partner'], 'invoice_key': r['business_key'],
            'order_key': r['order_key'], 'envelope': r['envelope'], 'held_at': r['held_at'],
            'release_after': r['release_after']} for r in rows])
