"""The legacy ERP on PostgreSQL: seeding, ordering, and writers racing on one record."""

from __future__ import annotations

import random
import threading

import pytest

from coexistence.ports import Applied, Stale
from coexistence.sample import SampleSpec
from tests.contracts.erp_contract import read_all
from tests.contracts.test_legacy_contract import legacy_sample
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.legacy_erp.seed import SEED_USER, seed_legacy

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg_url):
    engine = create_legacy_engine(pg_url, pool_size=6)
    create_legacy_schema(engine)
    yield engine
    engine.dispose()


def test_seeding_postgresql_and_streaming_it_back_in_canonical_key_order(engine):
    spec = SampleSpec(customers=12, products=6)
    report = seed_legacy(engine, spec, batch_records=5)
    erp = LegacyErp(engine)
    for domain, n in report.records.items():
        streamed = [r.key for r in erp.stream(domain)]
        assert len(streamed) == n
        assert streamed == sorted(r.key for r in spec.iter(domain))
    order = spec.record("order", 7)
    assert len(erp.get("order", order.key).lines) == len(order.lines)
    assert {c.writer for c in read_all(erp)} == {SEED_USER}


def test_stream_on_postgresql_sorts_keys_as_python_does_not_as_the_collation_does(engine):
    erp = LegacyErp(engine)
    for i, sku in enumerate(("WID-B", "WID-A", "WID/C", "WID.D", "WIDE")):
        record = legacy_sample("product", 0)
        erp.upsert(type(record).model_validate({**record.model_dump(), "key": sku}),
                   source_version=i + 1, idempotency_key=f"p{i}")
    keys = [r.key for r in erp.stream("product")]
    assert keys == sorted(keys) == ["WID-A", "WID-B", "WID.D", "WID/C", "WIDE"]


def test_concurrent_writers_of_one_record_leave_the_highest_version_applied(engine):
    erp = LegacyErp(engine)
    versions = list(range(1, 31))
    random.Random(3).shuffle(versions)
    results: list = []
    errors: list[BaseException] = []

    def write(chunk: list[int]) -> None:
        try:
            for v in chunk:
                record = legacy_sample("customer", 1, v)
                results.append(erp.upsert(record, source_version=v, idempotency_key=f"v{v}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(versions[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 30
    applied = [r.version for r in results if isinstance(r, Applied)]
    stale = [r for r in results if isinstance(r, Stale)]
    assert len(applied) + len(stale) == 30 and all(s.current > s.incoming for s in stale)
    assert erp.applied_version("customer", "10001") == 30
    assert erp.get("customer", "10001").name == legacy_sample("customer", 1, 30).name
    # Exactly the applied writes reached the table, each logged once.
    with engine.connect() as conn:
        logged = conn.exec_driver_sql(
            'SELECT count(*) FROM "CHGLOG" WHERE "TABNAME" = \'CUSTMAST\'').scalar()
    assert logged == len(applied)
