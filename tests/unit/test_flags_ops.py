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
