"""The cloud adapter keeps the ERP contract against the simulator, faults included."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from bus.errors import TechnicalError
from coexistence.ports import COEXIST_WRITER, Applied, Changed, Stale
from tests.contracts.erp_contract import PERSON, ErpContract, ErpHarness, new_key, sample
from tests.support import cloud_sim
from tests.support.cloud_sim import SimulatorAdmin
from workers.cloud_erp import CloudErp, CloudTechnicalError

simulator, sim = cloud_sim.simulator, cloud_sim.sim


@pytest.fixture
def cloud(sim):
    # Short timeout and backoff so fault tests stay fast; same code paths as production.
    erp = CloudErp(sim.url, timeout_s=0.5, base_backoff_s=0.01, max_backoff_s=0.05)
    try:
        yield erp
    finally:
        erp.close()


class TestCloudErp(ErpContract):
    @pytest.fixture
    def harness(self, cloud, sim):
        return ErpHarness(erp=cloud, feed=cloud, person_upsert=sim.person_upsert)


# ---------------------------------------------------------------------------- fault modes
#
# Each injected fault must end either applied exactly once or as a classified
# error (business or technical); never twice, never silently dropped.  The
# change feed is the witness: it lists every write the cloud committed.


def coexist_writes(sim: SimulatorAdmin, number: str) -> list[dict]:
    return [c for c in sim.changes() if c["number"] == number and c["clientId"] == COEXIST_WRITER]


@pytest.mark.parametrize("fault", ["error", "error_after", "timeout", "drop", "429"])
def test_a_write_hit_by_a_fault_is_applied_exactly_once(sim, cloud, fault):
    sim.faults(next=[f"{fault}:write"], retry_after_s=0, hang_s=5)
    record = sample("customer", 1)
    result = cloud.upsert(record, source_version=3, idempotency_key=new_key())
    assert result == Applied("customer", record.key, 3)
    assert cloud.get("customer", record.key) == record
    assert len(coexist_writes(sim, record.key)) == 1


@pytest.mark.parametrize("fault", ["error_after", "timeout", "drop"])
def test_an_update_and_a_delete_hit_by_a_fault_are_applied_exactly_once(sim, cloud, fault):
    record = sample("product", 2)
    cloud.upsert(record, source_version=1, idempotency_key=new_key())
    sim.faults(next=[f"{fault}:write", f"{fault}:write"], hang_s=5)
    changed = sample("product", 2, 1)
    assert cloud.upsert(changed, source_version=2, idempotency_key=new_key()) == Applied(
        "product", record.key, 2)
    assert cloud.delete("product", record.key, source_version=3,
                        idempotency_key=new_key()) == Applied("product", record.key, 3)
    ops = [c["op"] for c in coexist_writes(sim, record.key)]
    assert ops == ["upsert", "upsert", "delete"]
    assert cloud.get("product", record.key) is None


def test_a_fault_on_every_answer_ends_as_a_technical_error_and_the_retry_applies_once(sim, cloud):
    # The write is committed but every answer is a 500: the adapter gives up...
    sim.faults(error_after_rate=1.0, scope="write")
    record, key = sample("order", 3), new_key()
    with pytest.raises(CloudTechnicalError) as caught:
        cloud.upsert(record, source_version=5, idempotency_key=key)
    assert isinstance(caught.value, TechnicalError)
    # ...and the bus's redelivery of the same message finds it already there.
    sim.faults()
    assert cloud.upsert(record, source_version=5, idempotency_key=key) == Stale(
        "order", record.key, 5, 5)
    assert len(coexist_writes(sim, record.key)) == 1
    assert cloud.get("order", record.key) == record


def test_a_cloud_that_never_answers_well_is_a_technical_error_with_nothing_written(sim, cloud):
    sim.faults(error_rate=1.0)
    with pytest.raises(CloudTechnicalError, match="503"):
        cloud.upsert(sample("invoice", 4), source_version=1, idempotency_key=new_key())
    sim.faults()
    assert sim.changes() == []


def test_a_429_burst_is_waited_out_honouring_retry_after(sim):
    waits: list[float] = []
    erp = CloudErp(sim.url, base_backoff_s=0.01, max_backoff_s=3.0, sleep=waits.append)
    try:
        sim.faults(burst_429=2, retry_after_s=2)
        record = sample("inventory", 5)
        assert erp.upsert(record, source_version=1, idempotency_key=new_key()) == Applied(
            "inventory", record.key, 1)
    finally:
        erp.close()
    assert waits == [2.0, 2.0], "Retry-After is a floor for the backoff"
    assert len(coexist_writes(sim, record.key)) == 1


def test_retry_after_longer_than_the_cap_is_capped(sim):
    waits: list[float] = []
    erp = CloudErp(sim.url, base_backoff_s=0.01, max_backoff_s=0.5, sleep=waits.append)
    try:
        sim.faults(burst_429=1, retry_after_s=60)
        erp.upsert(sample("price", 6), source_version=1, idempotency_key=new_key())
    finally:
        erp.close()
    assert waits == [0.5]


def test_added_latency_slows_writes_but_changes_nothing_else(sim, cloud):
    sim.faults(latency_ms=30)
    record = sample("shipment", 7)
    started = time.perf_counter()
    assert cloud.upsert(record, source_version=1, idempotency_key=new_key()) == Applied(
        "shipment", record.key, 1)
    assert time.perf_counter() - started >= 0.06, "a read and a write, 30 ms each"
    assert len(coexist_writes(sim, record.key)) == 1


def test_random_faults_on_many_writes_never_apply_one_twice_nor_drop_one(sim, cloud):
    sim.faults(error_rate=0.1, error_after_rate=0.1, drop_rate=0.1, timeout_rate=0.05,
               burst_429=2, retry_after_s=0, hang_s=5, seed=7)
    outcomes = {}
    for n in range(30):
        record = sample("customer", 100 + n)
        try:
            outcomes[record.key] = cloud.upsert(record, source_version=1,
                                                idempotency_key=new_key())
        except CloudTechnicalError as exc:
            outcomes[record.key] = exc
    sim.faults()
    written = Counter(c["number"] for c in sim.changes())
    assert max(written.values()) == 1, "never twice"
    for number, outcome in outcomes.items():
        if isinstance(outcome, Applied):
            assert written[number] == 1, f"{number} reported applied but not written"
        else:
            assert isinstance(outcome, TechnicalError), outcome


def test_a_batch_hit_by_a_dropped_connection_applies_each_record_once(sim, cloud):
    records = [sample("product", 200 + n) for n in range(50)]
    sim.faults(next=["drop:write", "drop:write"], hang_s=5)
    results = cloud.upsert_many([(r, 1, new_key()) for r in records])
    assert results == [Applied("product", r.key, 1) for r in records]
    written = Counter(c["number"] for c in sim.changes())
    assert written == Counter(r.key for r in records)
    assert list(cloud.stream("product")) == sorted(records, key=lambda r: r.key)


def test_an_export_cut_mid_stream_resumes_behind_the_last_record(sim, cloud):
    records = [sample("inventory", n) for n in range(600)]  # more than one export chunk
    for i in range(0, 600, 200):
        cloud.upsert_many([(r, 1, new_key()) for r in records[i:i + 200]])
    sim.faults(next=["drop:read"])
    retries_before = cloud.retries
    streamed = list(cloud.stream("inventory"))
    assert cloud.retries == retries_before + 1, "the stream was cut once and resumed"
    assert streamed == sorted(records, key=lambda r: r.key)


def test_an_upsert_right_after_a_read_skips_its_own_read_but_never_writes_over_a_newer_etag(
        cloud, sim):
    record = sample("customer", 1, 0)
    cloud.upsert(record, source_version=5, idempotency_key=new_key())
    assert cloud.get("customer", record.key) is not None
    # Someone edits the record between our read and our write: the held etag is stale.
    sim.person_upsert(sample("customer", 1, 2), "someone")
    mine = sample("customer", 1, 3)
    assert cloud.upsert(mine, source_version=6, idempotency_key=new_key()) == Applied(
        "customer", record.key, 6)
    assert cloud.get("customer", record.key) == mine
    writes = [c for c in sim.changes() if c["number"] == record.key]
    assert [c["clientId"] for c in writes] == [COEXIST_WRITER, "someone", COEXIST_WRITER]


def test_a_batched_upsert_never_overwrites_an_edit_made_between_its_read_and_its_write(
        cloud, sim):
    """The 412 of ``upsert_many`` answers Changed with the fresh state (issue 9): before, it
    re-sent the write unconditioned and the version check alone let it overwrite."""
    ours = [sample("customer", 30 + n) for n in range(3)]
    cloud.upsert_many([(r, 1, new_key()) for r in ours])
    theirs = ours[1].model_copy(update={"name": "Typed By A Person"})
    real = cloud._batch

    def batch_then_a_person_edits(operations, headers=None):
        answers = real(operations, headers)
        if all(op["method"] == "GET" for op in operations):
            sim.person_upsert(theirs, PERSON)  # between the batch's read and its write
        return answers

    cloud._batch = batch_then_a_person_edits
    newer = [r.model_copy(update={"name": f"Routed {r.key}"}) for r in ours]
    results = cloud.upsert_many([(r, 2, new_key()) for r in newer])
    assert [type(r) for r in results] == [Applied, Changed, Applied]
    assert results[1].current.writer == PERSON
    assert cloud.get("customer", ours[1].key).name == "Typed By A Person"
    assert cloud.get("customer", ours[0].key).name == f"Routed {ours[0].key}"


def test_a_batched_upsert_honours_repair_and_its_revision_condition(cloud, sim):
    record = sample("customer", 40)
    cloud.upsert_many([(record, 3, new_key())])
    sim.person_upsert(record.model_copy(update={"name": "Stray Edit"}), PERSON)
    etag = cloud.get_current("customer", record.key).revision
    # An equal version applies only as a repair (issue 11 item 6: it used to be ignored).
    assert cloud.upsert_many([(record, 3, new_key())]) == [Stale("customer", record.key, 3, 3)]
    assert cloud.upsert_many([(record, 3, new_key(), "W/\"other\"")], repair=True)[0] == \
        Changed("customer", record.key, "W/\"other\"", cloud.get_current("customer", record.key))
    assert cloud.upsert_many([(record, 3, new_key(), etag)], repair=True) == \
        [Applied("customer", record.key, 3)]
    assert cloud.get("customer", record.key) == record
