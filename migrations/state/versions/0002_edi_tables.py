"""EDI: interchanges, documents, control-number counters, events (workers/edi/store.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('edi_counter',
    sa.Column('partner', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('last', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('partner', 'kind')
    )
    op.create_table('edi_document',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('partner', sa.String(length=40), nullable=False),
    sa.Column('direction', sa.String(length=3), nullable=False),
    sa.Column('doc_type', sa.String(length=4), nullable=False),
    sa.Column('interchange_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('gs06', sa.BigInteger(), nullable=False),
    sa.Column('st02', sa.String(length=9), nullable=False),
    sa.Column('business_domain', sa.String(length=16), nullable=True),
    sa.Column('business_key', sa.String(length=64), nullable=True),
    sa.Column('order_key', sa.String(length=64), nullable=True),
    sa.Column('po_number', sa.String(length=30), nullable=True),
    sa.Column('correlation_id', sa.String(length=128), nullable=True),
    sa.Column('ack_status', sa.String(length=8), nullable=False),
    sa.Column('ack_note', sa.Text(), nullable=True),
    sa.Column('ack_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('edi_document', schema=None) as batch_op:
        batch_op.create_index('ix_edi_document_ack', ['partner', 'direction', 'gs06', 'st02'], unique=False)
        batch_op.create_index('ix_edi_document_business', ['partner', 'direction', 'doc_type', 'business_key'], unique=True, postgresql_where=sa.text("direction = 'out' AND business_key IS NOT NULL"), sqlite_where=sa.text("direction = 'out' AND business_key IS NOT NULL"))
        batch_op.create_index(batch_op.f('ix_edi_document_correlation_id'), ['correlation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_edi_document_interchange_id'), ['interchange_id'], unique=False)
        batch_op.create_index('ix_edi_document_order', ['order_key'], unique=False)
        batch_op.create_index('ix_edi_document_po', ['partner', 'doc_type', 'po_number'], unique=False)

    op.create_table('edi_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('interchange_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('edi_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_edi_event_interchange_id'), ['interchange_id'], unique=False)

    op.create_table('edi_interchange',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('partner', sa.String(length=40), nullable=False),
    sa.Column('direction', sa.String(length=3), nullable=False),
    sa.Column('sender', sa.String(length=20), nullable=False),
    sa.Column('isa13', sa.BigInteger(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=40), nullable=True),
    sa.Column('problems', sa.Text(), nullable=True),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('file_name', sa.String(length=300), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('answers', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('ta1', sa.String(length=8), nullable=True),
    sa.Column('resends', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('partner', 'direction', 'dedupe_key', name='uq_edi_interchange_dedupe')
    )
    with op.batch_alter_table('edi_interchange', schema=None) as batch_op:
        batch_op.create_index('ix_edi_interchange_status', ['direction', 'status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('edi_interchange', schema=None) as batch_op:
        batch_op.drop_index('ix_edi_interchange_status')

    op.drop_table('edi_interchange')
    with op.batch_alter_table('edi_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edi_event_interchange_id'))

    op.drop_table('edi_event')
    with op.batch_alter_table('edi_document', schema=None) as batch_op:
        batch_op.drop_index('ix_edi_document_po')
        batch_op.drop_index('ix_edi_document_order')
        batch_op.drop_index(batch_op.f('ix_edi_document_interchange_id'))
        batch_op.drop_index(batch_op.f('ix_edi_document_correlation_id'))
        batch_op.drop_index('ix_edi_document_business', postgresql_where=sa.text("direction = 'out' AND business_key IS NOT NULL"), sqlite_where=sa.text("direction = 'out' AND business_key IS NOT NULL"))
        batch_op.drop_index('ix_edi_document_ack')

    op.drop_table('edi_document')
    op.drop_table('edi_counter')
