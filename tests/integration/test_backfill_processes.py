"""The streaming backfill as its users run it: ``coexist reconcile --repair --yes`` as an OS
process, killed with SIGKILL (or interrupted with Ctrl-C) mid-run, then run again to the
end.  The cloud simulator's own change feed is the judge: every legacy record is in the
cloud, as the legacy ERP holds it, written exactly once; the xref links every record; the
checkpoint is gone at the end."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from coexistence.sample import iter_customers
from tests.integration.test_reconcile import write_cloud, write_legacy
from tests.support import cloud_sim
from tests.support.processes import Process, coexist_env, wait_until
from tests.support.state import upgraded_state
from workers.cloud_erp import CloudErp
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim

N_CUSTOMERS = 2000
#: Added to every simulator request: the backfill's 15 batches take a few seconds, so
#: the kill lands mid-run on a loaded machine too.
LATENCY_MS = 120


def _checkpoint(state_url: str) -> tuple | None:
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT last_key, written FROM backfill_checkpoint "
                "WHERE domain = 'customer' AND target = 'cloud'")).first()
    except Exception:  # the table is being created by the first run's migration
        return None
    finally:
        engine.dispose()


def _cloud_writes(sim) -> Counter:
    writes: Counter = Counter()
    after = 0
    while True:
        page = sim.changes(after, 1000)
        if not page:
            return writes
        for entry in page:
            if entry["entitySet"] == "customers":
                writes[entry["number"]] += 1
        after = page[-1]["cursor"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cloud_holds", [False, True], ids=["empty-cloud", "cloud-holds-one"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_backfill_killed_mid_run_resumes_and_writes_every_record_exactly_once(
        tmp_path, sim, signum, cloud_holds):
    """An empty cloud takes the one-pass backfill (no reconciliation first, also when
    resumed: the cloud holds nothing beyond the checkpoint); a cloud that holds a record
    of its own (beyond every legacy key: a delete, through the outbox) is compared
    first, and resumed the same way."""
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    state_url = upgraded_state(f"sqlite:///{tmp_path / 'state.db'}")
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    records = list(iter_customers(N_CUSTOMERS + 1, seed=23))
    write_legacy(engine, records[:N_CUSTOMERS])
    own = records[N_CUSTOMERS]
    if cloud_holds:
        write_cloud(CloudErp(sim.url), [own])
    env = coexist_env(tmp_path, legacy_url=legacy_url, cloud_url=sim.url, state_url=state_url)
    args = ["reconcile", "customer", "--repair", "--yes", "--format", "json"]
    sim.faults(latency_ms=LATENCY_MS)
    try:
        first = Process(args, env, tmp_path / "first.log")
        try:
            mark = wait_until(lambda: (_checkpoint(state_url) or (None, 0))[1] >= 400
                              and _checkpoint(state_url), 90,
                              "the first run committed two batches", poll_s=0.02)
            first.signal(signum)
            if signum == signal.SIGKILL:
                assert first.popen.wait(30) == -signal.SIGKILL
            else:
                # Ctrl-C: the batches in flight are finished and committed, then exit 130
                # with one line, no traceback.
                assert first.popen.wait(30) == 130, first.output()[-2000:]
                assert "Traceback" not in first.output()
        finally:
            first.stop()
        killed_at = _checkpoint(state_url)
        assert killed_at is not None and killed_at[1] < N_CUSTOMERS, (mark, killed_at)
        sim.faults(latency_ms=0)
        second = Process(args, env, tmp_path / "second.log")
        assert second.popen.wait(90) == 1, second.output()[-3000:]  # the drift it found
        out = second.output()
        second.stop()
    finally:
        sim.faults(latency_ms=0)
    body = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    backfill = body["runs"][0]["backfill"]
    assert backfill["resumed_after"] == killed_at[0], out[:2000]
    # Compared first: warm (the first run built the indexes before it was stopped).
    assert body["runs"][0]["mode"] == ("index" if cloud_holds else "one-sided")
    assert backfill["enqueued"] == (1 if cloud_holds else 0)  # the delete of ``own``
    assert "backfill customer:" in out  # the plain progress lines (stderr is no terminal)

    # The cloud holds every legacy record, as the legacy ERP holds it...
    legacy = {r.key: r for r in LegacyErp(engine).stream("customer")}
    with CloudErp(sim.url) as erp:
        cloud = {r.key: r for r in erp.stream("customer") if r.key != own.key}
    assert cloud == legacy
    # ...each written once across both runs (no rewrite of what the first run did).
    writes = _cloud_writes(sim)
    assert set(writes) == set(legacy) | ({own.key} if cloud_holds else set())
    assert max(writes.values()) == 1, writes.most_common(3)
    assert backfill["written"]["cloud"] + killed_at[1] <= N_CUSTOMERS
    state = create_engine(state_url)
    with state.connect() as conn:
        linked = conn.execute(text(
            "SELECT count(*) FROM xref WHERE domain = 'customer' AND legacy_key IS NOT NULL"
        )).scalar()
        left = conn.execute(text("SELECT count(*) FROM backfill_checkpoint")).scalar()
    state.dispose()
    engine.dispose()
    assert linked == N_CUSTOMERS  # also those written by the killed run before its commit
    assert left == 0


@pytest.mark.timeout(120)
def test_a_backfill_past_its_timeout_exits_2_with_its_writes_committed_and_a_rerun_ends_it(
        tmp_path, sim):
    """``--timeout`` covers the backfill as well as the comparison: the command stops at
    a batch boundary, keeps what it wrote (checkpoint), says so in one line, exits 2 and
    stores the run as timed out; a rerun writes the rest, each record once."""
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    state_url = upgraded_state(f"sqlite:///{tmp_path / 'state.db'}")
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    write_legacy(engine, list(iter_customers(N_CUSTOMERS, seed=24)))
    env = coexist_env(tmp_path, legacy_url=legacy_url, cloud_url=sim.url, state_url=state_url)
    args = ["reconcile", "customer", "--repair", "--yes", "--format", "json"]
    # 10 batches of two requests each, three writer threads: at least ~6.7 s, twice the
    # timeout (at 300 ms a request, three writers finished inside 3 s, exit 1).
    sim.faults(latency_ms=1000)
    try:
        first = Process([*args, "--timeout", "3"], env, tmp_path / "first.log")
        assert first.popen.wait(60) == 2, first.output()[-2000:]
        out = first.output()
        first.stop()
    finally:
        sim.faults(latency_ms=0)
    assert "timed out after 3 s" in out and "run again to resume" in out, out[-2000:]
    assert "Traceback" not in out
    # Every record it wrote is committed with the checkpoint (none, on a machine so
    # loaded that the deadline passed before the first batch).
    mark = _checkpoint(state_url)
    in_cloud = sum(_cloud_writes(sim).values())
    assert in_cloud < N_CUSTOMERS and in_cloud == (mark[1] if mark is not None else 0)
    state = create_engine(state_url)
    with state.connect() as conn:
        status = conn.execute(text("SELECT status FROM reconcile_run "
                                   "ORDER BY started_at DESC LIMIT 1")).scalar()
    state.dispose()
    assert status == "timeout"
    second = Process(args, env, tmp_path / "second.log")
    assert second.popen.wait(90) == 1, second.output()[-3000:]
    second.stop()
    writes = _cloud_writes(sim)
    assert len(writes) == N_CUSTOMERS and max(writes.values()) == 1
    assert _checkpoint(state_url) is None
    engine.dispose()
