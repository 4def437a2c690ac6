"""``crm_onboarding.crm_created_at`` and ``completed_at``: when the CRM account was created
and when it showed its customer (linked, or created in the SoR and numbered back), so the
console and ``coexist status`` can show onboarding time (workers/crm/status.py).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.add_column(sa.Column('crm_created_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('completed_at', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('crm_onboarding', schema=None) as batch_op:
        batch_op.drop_column('completed_at')
        batch_op.drop_column('crm_created_at')
