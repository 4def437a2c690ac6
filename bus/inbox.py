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

In production the claim is made by ``InboxMiddleware`` (installed by
``bus.brokers.setup``) for every actor that opts in with the actor option
``inbox="<consumer name>"``: it opens a state transaction before the actor runs,
claims ``(consumer, message id)``, hands the connection to the actor through
``current()``, and commits claim and effect together after the actor returned.
A duplicate is acked without running the actor; an exception rolls both back
and the failure classes (``bus.retry``) take over.  The batch consumer
(``bus.batch``) claims a whole batch in one transaction the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from dramatiq import Middleware
from dramatiq.middleware import SkipMessage
from prometheus_client import Counter
from sqlalchemy import Column, Connection, DateTime, Engine, String, delete, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session

from bus.brokers.base import request_redelivery
from bus.db import BusTable

log = logging.getLogger(__name__)

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


def claim_many(conn: Any, consumer: str, message_ids: list[str]) -> set[str]:
    """Claim every id of ``message_ids`` in one statement; returns the ids claimed now.

    The ids missing from the result were applied before (or appear twice in the list):
    their effect must be skipped.  Same transaction rules as ``claim``.
    """
    if not message_ids:
        return set()
    now = datetime.now(UTC)
    # Sorted: two batches claiming overlapping ids take their row locks in one order, so
    # they wait for each other instead of deadlocking.
    ids = sorted(set(message_ids))
    if _dialect(conn) == "postgresql":
        # One array parameter and one fixed statement: psycopg parses a statement string
        # anew for each distinct length, which for 200 VALUES rows costs more than the insert.
        fresh = {r[0] for r in conn.execute(_CLAIM_MANY_PG, {
            "consumer": consumer, "ids": ids, "now": now})}
    else:
        rows = [{"consumer": consumer, "message_id": m, "processed_at": now} for m in ids]
        fresh = {r[0] for r in conn.execute(_insert_new(_dialect(conn)), rows)}
    if len(fresh) < len(message_ids):
        DUPLICATES.labels(consumer=consumer).inc(len(message_ids) - len(fresh))
    return fresh


_CLAIM_MANY_PG = text(
    "INSERT INTO inbox (consumer, message_id, processed_at) "
    "SELECT :consumer, id, :now FROM unnest(CAST(:ids AS varchar[])) AS claimed(id) ORDER BY id "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)


@functools.cache
def _insert_new(dialect: str):
    # Built once per dialect (building it costs more than running it).  RETURNING, not
    # rowcount: SQLAlchemy does not report rowcount for INSERT on psycopg.
    ins: postgresql.Insert | sqlite.Insert
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


# -- the middleware ----------------------------------------------------------------------

#: The state connection of the inbox transaction the running actor's effect belongs to.
_current: ContextVar[Connection | None] = ContextVar("coexist_inbox_connection", default=None)
#: Attribute of a dramatiq ``MessageProxy`` holding its open inbox transaction.
_OPEN_ATTR = "_coexist_inbox"
#: Attribute marking a message the inbox skipped as a duplicate (for the log filter).
DUPLICATE_ATTR = "_coexist_inbox_duplicate"
#: The actor option naming the consumer whose inbox an actor claims in.
INBOX_OPTION = "inbox"


def current() -> Connection:
    """The state connection whose transaction commits with this message's inbox claim.

    Only inside an actor that declares ``inbox=...`` (or a batch handler of the batch
    consumer); anything written through it commits, or rolls back, with the claim.
    """
    conn = _current.get()
    if conn is None:
        raise RuntimeError("no inbox transaction: the actor does not declare inbox=<consumer>")
    return conn


@contextlib.contextmanager
def bound(conn: Connection) -> Iterator[Connection]:
    """Make ``conn`` what ``current()`` returns inside the block (the batch consumer's use)."""
    token = _current.set(conn)
    try:
        yield conn
    finally:
        _current.reset(token)


_USES_INBOX_ATTR = "coexist_uses_inbox"


def uses_inbox(handler):
    """Mark a channel handler whose effect is written through ``current()``: its actor
    then declares the inbox of its subscription (``workers.router.actors``)."""
    setattr(handler, _USES_INBOX_ATTR, True)
    return handler


def wants_inbox(handler: Any) -> bool:
    return bool(getattr(handler, _USES_INBOX_ATTR, False))


def message_id_of(message: Any) -> str:
    """The id a delivery is claimed under: its envelope's message id, else dramatiq's (as
    ``bus.correlation.ids_of``: the outbox makes them equal; a message sent directly with
    a stable envelope id keeps it across re-sends)."""
    from bus.correlation import ids_of

    return ids_of(message)[2]


def consumer_of(broker: Any, message: Any) -> str | None:
    """The inbox consumer name the actor of ``message`` declares, or ``None``."""
    try:
        actor = broker.get_actor(message.actor_name)
    except Exception:
        return None
    return actor.options.get(INBOX_OPTION)


class InboxMiddleware(Middleware):
    """Claim-and-effect in one state transaction for actors declaring ``inbox="name"``.

    dramatiq swallows exceptions of ``before_*`` hooks except ``SkipMessage``, so a
    failing claim (state database down) never lets the actor run without it: the
    message is handed back to its queue (``request_redelivery``) and skipped.  A
    commit that fails after the actor returned does the same (the effect rolled back
    with the claim; the redelivery applies it).
    """

    def __init__(self, engine: Engine, *, redelivery_pause_ms: int = 500):
        self.engine = engine
        self.redelivery_pause_ms = redelivery_pause_ms

    @property
    def actor_options(self) -> set[str]:
        return {INBOX_OPTION}

    def before_process_message(self, broker, message) -> None:
        name = consumer_of(broker, message)
        if not name:
            return
        conn = None
        try:
            conn = self.engine.connect()
            conn.begin()
            fresh = claim(conn, name, message_id_of(message))
        except Exception:
            log.exception("Could not claim message %s in the inbox of %s; handing it back "
                          "to its queue.", message.message_id, name)
            if conn is not None:
                _close(conn)
            self._pause()
            request_redelivery(message)
            raise SkipMessage() from None
        if not fresh:
            _close(conn)
            log.debug("Message %s was already applied by %s; skipped.", message.message_id, name)
            setattr(message, DUPLICATE_ATTR, True)
            raise SkipMessage()
        setattr(message, _OPEN_ATTR, (conn, _current.set(conn)))

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        opened = getattr(message, _OPEN_ATTR, None)
        if opened is None:
            return
        delattr(message, _OPEN_ATTR)
        conn, token = opened
        _current.reset(token)
        if exception is not None:
            _close(conn)  # rolls back claim and effect; the failure classes decide the rest
            return
        try:
            conn.commit()
        except Exception:
            log.exception("Could not commit the effect of message %s; handing it back to its "
                          "queue.", message.message_id)
            self._pause()
            request_redelivery(message)
        finally:
            _close(conn)

    def after_skip_message(self, broker, message) -> None:
        opened = getattr(message, _OPEN_ATTR, None)
        if opened is not None:  # another middleware skipped it after our claim
            delattr(message, _OPEN_ATTR)
            _current.reset(opened[1])
            _close(opened[0])

    def _pause(self) -> None:
        if self.redelivery_pause_ms:
            time.sleep(self.redelivery_pause_ms / 1000)


def _close(conn: Connection) -> None:
    with contextlib.suppress(Exception):  # rolling back a broken connection may fail too
        conn.close()


class DuplicateSkipped(logging.Filter):
    """Drops dramatiq's WARNING "Message ... was skipped." for inbox duplicates (a
    redelivery is routine; the inbox logs it at debug and counts it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Message %s was skipped"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and getattr(args[0], DUPLICATE_ATTR, False))
