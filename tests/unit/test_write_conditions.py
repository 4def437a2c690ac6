"""Writes conditioned on what the target holds (issue 9 item 1), on the fakes.

The decision table of ``workers.router.handlers.decide_target_changed``, one test per
branch, and both reproductions of issue 9 with the real capture loop, outbox and
handlers (the ERPs in memory, the state in SQLite).  On the code before this change the
reproductions end with the older edit in the SoR and no exception.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from bus.envelope import new_envelope
from coexistence.canonical import decode
from coexistence.flags import FlagSource
from coexistence.ports import COEXIST_WRITER, Applied, Changed, Stale
from coexistence.router import routed_version
from coexistence.writes import StrayWrite, SwitchConflict
from tests.support.router_harness import Harness
from workers.erp_memory import InMemoryErp
from workers.router import handlers, observed, queues
from workers.xref_sql import SqlXref

BASE = decode("customer", {
    "schema_version": 2, "key": "10003", "name": "Acme Supply", "status": "active",
    "currency": "USD", "credit_limit": "1000.00", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST",
})


def limit(value: str, key: str = "10003"):
    return BASE.model_copy(update={"credit_limit": Decimal(value), "key": key})


@pytest.fixture
def h(tmp_path):
    harness = Harness.on_sqlite(tmp_path / "state.db")
    harness.set_mode("customer", "shadow")
    harness.legacy.person_upsert(BASE, "JSMITH")
    harness.settle()
    assert harness.cloud.get("customer", "10003") == BASE
    yield harness
    harness.engine.dispose()


def conflicts(h) -> list[SwitchConflict]:
    return [exc for _, _, exc in h.business_errors if isinstance(exc, SwitchConflict)]


def others(h) -> list:
    return [exc for _, _, exc in h.business_errors if not isinstance(exc, SwitchConflict)]


def limits(h, key: str = "10003") -> tuple[Decimal, Decimal]:
    return (h.legacy.get("customer", key).credit_limit, h.cloud.get("customer", key).credit_limit)


# ---------------------------------------------------------------- the reproductions


def test_forward_a_write_routed_before_the_switch_never_overwrites_the_new_sors_edit(h):
    h.paused.add(queues.WRITE_ACTOR["cloud"])          # the only worker stops
    h.legacy.person_upsert(limit("7777.03"), "JSMITH")  # its write to the cloud waits
    h.settle()
    h.set_mode("customer", "cloud")                     # the switch (capture caught up)
    h.cloud.person_upsert(limit("4242.00"), "cloud.user")  # the new SoR's edit
    h.paused.clear()                                    # the worker starts again
    h.settle()
    assert limits(h) == (Decimal("4242.00"), Decimal("4242.00"))
    [conflict] = conflicts(h)
    text = str(conflict)
    assert "customer 10003" in text and "cloud is the system of record" in text
    assert "refused 7777.03 vs kept 4242.00" in text and "cloud.user" in text
    assert "flag version 1" in text and "flag version 2" in text
    assert others(h) == []


def test_rollback_a_write_routed_before_the_rollback_never_overwrites_legacys_edit(h):
    h.set_mode("customer", "cloud")
    h.settle()
    h.paused.add(queues.WRITE_ACTOR["legacy"])
    h.cloud.person_upsert(limit("5555.00"), "cloud.user")
    h.settle()
    h.set_mode("customer", "shadow")                    # the rollback
    h.legacy.person_upsert(limit("6666.00"), "JSMITH")
    h.paused.clear()
    h.settle()
    assert limits(h) == (Decimal("6666.00"), Decimal("6666.00"))
    [conflict] = conflicts(h)
    assert "refused 5555.00 vs kept 6666.00" in str(conflict) and "JSMITH" in str(conflict)
    assert others(h) == []


def test_a_write_delayed_across_a_switch_and_its_rollback_is_stale_over_the_sor_edit(h):
    """Shadow target holding an SoR edit routed after the write: refused as stale."""
    h.paused.add(queues.WRITE_ACTOR["cloud"])
    h.legacy.person_upsert(limit("7000.00"), "JSMITH")
    h.settle()
    h.set_mode("customer", "cloud")
    h.cloud.person_upsert(limit("8000.00"), "cloud.user")
    h.settle()                                          # reaches legacy (a shadow now)
    h.set_mode("customer", "shadow")                    # rolled back, the write still waits
    h.paused.clear()
    h.settle()
    assert limits(h) == (Decimal("8000.00"), Decimal("8000.00"))
    assert h.business_errors == []


# ---------------------------------------------------------------- the decision table


def write(h, value: str, flag_version: int, source_version: int, kind=queues.KIND_UPSERT,
          target="cloud", message_id=None):
    env = new_envelope(domain="customer", kind=kind, key="10003",
                       payload={"record": limit(value).model_dump(mode="json")},
                       source_system="legacy", source_version=source_version,
                       flag_version=flag_version, message_id=message_id)
    erp = h.cloud if target == "cloud" else h.legacy
    return handlers.apply_write(env, erp, lambda *a: None, h.write_context())


def test_a_state_coexist_made_is_written_under_the_version_check_alone(h):
    assert h.cloud.get_current("customer", "10003").writer == COEXIST_WRITER
    assert isinstance(write(h, "1.00", 5, 1), Applied)
    assert isinstance(write(h, "2.00", 4, 1), Stale)
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("1.00")


def test_a_shadow_holding_someones_edit_is_written_the_stray_path(h):
    h.cloud.person_upsert(limit("3.00"), "cloud.user")   # not captured: a stray in the making
    assert isinstance(write(h, "4.00", 5, 1), Applied)
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("4.00")


def test_the_sor_holding_a_stray_capture_observed_is_overwritten(h):
    h.paused.add(queues.WRITE_ACTOR["cloud"])
    h.cloud.person_upsert(limit("3.00"), "cloud.user")   # a stray into the shadow ...
    h.settle()                                           # ... captured; its repair waits
    with h.engine.connect() as conn:
        seen = observed.get_observed(conn, "cloud", "customer", "10003")
    assert seen.classification == observed.STRAY and seen.writer == "cloud.user"
    h.set_mode("customer", "cloud")
    h.paused.clear()
    h.settle()                                           # the repair lands in the new SoR
    assert limits(h) == (Decimal("1000.00"), Decimal("1000.00"))
    assert [type(e) for _, _, e in h.business_errors] == [StrayWrite]


def test_the_sor_holding_an_edit_not_captured_yet_refuses_the_write(h):
    h.set_mode("customer", "cloud")
    h.cloud.person_upsert(limit("3.00"), "cloud.user")
    with pytest.raises(SwitchConflict, match="not captured yet"):
        write(h, "4.00", 1, 99)
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("3.00")


def test_the_sor_holding_a_captured_sor_edit_refuses_the_write(h):
    h.set_mode("customer", "cloud")
    h.cloud.person_upsert(limit("3.00"), "cloud.user")
    for loop in h.loops:
        loop.drain()
    with pytest.raises(SwitchConflict, match="captured as sor_edit under flag version 2"):
        write(h, "4.00", 1, 99)


def test_the_sor_holding_a_channels_write_refuses_the_write(h):
    h.set_mode("customer", "cloud")
    h.cloud.upsert(limit("3.00"), source_version=routed_version(2, 1),
                   idempotency_key="crm-1", writer=queues.COMMAND_WRITERS["crm"])
    for loop in h.loops:
        loop.drain()
    with pytest.raises(SwitchConflict, match="captured as channel"):
        write(h, "4.00", 2, 50)


def test_a_delete_is_refused_over_a_newer_edit_in_the_sor(h):
    h.set_mode("customer", "cloud")
    h.cloud.person_upsert(limit("3.00"), "cloud.user")
    with pytest.raises(SwitchConflict, match="refused: delete"):
        write(h, "4.00", 1, 99, kind=queues.KIND_DELETE)
    assert h.cloud.get("customer", "10003") is not None


def test_a_duplicate_over_a_persons_later_edit_is_stale_not_a_conflict(h):
    h.set_mode("customer", "cloud")
    assert isinstance(write(h, "4.00", 1, 99, message_id="m-1"), Applied)
    h.cloud.person_upsert(limit("3.00"), "cloud.user")
    assert isinstance(write(h, "4.00", 1, 99, message_id="m-1"), Stale)
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("3.00")


def test_an_edit_landing_between_the_read_and_the_write_is_decided_again(h):
    h.set_mode("customer", "cloud")
    real_upsert = h.cloud.upsert
    answers = []

    def racing_upsert(record, **kw):
        if not answers:   # a person saves just after coexist read the record
            h.cloud.person_upsert(limit("3.00"), "cloud.user")
        answers.append(real_upsert(record, **kw))
        return answers[-1]

    h.cloud.upsert = racing_upsert
    with pytest.raises(SwitchConflict, match="refused 4.00 vs kept 3.00"):
        write(h, "4.00", 1, 99)
    assert isinstance(answers[0], Changed) and answers[0].current.writer == "cloud.user"
    assert h.cloud.get("customer", "10003").credit_limit == Decimal("3.00")


def test_without_a_write_context_someones_edit_is_never_overwritten(h):
    h.cloud.person_upsert(limit("3.00"), "cloud.user")
    env = new_envelope(domain="customer", kind=queues.KIND_UPSERT, key="10003",
                       payload={"record": limit("4.00").model_dump(mode="json")},
                       source_system="legacy", source_version=9, flag_version=9)
    with pytest.raises(SwitchConflict, match="flag state unknown"):
        handlers.apply_write(env, h.cloud, lambda *a: None)


# ---------------------------------------------------------------- observations and xref


def test_capture_and_the_writers_record_what_they_observed_and_link_created_records(h):
    with h.engine.connect() as conn:
        legacy_seen = observed.get_observed(conn, "legacy", "customer", "10003")
        cloud_seen = observed.get_observed(conn, "cloud", "customer", "10003")
        rows = conn.execute(select(observed.ObservedRevision.__table__)).all()
    assert (legacy_seen.classification, legacy_seen.writer) == (observed.SOR_EDIT, "JSMITH")
    assert (cloud_seen.classification, cloud_seen.writer) == (observed.COEXIST, COEXIST_WRITER)
    assert cloud_seen.revision == h.cloud.get_current("customer", "10003").revision
    assert len(rows) == 2
    # The shadow write created the record in the cloud: its ids are linked.
    entry = SqlXref(h.engine).by_canonical("customer", "10003")
    assert entry is not None and entry.legacy_key == "0000010003"


# ---------------------------------------------------------------- channel commands


class EditsOnceAfterARead(InMemoryErp):
    """An SoR in which a person saves an edit right after coexist's first read."""

    def __init__(self, edit):
        super().__init__("legacy")
        self.edit, self.reads = edit, 0

    def _edited(self):
        self.reads += 1
        if self.reads == 1:
            self.person_upsert(self.edit, "JSMITH")

    def get(self, domain, key):
        record = super().get(domain, key)
        self._edited()
        return record

    def read_many(self, domain, keys):
        answer = super().read_many(domain, keys)
        self._edited()
        return answer


def test_a_command_never_overwrites_a_persons_edit_made_between_its_read_and_its_write():
    """``route_command`` conditioned on the revision its merge was built on (issue 9): the
    person's credit limit stays, the CRM's contact lands.  Before, the merge over the older
    read was written unconditioned and the credit limit went back to 1000.00."""
    sor = EditsOnceAfterARead(limit("2500.00"))
    sor.upsert(BASE, source_version=routed_version(0, 1), idempotency_key="seed")
    command = new_envelope(
        domain="customer", kind=queues.KIND_COMMAND, key="10003",
        payload={"record": BASE.model_copy(update={"contact_name": "Ada Okafor"})
                 .model_dump(mode="json"), "channel": "crm"},
        source_system="crm", source_version=7)
    result = handlers.route_command(command, {"legacy": sor, "cloud": InMemoryErp("cloud")},
                                    FlagSource(), lambda *a: None)
    held = sor.get("customer", "10003")
    assert held.credit_limit == Decimal("2500.00") and held.contact_name == "Ada Okafor"
    assert isinstance(result, Applied)
    assert sor.get_current("customer", "10003").writer == "COEXCRM"


# -------------------------------------------------- repairs and the last routed version


def test_a_strays_repair_waits_until_the_sor_holds_the_write_routed_to_it_before_the_switch(h):
    """``--no-wait`` with the cloud writer stopped: a legacy SoR edit (2000.00) waits for the
    cloud when the cloud becomes the SoR; a person then edits legacy (a stray).  Its repair
    must not copy the cloud's older state (1000.00) into legacy before the routed write has
    landed in the cloud: before, legacy ended 1000.00 and the cloud 2000.00, unequal, with
    only the StrayWrite recorded."""
    h.paused.add(queues.WRITE_ACTOR["cloud"])
    h.legacy.person_upsert(limit("2000.00"), "JSMITH")
    h.settle()                                     # routed to the cloud; its writer is stopped
    h.set_mode("customer", "cloud")                # --no-wait: the write crosses the switch
    h.legacy.person_upsert(limit("3000.00"), "JSMITH")   # a stray into what is the shadow now
    h.settle()                                     # captured; its repair waits for the cloud
    repairs = [env for actor, env in h.pending if env.kind == queues.KIND_REPAIR]
    assert [env.payload.get("reread") for env in repairs] == [True]
    assert "record" not in repairs[0].payload      # the cloud's 1000.00 is not the SoR's state
    assert h.retries >= 1 and limits(h) == (Decimal("3000.00"), Decimal("1000.00"))
    h.paused.clear()
    h.settle()
    assert limits(h) == (Decimal("2000.00"), Decimal("2000.00"))
    assert [type(e) for _, _, e in h.business_errors] == [StrayWrite]


def test_a_repair_that_reaches_the_sor_after_a_later_routed_change_writes_nothing_over_it(h):
    """A stray's repair decided under an older last routed version lands after its target
    became the SoR and the SoR's own later edit was routed: it writes nothing over the SoR,
    whose state is re-sent to the shadow.  (Before, the repair's older state was tried over
    the SoR: here refused as a SwitchConflict, both ERPs still 3000.00; over a state coexist
    had written there it was applied, an echo never routed on: the divergence the replayed
    case in test_switch_properties.py shows.)"""
    h.set_mode("customer", "cloud")
    h.paused.add(queues.WRITE_ACTOR["legacy"])
    h.legacy.person_upsert(limit("2000.00"), "JSMITH")   # a stray; its repair (1000.00) waits
    h.settle()
    h.set_mode("customer", "shadow")               # --no-wait: legacy is the SoR again
    h.paused.clear()
    h.legacy.person_upsert(limit("3000.00"), "JSMITH")   # the SoR's edit, routed to the cloud
    for loop in h.loops:
        loop.drain()
    h.relay.run_once(10_000)
    h.pending.sort(key=lambda p: p[1].kind != queues.KIND_REPAIR)   # the repair lands first
    h.settle()
    assert limits(h) == (Decimal("3000.00"), Decimal("3000.00"))
    assert [type(e) for _, _, e in h.business_errors] == [StrayWrite]


def test_a_strays_repair_does_not_wait_for_a_version_no_write_to_the_sor_carries(h):
    """The record's last routed version can be one the SoR never gets: a change routed to
    other targets only (a channel such as the CRM) moves ``record_route.last_version``
    too.  With every write to the SoR settled (as the settle ledger marks them once
    handled), a stray's repair reads the SoR and applies; before, it waited for that
    version (``SorBehind``) until its retries ran out -- the chaos run's rollback drain
    stalled on such repairs."""
    from sqlalchemy import text

    h.set_mode("customer", "cloud")
    h.settle()
    with h.engine.begin() as conn:
        # What a channel-only route of a later change leaves: a higher last version...
        conn.execute(text("UPDATE record_route SET last_version = last_version + :n "
                          "WHERE domain = 'customer' AND key = '10003'"),
                     {"n": routed_version(0, 50)})
        # ...and every routed message handled (the SettleLedger's mark).
        conn.execute(text("UPDATE outbox SET settled_at = CURRENT_TIMESTAMP, "
                          "outcome = 'handled' WHERE settled_at IS NULL"))
    h.legacy.person_upsert(limit("2000.00"), "JSMITH")   # a stray into the shadow
    h.settle()
    assert limits(h) == (BASE.credit_limit, BASE.credit_limit)
    assert h.retries == 0
    assert [type(e) for _, _, e in h.business_errors] == [StrayWrite]
