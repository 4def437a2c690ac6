"""Repairs waiting for the SoR (``handlers.SorBehind``), so that an operator sees them.

A repair reads the SoR only once the SoR holds the record's last routed version; until
then the writer raises ``SorBehind`` and the retry middleware retries it with backoff
(about 36-72 min in all), after which it is recorded as a ``technical`` exception.
``repair_wait`` keeps one row per waiting repair message: written by the writer just
before it raises ``SorBehind`` (first wait, latest wait, attempts, the version waited
for) and deleted when the repair gets past the wait (applied, stale, or decided).  A row
whose message the exception store holds is a repair that gave up waiting (``recorded``).

``coexist status`` and ``cutover status`` show the count and the oldest wait per domain;
``cutover set`` / ``rollback`` wait for them as in-flight work (``workers.flags.facts``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, and_, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field

from workers.db import StateTable


class RepairWait(StateTable, table=True):
    __tablename__ = "repair_wait"

    #: The repair message waiting (its id; one row per message).
    message_id: str = Field(primary_key=True, max_length=128)
    domain: str = Field(max_length=32, index=True)
    key: str = Field(max_length=256)
    #: The ERP the repair writes into, and the SoR it waits for.
    target: str = Field(max_length=16)
    sor: str = Field(max_length=16)
    #: The record's last routed version the SoR does not hold yet.
    waits_for: int = Field(default=0, sa_type=BigInteger)
    attempts: int = Field(default=1)
    since: datetime = Field(default_factory=lambda: datetime.now(UTC))
    last_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


_T = RepairWait.__table__  # type: ignore[attr-defined]


def note_wait(engine, *, message_id: str, domain: str, key: str, target: str, sor: str,
              waits_for: int) -> None:
    """The repair ``message_id`` waits (again): insert, or count one more attempt."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(_T).values(message_id=message_id, domain=domain, key=key,
                                 target=target, sor=sor, waits_for=int(waits_for),
                                 attempts=1, since=now, last_at=now)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[_T.c.message_id],
            set_={"attempts": _T.c.attempts + 1, "last_at": now,
                  "waits_for": int(waits_for)}))


def clear_wait(engine, message_id: str) -> None:
    """The repair got past its wait (or never waited): its row, if any, goes."""
    with engine.begin() as conn:
        conn.execute(delete(_T).where(_T.c.message_id == message_id))


def waiting(engine, domain: str | None = None,
            now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per domain: ``count`` of repairs waiting for the SoR now, ``oldest_s`` (seconds
    since the oldest one's first wait; None: none waiting), ``recorded`` (repairs that
    gave up waiting: their message is in the exception store)."""
    from bus.exception_store import ExceptionRecord

    exc = ExceptionRecord.__table__  # type: ignore[attr-defined]
    gave_up = exists().where(and_(exc.c.message_id == _T.c.message_id,
                                  exc.c.status != "replayed"))
    stmt = select(_T.c.domain, gave_up.label("recorded"), func.count(),
                  func.min(_T.c.since)).group_by(_T.c.domain, gave_up)
    if domain is not None:
        stmt = stmt.where(_T.c.domain == domain)
    now = now or datetime.now(UTC)
    out: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for dom, recorded, n, first in conn.execute(stmt):
            d = out.setdefault(dom, {"count": 0, "oldest_s": None, "recorded": 0})
            if recorded:
                d["recorded"] += int(n)
                continue
            d["count"] += int(n)
            first = first.replace(tzinfo=UTC) if first.tzinfo is None else first
            d["oldest_s"] = round((now - first).total_seconds(), 1)
    return out


def waiting_outside_ledger(engine, domain: str) -> int:
    """Repairs of ``domain`` waiting for the SoR (not given up) that the settle ledger
    does not count: no outbox row (a writer's re-send to the shadows, sent directly)."""
    from bus.exception_store import ExceptionRecord
    from bus.outbox import OutboxRecord

    exc = ExceptionRecord.__table__  # type: ignore[attr-defined]
    box = OutboxRecord.__table__  # type: ignore[attr-defined]
    stmt = select(func.count()).select_from(_T).where(
        _T.c.domain == domain,
        ~exists().where(and_(exc.c.message_id == _T.c.message_id,
                             exc.c.status != "replayed")),
        ~exists().where(box.c.message_id == _T.c.message_id))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())
