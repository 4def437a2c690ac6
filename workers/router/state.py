"""Per-record routing state: the document pin and the last routed version.

``record_route`` keeps, per (domain, key):

* ``pinned_sor``: the SoR a document was created in, while the document is open
  (``None`` for master data and for closed documents, which follow the flag);
* ``last_version``: the routed version of the last SoR change sent to the
  shadow; a stray-write repair re-sends the SoR's state under this version
  (``repair=True`` lets a target re-apply an equal version, never an older one).

Rows are written in the capture transaction, together with the outbox rows
and the checkpoint, so the pin and the messages can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field

from workers.db import StateTable


class RecordRoute(StateTable, table=True):
    __tablename__ = "record_route"

    domain: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=256)
    pinned_sor: str | None = Field(default=None, max_length=16)
    last_version: int = Field(default=0)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


_T = RecordRoute.__table__


@dataclass(frozen=True, slots=True)
class RouteRow:
    pinned_sor: str | None
    last_version: int


def get_route(conn, domain: str, key: str) -> RouteRow | None:
    row = conn.execute(
        select(_T.c.pinned_sor, _T.c.last_version).where(_T.c.domain == domain, _T.c.key == key)
    ).first()
    return None if row is None else RouteRow(row.pinned_sor, int(row.last_version))


def put_route(conn, domain: str, key: str, *, pinned_sor: str | None, last_version: int) -> None:
    """Insert or replace; ``last_version`` never moves back."""
    dialect = conn.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = {
        "domain": domain, "key": key, "pinned_sor": pinned_sor,
        "last_version": last_version, "updated_at": datetime.now(UTC),
    }
    stmt = insert(_T).values(**values)
    excluded = stmt.excluded
    from sqlalchemy import case

    stmt = stmt.on_conflict_do_update(
        index_elements=[_T.c.domain, _T.c.key],
        set_={
            "pinned_sor": excluded.pinned_sor,
            "last_version": case(
                (excluded.last_version > _T.c.last_version, excluded.last_version),
                else_=_T.c.last_version,
            ),
            "updated_at": excluded.updated_at,
        },
    )
    conn.execute(stmt)
