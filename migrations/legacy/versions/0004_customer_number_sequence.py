"""The legacy ERP's customer number sequence (``SYSCTL``, its control record) and coexist's
record of the customers numbered creates made (``XCOEXNUM``), see
workers/legacy_erp/numbering.py.  ``SYSCTL`` starts one above the highest customer number
in use (or at the first number of an empty ERP).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from sqlalchemy import func, inspect, select

    from coexistence.legacy.models import CUSTMAST
    from workers.legacy_erp.numbering import (
        CUSTOMER_SEQUENCE,
        FIRST_CUSTOMER_NUMBER,
        NUMBERING_METADATA,
        SYSCTL,
    )

    conn = op.get_bind()
    NUMBERING_METADATA.create_all(conn)
    if conn.execute(select(SYSCTL.c.NEXTNO).where(SYSCTL.c.CTLKEY == CUSTOMER_SEQUENCE)
                    ).first() is not None:
        return
    top = None
    if inspect(conn).has_table("CUSTMAST"):
        top = conn.execute(select(func.max(CUSTMAST.__table__.c.CUSTNO))).scalar()
    used = int(top) if top and str(top).strip().isdigit() else FIRST_CUSTOMER_NUMBER - 1
    conn.execute(SYSCTL.insert().values(CTLKEY=CUSTOMER_SEQUENCE,
                                        NEXTNO=max(used + 1, FIRST_CUSTOMER_NUMBER)))


def downgrade() -> None:
    op.execute('DROP TABLE IF EXISTS "XCOEXNUM"')
    op.execute('DROP TABLE IF EXISTS "SYSCTL"')
