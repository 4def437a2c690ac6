"""The change log numbered by commit order: ``POS`` (the cursor) on both databases and, on
PostgreSQL, ``TXID``, the ``XCOEXPOS`` high-water mark and the ``XCHG_ASSIGN`` numbering
function, so legacy writers no longer serialize on a lock (workers/legacy_erp/capture.py).

The step is ``install_change_log``: it is per dialect (a virtual column on SQLite, columns,
indexes, a table and a function on PostgreSQL), idempotent, and upgrades a change log of the
serialized scheme in place, keeping every consumer's checkpoint valid (existing rows keep SEQ
as their position).  The triggers that write ``TXID`` are replaced after the revisions, as
always.  No downgrade: the serialized scheme's lock is gone with its triggers.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from workers.legacy_erp.capture import install_change_log

    install_change_log(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("the change log cannot go back to the serialized scheme")
