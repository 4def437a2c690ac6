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

from sqlalchemy import BigInteger, case, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field

from workers.db import StateTable


class RecordRoute(StateTable, table=True):
    __tablename__ = "record_route"

    domain: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=256)
    pinned_sor: str | None = Field(default=None, max_length=16)
    #: A routed version (flag version << 40 | source version): needs 64 bits on PostgreSQL.
    last_version: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


_T = RecordRoute.__table__


@dataclass(frozen=True, slots=True)
class RouteRow:
    pinned_sor: str | None
    last_version: int


def get_route(conn, domain: str, key: str) -> RouteRow | None:
    return get_routes(conn, domain, [key]).get(key)


def get_routes(conn, domain: str, keys) -> dict[str, RouteRow]:
    """The routing state of many keys of one domain, in one query."""
    keys = list(dict.fromkeys(keys))
    out: dict[str, RouteRow] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(
            select(_T.c.key, _T.c.pinned_sor, _T.c.last_version)
            .where(_T.c.domain == domain, _T.c.key.in_(keys[i:i + 500]))
        )
        for row in rows:
            out[row.key] = RouteRow(row.pinned_sor, int(row.last_version))
    return out


_UPSERTS: dict[str, object] = {}


def _upsert_statement(dialect: str):
    """Insert or replace, ``last_version`` never moving back; built once per dialect."""
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        base = insert(_T)
        excluded = base.excluded
        stmt = _UPSERTS[dialect] = base.on_conflict_do_update(
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
    return stmt


def put_route(conn, domain: str, key: str, *, pinned_sor: str | None, last_version: int) -> None:
    put_routes(conn, [(domain, key, pinned_sor, last_version)])


def put_routes(conn, rows) -> None:
    """Write (domain, key, pinned_sor, last_version) rows in one executemany."""
    now = datetime.now(UTC)
    params = [{"domain": d, "key": k, "pinned_sor": p, "last_version": v, "updated_at": now}
              for d, k, p, v in rows]
    if params:
        conn.execute(_upsert_statement(conn.dialect.name), params)
