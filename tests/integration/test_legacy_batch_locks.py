"""Two writers' batches sharing records on the legacy ERP (PostgreSQL) wait, never deadlock.

Two workers each took a batch of routed writes; two changes of one record were in both
(people edit a record again before coexist has caught up). ``LegacyErp.write_many`` locked
rows in batch order: worker A held record 1 and wanted 2, worker B held 2 and wanted 1;
PostgreSQL killed one transaction (``DeadlockDetected``) and its whole batch of 200 went
the one-message path (a chaos run's cloud phase). Rows are now locked in key order.
"""

from __future__ import annotations

import contextlib
import threading

import pytest

from coexistence.ports import Applied, WriteOp
from tests.contracts.test_legacy_contract import legacy_sample
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg_url):
    engine = create_legacy_engine(pg_url, pool_size=4)
    create_legacy_schema(engine)
    yield engine
    engine.dispose()


class Paused(LegacyErp):
    """Each batch pauses after its first write (row locked) until the other's first
    write is done too, or a second has passed (the other is waiting for a lock)."""

    def __init__(self, engine, barrier: threading.Barrier):
        super().__init__(engine)
        self.barrier = barrier
        self.local = threading.local()

    def _write_op(self, conn, op, now):
        result = super()._write_op(conn, op, now)
        if not getattr(self.local, "paused", False):
            self.local.paused = True
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait(timeout=1.0)
        return result


def test_two_batches_with_the_same_records_in_opposite_orders_both_commit(engine):
    erp = LegacyErp(engine)
    base = legacy_sample("customer", 0)
    records = [type(base).model_validate({**base.model_dump(), "key": key})
               for key in ("10001", "10002")]
    for n, record in enumerate(records):
        erp.upsert(record, source_version=1, idempotency_key=f"seed-{n}")
    held = erp.read_many("customer", ["10001", "10002"])
    paused = Paused(engine, threading.Barrier(2))
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def batch(name: str, order: list[int], version: int) -> None:
        ops = [WriteOp("customer", records[i].key, records[i], version, f"{name}-{i}",
                       held[records[i].key][1]) for i in order]
        try:
            results[name] = paused.write_many(ops)
        except BaseException as exc:  # noqa: BLE001 - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=("a", [0, 1], 2)),
               threading.Thread(target=batch, args=("b", [1, 0], 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [], f"a batch failed: {errors[0]!r}"
    # Both committed: one applied both writes first; the other's then met a revision it
    # had not read (Changed: decided again on the per-message path), never a deadlock.
    assert all(len(r) == 2 for r in results.values())
    assert any(all(isinstance(x, Applied) for x in r) for r in results.values())
