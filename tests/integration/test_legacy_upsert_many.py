"""``LegacyErp.upsert_many``: one transaction per batch, each record with ``upsert``'s checks
(version, idempotency replay, ``if_revision``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from coexistence.ports import ABSENT, Applied, Changed, Stale
from coexistence.sample import SampleSpec, iter_customers
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.capture import CHGLOG
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def erp(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_legacy_engine(url)
    create_legacy_schema(engine)
    yield LegacyErp(engine)
    engine.dispose()


def _log_rows(erp: LegacyErp) -> int:
    with erp.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(CHGLOG)).scalar() or 0)


def test_a_batch_is_written_with_each_records_version_checks(erp):
    records = list(iter_customers(5, seed=3))
    first = erp.upsert_many([(r, 10, f"a{r.key}") for r in records[:3]])
    assert first == [Applied("customer", r.key, 10) for r in records[:3]]
    assert all(erp.get("customer", r.key) is not None for r in records[:3])
    logged = _log_rows(erp)
    # A replay of the same items is answered from the idempotency keys, writing nothing.
    assert erp.upsert_many([(r, 10, f"a{r.key}") for r in records[:3]]) == first
    assert _log_rows(erp) == logged
    older = records[0].model_copy(update={"credit_limit": records[0].credit_limit + 5})
    equal = records[1].model_copy(update={"credit_limit": records[1].credit_limit + 7})
    results = erp.upsert_many([(older, 9, "b0"), (equal, 10, "b1"), (records[3], 1, "b3")])
    # Older never applies; equal only for a repair; a new record does.
    assert results == [Stale("customer", older.key, 9, 10), Stale("customer", equal.key, 10, 10),
                       Applied("customer", records[3].key, 1)]
    assert erp.get("customer", older.key).credit_limit == records[0].credit_limit
    repaired = erp.upsert_many([(equal, 10, "c1")], repair=True)
    assert repaired == [Applied("customer", equal.key, 10)]
    assert erp.get("customer", equal.key).credit_limit == equal.credit_limit


def test_only_where_absent_a_record_a_person_made_meanwhile_wins(erp):
    mine, theirs = list(iter_customers(2, seed=4))
    erp.person_upsert(theirs, "JSMITH")
    results = erp.upsert_many([(mine, 1, "m"), (theirs, 1, "t")], if_revision=ABSENT)
    assert isinstance(results[0], Applied)
    assert isinstance(results[1], Changed)
    assert erp.get_current("customer", theirs.key).writer == "JSMITH"


def test_a_record_the_legacy_schema_cannot_hold_is_answered_in_its_place(erp):
    good, bad = list(iter_customers(2, seed=5))
    bad = bad.model_copy(update={"key": "not-a-number"})
    results = erp.upsert_many([(good, 1, "g"), (bad, 1, "x")])
    assert isinstance(results[0], Applied)
    assert "not-a-number" in str(results[1])
    assert erp.get("customer", good.key) is not None
    assert erp.upsert_many([]) == []
    product = next(SampleSpec(customers=0, products=2).iter("product"))
    with pytest.raises(ValueError, match="one domain per call"):
        erp.upsert_many([(good, 3, "g4"), (product, 1, "p")])
