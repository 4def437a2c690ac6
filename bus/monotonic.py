"""Apply a write only when it is newer than the last one applied for that record.

The bus delivers at least once and in no global order, so a writer must not
trust arrival order.  Each target (``"cloud.customer"``, ``"crm.account"``)
keeps the last applied source version per key; ``apply_if_newer`` advances it
with one atomic conditional upsert in the CALLER's transaction and says whether
the write should happen::

    if apply_if_newer(session, "cloud.customer", env.key, env.source_version):
        write(...)          # same transaction: version and effect commit together
    # else: a duplicate or an older version arrived late; skip it

On PostgreSQL the upsert locks the version row until commit, so two writers of
one key serialise and the second re-checks against the first's version.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import BigInteger, Column, DateTime, String, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field

from bus.db import BusTable

STALE = Counter(
    "coexist_bus_stale_writes_total",
    "Writes skipped because a newer or equal version was already applied",
    ["target"],
)


class AppliedVersion(BusTable, table=True):
    """The last source version applied to ``target`` for ``key``."""

    __tablename__ = "applied_version"

    target: str = Field(sa_column=Column(String(100), primary_key=True))
    key: str = Field(sa_column=Column(String(256), primary_key=True))
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    applied_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


_T = AppliedVersion.__table__


def newer(incoming: int, current: int | None) -> bool:
    """True when ``incoming`` must be applied over ``current`` (``None``: nothing yet)."""
    return current is None or incoming > current


def apply_if_newer(session: Any, target: str, key: str, version: int) -> bool:
    """Record ``version`` for (target, key) if it is newer; True means: apply the write.

    ``session`` is a SQLAlchemy/SQLModel ``Session`` or ``Connection``; nothing
    is committed here.  An equal version is a duplicate and returns False.
    """
    values = {"target": target, "key": key, "version": int(version),
              "applied_at": datetime.now(UTC)}
    applied = session.execute(_upsert(_dialect(session)), values).first() is not None
    if not applied:
        STALE.labels(target=target).inc()
    return applied


@functools.cache
def _upsert(dialect: str):
    # Built once per dialect: constructing the ON CONFLICT statement costs far more
    # than running it.  RETURNING, not rowcount: SQLAlchemy does not report rowcount
    # for INSERT on psycopg.  A row comes back when inserted or advanced, none when stale.
    if dialect == "postgresql":
        ins = postgresql.insert(_T)
    elif dialect == "sqlite":
        ins = sqlite.insert(_T)
    else:  # pragma: no cover - coexist supports SQLite and PostgreSQL only
        raise RuntimeError(f"apply_if_newer does not support {dialect}")
    return ins.on_conflict_do_update(
        index_elements=[_T.c.target, _T.c.key],
        set_={"version": ins.excluded.version, "applied_at": ins.excluded.applied_at},
        where=ins.excluded.version > _T.c.version,
    ).returning(_T.c.version)


def current_version(session: Any, target: str, key: str) -> int | None:
    """The last version applied for (target, key), or ``None``."""
    return session.execute(
        select(_T.c.version).where(_T.c.target == target, _T.c.key == key)
    ).scalar_one_or_none()


def _dialect(session: Any) -> str:
    dialect = getattr(session, "dialect", None)
    if dialect is None:
        dialect = session.get_bind().dialect
    return dialect.name
