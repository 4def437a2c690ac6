"""The streaming backfill against the simulator: what changes while it runs.

A record someone creates in the target between the backfill's read and its write is
kept (counted stale); a record whose route moved meanwhile (capture routed a person's
edit of the SoR) is read again, so its new state goes out under its new version;
mismatches and deletes go through the outbox; a record no repair fixes is left alone."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from bus.outbox import backlog
from coexistence.flags import FULL, FlagSource, FlagState, Mode
from coexistence.ports import COEXIST_WRITER
from coexistence.reconcile.tolerances import normalise
from coexistence.router import routed_version
from coexistence.sample import iter_customers
from tests.integration.test_reconcile import write_cloud, write_legacy
from tests.support import cloud_sim
from tests.support.state import upgraded_state
from workers.cloud_erp import CloudErp
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.reconcile import checkpoint
from workers.reconcile.backfill import Backfill
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader
from workers.router.state import put_route
from workers.xref_sql import SqlXref

simulator, sim = cloud_sim.simulator, cloud_sim.sim


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path, sim):
    """Legacy SQLite, the simulator, and coexist's state on SQLite or PostgreSQL."""
    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    state = create_state_engine(upgraded_state(url))
    erp = CloudErp(sim.url)
    yield engine, state, erp
    erp.close()
    state.dispose()
    engine.dispose()


def _backfill(engine, state, erp, run_id="run-1", **kwargs) -> Backfill:
    return Backfill("customer", LegacyReader(LegacyErp(engine)), CloudReader(erp), state,
                    FlagSource({}), run_id=run_id, **kwargs)


def test_what_changes_during_a_backfill_is_never_overwritten_with_an_older_state(
        world, sim, monkeypatch):
    engine, state, erp = world
    records = list(iter_customers(6, seed=8))
    write_legacy(engine, records)
    legacy = LegacyErp(engine)
    created_meanwhile, edited_meanwhile = records[1], records[4]
    person_copy = created_meanwhile.model_copy(update={"credit_limit": Decimal(1)})
    edited = legacy.get("customer", edited_meanwhile.key).model_copy(
        update={"credit_limit": edited_meanwhile.credit_limit + 42})
    new_version = routed_version(0, 7)
    run = _backfill(engine, state, erp)
    items, original = run.legacy.items, erp.upsert_many

    def edited_after_it_was_read(domain, after=None, **kwargs):
        for item in items(domain, after=after, **kwargs):
            yield item
            if item.key == edited.key:
                # Someone edits the record in the legacy ERP; capture routes the edit.
                legacy.person_upsert(edited, "JSMITH")
                with Session(state) as session:
                    put_route(session.connection(), "customer", edited.key, pinned_sor=None,
                              last_version=new_version)
                    session.commit()

    def created_before_the_write(batch):
        # Between the backfill's read of both streams and its write, a person creates one
        # of the records in the cloud.
        sim.person_upsert(person_copy, "ana.cloud")
        monkeypatch.setattr(erp, "upsert_many", original)
        return original(batch)

    monkeypatch.setattr(run.legacy, "items", edited_after_it_was_read)
    monkeypatch.setattr(erp, "upsert_many", created_before_the_write)
    report = run.run()
    assert report.written["cloud"] == 5 and report.stale == 1, report.to_dict()
    assert erp.get("customer", created_meanwhile.key).credit_limit == 1  # the person's
    assert erp.get("customer", edited.key).credit_limit == edited.credit_limit
    assert erp.get_current("customer", edited.key).version == new_version
    xref = SqlXref(state)
    assert xref.by_canonical("customer", records[0].key).legacy_key is not None
    assert xref.by_canonical("customer", created_meanwhile.key) is None  # not ours


def test_mismatches_and_deletes_go_through_the_outbox_and_unrepairable_keys_are_left(world):
    engine, state, erp = world
    records = list(iter_customers(8, seed=9))
    write_legacy(engine, records[:6])
    cloud = [records[0], records[1].model_copy(update={"credit_limit": Decimal(3)}), records[2],
             records[6]]  # 3, 4, 5 missing in the cloud; 6 only there (a delete); 1 differs
    write_cloud(erp, cloud)
    report = _backfill(engine, state, erp, skip_keys={records[5].key}).run()
    assert report.written == {"cloud": 2, "legacy": 0}
    assert report.enqueued == 2 and backlog(state, "customer") == 2
    assert report.equal == 2 and report.skipped == 1
    assert erp.get("customer", records[5].key) is None
    assert erp.get("customer", records[1].key).credit_limit == 3  # the outbox repairs it
    # A second run finds nothing new to write and no checkpoint left behind.
    again = _backfill(engine, state, erp, "run-2", skip_keys={records[5].key}).run()
    assert again.written == {"cloud": 0, "legacy": 0} and again.resumed_after is None
    assert again.enqueued == 2  # the outbox has not been drained: still differing


def test_in_cloud_only_the_legacy_erp_is_backfilled_from_the_cloud_in_batches(world):
    engine, state, erp = world
    records = list(iter_customers(450, seed=10))
    write_cloud(erp, records)
    flags = FlagSource({"customer": FlagState("customer", Mode.CLOUD_ONLY, Mode.CLOUD_ONLY,
                                              FULL, 3)})
    run = Backfill("customer", LegacyReader(LegacyErp(engine)), CloudReader(erp), state,
                   flags, run_id="run-c")
    report = run.run()
    assert report.written == {"cloud": 0, "legacy": 450}, report.to_dict()
    legacy = LegacyErp(engine)
    cloud = {r.key: r for r in erp.stream("customer")}
    # The legacy ERP holds each cloud record in its own normal form, written by coexist.
    held = {r.key: r for r in legacy.stream("customer")}
    assert held == {k: normalise(r) for k, r in cloud.items()}
    assert {legacy.get_current("customer", k).writer for k in held} == {COEXIST_WRITER}
    assert SqlXref(state).by_canonical("customer", records[0].key).legacy_key is not None
    # Nothing left to do: a second run writes nothing.
    again = Backfill("customer", LegacyReader(LegacyErp(engine)), CloudReader(erp), state,
                     flags, run_id="run-d").run()
    assert again.written == {"cloud": 0, "legacy": 0} and again.equal == 450


def test_a_first_batch_that_never_committed_in_either_direction_starts_from_the_first_key(
        world):
    engine, state, erp = world
    records = list(iter_customers(5, seed=12))
    write_legacy(engine, records)
    with state.begin() as conn:  # both targets marked by a run killed inside its first batch
        for target in ("cloud", "legacy"):
            checkpoint.put(conn, "customer", target, last_key="", pending_hi=records[2].key,
                           written=0, run_id="killed")
    report = _backfill(engine, state, erp).run()
    assert report.resumed_after is None and report.written["cloud"] == 5


def test_a_backfill_past_its_deadline_commits_what_it_wrote_and_a_rerun_resumes(world, sim):
    """``--timeout``: at the deadline the backfill stops taking records, the batches it
    wrote are committed with their checkpoint, and a rerun writes only the rest."""
    import time

    from workers.reconcile.backfill import BATCH_RECORDS, BackfillTimeout

    engine, state, erp = world
    records = list(iter_customers(10 * BATCH_RECORDS, seed=12))
    write_legacy(engine, records)
    run = _backfill(engine, state, erp, deadline=time.monotonic() + 3600)
    batches, original = [], erp.upsert_many

    def deadline_passes_after_two_batches(batch):
        batches.append(len(batch))
        if len(batches) == 2:
            run.deadline = time.monotonic()  # the reading thread sees it on its next batch
        return original(batch)

    erp.upsert_many = deadline_passes_after_two_batches
    with pytest.raises(BackfillTimeout):
        run.run()
    erp.upsert_many = original
    in_cloud = {c.key for c in erp.stream("customer")}
    first = sum(r.key in in_cloud for r in records)
    assert 2 * BATCH_RECORDS <= first < len(records), (first, batches)
    with state.connect() as conn:
        mark = checkpoint.load(conn, "customer")["cloud"]
    assert mark.written == first and mark.last_key  # every write it made is committed
    again = _backfill(engine, state, erp, "run-2").run()
    assert again.resumed_after == mark.last_key
    assert again.written["cloud"] == len(records) - first
    writes = {}
    after = 0
    while page := sim.changes(after, 1000):
        for entry in page:
            writes[entry["number"]] = writes.get(entry["number"], 0) + 1
        after = page[-1]["cursor"]
    assert len(writes) == len(records) and set(writes.values()) == {1}
    assert SqlXref(state).by_canonical("customer", records[-1].key).legacy_key is not None


def test_batches_written_out_of_order_commit_in_order_and_never_past_one_not_written(
        world, sim):
    """The writers are parallel: a slow first batch is still written when the second
    fails and later ones succeed.  The checkpoint never moves past the batch that was
    not written (its records would be skipped on resume); a rerun writes the rest, each
    record once, and links those written without their state."""
    import threading

    from workers.cloud_erp import CloudTechnicalError
    from workers.reconcile.backfill import BATCH_RECORDS, WRITERS

    assert WRITERS >= 3  # what this test is about
    engine, state, erp = world
    records = list(iter_customers(5 * BATCH_RECORDS, seed=13))
    write_legacy(engine, records)
    first_keys = {r.key for r in records[:BATCH_RECORDS]}
    second_keys = {r.key for r in records[BATCH_RECORDS:2 * BATCH_RECORDS]}
    third_written = threading.Event()
    original = erp.upsert_many

    def out_of_order(batch):
        keys = {item[0].key for item in batch}
        if keys & first_keys:
            third_written.wait(10)  # finishes after a later batch
        elif keys & second_keys:
            third_written.wait(10)
            raise CloudTechnicalError("cloud ERP unreachable")
        results = original(batch)
        if not keys & (first_keys | second_keys):
            third_written.set()
        return results

    erp.upsert_many = out_of_order
    with pytest.raises(CloudTechnicalError):
        _backfill(engine, state, erp).run()
    erp.upsert_many = original
    with state.connect() as conn:
        mark = checkpoint.load(conn, "customer")["cloud"]
    assert mark.last_key < min(second_keys), mark  # not past the batch never written
    assert mark.pending_hi is not None and mark.pending_hi >= max(first_keys)
    in_cloud = {c.key for c in erp.stream("customer")}
    assert not in_cloud & second_keys and in_cloud - first_keys  # a later one was written
    again = _backfill(engine, state, erp, "run-2").run()
    assert again.written["cloud"] == len(records) - len(in_cloud)
    writes = {}
    after = 0
    while page := sim.changes(after, 1000):
        for entry in page:
            writes[entry["number"]] = writes.get(entry["number"], 0) + 1
        after = page[-1]["cursor"]
    assert len(writes) == len(records) and set(writes.values()) == {1}
    linked = sum(SqlXref(state).by_canonical("customer", r.key) is not None for r in records)
    assert linked == len(records)
