"""``coexist cutover`` through click's CliRunner on a real SQLite state database."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import insert
from sqlalchemy.orm import Session

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from bus.outbox import add_to_outbox
from coexistence.router import CLOUD, LEGACY
from coexistence.sample import iter_customers
from tests.support.state import upgraded_state
from workers.bootstrap import App
from workers.cli import cli
from workers.config import Settings
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.reconcile.store import ReconcileRun
from workers.router.state import RecordRoute


@pytest.fixture
def engine(tmp_path, monkeypatch):
    for name in ("COEXIST_STATE_URL", "COEXIST_REDIS_URL", "COEXIST_FREEZE",
                 "COEXIST_MAX_DRIFT_PCT", "COEXIST_CUTOVER_MAX_BACKLOG", "COEXIST_ENV_FILE",
                 "COEXIST_CONFIG", "COEXIST_LEGACY_URL", "COEXIST_CLOUD_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_ACTOR", "alice")
    engine = create_state_engine(upgraded_state(Settings.from_env().state_url))
    yield engine
    engine.dispose()


def reconciled(engine, domain: str, drift_pct: float = 0.0, at: datetime | None = None) -> str:
    """A finished reconciliation run, as `coexist reconcile` stores it; returns its id."""
    at = at or datetime.now(UTC)
    run_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(insert(ReconcileRun.__table__).values(
            id=run_id, domain=domain, started_at=at, finished_at=at,
            status="ok" if drift_pct == 0 else "drift", drift_pct=drift_pct))
    return run_id


def queued(engine, domain: str, flag_version: int = 0) -> None:
    """A write to the cloud ERP routed under ``flag_version`` that no worker has applied."""
    env = new_envelope(domain=domain, kind="upsert", key="K1", payload={},
                       source_system="legacy", source_version=1, flag_version=flag_version)
    with Session(engine) as session:
        add_to_outbox(session, env, actor_name="write_cloud", queue_name="coexist.write.cloud")
        session.commit()


def run(*args: str):
    return CliRunner().invoke(cli, ["cutover", *args])


def status(engine, exit_code: int = 0) -> dict[str, dict]:
    result = run("status", "--format", "json")
    assert result.exit_code == exit_code, result.output
    return {r["domain"]: r for r in json.loads(result.output.splitlines()[0])["domains"]}


def test_status_shows_every_domain_in_legacy_at_version_zero(engine):
    rows = status(engine)
    assert list(rows) == ["customer", "product", "price", "inventory", "order", "shipment",
                          "invoice"]
    assert rows["order"]["mode"] == "legacy" and rows["order"]["version"] == 0
    assert rows["order"]["last_drift_pct"] is None
    table = run("status")
    assert table.exit_code == 0 and "customer" in table.output and "missing" in table.output


def test_a_healthy_domain_moves_forward_and_the_change_is_audited(engine):
    reconciled(engine, "customer", 0.0)
    result = run("set", "customer", "shadow", "--reason", "pilot week 1")
    assert result.exit_code == 0, result.output
    assert "customer is now shadow at flag version 1" in result.output
    assert status(engine)["customer"]["mode"] == "shadow"
    [entry] = json.loads(run("history", "customer", "--format", "json").output)
    assert (entry["actor"], entry["reason"], entry["forced"]) == ("alice", "pilot week 1", False)
    assert (entry["from"]["mode"], entry["to"]["mode"], entry["version"]) == (
        "legacy", "shadow", 1)


def test_a_forward_move_without_a_reconciliation_is_refused_and_nothing_changes(engine):
    result = run("set", "customer", "shadow", "--reason", "go")
    assert result.exit_code == 1
    assert "FAIL drift: no reconciliation run for customer" in result.output
    assert "override with --force" in result.output
    assert status(engine)["customer"]["version"] == 0
    assert json.loads(run("history", "--format", "json").output) == []


def test_plan_lists_the_checks_and_exits_non_zero_when_one_fails(engine):
    reconciled(engine, "customer", 5.0)
    ExceptionStore(engine).record(
        failure_class="business", queue_name="q", actor_name="a", message_id="m1",
        envelope=None, raw=None, message=None, error_type="StrayWrite",
        error_message="typed into legacy", call_site="x", attempts=1, domain="customer")
    result = run("plan", "customer", "shadow")
    assert result.exit_code == 1
    assert "FAIL drift: last reconciliation" in result.output and "5% > threshold" in result.output
    assert "FAIL exceptions: 1 open exceptions for customer" in result.output
    assert "PASS backlog" in result.output
    ok = run("plan", "product", "shadow")
    assert ok.exit_code == 1  # product has no reconciliation either
    reconciled(engine, "product", 0.0)
    assert run("plan", "product", "shadow").exit_code == 0


def test_force_overrides_the_guards_and_is_audited_as_forced(engine):
    result = run("set", "customer", "cloud", "--reason", "vendor deadline", "--force",
                 "--actor", "bob")
    assert result.exit_code == 0, result.output
    assert "FORCED one step" in result.output and "(forced)" in result.output
    [entry] = json.loads(run("history", "--format", "json").output)
    assert entry["forced"] is True and entry["actor"] == "bob"
    assert any(o.startswith("drift:") for o in entry["overridden"])
    assert any(o.startswith("one step:") for o in entry["overridden"])


def test_a_reason_is_mandatory(engine):
    assert run("set", "customer", "shadow", "--force").exit_code == 2
    result = run("set", "customer", "shadow", "--force", "--reason", "  ")
    assert result.exit_code == 2 and "reason" in result.output


def test_the_actor_comes_from_the_environment_or_is_asked_for(engine, monkeypatch):
    monkeypatch.delenv("COEXIST_ACTOR")
    monkeypatch.delenv("USER", raising=False)
    result = run("set", "customer", "shadow", "--force", "--reason", "r")
    assert result.exit_code == 2 and "--actor" in result.output
    monkeypatch.setenv("USER", "carol")
    assert run("set", "customer", "shadow", "--force", "--reason", "r").exit_code == 0
    assert json.loads(run("history", "--format", "json").output)[0]["actor"] == "carol"


def test_an_upstream_domain_that_has_not_moved_blocks_its_dependants(engine):
    reconciled(engine, "price", 0.0)
    result = run("set", "price", "shadow", "--reason", "r")
    assert result.exit_code == 1
    assert "upstream behind shadow: customer (legacy), product (legacy)" in result.output


def test_a_freeze_window_blocks_forward_moves(engine, monkeypatch):
    reconciled(engine, "customer", 0.0)
    now = datetime.now(UTC)
    window = f"{(now - timedelta(hours=1)).isoformat()}/{(now + timedelta(hours=1)).isoformat()}"
    monkeypatch.setenv("COEXIST_FREEZE", window)
    result = run("set", "customer", "shadow", "--reason", "r")
    assert result.exit_code == 1 and "FAIL freeze: freeze window" in result.output


def test_a_malformed_freeze_window_is_a_one_line_error(engine, monkeypatch):
    monkeypatch.setenv("COEXIST_FREEZE", "next week")
    result = run("status")
    assert result.exit_code == 2
    assert "COEXIST_FREEZE='next week' (environment): freeze window 'next week'" in result.output
    assert "Traceback" not in result.output


def test_a_backlog_blocks_a_forward_move(engine):
    reconciled(engine, "customer", 0.0)
    queued(engine, "customer")
    plan = run("plan", "customer", "shadow")
    assert plan.exit_code == 1
    assert ("FAIL backlog: 1 customer message(s) routed but not yet applied (0 in the broker, "
            "1 unsent) [coexist.write.cloud: 1]") in plan.output
    result = run("set", "customer", "shadow", "--reason", "r", "--wait-timeout", "0.2")
    assert result.exit_code == 1
    assert "WAIT backlog" in result.output
    assert ("customer: 1 message(s) routed under flag version <= 0 not yet applied (0 in the "
            "broker, 1 unsent) [coexist.write.cloud: 1] after 0.2 s; the flag was not "
            "changed") in result.output
    assert "--no-wait" in result.output
    row = status(engine)["customer"]
    assert (row["mode"], row["version"], row["backlog"]) == ("legacy", 0, 1)
    assert row["unsettled"]["by_flag_version"] == {"0": 1}


def test_set_and_rollback_wait_for_work_routed_so_far_and_change_nothing_when_it_stays(engine):
    run("set", "customer", "shadow", "--reason", "r", "--force")
    queued(engine, "customer", flag_version=1)
    result = run("rollback", "customer", "--reason", "undo", "--wait-timeout", "0.2")
    assert result.exit_code == 1
    assert "customer: 1 message(s) routed under flag version <= 1 not yet applied" in \
        result.output
    assert "the flag was not changed" in result.output
    assert status(engine)["customer"]["mode"] == "shadow"
    result = run("rollback", "customer", "--reason", "undo anyway", "--no-wait")
    assert result.exit_code == 0, result.output
    assert "drained" not in result.output and "not waiting (--no-wait, audited)" in result.output
    [entry] = [e for e in json.loads(run("history", "--format", "json").output)
               if e["action"] == "rollback"]
    assert entry["forced"] is True
    assert entry["overridden"] == [
        "wait: skipped (--no-wait); customer: 1 message(s) routed under flag version <= 1 not "
        "yet applied (0 in the broker, 1 unsent) [coexist.write.cloud: 1]"]
    # Now a v1 write is outstanding under v2: cutover status needs attention (exit 1).
    row = status(engine, exit_code=1)["customer"]
    assert (row["mode"], row["unsettled"]["by_flag_version"]) == ("legacy", {"1": 1})
    out = json.loads(run("status", "customer", "--format", "json").output.splitlines()[0])
    assert out["attention"] == [
        "customer: 1 (0 in the broker, 1 unsent) message(s) routed under flag version(s) "
        "older than 2 not yet applied [coexist.write.cloud: 1]"]


def routed(engine, domain: str, at: datetime) -> None:
    """The router routed a change of ``domain`` at ``at`` (its routing state row)."""
    with engine.begin() as conn:
        conn.execute(insert(RecordRoute.__table__).values(domain=domain, key="K9",
                                                          last_version=1, updated_at=at))


def test_a_stale_reconciliation_is_refused_and_a_fresh_one_passes_naming_the_run(engine):
    now = datetime.now(UTC)
    old = reconciled(engine, "customer", 0.0, at=now - timedelta(hours=2))
    routed(engine, "customer", now - timedelta(hours=1))
    plan = run("plan", "customer", "shadow", "--format", "json")
    assert plan.exit_code == 1
    [drift] = [c for c in json.loads(plan.output.splitlines()[0])["checks"]
               if c["name"] == "drift"]
    assert not drift["ok"]
    assert f"the last reconciliation (run {old} finished" in drift["detail"]
    assert "is stale: it started before the last routed customer change" in drift["detail"]
    refused = run("set", "customer", "shadow", "--reason", "r")
    assert refused.exit_code == 1 and "refused, drift failed" in refused.output
    fresh = reconciled(engine, "customer", 0.0)
    done = run("set", "customer", "shadow", "--reason", "r")
    assert done.exit_code == 0, done.output
    assert f"PASS drift: last reconciliation (run {fresh} finished" in done.output
    assert "started after the last routed customer change" in done.output
    assert status(engine)["customer"]["last_reconciliation"]["id"] == fresh


def with_customers(n: int = 40) -> App:
    """An app whose legacy ERP (an in-memory fake, the SoR in legacy/shadow) holds the
    sample's first ``n`` customers (regions NA-EAST, NA-WEST, EMEA, LATAM)."""
    legacy, cloud = InMemoryErp("legacy"), InMemoryErp("cloud")
    for c in iter_customers(n):
        legacy.person_upsert(c, "JSMITH")
        cloud.person_upsert(c, "ana.cloud")
    return App(Settings.from_env(), erps={LEGACY: legacy, CLOUD: cloud})


def cutover_with(app: App, *args: str):
    return CliRunner().invoke(cli, ["cutover", *args], obj=app)


def test_a_percent_and_segment_rollout_is_shown_and_rolled_back_in_one_step(engine):
    app = with_customers()
    cutover_with(app, "set", "customer", "shadow", "--reason", "r", "--force")
    result = cutover_with(app, "set", "customer", "cloud", "--percent", "10", "--segment",
                          "region=NA-WEST", "--segment", "region=NA-EAST", "--reason",
                          "canary", "--force")
    assert result.exit_code == 0, result.output
    row = status(engine)["customer"]
    assert (row["mode"], row["base_mode"], row["rollout"]) == (
        "cloud", "shadow", "10% and region in NA-EAST,NA-WEST")
    assert run("rollback", "customer", "--reason", "canary failed").exit_code == 0
    row = status(engine)["customer"]
    assert (row["mode"], row["rollout"], row["version"]) == ("shadow", "all", 3)


def test_a_segment_value_no_record_has_is_refused_naming_the_known_values(engine):
    app = with_customers()
    result = cutover_with(app, "set", "customer", "shadow", "--segment", "region=NOWHERE",
                          "--reason", "r", "--force")
    assert result.exit_code == 2
    assert ("segment region=NOWHERE: no customer record has this value; known region values: "
            "EMEA, LATAM, NA-EAST, NA-WEST") in result.output
    assert status(engine)["customer"]["version"] == 0
    result = cutover_with(app, "plan", "customer", "shadow", "--segment", "warehouse=WH01")
    assert result.exit_code == 2 and "customer records have no warehouse" in result.output


def test_plan_says_how_many_records_would_move(engine):
    app = with_customers()
    reconciled(engine, "customer", 0.0)
    result = cutover_with(app, "plan", "customer", "shadow", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["records"], out["moving"]) == (40, 40)
    result = cutover_with(app, "plan", "customer", "shadow", "--segment", "region=EMEA")
    assert "records that would move: 7 of 40" in result.output
    # Without a readable SoR the plan still answers, and says why the count is unknown.
    result = run("plan", "customer", "shadow")
    assert result.exit_code == 0, result.output
    assert "records that would move: unknown (no legacy database at" in result.output


def test_a_bad_segment_or_mode_is_a_clear_error(engine):
    bad = run("set", "customer", "shadow", "--segment", "colour=red", "--reason", "r")
    assert bad.exit_code == 2 and "'colour' is not one of" in bad.output
    assert run("set", "customer", "hybrid", "--reason", "r").exit_code == 2
    unknown = run("plan", "vendor", "shadow")
    assert unknown.exit_code == 2 and "domain 'vendor'" in unknown.output


def test_rollback_from_cloud_only_offers_the_backfill_instead(engine):
    for mode in ("shadow", "cloud", "cloud_only"):
        assert run("set", "customer", mode, "--reason", "r", "--force").exit_code == 0
    result = run("rollback", "customer", "--reason", "regret")
    assert result.exit_code == 1
    assert "coexist reconcile customer --repair" in result.output
    assert status(engine)["customer"]["mode"] == "cloud_only"
    reconciled(engine, "customer", 0.0, at=datetime.now(UTC) + timedelta(seconds=1))
    result = run("rollback", "customer", "--reason", "backfilled, now roll back")
    assert result.exit_code == 0, result.output
    assert status(engine)["customer"]["mode"] == "cloud"


def test_rollback_from_legacy_is_a_clear_error(engine):
    result = run("rollback", "customer", "--reason", "r")
    assert result.exit_code == 2 and "nothing to roll back" in result.output


def test_plan_speaks_json_for_scripts(engine):
    reconciled(engine, "customer", 0.0)
    result = run("plan", "customer", "shadow", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["allowed"] is True and out["direction"] == "forward"
    assert {c["name"] for c in out["checks"]} == {"drift", "exceptions", "backlog", "upstream",
                                                  "freeze"}
    assert out["to"]["mode"] == "shadow" and out["to"]["version"] == 1
