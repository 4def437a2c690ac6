"""``crm_onboarding.create_body``: the customer a ``create`` decision asks its SoR to make,
as first sent (canonical JSON), so a create asked again after a crash sends the same body
under the same idempotency key, whatever the CRM account says by then (an edit between
the crash and the restart made the cloud answer 422 ``IdempotencyKeyReused``); and
``held_at``: when the CRM consumer last held a delivery of the customer such a create may
have made while its number is pending (``coexist status``).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.add_column(sa.Column('create_body', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('held_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.drop_column('held_at')
        batch_op.drop_column('create_body')
