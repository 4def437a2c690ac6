"""The backfill into an empty ERP, with no cold reconciliation first
(``workers.reconcile.backfill_empty``): its report is the one a cold reconciliation
gives on the same data, it writes every record once, it leaves both digest indexes
built (a warm reconciliation afterwards finds what a cold one finds), and ``coexist
reconcile --repair --yes`` takes it only when one side is empty beyond the checkpoint."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from coexistence.flags import FlagSource
from coexistence.reconcile.findings import Kind
from coexistence.sample import iter_customers
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.integration.test_reconcile import write_cloud, write_legacy
from tests.support import cloud_sim
from tests.support.state import upgraded_state
from workers.cloud_erp import CloudErp
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.reconcile import checkpoint, index
from workers.reconcile.backfill import BATCH_RECORDS
from workers.reconcile.backfill_empty import MODE, IntoEmpty, empty_side
from workers.reconcile.by_index import reconcile_by_index
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader
from workers.reconcile.runner import reconcile_domain
from workers.reconcile.store import RunStore
from workers.xref_sql import SqlXref

simulator, sim = cloud_sim.simulator, cloud_sim.sim

N = 2 * BATCH_RECORDS + 57


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path, sim, monkeypatch):
    """Legacy SQLite, the simulator, coexist's state on SQLite or PostgreSQL, and the
    CLI's environment pointing at them."""
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    state_url = upgraded_state(url)
    state = create_state_engine(state_url)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_LEGACY_URL", legacy_url)
    monkeypatch.setenv("COEXIST_STATE_URL", state_url)
    monkeypatch.setenv("COEXIST_CLOUD_URL", sim.url)
    for name in ("COEXIST_REDIS_URL", "COEXIST_CLOUD_TOKEN", "COEXIST_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    erp = CloudErp(sim.url)
    yield engine, state, erp
    erp.close()
    state.dispose()
    engine.dispose()


def _legacy_with_every_kind(engine, state) -> list:
    """N customers, one of them a second copy of another under its own number (a
    duplicate by natural key), one that does not translate (status code 'Z'), and an
    xref entry of a record neither ERP holds (an orphan)."""
    records = list(iter_customers(N, seed=31))
    records[7] = records[6].model_copy(update={"key": records[7].key})
    write_legacy(engine, records)
    t = LEGACY_TRANSLATORS["customer"]
    with engine.begin() as conn:
        conn.execute(text('UPDATE "CUSTMAST" SET "CUSTSTAT" = \'Z\' WHERE "CUSTNO" = :k'),
                     {"k": t.legacy_key(records[20].key)})
    SqlXref(state).link("customer", "0999999999", legacy_key="0999999999")
    return records


def _readers(engine, erp):
    return LegacyReader(LegacyErp(engine)), CloudReader(erp)


def _cold(engine, erp, state):
    found = []
    report = reconcile_domain("customer", *_readers(engine, erp), mode="full",
                              xref=SqlXref(state).entries("customer"), on_finding=found.append)
    return report, sorted((f.kind, f.key, f.side or "") for f in found)


def _cloud_writes(sim) -> dict[str, int]:
    writes: dict[str, int] = {}
    after = 0
    while page := sim.changes(after, 1000):
        for entry in page:
            writes[entry["number"]] = writes.get(entry["number"], 0) + 1
        after = page[-1]["cursor"]
    return writes


def test_a_backfill_into_an_empty_cloud_reports_what_a_cold_reconciliation_would(
        world, sim):
    engine, state, erp = world
    records = _legacy_with_every_kind(engine, state)
    expected, expected_findings = _cold(engine, erp, state)  # read only: the oracle
    assert expected.counts.untranslatable == 1 and expected.counts.duplicates == 1
    assert expected.counts.orphans == 1 and expected.counts.exclusive_legacy == N - 1

    assert empty_side(*_readers(engine, erp), state, "customer") == "cloud"
    found = []
    run = IntoEmpty("customer", *_readers(engine, erp), state, FlagSource({}), empty="cloud",
                    run_id="run-1", on_finding=found.append)
    done = run.run()
    assert run.reconciled.mode == MODE
    assert run.reconciled.counts == expected.counts
    assert sorted((f.kind, f.key, f.side or "") for f in found) == expected_findings

    # Every record that translates is in the cloud, written once, linked in the xref.
    assert done.written == {"cloud": N - 1, "legacy": 0} and done.skipped == 1
    held = LegacyErp(engine)
    legacy = {r.key: held.get("customer", r.key) for r in records if r is not records[20]}
    cloud = {r.key: r for r in erp.stream("customer")}
    assert cloud == legacy  # all but the one that does not translate
    writes = _cloud_writes(sim)
    assert set(writes) == set(cloud) and set(writes.values()) == {1}
    linked = sum(SqlXref(state).by_canonical("customer", k) is not None for k in cloud)
    assert linked == len(cloud)
    with state.connect() as conn:
        assert checkpoint.load(conn, "customer") == {}

    # Both digest indexes are built and right: a warm run finds what a cold one finds.
    assert index.built(state, "customer")
    after_cold, after_findings = _cold(engine, erp, state)
    warm_found = []
    warm, _ = reconcile_by_index("customer", *_readers(engine, erp), state,
                                 on_finding=warm_found.append, sample=0)
    assert after_cold.counts.exclusive_legacy == 0 and after_cold.counts.unchanged == N - 1
    assert warm.counts == after_cold.counts
    assert sorted((f.kind, f.key, f.side or "") for f in warm_found) == after_findings


def test_a_resumed_backfill_into_an_empty_cloud_writes_only_the_rest(world, sim):
    """Interrupted at its last batch (a cloud failure), the rerun finds the cloud empty
    beyond the checkpoint, resumes there, and counts only what it streamed."""
    from workers.cloud_erp import CloudTechnicalError

    engine, state, erp = world
    records = list(iter_customers(N, seed=32))
    write_legacy(engine, records)
    # Into a cloud known empty the creates go out without a read (``create_many``).
    batches, original = [], erp.create_many

    def fails_on_the_last_batch(batch):
        batches.append(len(batch))
        if any(item[0].key == records[-1].key for item in batch):
            raise CloudTechnicalError("cloud ERP unreachable")
        return original(batch)

    erp.create_many = fails_on_the_last_batch
    first = IntoEmpty("customer", *_readers(engine, erp), state, FlagSource({}),
                      empty="cloud", run_id="run-1")
    with pytest.raises(CloudTechnicalError):
        first.run()
    erp.create_many = original
    with state.connect() as conn:
        mark = checkpoint.load(conn, "customer")["cloud"]
    in_cloud = sum(1 for _ in erp.stream("customer"))
    # The second batch may be written and not committed (its keys are under pending_hi).
    # (The writers are parallel: the second may not have been sent before the failure.)
    assert BATCH_RECORDS <= mark.written <= in_cloud <= 2 * BATCH_RECORDS
    assert mark.pending_hi is not None
    # The cloud now holds records, none beyond the checkpoint: still one-sided.
    assert empty_side(*_readers(engine, erp), state, "customer") == "cloud"
    again = IntoEmpty("customer", *_readers(engine, erp), state, FlagSource({}),
                      empty="cloud", run_id="run-2")
    done = again.run()
    assert done.resumed_after == mark.last_key
    assert done.written["cloud"] == N - in_cloud
    assert done.linked_on_resume == in_cloud - mark.written
    rest = sum(r.key > mark.last_key for r in records)
    assert again.reconciled.counts.rows_legacy == rest
    assert any("resumed" in t for t in again.reconciled.tolerances)
    assert set(_cloud_writes(sim).values()) == {1} and len(_cloud_writes(sim)) == N
    # A resumed run rebuilt no index: the next reconciliation is cold (and builds both).
    assert not index.built(state, "customer")


def test_into_an_empty_cloud_a_record_created_or_deleted_meanwhile_is_left_as_it_is(
        world, sim, monkeypatch):
    """The creates go out without a read, each conditioned on its number being unused:
    a record a person created in the cloud after the stream began is not overwritten,
    and one created and deleted meanwhile is not revived (the tombstone is kept)."""
    from decimal import Decimal

    engine, state, erp = world
    records = list(iter_customers(6, seed=34))
    write_legacy(engine, records)
    created, deleted = records[1], records[3]
    person_copy = created.model_copy(update={"credit_limit": Decimal(1)})
    original = erp.create_many
    reads = []

    def meanwhile(batch):
        sim.person_upsert(person_copy, "ana.cloud")
        sim.person_upsert(deleted, "ana.cloud")
        sim.person_delete("customer", deleted.key, "ana.cloud")
        monkeypatch.setattr(erp, "create_many", original)
        return original(batch)

    monkeypatch.setattr(erp, "create_many", meanwhile)
    monkeypatch.setattr(erp, "upsert_many", lambda *a, **k: reads.append(a) or [])
    run = IntoEmpty("customer", *_readers(engine, erp), state, FlagSource({}),
                    empty="cloud", run_id="run-1")
    report = run.run()
    assert reads == []  # not the read-then-write path
    assert report.written["cloud"] == 4 and report.changed == 2, report.to_dict()
    assert erp.get("customer", created.key).credit_limit == 1  # the person's record
    assert erp.get("customer", deleted.key) is None  # still deleted
    current = erp.get_current("customer", deleted.key)
    assert current is not None and not current.exists and current.writer == "ana.cloud"
    writes = _cloud_writes(sim)
    assert writes[created.key] == 1 and writes[deleted.key] == 2  # the person's only
    assert SqlXref(state).by_canonical("customer", created.key) is None  # not ours


def _cli(*args):
    from workers.cli import cli

    return CliRunner().invoke(cli, ["reconcile", "customer", "--no-progress", *args],
                              catch_exceptions=False)


def test_repair_yes_skips_the_cold_reconciliation_only_when_one_side_is_empty(world, sim):
    engine, state, erp = world
    records = list(iter_customers(N, seed=33))
    write_legacy(engine, records[:-1])
    result = _cli("--repair", "--yes", "--format", "json")
    assert result.exit_code == 1, result.output  # the drift it found (and repaired)
    body = json.loads(result.stdout)
    (summary,) = body["runs"]
    assert summary["mode"] == MODE and summary["exclusive_legacy"] == N - 1
    assert summary["backfill"]["written"]["cloud"] == N - 1
    assert {f["kind"] for f in body["findings"]} == {str(Kind.MISSING_IN_CLOUD)}
    last = RunStore(state).last("customer")
    assert last["status"] == "drift" and last["mode"] == MODE
    assert len(RunStore(state).findings(last["id"])) == N - 1

    # Both sides hold records now: the next --repair --yes compares first (--deep: the
    # record below is written past capture, which the indexes built above cannot see).
    write_legacy(engine, records[-1:])
    result = _cli("--repair", "--yes", "--format", "json", "--deep")
    assert result.exit_code == 1, result.output
    (summary,) = json.loads(result.stdout)["runs"]
    assert summary["mode"] != MODE and summary["exclusive_legacy"] == 1
    assert summary["backfill"]["written"]["cloud"] == 1


def test_an_empty_legacy_erp_is_backfilled_from_the_cloud_in_one_pass(world):
    from coexistence.flags import FULL, FlagState, Mode

    engine, state, erp = world
    records = list(iter_customers(BATCH_RECORDS + 9, seed=34))
    write_cloud(erp, records)
    assert empty_side(*_readers(engine, erp), state, "customer") == "legacy"
    flags = FlagSource({"customer": FlagState("customer", Mode.CLOUD_ONLY, Mode.CLOUD_ONLY,
                                              FULL, 3)})
    run = IntoEmpty("customer", *_readers(engine, erp), state, flags, empty="legacy",
                    run_id="run-c")
    done = run.run()
    assert done.written == {"cloud": 0, "legacy": len(records)}
    assert run.reconciled.counts.exclusive_cloud == len(records)
    assert run.reconciled.counts.rows_legacy == 0
    assert {r.key for r in LegacyErp(engine).stream("customer")} == {r.key for r in records}
    assert index.built(state, "customer")


def test_a_side_is_not_empty_when_it_holds_a_record_beyond_the_checkpoint(world):
    engine, state, erp = world
    records = list(iter_customers(6, seed=35))
    write_legacy(engine, records)
    write_cloud(erp, records[:2])
    assert empty_side(*_readers(engine, erp), state, "customer") is None
    with state.begin() as conn:  # an interrupted backfill wrote up to records[1]
        checkpoint.put(conn, "customer", "cloud", last_key=records[0].key,
                       pending_hi=records[1].key, written=1, run_id="killed")
    assert empty_side(*_readers(engine, erp), state, "customer") == "cloud"
    with engine.begin() as conn:
        conn.execute(text('DELETE FROM "CUSTSITE"'))
        conn.execute(text('DELETE FROM "CUSTMAST"'))
    write_cloud(erp, records[2:3])  # beyond the checkpoint, in the cloud
    assert empty_side(*_readers(engine, erp), state, "customer") == "legacy"
