"""Durable change-capture checkpoints, kept in coexist's state database.

A consumer of a change feed (the legacy change log, the cloud change feed)
remembers the cursor of the last change it has fully handled.  The checkpoint is
advanced **in the consumer's own transaction**, together with the effects of the
changes (outbox rows, xref updates...), so a crash anywhere between reading the
feed and committing leaves both untouched: the next read starts from the old
checkpoint and yields the same changes again, and the effects were never
committed, so nothing is done twice and nothing is skipped.

Usage::

    after = checkpoints.get(state_engine, "legacy")
    changes = feed.read(after, 500)
    with Session(state_engine) as session:
        ...  # effects of ``changes`` in ``session``
        checkpoints.advance(session, "legacy", changes[-1].cursor, expected=after)
        session.commit()
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import Field

from bus.errors import TechnicalError
from workers.db import StateTable

__all__ = ["CdcCheckpoint", "CheckpointConflict", "advance", "current", "get"]


class CdcCheckpoint(StateTable, table=True):
    """The last change of feed ``feed`` that its consumer has fully handled."""

    __tablename__ = "cdc_checkpoint"

    feed: str = Field(primary_key=True, max_length=100)
    #: Cursor of the last handled change (0 = nothing handled yet).
    cursor: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class CheckpointConflict(TechnicalError):
    """Another consumer moved the checkpoint first; roll back and read again.

    Technical (retried): the changes are still in the feed, and re-reading from
    the checkpoint that won yields exactly the ones not yet handled.
    """


def get(engine: Engine, feed_name: str) -> int:
    """The committed checkpoint of ``feed_name`` (0 when the feed was never consumed)."""
    with Session(engine) as session:
        return current(session, feed_name)


def current(session: Session, feed_name: str) -> int:
    """The checkpoint as seen by ``session`` (inside the caller's transaction)."""
    table = CdcCheckpoint.__table__
    value = session.connection().execute(
        select(table.c.cursor).where(table.c.feed == feed_name)
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def advance(session: Session, feed_name: str, cursor: int, *, expected: int | None = None) -> None:
    """Move ``feed_name``'s checkpoint to ``cursor`` in the caller's transaction.

    The caller commits (effects and checkpoint together) or rolls back.  A
    checkpoint only moves forward: ``cursor`` not beyond the stored one, or a
    stored one different from ``expected`` (the checkpoint the caller read its
    batch after), means another consumer handled these changes already, and
    :class:`CheckpointConflict` is raised so that the caller's duplicate effects
    are rolled back with its transaction.
    """
    if cursor < 0:
        raise ValueError(f"checkpoint cursor must be >= 0, got {cursor}")
    table = CdcCheckpoint.__table__
    conn = session.connection()
    now = datetime.now(UTC)
    condition = table.c.cursor == expected if expected is not None else table.c.cursor < cursor
    moved = conn.execute(
        update(table)
        .where(table.c.feed == feed_name, condition, table.c.cursor < cursor)
        .values(cursor=cursor, updated_at=now)
    ).rowcount
    if moved == 1:
        return
    stored = conn.execute(
        select(table.c.cursor).where(table.c.feed == feed_name)
    ).scalar_one_or_none()
    if stored is None and (expected is None or expected == 0):
        try:
            # A savepoint keeps the caller's transaction usable if a concurrent
            # consumer created the row first.
            with conn.begin_nested():
                conn.execute(insert(table).values(feed=feed_name, cursor=cursor, updated_at=now))
            return
        except IntegrityError:
            stored = conn.execute(
                select(table.c.cursor).where(table.c.feed == feed_name)
            ).scalar_one()
    raise CheckpointConflict(
        f"checkpoint of feed {feed_name!r} is {stored if stored is not None else 0}, "
        f"cannot advance to {cursor}"
        + (f" from {expected}" if expected is not None else "")
    )
