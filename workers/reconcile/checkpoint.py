"""Durable checkpoints of the streaming backfill (``workers.reconcile.backfill``).

One row per (domain, target ERP): every write of the backfill into ``target``
for keys up to ``last_key`` is committed, so a run that was interrupted (Ctrl-C,
kill -9) resumes behind it.  ``pending_hi`` is set, before a batch is written
into the target, to the batch's last key and cleared when the batch's state
(observations, xref links, checkpoint) commits: keys in
``(last_key, pending_hi]`` may hold a write whose state was not committed, so
the resumed run links the records it finds equal there instead of skipping them.
A finished backfill of a domain deletes its rows (the next run starts afresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field

from workers.db import StateTable


class BackfillCheckpoint(StateTable, table=True):
    __tablename__ = "backfill_checkpoint"

    domain: str = Field(primary_key=True, max_length=32)
    #: The ERP written into ("cloud" or "legacy").
    target: str = Field(primary_key=True, max_length=16)
    #: Every backfill write into ``target`` for keys <= this one is committed.
    last_key: str = Field(max_length=256)
    #: A batch up to this key is being written (its state not committed yet).
    pending_hi: str | None = Field(default=None, max_length=256)
    #: Records written into ``target`` by the interrupted run(s) so far.
    written: int = Field(default=0, sa_type=BigInteger)
    run_id: str = Field(max_length=64)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


_T = BackfillCheckpoint.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Mark:
    last_key: str
    pending_hi: str | None
    written: int
    run_id: str


def load(conn, domain: str) -> dict[str, Mark]:
    """The checkpoints of ``domain`` by target ERP (empty: start from the first key)."""
    rows = conn.execute(select(_T).where(_T.c.domain == domain))
    return {r.target: Mark(r.last_key, r.pending_hi, int(r.written), r.run_id) for r in rows}


def put(conn, domain: str, target: str, *, last_key: str, pending_hi: str | None,
        written: int, run_id: str) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    values = {"domain": domain, "target": target, "last_key": last_key,
              "pending_hi": pending_hi, "written": written, "run_id": run_id,
              "updated_at": datetime.now(UTC)}
    stmt = insert(_T).values(values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[_T.c.domain, _T.c.target],
        set_={k: stmt.excluded[k] for k in values if k not in ("domain", "target")}))


def clear(conn, domain: str) -> None:
    conn.execute(delete(_T).where(_T.c.domain == domain))
