"""Onboarding time: from a person's new CRM account to the CRM showing its customer (linked,
or created in the SoR and numbered back), recorded with the onboarding decision and shown
by ``coexist status`` and the console (in-memory CRM and ERP, in-memory SQLite state)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from coexistence.flags import FlagSource
from coexistence.sample import SampleSpec
from tests.support.crm import ListReports, event, memory_state_engine
from workers.crm import state
from workers.crm.consumer import CrmConsumer
from workers.crm.handlers import poll_inbound
from workers.crm.status import crm_channel, describe, onboarding_time
from workers.crm_memory import InMemoryCrm
from workers.erp_memory import InMemoryErp
from workers.router.handlers import route_command

SPEC = SampleSpec(customers=10, seed=3)


def _poll(crm, engine, erp, reports):
    def sor(domain, key):
        record = erp.get(domain, key)
        return ("legacy", record) if record is not None else None

    return poll_inbound(crm=crm, engine=engine, sor_record=sor,
                        directory=lambda: erp.stream("customer"), reports=reports)


def _erp():
    erp = InMemoryErp("legacy")
    for c in SPEC.iter("customer"):
        erp.upsert(c, source_version=1, idempotency_key=f"seed-{c.key}")
    return erp


def test_a_created_customer_s_onboarding_ends_when_its_number_is_in_the_crm():
    crm, engine, erp, reports = InMemoryCrm(), memory_state_engine(), _erp(), ListReports()
    clock = [datetime.now(UTC) + timedelta(minutes=5)]
    consumer = CrmConsumer(crm=lambda: crm, engine=engine, reports=reports,
                           defer=lambda env, s: None, clock=lambda: clock[0])
    crm_id = crm.person_create("Account", {"Name": "Walk-in Hardware",
                                           "BillingPostalCode": "80202"})
    [created_event] = [c for c in crm.changes(0, 10) if c.record_id == crm_id]
    _poll(crm, engine, erp, reports)
    decision = state.decision_of(engine, crm_id)
    assert decision.crm_created_at is not None and decision.completed_at is None
    assert state._aware(decision.crm_created_at) == datetime.fromtimestamp(
        created_event.commit_ms / 1000, UTC)  # the fake gives no CreatedDate
    # Decided, asked of the SoR, not in the CRM yet: open, not counted.
    assert onboarding_time(engine)["completed"] == 0 and onboarding_time(engine)["open"] == 1
    # Another customer's sync completes nothing.
    consumer([event(SPEC.record("customer", 0), 1)])
    assert state.decision_of(engine, crm_id).completed_at is None
    [command] = _outbox_commands(engine)
    route_command(command, {"legacy": erp, "cloud": InMemoryErp("cloud")}, FlagSource(),
                  lambda *a: None)
    consumer([event(erp.get("customer", command.key), 2)])
    assert crm.by_id[crm_id]["AccountNumber"] == command.key
    done = state.decision_of(engine, crm_id)
    assert state._aware(done.completed_at) == clock[0]
    times = onboarding_time(engine, now=clock[0])
    expected = (clock[0] - state._aware(done.crm_created_at)).total_seconds()
    assert times["completed"] == 1 and times["open"] == 0
    assert times["median_s"] == times["p95_s"] == round(expected, 1)
    # A redelivery later does not move the end.
    clock[0] += timedelta(hours=1)
    consumer([event(erp.get("customer", command.key), 2)])
    assert state._aware(state.decision_of(engine, crm_id).completed_at) == \
        clock[0] - timedelta(hours=1)


def test_a_linked_account_is_onboarded_once_it_shows_the_sor_s_values():
    crm, engine, erp, reports = InMemoryCrm(), memory_state_engine(), _erp(), ListReports()
    existing = SPEC.record("customer", 4)
    bill_to = next(s for s in existing.sites if s.kind == "bill_to")
    crm_id = crm.person_create("Account", {"Name": existing.name.lower(),
                                           "BillingPostalCode": bill_to.postal_code})
    assert _poll(crm, engine, erp, reports).linked == 1
    decision = state.decision_of(engine, crm_id)
    assert decision.decision == state.LINK and decision.completed_at is not None
    assert onboarding_time(engine)["completed"] == 1


def test_median_and_p95_are_over_the_window_s_completed_onboardings():
    engine = memory_state_engine()
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    with Session(engine) as session:
        for i in range(1, 21):  # 1 s ... 20 s, completed within the window
            session.add(_row(f"a{i}", state.CREATE, now - timedelta(hours=1), i, 100 + i))
        session.add(_row("old", state.CREATE, now - timedelta(days=8), 5000, 200))
        session.add(_row("dup", state.DUPLICATE, now - timedelta(hours=1), 9999, None))
        session.add(_row("open", state.LINK, now - timedelta(minutes=1), None, None,
                         key="10001"))
        session.commit()
    times = onboarding_time(engine, now=now)
    assert times == {"window_days": 7, "completed": 20, "median_s": 10.5, "p95_s": 19.0,
                     "open": 1}
    assert onboarding_time(engine, days=30, now=now)["p95_s"] == 20.0  # the old one is 5000
    assert onboarding_time(engine, days=30, now=now)["completed"] == 21
    shown = crm_channel(engine, True, now)
    assert shown["onboarding_time"] == times
    assert "onboarding time median 10.5 s, p95 19 s over 20 account(s) in 7 days" in \
        describe(shown)


def test_no_onboarding_yet_shows_no_figure():
    engine = memory_state_engine()
    assert onboarding_time(engine) == {"window_days": 7, "completed": 0, "median_s": None,
                                       "p95_s": None, "open": 0}
    assert "onboarding time" not in describe(crm_channel(engine, True))


def _row(crm_id, decision, created, took_s, allocated, key=None):
    return state.CrmOnboarding(
        crm_account_id=crm_id, customer_key=key or str(allocated or crm_id),
        decision=decision, allocated=allocated if decision == state.CREATE else None,
        state="done", crm_created_at=created,
        completed_at=None if took_s is None else created + timedelta(seconds=took_s))


def _outbox_commands(engine):
    from sqlalchemy import select

    from bus.envelope import Envelope
    from bus.outbox import OutboxRecord

    with Session(engine) as session:
        rows = session.execute(select(OutboxRecord.__table__)).all()
    return [Envelope.model_validate_json(r.payload) for r in rows]
