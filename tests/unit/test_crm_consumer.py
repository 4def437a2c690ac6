"""The CRM channel's outbound consumer on the in-memory CRM and in-memory SQLite state.

What happens to a delivery's messages: synced / stale / refused are acked, a record the
CRM cannot take now raises a technical error (the bus retries), a spent API budget
pauses the channel (a row every process sees) and re-queues the messages with a delay,
without another request to the CRM until the pause ends.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from bus.errors import TechnicalError, is_business
from coexistence.crm.ports import VERSION_FIELD
from coexistence.router import routed_version
from coexistence.sample import SampleSpec
from tests.support.crm import ListReports, event, memory_state_engine
from workers.crm import state
from workers.crm.consumer import CrmConsumer, CrmRetryLater
from workers.crm.handlers import Outcome
from workers.crm_memory import InMemoryCrm

SPEC = SampleSpec(customers=20, seed=5)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def parts():
    crm, engine, reports, deferred, clock = InMemoryCrm(), memory_state_engine(), \
        ListReports(), [], Clock()
    consumer = CrmConsumer(crm=lambda: crm, engine=engine, reports=reports,
                           defer=lambda env, s: deferred.append((env.message_id, s)),
                           pause_s=120, clock=clock)
    return consumer, crm, engine, reports, deferred, clock


def test_one_envelope_or_a_batch_shows_in_the_crm_and_redelivery_changes_nothing(parts):
    consumer, crm, _engine, _reports, deferred, _clock = parts
    synced = _sample("coexist_crm_records_total", object="Account", result="synced")
    customers = [SPEC.record("customer", i) for i in range(10)]
    [first] = consumer(event(customers[0], 3))  # a single delivery, not a list
    assert first.outcome is Outcome.SYNCED
    envs = [event(c, 2 + i) for i, c in enumerate(customers)]
    again = envs + envs[:4]
    random.Random(3).shuffle(again)
    consumer(again)
    consumer(again)  # redelivered after a crash
    shown = crm.records["Account"]
    assert set(shown) == {c.key for c in customers}
    # customer 0 was shown at version 3 before the batch carried it at version 2: kept.
    assert shown[customers[0].key][VERSION_FIELD] == routed_version(1, 3)
    for i, c in enumerate(customers[1:], 1):
        assert shown[c.key][VERSION_FIELD] == routed_version(1, 2 + i)
    assert not deferred
    # The business metric, accounts synced: 1, then 9 newer in the batch (customer 0 stale),
    # then the redelivery's 9 again at the same versions (equal version: the same values).
    assert _sample("coexist_crm_records_total", object="Account",
                   result="synced") - synced == 19


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_spent_budget_pauses_the_channel_and_requeues_without_calling_the_crm(parts):
    consumer, crm, engine, reports, deferred, clock = parts
    envs = [event(SPEC.record("customer", i), 1) for i in range(3)]
    crm.pause()
    results = consumer(envs)
    assert [r.outcome for r in results] == [Outcome.PAUSED] * 3
    assert [m for m, _ in deferred] == [e.message_id for e in envs]
    assert all(1 <= s <= 60 for _, s in deferred)
    until = state.paused_until(engine, clock.now)
    assert until == clock.now + timedelta(seconds=120)
    assert not reports.all  # not a failure
    assert _sample("coexist_crm_deferred_total") >= 3
    # While paused, nothing is asked of the CRM: the budget stays where it is.
    crm.pause(False)
    used = crm.budget_used
    deferred.clear()
    assert [r.outcome for r in consumer(envs[:1])] == [Outcome.PAUSED]
    assert crm.budget_used == used and len(deferred) == 1
    # The pause ends: the same messages go through and the channel is no longer paused.
    clock.now += timedelta(seconds=121)
    assert [r.outcome for r in consumer(envs)] == [Outcome.SYNCED] * 3
    assert state.paused_until(engine, clock.now) is None
    row = state.channel_state(engine)
    assert row is not None and row.paused_until is None
    assert (row.budget_used, row.budget_max) == (crm.budget_used, crm.daily_limit)


def test_a_locked_row_raises_a_technical_error_and_the_retry_writes_it(parts):
    consumer, crm, _engine, reports, _deferred, _clock = parts
    a, b = SPEC.record("customer", 1), SPEC.record("customer", 2)
    crm.lock(b.key)
    with pytest.raises(CrmRetryLater) as raised:
        consumer([event(a, 1), event(b, 1)])
    assert isinstance(raised.value, TechnicalError) and not is_business(raised.value)
    assert "UNABLE_TO_LOCK_ROW" in str(raised.value)
    assert set(crm.records["Account"]) == {a.key}
    consumer([event(a, 1), event(b, 1)])  # the bus's retry of the same delivery
    assert set(crm.records["Account"]) == {a.key, b.key}
    assert not reports.all


def test_a_batch_leaves_only_its_locked_record_to_the_per_message_path(parts):
    """``many`` (the batch consumer's call): the locked record's position is left to the
    per-message path, its neighbours are written once and settle with the batch; alone,
    the locked one raises (the bus retries it) until the CRM takes it."""
    consumer, crm, _engine, reports, _deferred, _clock = parts
    customers = [SPEC.record("customer", i) for i in range(5)]
    envs = [event(c, 1) for c in customers]
    crm.lock(customers[2].key, times=2)
    assert consumer.many(envs) == [2]
    assert set(crm.records["Account"]) == {c.key for i, c in enumerate(customers) if i != 2}
    with pytest.raises(CrmRetryLater):
        consumer([envs[2]])  # alone, at once: still locked
    assert [r.outcome for r in consumer([envs[2]])] == [Outcome.SYNCED]  # a retry lands
    assert set(crm.records["Account"]) == {c.key for c in customers}
    assert not reports.all
    # Nothing written at all (the CRM down): the batch fails whole, as before.
    crm.unavailable()
    with pytest.raises(CrmRetryLater):
        consumer.many(envs[:2])


def test_a_refused_record_is_a_business_report_and_its_message_is_acked(parts):
    consumer, _crm, _engine, reports, _deferred, _clock = parts
    good = SPEC.record("customer", 3)
    bad = event(SPEC.record("customer", 4), 1)
    bad = bad.model_copy(update={"payload": {"record": {"nonsense": True}}})
    results = consumer([event(good, 1), bad])
    assert [r.outcome for r in results] == [Outcome.SYNCED, Outcome.REFUSED]
    assert [r.error_type for r in reports.all] == ["CrmRefused:BAD_EVENT"]


def test_past_the_hold_only_a_pending_create_s_customer_waits_for_its_number(parts):
    """A create whose number is pending (a crash before coexist recorded it, the poller
    away): every customer waits for ``PENDING_HOLD_S``; after that, the one the create
    may have made waits on (however long, noted for ``coexist status``), the rest go on."""
    from coexistence.crm.onboarding import Candidate, new_customer
    from workers.crm.consumer import PENDING_HOLD_S

    consumer, crm, engine, _reports, deferred, clock = parts
    fields = {"Name": "Walk-in Hardware", "BillingStreet": "1 Main St",
              "BillingCity": "Denver", "BillingState": "CO", "BillingPostalCode": "80202",
              "BillingCountry": "US"}
    body = new_customer("0", fields)
    state.decide(engine, Candidate.of("001PENDING", fields), state.CREATE,
                 state.NUMBER_PENDING, create_body=body.model_dump_json())
    with engine.begin() as conn:  # decided now, by the test's clock
        conn.execute(state.CrmOnboarding.__table__.update().values(decided_at=clock.now))
    made = body.model_copy(update={"key": "100000", "name": body.name.upper()})
    other = SPEC.record("customer", 1)
    envs = [event(made, 1), event(other, 1)]
    assert {r.outcome for r in consumer(envs)} == {Outcome.PAUSED}
    assert not crm.records.get("Account") and len(deferred) == 2
    [pending] = state.numbers_pending(engine)  # the one that is the create's, noted
    assert state._aware(pending.held_at) == clock.now
    clock.now += timedelta(seconds=PENDING_HOLD_S + 1)
    deferred.clear()
    results = {r.message_id: r.outcome for r in consumer(envs)}
    assert results == {envs[0].message_id: Outcome.PAUSED,
                       envs[1].message_id: Outcome.SYNCED}
    assert set(crm.records["Account"]) == {other.key}
    assert [m for m, _ in deferred] == [envs[0].message_id]
    [pending] = state.numbers_pending(engine)
    assert state._aware(pending.held_at) == clock.now
    # The number is recorded: the person's account is keyed first, then written.
    state.set_number(engine, "001PENDING", made.key)
    consumer([envs[0]])
    assert set(crm.records["Account"]) == {other.key, made.key}


def test_a_pending_create_the_sor_answers_for_is_numbered_by_the_consumer(parts):
    """With ``created_by`` (the SoR's record of the create's idempotency key), a create
    pending longer than ``PENDING_RESOLVE_S`` is numbered by the consumer: the customer,
    however differently the SoR stores it, is written onto the person's account, the
    poller away or not.  The SoR saying it made none holds nothing; a SoR that cannot
    answer now leaves the hold as it was."""
    from coexistence.crm.onboarding import Candidate, new_customer
    from workers.crm.consumer import PENDING_RESOLVE_S
    from workers.crm.handlers import numbered_create_key

    _consumer, crm, engine, reports, deferred, clock = parts
    answers: dict[str, str | None] = {}
    asked: list[str] = []

    def created_by(body, key):
        asked.append(key)
        answer = answers.get(key, RuntimeError("the SoR is down"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    consumer = CrmConsumer(crm=lambda: crm, engine=engine, reports=reports,
                           defer=lambda env, s: deferred.append((env.message_id, s)),
                           pause_s=120, clock=clock, created_by=created_by)
    fields = {"Name": "Walk-in Hardware", "BillingPostalCode": "80202"}
    crm_id = crm.person_create("Account", fields)
    body = new_customer("0", fields)
    state.decide(engine, Candidate.of(crm_id, fields), state.CREATE, state.NUMBER_PENDING,
                 create_body=body.model_dump_json())
    with engine.begin() as conn:
        conn.execute(state.CrmOnboarding.__table__.update().values(decided_at=clock.now))
    # Stored very differently: nothing of the body to match it by.
    made = SPEC.record("customer", 7).model_copy(update={"key": "100000"})
    env = event(made, 1)
    # Younger than PENDING_RESOLVE_S: held, the SoR not asked (the poller is at it).
    assert [r.outcome for r in consumer([env])] == [Outcome.PAUSED] and not asked
    clock.now += timedelta(seconds=PENDING_RESOLVE_S + 1)
    # The SoR cannot answer now: still held.
    assert [r.outcome for r in consumer([env])] == [Outcome.PAUSED]
    assert asked == [numbered_create_key(crm_id)]
    # The SoR made none under the key: this customer is not that create's; not held.
    answers[numbered_create_key(crm_id)] = None
    other = SPEC.record("customer", 8)
    assert [r.outcome for r in consumer([event(other, 1)])] == [Outcome.SYNCED]
    # The SoR made "100000": numbered, the person's account keyed and written.
    answers[numbered_create_key(crm_id)] = "100000"
    assert [r.outcome for r in consumer([env])] == [Outcome.SYNCED]
    assert state.decision_of(engine, crm_id).customer_key == "100000"
    assert crm.records["Account"]["100000"]["Id"] == crm_id
    assert not state.numbers_pending(engine) and not reports.all
