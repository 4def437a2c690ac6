"""Repairs waiting for the SoR (``handlers.SorBehind``) are visible and count as in-flight
work (issue 9 follow-up): ``repair_wait`` rows, what ``coexist status`` / ``cutover
status`` say about them, and the drain of ``cutover set`` waiting for them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bus.exception_store import ExceptionStore
from coexistence.flags import Mode
from coexistence.preflight import GuardPolicy
from coexistence.writes import StrayWrite
from tests.unit.test_write_conditions import h, limit, limits  # noqa: F401  (fixture h)
from workers.db import create_state_engine
from workers.flags import SqlFlagStore
from workers.flags.facts import SqlPreflightFacts
from workers.flags.ops import Cutover, DrainTimeout
from workers.migrate import upgrade as upgrade_schema
from workers.observe.waits_text import waiting_attention
from workers.router import queues, waits


def test_a_repair_waiting_for_the_sor_is_shown_until_it_lands(h):  # noqa: F811
    """The stray's repair of test_write_conditions' "waits until the SoR holds" case: while
    the cloud writer is stopped the repair waits (retried); ``repair_wait`` says so with its
    age, status says it needs attention; once the routed write landed, the row is gone."""
    h.paused.add(queues.WRITE_ACTOR["cloud"])
    h.legacy.person_upsert(limit("2000.00"), "JSMITH")
    h.settle()
    h.set_mode("customer", "cloud")                      # --no-wait
    h.legacy.person_upsert(limit("3000.00"), "JSMITH")   # a stray: its repair waits
    h.settle()
    assert h.retries >= 1
    w = SqlPreflightFacts(h.engine).repairs_waiting("customer")
    assert w["count"] == 1 and w["recorded"] == 0 and w["oldest_s"] >= 0
    said = waiting_attention("customer", w)
    assert said is not None and said.startswith(
        "customer: 1 repair(s) waiting for the SoR to hold the record's last routed version")
    # It came through the outbox: the settle ledger counts it already, not twice.
    assert waits.waiting_outside_ledger(h.engine, "customer") == 0
    h.paused.clear()
    h.settle()
    assert limits(h) == (Decimal("2000.00"), Decimal("2000.00"))
    assert [type(e) for _, _, e in h.business_errors] == [StrayWrite]
    assert SqlPreflightFacts(h.engine).repairs_waiting("customer")["count"] == 0
    assert waiting_attention("customer", waits.waiting(h.engine).get("customer")) is None


@pytest.fixture
def engine(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def test_the_drain_waits_for_a_repair_the_ledger_cannot_see_until_it_lands_or_is_recorded(
        engine):
    """A writer's re-send to the shadows (``_propagate``) is sent directly, without a ledger
    row; while it waits for the SoR the switch's drain counts it, and stops counting it once
    it gave up (recorded as a technical exception after the retry policy)."""
    cutover = Cutover(SqlFlagStore(engine), SqlPreflightFacts(engine), GuardPolicy())
    waits.note_wait(engine, message_id="m-propagate", domain="customer", key="10003",
                    target="legacy", sor="cloud", waits_for=5)
    waits.note_wait(engine, message_id="m-propagate", domain="customer", key="10003",
                    target="legacy", sor="cloud", waits_for=5)
    assert waits.waiting(engine)["customer"]["count"] == 1
    pending = cutover.pending("customer")
    assert pending is not None and pending.total == 1 and pending.waiting_repairs == 1
    with pytest.raises(DrainTimeout, match="1 repair\\(s\\) waiting for the SoR"):
        cutover.drain_before("customer", timeout_s=0.2)
    ExceptionStore(engine).record(
        failure_class="technical", queue_name="coexist.write.legacy", actor_name="write_legacy",
        message_id="m-propagate", envelope=None, raw=None, message=None,
        error_type="SorBehind", error_message="waited", call_site="x", attempts=12,
        domain="customer", key="10003")
    assert waits.waiting(engine)["customer"] == {"count": 0, "oldest_s": None, "recorded": 1}
    assert cutover.pending("customer").total == 0
    cutover.drain_before("customer", timeout_s=0.2)
    state = cutover.set("customer", Mode.SHADOW, actor="team", reason="go", force=True)
    assert state.mode == Mode.SHADOW
    waits.clear_wait(engine, "m-propagate")
    assert waits.waiting(engine) == {}
