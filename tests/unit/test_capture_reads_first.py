"""A capture batch reads everything it needs from the ERPs before its state transaction
opens: no ERP or feed call while the state database holds a transaction of the batch (on
SQLite every transaction is ``BEGIN IMMEDIATE``: the write lock every process waits for).

The ERPs are wrapped: every method call checks that no transaction is open on the state
engine (tracked by engine events), for a normal batch, for a batch with a stray write whose
SoR is the cloud (the repair carries the cloud's record, read with its applied version),
and for a batch whose decision changes between the look before the transaction and the
transaction itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from coexistence.router import CLOUD, LEGACY
from coexistence.writes import StrayWrite
from tests.support.records import ACME as CUSTOMER
from tests.support.router_harness import Harness
from workers.router import queues
from workers.router.capture import CaptureLoop


class OpenTransactions:
    """Connections of ``engine`` inside a transaction right now."""

    def __init__(self, engine) -> None:
        self.open: set[int] = set()
        event.listen(engine, "begin", lambda conn: self.open.add(id(conn)))
        event.listen(engine, "commit", lambda conn: self.open.discard(id(conn)))
        event.listen(engine, "rollback", lambda conn: self.open.discard(id(conn)))


class Guarded:
    """An ERP (and change feed) whose every call fails inside a state transaction."""

    def __init__(self, erp, txns: OpenTransactions, calls: list[str]) -> None:
        self._erp, self._txns, self._calls = erp, txns, calls

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._erp, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            self._calls.append(f"{self._erp.system}.{name}")
            assert not self._txns.open, (
                f"{self._erp.system}.{name} called while the state transaction is open")
            return target(*args, **kwargs)

        return call


@pytest.fixture
def h(tmp_path):
    harness = Harness.on_sqlite(tmp_path / "state.db")
    yield harness
    harness.engine.dispose()


def guarded_loop(h: Harness, system: str, calls: list[str]) -> CaptureLoop:
    """A capture loop like the harness's, on ERPs that refuse calls inside a transaction."""
    txns = OpenTransactions(h.engine)
    erps = {s: Guarded(e, txns, calls) for s, e in h.erps.items()}
    return CaptureLoop(system, erps[system], erps, h.flags, h.engine,
                       subscriptions=[h.subscriber])


def test_a_normal_batch_reads_the_source_before_its_transaction(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    calls: list[str] = []
    stats = guarded_loop(h, LEGACY, calls).run_once()
    assert (stats.read, stats.routed, stats.writes, stats.events) == (1, 1, 1, 1)
    assert "legacy.read" in calls and "legacy.get" in calls


def test_a_stray_write_batch_reads_the_cloud_sor_before_its_transaction(h):
    h.set_mode("customer", "cloud")
    h.cloud.person_upsert(CUSTOMER, "cloud.user")
    h.settle()  # the cloud (SoR) record reached the legacy shadow
    h.legacy.person_upsert(CUSTOMER.model_copy(update={"credit_hold": True}), "JSMITH")
    calls: list[str] = []
    loop = guarded_loop(h, LEGACY, calls)
    loop.feed_name = h.loops[0].feed_name
    stats = loop.run_once()
    assert stats.strays == 1 and stats.writes == 1
    assert "cloud.read_many" in calls, (
        "the repair's SoR record and its applied version were read (from the cloud)")
    h.settle()
    assert h.legacy.get("customer", "10042") == CUSTOMER, "repaired from the cloud's record"
    [(_actor, _env, exc)] = h.business_errors
    assert isinstance(exc, StrayWrite) and "credit_hold" in str(exc)


def test_a_decision_that_changes_after_the_first_look_is_read_for_and_decided_again(h):
    """The flag moves to cloud between the look before the transaction (shadow: the legacy
    change is routed) and the transaction (cloud: it is a stray write): the transaction
    rolls back, the cloud's record is read outside it, the batch commits once."""
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.legacy.person_upsert(CUSTOMER.model_copy(update={"credit_hold": True}), "JSMITH")
    calls: list[str] = []
    loop = guarded_loop(h, LEGACY, calls)
    loop.feed_name = h.loops[0].feed_name
    looks = []

    class Moving:
        def state(self, domain):
            looks.append(domain)
            if len(looks) == 2:  # the first decision inside the transaction
                h.set_mode("customer", "cloud")
            return h.flags.state(domain)

    loop.flags = Moving()
    stats = loop.run_once()
    assert stats.strays == 1 and stats.routed == 0
    assert [c for c in calls if c.startswith("cloud.")] == ["cloud.read_many"]
    with h.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT queue_name FROM outbox ORDER BY id").scalars().all()
    # The first batch's shadow write and event, then this batch's report and repair (of the
    # legacy shadow from the cloud's record), nothing twice.
    assert rows == [queues.WRITE_QUEUE[CLOUD], h.subscriber.queue, queues.REPORT_QUEUE,
                    queues.WRITE_QUEUE[LEGACY]]
