"""API and portal: Idempotency-Key store and order numbers (workers/api/idempotency.py),
webhook endpoints with secrets and audit (workers/portal/endpoints.py), deliveries, attempts
and per-object state (workers/portal/store.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_idempotency',
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('idem_key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('order_key', sa.String(length=40), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('correlation_id', sa.String(length=128), nullable=False),
    sa.Column('command', sa.Text(), nullable=True),
    sa.Column('response_status', sa.Integer(), nullable=True),
    sa.Column('response_body', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account', 'idem_key')
    )
    with op.batch_alter_table('api_idempotency', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_idempotency_correlation_id'), ['correlation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_idempotency_expires_at'), ['expires_at'], unique=False)

    op.create_table('api_sequence',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('portal_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('attempt_no', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('portal_attempt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_portal_attempt_delivery_id'), ['delivery_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_portal_attempt_endpoint_id'), ['endpoint_id'], unique=False)

    op.create_table('portal_delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('webhook_id', sa.String(length=64), nullable=False),
    sa.Column('event_type', sa.String(length=40), nullable=False),
    sa.Column('domain', sa.String(length=32), nullable=False),
    sa.Column('object_key', sa.String(length=256), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('correlation_id', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('endpoint_id', 'webhook_id', name='uq_portal_delivery_message')
    )
    with op.batch_alter_table('portal_delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_portal_delivery_correlation_id'), ['correlation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_portal_delivery_endpoint_id'), ['endpoint_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_portal_delivery_next_attempt_at'), ['next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_portal_delivery_status'), ['status'], unique=False)

    op.create_table('portal_endpoint',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_key', sa.String(length=40), nullable=False),
    sa.Column('customers', sa.Text(), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('event_types', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('disabled_reason', sa.String(length=2000), nullable=True),
    sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('portal_endpoint', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_portal_endpoint_customer_key'), ['customer_key'], unique=False)

    op.create_table('portal_endpoint_audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('portal_endpoint_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_portal_endpoint_audit_endpoint_id'), ['endpoint_id'], unique=False)

    op.create_table('portal_endpoint_secret',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('portal_endpoint_secret', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_portal_endpoint_secret_endpoint_id'), ['endpoint_id'], unique=False)

    op.create_table('portal_object_state',
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('event_type', sa.String(length=40), nullable=False),
    sa.Column('object_key', sa.String(length=256), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('endpoint_id', 'event_type', 'object_key')
    )


def downgrade() -> None:
    op.drop_table('portal_object_state')
    with op.batch_alter_table('portal_endpoint_secret', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_portal_endpoint_secret_endpoint_id'))

    op.drop_table('portal_endpoint_secret')
    with op.batch_alter_table('portal_endpoint_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_portal_endpoint_audit_endpoint_id'))

    op.drop_table('portal_endpoint_audit')
    with op.batch_alter_table('portal_endpoint', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_portal_endpoint_customer_key'))

    op.drop_table('portal_endpoint')
    with op.batch_alter_table('portal_delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_portal_delivery_status'))
        batch_op.drop_index(batch_op.f('ix_portal_delivery_next_attempt_at'))
        batch_op.drop_index(batch_op.f('ix_portal_delivery_endpoint_id'))
        batch_op.drop_index(batch_op.f('ix_portal_delivery_correlation_id'))

    op.drop_table('portal_delivery')
    with op.batch_alter_table('portal_attempt', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_portal_attempt_endpoint_id'))
        batch_op.drop_index(batch_op.f('ix_portal_attempt_delivery_id'))

    op.drop_table('portal_attempt')
    op.drop_table('api_sequence')
    with op.batch_alter_table('api_idempotency', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_idempotency_expires_at'))
        batch_op.drop_index(batch_op.f('ix_api_idempotency_correlation_id'))

    op.drop_table('api_idempotency')
