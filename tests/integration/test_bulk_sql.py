"""``workers.bulk_sql.executemany`` stores exactly what ``conn.execute(stmt, rows)`` stores
(SQLite's datetime strings included, read back raw), upserts as the statement says, and
raises SQLAlchemy's ``IntegrityError`` on a duplicate, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.support.state import state_engine  # noqa: F401 - fixture
from workers.bulk_sql import executemany
from workers.router.observed import _upsert_statement
from workers.xref_sql import _INSERT_XREF


@pytest.fixture
def engine(state_engine):  # noqa: F811 - the shared fixture, under this module's name
    return state_engine


def _rows(system: str, n: int, version: int) -> list[dict]:
    now = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)  # one object for the batch
    return [{"system": system, "domain": "customer", "key": f"{1000 + i}",
             "revision": f"r{i}", "writer": "COEXIST", "classification": "coexist",
             "flag_version": 3, "version": version + i,
             "changed_at": None if i % 2 else now - timedelta(seconds=i), "at": now}
            for i in range(n)]


def _raw(engine, system: str) -> list[tuple]:
    # Raw SQL, no type processing: what is stored, as stored.
    with engine.connect() as conn:
        return [tuple(r[1:]) for r in conn.execute(text(
            "SELECT system, domain, key, revision, writer, classification, flag_version, "
            "version, changed_at, at FROM observed_revision WHERE system = :s ORDER BY key"),
            {"s": system})]


def test_rows_are_stored_as_sqlalchemy_stores_them_and_upserted(engine):
    stmt = _upsert_statement(engine.dialect.name)
    with engine.begin() as conn:
        conn.execute(stmt, _rows("legacy", 5, 10))   # SQLAlchemy's own path ...
        executemany(conn, stmt, _rows("cloud", 5, 10))  # ... and the driver-level one
    assert _raw(engine, "cloud") == _raw(engine, "legacy")
    assert len(_raw(engine, "cloud")) == 5
    with engine.begin() as conn:  # ON CONFLICT: the later version replaces the row
        conn.execute(stmt, _rows("legacy", 5, 20))
        executemany(conn, stmt, _rows("cloud", 5, 20))
    assert _raw(engine, "cloud") == _raw(engine, "legacy")
    assert [r[6] for r in _raw(engine, "cloud")] == [20, 21, 22, 23, 24]


def test_a_duplicate_is_sqlalchemys_integrity_error_and_rolls_back_with_the_caller(engine):
    now = datetime.now(UTC)
    row = {"domain": "customer", "canonical_key": "1", "legacy_key": "0000000001",
           "cloud_id": "c-1", "created_at": now, "updated_at": now}
    with pytest.raises(IntegrityError), engine.begin() as conn:
        executemany(conn, _INSERT_XREF, [row, {**row, "canonical_key": "2"}])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM xref")).scalar() == 0
