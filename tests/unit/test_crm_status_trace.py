"""``coexist status`` and ``coexist trace`` on the CRM channel, from coexist's state and the
CRM's own record (in-memory CRM, in-memory SQLite state)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coexistence.crm.ports import ApiBudget
from coexistence.router import routed_version
from coexistence.sample import SampleSpec
from tests.support.crm import ListReports, event, memory_state_engine
from workers.crm import state
from workers.crm.handlers import sync_outbound
from workers.crm.status import crm_channel, describe
from workers.crm.trace import crm_events
from workers.crm_memory import InMemoryCrm
from workers.observe import build_trace, parse_target
from workers.observe.timeline import Target, Trace


def test_status_shows_a_pause_until_when_and_the_budget_last_seen():
    engine = memory_state_engine()
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    fresh = crm_channel(engine, True, now)
    assert not fresh["paused"] and fresh["budget_max"] is None
    assert "running; budget unknown" in describe(fresh)
    until = now + timedelta(minutes=10)
    state.pause(engine, until, "CRM answered 403 REQUEST_LIMIT_EXCEEDED",
                ApiBudget(14_990, 15_000))
    paused = crm_channel(engine, True, now)
    assert paused["paused"] and paused["paused_until"] == until.isoformat()
    assert (paused["budget_used"], paused["budget_max"]) == (14_990, 15_000)
    line = describe(paused)
    assert f"PAUSED until {until.isoformat()}" in line and "14990/15000 (99.9% used)" in line
    # After the until-time it is no longer paused, even before a consumer clears the row.
    assert not crm_channel(engine, True, until + timedelta(seconds=1))["paused"]
    assert describe(crm_channel(engine, False)).startswith("CRM channel: no [crm] section")


def test_trace_shows_what_the_crm_holds_for_the_key_and_which_message_wrote_it():
    engine, crm = memory_state_engine(), InMemoryCrm()
    customer = SampleSpec(customers=3, seed=2).record("customer", 1)
    env = event(customer, 7, flag_version=2)
    sync_outbound([env], crm=crm, reports=ListReports())
    trace = Trace(Target(domain="customer", key=customer.key), "customer", customer.key)
    [shown] = crm_events(engine, crm, None, trace, None)
    assert shown.source == "crm" and shown.correlation_id == env.correlation_id
    assert "at flag v2 / source v7, from Legacy ERP" in shown.what
    assert shown.detail["version"] == routed_version(2, 7)
    assert trace.sources[-1].state == "ok"
    # Through build_trace: the CRM is one source among the others.
    full = build_trace(engine, parse_target(f"customer:{customer.key}"), crm=crm)
    assert [e.source for e in full.events if e.source == "crm"] == ["crm"]
    missing = build_trace(engine, parse_target("customer:99999"), crm=crm)
    assert any(s.name == "CRM" and "no Account keyed 99999" in s.detail
               for s in missing.sources)
