"""Cutover operations called from code (as the demo and end-to-end tests do)."""

from __future__ import annotations

import pytest

from coexistence.flags import FlagState, Mode, Rollout
from coexistence.preflight import GuardPolicy
from tests.unit.test_flags_transitions import FakeFacts
from workers.db import create_state_engine
from workers.flags import SqlFlagStore
from workers.flags.ops import Cutover, DrainTimeout, TransitionRefused
from workers.migrate import upgrade as upgrade_schema


@pytest.fixture
def cutover(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield Cutover(SqlFlagStore(engine), FakeFacts(), GuardPolicy())
    engine.dispose()


def test_a_phased_cutover_runs_in_dependency_order_and_rolls_back(cutover):
    for domain in ("customer", "product", "price", "inventory", "order", "shipment", "invoice"):
        for mode in (Mode.SHADOW, Mode.CLOUD):
            cutover.set(domain, mode, actor="team", reason=f"{domain} to {mode}")
    assert {s.mode for s in cutover.flags().values()} == {Mode.CLOUD}
    back = cutover.rollback("order", actor="team", reason="drift in order totals")
    assert (back.mode, back.version) == (Mode.SHADOW, 3)


def test_a_refused_change_carries_its_plan_and_writes_nothing(cutover):
    with pytest.raises(TransitionRefused, match="upstream failed") as err:
        cutover.set("order", Mode.SHADOW, actor="team", reason="too early")
    assert [c.name for c in err.value.plan.failed] == ["upstream"]
    assert cutover.flags()["order"] == FlagState.initial("order")


def test_rolling_back_out_of_cloud_only_is_refused_until_backfilled(cutover):
    for mode in (Mode.SHADOW, Mode.CLOUD, Mode.CLOUD_ONLY):
        cutover.set("customer", mode, actor="team", reason="go")
    with pytest.raises(TransitionRefused, match="coexist reconcile customer --repair"):
        cutover.rollback("customer", actor="team", reason="regret")
    forced = cutover.rollback("customer", actor="team", reason="accepting stale legacy",
                              force=True)
    assert forced.mode == Mode.CLOUD
    assert cutover.store.history("customer")[0].forced is True


def test_the_drain_wait_gives_up_with_a_clear_message(cutover):
    cutover.facts.backlogs["customer"] = 4
    state = cutover.set("customer", Mode.SHADOW, Rollout(5000), actor="team", reason="canary",
                        force=True)
    with pytest.raises(DrainTimeout, match="the flag is set .* customer: 4 message"):
        cutover.wait_for_drain(state, timeout_s=0.1)
    cutover.facts.backlogs["customer"] = 0
    cutover.wait_for_drain(state, timeout_s=0.1)


def test_a_busy_domain_moves_what_is_routed_while_the_switch_waits_is_drained_after(tmp_path):
    """The switch waits for what was routed when it started waiting; a person's change
    routed meanwhile does not hold it (the wait after the switch takes it)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from bus import ledger
    from bus.envelope import new_envelope
    from bus.outbox import add_to_outbox
    from workers.flags.facts import SqlPreflightFacts
    from workers.reconcile.store import ReconcileRun

    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    cutover = Cutover(SqlFlagStore(engine), SqlPreflightFacts(engine), GuardPolicy())
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(ReconcileRun.__table__).values(
            id="r1", domain="customer", started_at=now - timedelta(seconds=5), finished_at=now,
            status="ok", drift_pct=0.0, tolerances="", detail=""))

    def route(key: str) -> str:
        env = new_envelope(domain="customer", kind="upsert", key=key, payload={},
                           source_system="legacy", source_version=1, flag_version=0)
        with Session(engine) as session:
            add_to_outbox(session, env, actor_name="write_cloud",
                          queue_name="coexist.write.cloud")
            session.commit()
        return env.message_id

    first_write = route("10001")
    said: list[str] = []
    later: list[str] = []

    def worker_and_person(line: str) -> None:
        # While the switch waits: a worker applies the first write, a person's next change
        # is routed.
        said.append(line)
        if not later:
            ledger.mark_settled(engine, first_write, ledger.HANDLED)
            later.append(route("10002"))

    first = cutover.drain_before("customer", timeout_s=10, progress=worker_and_person)
    assert first.total == 1 and said == [
        "customer: 1 message(s) routed under flag version <= 0 not yet applied (0 in the "
        "broker, 1 unsent) [coexist.write.cloud: 1]; waiting..."]
    assert not cutover.plan("customer", Mode.SHADOW).allowed()  # counts the new one
    p = cutover.plan("customer", Mode.SHADOW, drained_to=first.newest_id)
    assert p.allowed(), p.failed
    [backlog] = [c for c in p.checks if c.name == "backlog"]
    assert backlog.detail.startswith("0 customer message(s) routed before the wait but not "
                                     "yet applied")
    state = cutover.apply(p, actor="team", reason="busy domain")
    with pytest.raises(DrainTimeout, match="the flag is set .* customer: 1 message"):
        cutover.wait_for_drain(state, timeout_s=0.3)
    ledger.mark_settled(engine, later[0], ledger.HANDLED)
    cutover.wait_for_drain(state, timeout_s=1)
    engine.dispose()
