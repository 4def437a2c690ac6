"""``coexist reconcile`` end to end: table/JSONL/json/csv output, exit codes, the stored run
the cutover guards read, repair dry run and enqueue, unreachable systems."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bus.outbox import backlog
from coexistence.sample import iter_customers
from tests.integration.test_reconcile import seeded, write_cloud, write_legacy
from tests.support import cloud_sim
from tests.support.state import upgraded_state
from workers.cli import cli
from workers.cloud_erp import CloudErp
from workers.db import create_state_engine
from workers.flags.facts import SqlPreflightFacts
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema
from workers.reconcile.store import RunStore

simulator, sim = cloud_sim.simulator, cloud_sim.sim


@pytest.fixture
def env(tmp_path, sim, monkeypatch):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    state_url = upgraded_state(f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_LEGACY_URL", legacy_url)
    monkeypatch.setenv("COEXIST_STATE_URL", state_url)
    monkeypatch.setenv("COEXIST_CLOUD_URL", sim.url)
    for name in ("COEXIST_REDIS_URL", "COEXIST_CLOUD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    state = create_state_engine(state_url)
    upgrade_schema(state)
    state.dispose()
    erp = CloudErp(sim.url)
    yield {"legacy": engine, "cloud": erp, "state_url": state_url, "tmp": tmp_path}
    erp.close()
    engine.dispose()


def run(*args):
    return CliRunner().invoke(cli, ["reconcile", *args], catch_exceptions=False)


def test_equal_erps_exit_0_and_the_run_is_stored_for_the_guards(env):
    legacy = list(iter_customers(40, seed=5))
    write_legacy(env["legacy"], legacy)
    write_cloud(env["cloud"], legacy)
    result = run("customer", "product", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("domain,rows_legacy,rows_cloud")
    assert lines[1].startswith(f"customer,{len(legacy)},{len(legacy)},0,0,0,{len(legacy)},")
    assert lines[2].startswith("product,0,0,0,0,0,0,")
    state = create_state_engine(env["state_url"])
    last = SqlPreflightFacts(state).last_reconciliation("customer")
    assert last is not None and last.drift_pct == 0.0
    assert RunStore(state).last("customer")["status"] == "ok"


def test_drift_exits_1_writes_jsonl_and_stores_findings(env):
    legacy, cloud, _, expected = seeded(80)
    write_legacy(env["legacy"], legacy)
    write_cloud(env["cloud"], cloud)
    out = env["tmp"] / "findings.jsonl"
    result = run("customer", "--output", str(out), "--format", "json")
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["runs"][0]["drift_pct"] > 0
    assert "legacy normalisation: text upper-cased" in body["runs"][0]["tolerances"]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    # No xref here: the missing-in-cloud record of the seed is paired by nothing else.
    kinds = sorted(f["kind"] for f in written)
    assert kinds.count("mismatch") == 3 and "duplicate" in kinds and "key_mismatch" in kinds
    state = create_state_engine(env["state_url"])
    store = RunStore(state)
    run_row = store.last("customer")
    assert run_row["status"] == "drift" and run_row["findings"] == len(written)
    assert len(store.findings(run_row["id"])) == len(written)
    table = run("customer")
    assert table.exit_code == 1
    text = " ".join(table.output.split())  # rich wraps at the runner's 80 columns
    assert "customer tolerances: legacy normalisation:" in text
    assert "legacy normalisation: text upper-cased" in text
    assert "findings (first" in text and "mismatch" in text
    # Within the allowed drift: exit 0.
    assert run("customer", "--max-drift", "50", "--format", "csv").exit_code == 0
    # --limit keeps N findings; the counts stay complete.
    limited = json.loads(run("customer", "--limit", "2", "--format", "json").output)
    assert len(limited["findings"]) == 2
    assert limited["runs"][0]["mismatched"] == 3


def test_repair_shows_what_it_would_do_and_with_yes_enqueues_from_the_sor(env):
    legacy, cloud, _, _ = seeded(80)
    write_legacy(env["legacy"], legacy)
    write_cloud(env["cloud"], cloud)
    dry = run("customer", "--repair", "--format", "csv")
    assert dry.exit_code == 1
    assert "would repair: customer" in dry.output
    assert "in cloud from legacy" in dry.output  # legacy mode: the legacy ERP is the SoR
    state = create_state_engine(env["state_url"])
    assert backlog(state, "customer") == 0
    cloud_before = {r.key for r in env["cloud"].stream("customer")}
    done = run("customer", "--repair", "--yes", "--format", "csv")
    assert "3 repairs enqueued in the outbox" in done.output, done.output
    # The record missing in the cloud is written by the streaming backfill itself; the
    # delete (missing in legacy) and the 2 mismatched records go through the outbox.
    assert backlog(state, "customer") == 3
    assert "backfill wrote 1 into cloud" in done.output
    created = {r.key for r in env["cloud"].stream("customer")} - cloud_before
    # Only it: the key mismatch (legacy 91060 is cloud 92060) is not "repaired" into a
    # duplicate customer.
    assert created == {legacy[3].key}
    held = LegacyErp(env["legacy"]).get("customer", legacy[3].key)
    assert env["cloud"].get("customer", legacy[3].key) == held
    state.dispose()


def test_unreachable_cloud_or_unknown_domain_exit_2_with_one_line(env, monkeypatch):
    bad = run("nonsense")
    assert bad.exit_code == 2 and "unknown domain 'nonsense'" in bad.output
    monkeypatch.setenv("COEXIST_CLOUD_URL", "http://127.0.0.1:9")
    down = run("customer")
    assert down.exit_code == 2
    assert "cloud ERP (COEXIST_CLOUD_URL=http://127.0.0.1:9) unreachable" in down.output
    assert "Traceback" not in down.output


def test_a_run_past_its_timeout_exits_2_and_is_stored_as_timed_out(env):
    write_legacy(env["legacy"], list(iter_customers(10, seed=5)))
    result = run("customer", "--timeout", "0.000001")
    assert result.exit_code == 2
    assert "reconcile customer: timed out after 1e-06 s" in result.output
    last = RunStore(create_state_engine(env["state_url"])).last("customer")
    assert last["status"] == "timeout" and last["drift_pct"] is None
    # A timed-out run gives the guards no drift figure to trust (the guard names it).
    seen = SqlPreflightFacts(create_state_engine(env["state_url"])).last_reconciliation(
        "customer")
    assert seen is not None and (seen.status, seen.drift_pct, seen.measured) == (
        "timeout", None, False)


def test_the_drift_limit_is_the_one_configured_for_the_guard_and_status(env, monkeypatch):
    legacy, cloud, _, _ = seeded(80)
    write_legacy(env["legacy"], legacy)
    write_cloud(env["cloud"], cloud)
    result = run("customer", "--format", "json")
    drift = json.loads(result.output)["runs"][0]["drift_pct"]
    assert 0.1 < drift < 50 and result.exit_code == 1  # the default limit is 0.1 %
    monkeypatch.setenv("COEXIST_MAX_DRIFT_PCT", "50")
    result = run("customer", "--format", "json")
    assert result.exit_code == 0, result.output
    state = create_state_engine(env["state_url"])
    assert RunStore(state).last("customer")["max_drift_pct"] == 50
    assert run("customer", "--max-drift", "0.5").exit_code == 1  # the option still wins
