"""Batched, coalesced ERP writes (issue 12 item 2) on the fakes.

``handlers.apply_writes`` is what the ERP writer actors run on the batch consumer: one
read and one conditioned write call per batch, and every case that needs a decision left
to ``apply_write`` one message at a time.  Capture coalesces the changes of one key in a
batch to one routed write.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from bus.envelope import new_envelope
from coexistence.canonical import decode
from coexistence.ports import COEXIST_WRITER
from coexistence.router import CLOUD, LEGACY, routed_version
from coexistence.writes import SwitchConflict
from tests.support.router_harness import Harness
from workers.erp_memory import InMemoryErp
from workers.router import handlers, observed, queues

BASE = decode("customer", {
    "schema_version": 2, "key": "10003", "name": "Acme Supply", "status": "active",
    "currency": "USD", "credit_limit": "1000.00", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST",
})


def customer(key: str, value: str = "1000.00"):
    return BASE.model_copy(update={"key": key, "credit_limit": Decimal(value)})


class Counting(InMemoryErp):
    """The fake, counting its batch calls; ``after_read`` runs right after a batch read."""

    def __init__(self, system: str):
        super().__init__(system)
        self.reads = self.writes = 0
        self.after_read = None

    def read_many(self, domain, keys):
        self.reads += 1
        answer = super().read_many(domain, keys)
        if self.after_read is not None:
            self.after_read, hook = None, self.after_read
            hook()
        return answer

    def write_many(self, ops):
        self.writes += 1
        return super().write_many(ops)


def upsert(record, version: int, flag_version: int = 1, **extra):
    return new_envelope(domain=record.domain, kind=queues.KIND_UPSERT, key=record.key,
                        payload={"record": record.model_dump(mode="json"), **extra},
                        source_system=LEGACY, source_version=version,
                        flag_version=flag_version)


@pytest.fixture
def h(tmp_path):
    harness = Harness.on_sqlite(tmp_path / "state.db")
    harness.cloud = Counting(CLOUD)
    harness.erps[CLOUD] = harness.cloud
    harness.__post_init__()
    harness.set_mode("customer", "shadow")
    yield harness
    harness.engine.dispose()


def test_a_batch_is_one_read_and_one_write_call_and_every_write_is_observed(h):
    envs = [upsert(customer(str(10000 + n)), 1) for n in range(50)]
    left = handlers.apply_writes(envs, h.cloud, h._send, h.write_context())
    assert left == [] and (h.cloud.reads, h.cloud.writes) == (1, 1)
    assert all(h.cloud.get("customer", e.key) is not None for e in envs)
    with h.engine.connect() as conn:
        seen = observed.get_observed(conn, CLOUD, "customer", "10049")
    assert seen.classification == observed.COEXIST and seen.version == routed_version(1, 1)
    # Delivered again (a lost ack): refused by the version, no write call at all.
    assert handlers.apply_writes(envs, h.cloud, h._send, h.write_context()) == []
    assert (h.cloud.reads, h.cloud.writes) == (2, 1)


def test_what_needs_a_decision_is_left_to_the_single_path_and_neighbours_still_apply(h):
    bad = upsert(customer("10001"), 1)
    bad = bad.model_copy(update={"payload": {"record": {"key": "10001", "name": 7}}})
    repair = new_envelope(domain="customer", kind=queues.KIND_REPAIR, key="10002",
                          payload={"reason": "stray"}, source_system=LEGACY,
                          source_version=1, flag_version=1)
    first, again = upsert(customer("10003"), 1), upsert(customer("10003", "5.00"), 2)
    h.cloud.person_upsert(customer("10004", "42.00"), "c.user")  # someone else's state
    theirs = upsert(customer("10004"), 1)
    fine = upsert(customer("10005"), 1)
    envs = [bad, repair, first, again, theirs, fine]
    left = handlers.apply_writes(envs, h.cloud, h._send, h.write_context())
    assert left == [0, 1, 3]
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("1000.00")
    assert h.cloud.get("customer", "10005") is not None
    # Someone else's state in the shadow (not captured yet): the decision table's stray
    # path, decided with the batch (write over it) under the key apply_write uses.
    assert h.cloud.get("customer", "10004").credit_limit == Decimal("1000.00")
    assert h.cloud.get_current("customer", "10004").writer == COEXIST_WRITER


def test_writes_over_the_shadows_former_sor_edits_go_with_the_batch(h):
    """After a switch, the shadow's records were last written by people while it was the
    SoR: the writes routed over them are decided (the decision table: WRITE) and written
    in the batch, not one message at a time (a chaos run's rollback drained 4,702 such
    writes into the legacy ERP at 7-22/s); delivered again, they are refused by version."""
    h.legacy = Counting(LEGACY)
    h.erps[LEGACY] = h.legacy
    h.__post_init__()
    h.set_mode("customer", "shadow")
    keys = [str(10100 + n) for n in range(20)]
    for key in keys:
        h.legacy.person_upsert(customer(key, "1.00"), "JSMITH")  # SoR edits, routed
    h.settle()
    h.set_mode("customer", "cloud")
    h.paused.add(queues.WRITE_ACTOR[LEGACY])
    for key in keys:
        h.cloud.person_upsert(customer(key, "2.00"), "c.user")  # the SoR now
    h.settle()
    envs = [e for a, e in h.pending if a == queues.WRITE_ACTOR[LEGACY]]
    assert len(envs) == len(keys)
    assert all(h.legacy.get_current("customer", k).writer == "JSMITH" for k in keys)
    left = handlers.apply_writes(envs, h.legacy, h._send, h.write_context())
    assert left == [] and h.legacy.writes == 1
    assert all(h.legacy.get("customer", k).credit_limit == Decimal("2.00") for k in keys)
    assert handlers.apply_writes(envs, h.legacy, h._send, h.write_context()) == []
    assert h.legacy.writes == 1
    assert h.business_errors == []


def test_a_persons_edit_between_the_batchs_read_and_its_write_is_never_overwritten(h):
    """After a switch to the cloud, a person edits the cloud (now the SoR) between the
    batch's read and its write: the conditioned write answers Changed, the message is
    decided alone (a SwitchConflict naming both values) and the person's value stays."""
    h.legacy.person_upsert(BASE, "JSMITH")
    h.settle()
    h.paused.add(queues.WRITE_ACTOR[CLOUD])
    h.legacy.person_upsert(customer("10003", "7777.03"), "JSMITH")
    h.settle()
    [env] = [e for a, e in h.pending if a == queues.WRITE_ACTOR[CLOUD]]
    h.pending.clear()
    h.set_mode("customer", "cloud")
    h.cloud.after_read = lambda: h.cloud.person_upsert(customer("10003", "4242.00"), "c.user")
    h._dispatch_batch(queues.WRITE_ACTOR[CLOUD], [env])
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("4242.00")
    assert h.left_alone == 1
    [(_actor, _env, exc)] = h.business_errors
    assert isinstance(exc, SwitchConflict) and "refused 7777.03 vs kept 4242.00" in str(exc)


def test_changes_of_one_key_in_one_capture_batch_coalesce_to_one_routed_write(h):
    h.paused.add(queues.WRITE_ACTOR[CLOUD])
    for value in ("1.00", "2.00", "3.00"):
        h.legacy.person_upsert(customer("10003", value), "JSMITH")
    h.settle()
    writes = [e for a, e in h.pending if a == queues.WRITE_ACTOR[CLOUD]]
    assert h.captured.coalesced == 2 and len(writes) == 1
    last = h.legacy.read(0, 100)[-1]
    assert writes[0].source_version == last.version
    h.paused.clear()
    h.settle()
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("3.00")
    assert h.cloud.get_current("customer", "10003").writer == COEXIST_WRITER
