"""SQL id cross-reference (SQLite by default, PostgreSQL in production).

Concurrency: each ``link`` is one short transaction that reads the rows
involved, decides with ``coexistence.xref.plan_link`` and writes.  The
unique constraints are the arbiter: when two processes race, the loser's
INSERT (or its guarded UPDATE ... WHERE column IS NULL) fails or touches no
row, its transaction rolls back, and it starts again from a fresh read --
which now sees the winner's row and ends in a no-op (same mapping) or an
``XrefConflict`` (different mapping).  On SQLite, ``BEGIN IMMEDIATE`` (see
``bus.db``) serialises writers, so the retry path is only taken on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    Engine,
    String,
    UniqueConstraint,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Field

from bus.errors import TechnicalError
from coexistence.xref import XREF_COLUMNS, XrefColumn, XrefEntry, plan_link
from workers.bulk_sql import executemany
from workers.db import StateTable

#: Canonical keys compare in code-point order in every database ("C" collation on
#: PostgreSQL; SQLite's BINARY already is), so ``entries`` agrees with Python's ``sorted``.
_KEY_TYPE = String(40).with_variant(String(40, collation="C"), "postgresql")
_ID_TYPE = String(80).with_variant(String(80, collation="C"), "postgresql")

#: A link that keeps losing races this many times is reported as a technical failure
#: (retried by the bus) rather than looping forever.
LINK_MAX_ATTEMPTS = 8
#: Rows per page of ``entries``; each page is its own short read.
ENTRIES_PAGE_ROWS = 1000


class XrefRow(StateTable, table=True):
    """One canonical record's ids in both ERPs; unique in every column per domain."""

    __tablename__ = "xref"
    __table_args__ = (
        UniqueConstraint("domain", "legacy_key", name="uq_xref_legacy_key"),
        UniqueConstraint("domain", "cloud_id", name="uq_xref_cloud_id"),
    )

    domain: str = Field(primary_key=True, sa_type=String(20))
    canonical_key: str = Field(primary_key=True, sa_type=_KEY_TYPE)
    legacy_key: str | None = Field(default=None, sa_type=_ID_TYPE)
    cloud_id: str | None = Field(default=None, sa_type=_ID_TYPE)
    created_at: datetime = Field(sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(sa_type=DateTime(timezone=True))


_T = XrefRow.__table__  # type: ignore[attr-defined]
#: The bulk insert of new links (driver-level executemany: ``workers.bulk_sql``).
_INSERT_XREF = _T.insert()


#: PostgreSQL SQLSTATEs that mean "two writers crossed; run the transaction again":
#: deadlock_detected (two links inserting each other's ids) and serialization_failure.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


class _LostRace(Exception):
    """Another writer changed the row between our read and our write."""


def _crossed(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def _entry(row) -> XrefEntry:
    return XrefEntry(row.domain, row.canonical_key, row.legacy_key, row.cloud_id)


class SqlXref:
    """``coexistence.xref.Xref`` on a state database (tables from the state migrations)."""

    def __init__(self, engine: Engine, *, page_rows: int = ENTRIES_PAGE_ROWS) -> None:
        self._engine = engine
        self._page_rows = page_rows

    def link(
        self,
        domain: str,
        canonical_key: str,
        *,
        legacy_key: str | None = None,
        cloud_id: str | None = None,
    ) -> XrefEntry:
        wanted: dict[XrefColumn, str | None] = {"legacy_key": legacy_key, "cloud_id": cloud_id}
        for _ in range(LINK_MAX_ATTEMPTS):
            try:
                with self._engine.begin() as conn:
                    return self._link_once(conn, domain, canonical_key, wanted)
            except (IntegrityError, _LostRace):
                continue  # someone else committed first: decide again from what they wrote
            except DBAPIError as exc:
                if not _crossed(exc):
                    raise
        raise TechnicalError(
            f"xref link of {domain} {canonical_key} lost {LINK_MAX_ATTEMPTS} races in a row"
        )

    @staticmethod
    def _link_once(
        conn, domain: str, key: str, wanted: dict[XrefColumn, str | None]
    ) -> XrefEntry:
        match = [_T.c.canonical_key == key]
        match += [_T.c[col] == value for col, value in wanted.items() if value is not None]
        rows = conn.execute(select(_T).where(_T.c.domain == domain, or_(*match))).all()
        current = next((_entry(r) for r in rows if r.canonical_key == key), None)
        holders = {
            col: next((r.canonical_key for r in rows if getattr(r, col) == value), None)
            for col, value in wanted.items()
            if value is not None
        }
        fill = plan_link(current, holders, domain, key, wanted)
        now = datetime.now(UTC)
        if current is None:
            conn.execute(_T.insert().values(
                domain=domain, canonical_key=key, created_at=now, updated_at=now, **fill
            ))
            return XrefEntry(domain, key, **fill)
        if fill:
            guard = [_T.c[col].is_(None) for col in fill]
            result = conn.execute(
                update(_T)
                .where(_T.c.domain == domain, _T.c.canonical_key == key, *guard)
                .values(updated_at=now, **fill)
            )
            if result.rowcount != 1:
                raise _LostRace
            return XrefEntry(
                domain, key,
                fill.get("legacy_key", current.legacy_key), fill.get("cloud_id", current.cloud_id),
            )
        return current

    def link_in(self, conn, domain: str, canonical_key: str, *, legacy_key: str | None = None,
                cloud_id: str | None = None) -> XrefEntry:
        """``link`` inside the caller's transaction (see :func:`link_in`)."""
        return link_in(conn, domain, canonical_key, legacy_key=legacy_key, cloud_id=cloud_id)

    def _one(self, domain: str, column: str, value: str) -> XrefEntry | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(_T).where(_T.c.domain == domain, _T.c[column] == value)
            ).first()
        return None if row is None else _entry(row)

    def by_canonical(self, domain: str, canonical_key: str) -> XrefEntry | None:
        return self._one(domain, "canonical_key", canonical_key)

    def by_legacy(self, domain: str, legacy_key: str) -> XrefEntry | None:
        return self._one(domain, "legacy_key", legacy_key)

    def by_cloud(self, domain: str, cloud_id: str) -> XrefEntry | None:
        return self._one(domain, "cloud_id", cloud_id)

    def entries(self, domain: str) -> Iterator[XrefEntry]:
        # Keyset pages rather than one open cursor: no transaction or lock is held
        # while the caller works between rows.
        after: str | None = None
        while True:
            query = select(_T).where(_T.c.domain == domain)
            if after is not None:
                query = query.where(_T.c.canonical_key > after)
            query = query.order_by(_T.c.canonical_key).limit(self._page_rows)
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            yield from (_entry(r) for r in rows)
            if len(rows) < self._page_rows:
                return
            after = rows[-1].canonical_key


def link_in(conn, domain: str, canonical_key: str, *, legacy_key: str | None = None,
            cloud_id: str | None = None) -> XrefEntry:
    """Link inside the caller's state transaction (a writer commits the link with its
    observation row).  A race lost to a concurrent linker is a ``TechnicalError``: the
    caller's transaction is rolled back and the bus retries the whole step."""
    wanted: dict[XrefColumn, str | None] = {"legacy_key": legacy_key, "cloud_id": cloud_id}
    try:
        with conn.begin_nested():
            return SqlXref._link_once(conn, domain, canonical_key, wanted)
    except (IntegrityError, _LostRace):
        raise TechnicalError(
            f"xref link of {domain} {canonical_key} raced another writer; retried") from None


#: Ids per ``IN`` list of :func:`link_many_in`'s read.
LINK_MANY_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Link:
    """One link asked of :func:`link_many_in`."""

    canonical_key: str
    legacy_key: str | None = None
    cloud_id: str | None = None


def link_many_in(conn, domain: str, links: Sequence[Link]) -> list[XrefEntry]:
    """:func:`link_in` for a batch of links in the caller's state transaction, with the
    outcome of linking them one after the other: one read of every row involved (``IN``
    lists), each link decided by ``plan_link`` against that read and the links before it,
    then one INSERT of the new rows and one guarded UPDATE per set of filled columns.

    A conflict (with a stored row or an earlier link of the batch) raises
    ``XrefConflict`` before anything is written; a race lost to a concurrent linker is a
    ``TechnicalError`` (the caller's transaction rolls back, the bus retries)."""
    if not links:
        return []
    keys = {link.canonical_key for link in links}
    ids: dict[XrefColumn, set[str]] = {
        "legacy_key": {link.legacy_key for link in links if link.legacy_key is not None},
        "cloud_id": {link.cloud_id for link in links if link.cloud_id is not None},
    }
    rows: dict[str, XrefEntry] = {}
    for column, values in (("canonical_key", keys), *ids.items()):
        values = sorted(values)
        for i in range(0, len(values), LINK_MANY_CHUNK):
            for row in conn.execute(select(_T).where(
                    _T.c.domain == domain, _T.c[column].in_(values[i:i + LINK_MANY_CHUNK]))):
                rows[row.canonical_key] = _entry(row)
    # The state as the links decided so far leave it: entries by key, holders by id.
    held: dict[XrefColumn, dict[str, str]] = {
        col: {getattr(e, col): k for k, e in rows.items() if getattr(e, col) is not None}
        for col in XREF_COLUMNS
    }
    stored = dict(rows)
    out: list[XrefEntry] = []
    for link in links:
        key = link.canonical_key
        wanted: dict[XrefColumn, str | None] = {"legacy_key": link.legacy_key,
                                                "cloud_id": link.cloud_id}
        current = rows.get(key)
        holders = {col: held[col].get(value) for col, value in wanted.items()
                   if value is not None}
        fill = plan_link(current, holders, domain, key, wanted)
        entry = current if not fill else XrefEntry(
            domain, key,
            fill.get("legacy_key", current.legacy_key if current else None),
            fill.get("cloud_id", current.cloud_id if current else None))
        if entry is None:
            entry = XrefEntry(domain, key)
        rows[key] = entry
        for col, value in fill.items():
            held[col][value] = key
        out.append(entry)
    now = datetime.now(UTC)
    new = [{"domain": domain, "canonical_key": k, "legacy_key": e.legacy_key,
            "cloud_id": e.cloud_id, "created_at": now, "updated_at": now}
           for k, e in rows.items() if k not in stored]
    # Filled columns of stored rows, grouped by which columns (one UPDATE shape each).
    fills: dict[tuple[XrefColumn, ...], list[dict]] = {}
    for k, e in rows.items():
        before = stored.get(k)
        if before is None or before == e:
            continue
        cols = tuple(c for c in XREF_COLUMNS if getattr(before, c) != getattr(e, c))
        fills.setdefault(cols, []).append({"b_key": k, **{f"b_{c}": getattr(e, c)
                                                          for c in cols}})
    try:
        with conn.begin_nested():
            if new:
                executemany(conn, _INSERT_XREF, new)
            for cols, params in fills.items():
                result = conn.execute(
                    update(_T)
                    .where(_T.c.domain == domain, _T.c.canonical_key == bindparam("b_key"),
                           *(_T.c[c].is_(None) for c in cols))
                    .values(updated_at=now, **{c: bindparam(f"b_{c}") for c in cols}),
                    params)
                if result.rowcount != len(params):
                    raise _LostRace
    except (IntegrityError, _LostRace):
        raise TechnicalError(
            f"xref links of {len(links)} {domain} records raced another writer; retried"
        ) from None
    return out


def unlink_in(conn, domain: str, canonical_key: str) -> None:
    """Remove a record's link inside the caller's state transaction (its routed delete
    applied: the record is in neither ERP any more)."""
    conn.execute(_T.delete().where(_T.c.domain == domain, _T.c.canonical_key == canonical_key))
