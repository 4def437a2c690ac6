"""SQL engines for coexist's own state (SQLite by default, PostgreSQL in production).

Bus tables (outbox, inbox, exception store, applied versions) are declared on
``BusTable`` and live in ``BUS_METADATA``, separate from SQLModel's global
metadata, so that a database only ever gets the tables its owner declares.
``bus.tables`` imports every module that declares one.  Nothing here creates
tables: the schema is built and upgraded by migrations (``coexist db upgrade``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Engine, MetaData, Table, create_engine, event
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

BUS_METADATA = MetaData()

#: SQLite waits this long for a lock held by another process before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000


class BusTable(SQLModel, registry=registry(metadata=BUS_METADATA)):
    """Base class of the bus's SQL tables."""

    #: Set by SQLAlchemy's declarative mapping on every ``table=True`` subclass; declared
    #: here only for the type checker (SQLModel's class does not declare it).
    __table__: ClassVar[Table]


def create_state_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for many small transactions from several processes.

    SQLite gets WAL (readers never block the writer), ``synchronous=NORMAL``
    (durable at checkpoints; a crash of the process loses nothing committed),
    a busy timeout and ``BEGIN IMMEDIATE`` so write transactions take the lock
    up front instead of failing on upgrade.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):  # pragma: no cover
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)
