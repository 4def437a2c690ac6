"""Inbox: each consumer applies each message's effect at most once.

The bus delivers at least once (redeliveries after a crash, a relay publishing
again after losing its mark, a replay from the exception store).  A consumer
whose effect is an SQL write calls ``claim(session, consumer, message_id)`` in
the same transaction as the write: the (consumer, message id) row and the
effect commit together, so a redelivery finds the row and skips the effect.

Two deliveries of one message at the same time are safe on PostgreSQL: the
second ``INSERT .. ON CONFLICT DO NOTHING`` waits for the first transaction and
then inserts nothing (returns False); if the first rolled back, the second
claims it.  On SQLite the write lock serialises them.

Effects outside SQL (HTTP calls) use the message id as the idempotency key.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Column, DateTime, Engine, String, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session

from bus.db import BusTable

DUPLICATES = Counter(
    "coexist_bus_duplicates_total",
    "Redelivered messages whose effect was skipped because it was already applied",
    ["consumer"],
)


class InboxRecord(BusTable, table=True):
    """A message whose effect a consumer has applied."""

    __tablename__ = "inbox"

    consumer: str = Field(sa_column=Column(String(200), primary_key=True))
    message_id: str = Field(sa_column=Column(String(128), primary_key=True))
    processed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False,
                                                    index=True))


_T = InboxRecord.__table__


def claim(session: Any, consumer: str, message_id: str) -> bool:
    """Record ``message_id`` as processed by ``consumer`` in the caller's transaction.

    Returns False when it already was (a duplicate): the caller must skip its
    effect.  ``session`` is a SQLAlchemy/SQLModel ``Session`` or ``Connection``.
    """
    values = {"consumer": consumer, "message_id": message_id, "processed_at": datetime.now(UTC)}
    fresh = session.execute(_insert_new(_dialect(session)), values).first() is not None
    if not fresh:
        DUPLICATES.labels(consumer=consumer).inc()
    return fresh


@functools.cache
def _insert_new(dialect: str):
    # Built once per dialect (building it costs more than running it).  RETURNING, not
    # rowcount: SQLAlchemy does not report rowcount for INSERT on psycopg.
    if dialect == "postgresql":
        ins = postgresql.insert(_T)
    elif dialect == "sqlite":
        ins = sqlite.insert(_T)
    else:  # pragma: no cover - coexist supports SQLite and PostgreSQL only
        raise RuntimeError(f"the inbox does not support {dialect}")
    return ins.on_conflict_do_nothing().returning(_T.c.message_id)


@contextlib.contextmanager
def once(engine: Engine, consumer: str, message_id: str) -> Iterator[Session | None]:
    """A session whose work commits together with the inbox claim; ``None`` for a duplicate.

    ::

        with inbox.once(engine, "crm_sync", env.message_id) as session:
            if session is None:
                return  # already applied
            apply(session, env)

    Any exception rolls back both the effect and the claim, so a retry applies it.
    """
    with Session(engine) as session:
        if not claim(session, consumer, message_id):
            session.rollback()
            yield None
            return
        yield session
        session.commit()


def purge_processed(engine: Engine, older_than: timedelta) -> int:
    """Forget claims older than ``older_than``; returns how many.

    Only safe beyond the longest time a message can still be redelivered or
    replayed; the exception store replays messages of any age, so keep this
    generous (weeks) or do not purge at all.
    """
    cutoff = datetime.now(UTC) - older_than
    with engine.begin() as conn:
        return conn.execute(delete(_T).where(_T.c.processed_at < cutoff)).rowcount


def _dialect(session: Any) -> str:
    dialect = getattr(session, "dialect", None)  # a Connection
    if dialect is None:
        dialect = session.get_bind().dialect
    return dialect.name
