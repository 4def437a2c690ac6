"""The CRM channel handlers against the CRM simulator over HTTP, state in SQLite.

What the CRM shows is checked independently of the adapter: by SOQL through the
simulator's admin path.  Business refusals land in the real exception store.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.envelope import Envelope
from bus.exception_store import ExceptionStore
from bus.outbox import OutboxRecord
from coexistence.crm.mapping import account_fields
from coexistence.crm.ports import ReplayExpired
from coexistence.router import split_version
from coexistence.sample import SampleSpec
from tests.support import crm_sim
from tests.support.crm import event
from workers.crm.client import CrmClient
from workers.crm.handlers import Outcome, poll_inbound, sync_outbound
from workers.crm.reports import ExceptionStoreReports
from workers.crm_sim import duplicates
from workers.crm_sim.app import DEFAULT_RETENTION_S
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema

crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

SPEC = SampleSpec(customers=300, seed=17)


@pytest.fixture
def client(crm):
    c = CrmClient(crm.url, client_id=crm.client_id, client_secret=crm.client_secret,
                  timeout_s=10.0)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def engine(tmp_path):
    e = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(e)
    return e


@pytest.fixture
def store(engine):
    return ExceptionStore(engine)


@pytest.fixture
def reports(store):
    return ExceptionStoreReports(store)


def shown(sim, sobject: str = "Account") -> dict[str, dict]:
    rows = sim.query(f"SELECT Coexist_Id__c, Coexist_Version__c, Credit_Limit__c, Name, "
                     f"AccountNumber FROM {sobject}" if sobject == "Account" else
                     f"SELECT Coexist_Id__c, Coexist_Version__c, Status FROM {sobject}")
    return {r["Coexist_Id__c"]: r for r in rows if r["Coexist_Id__c"]}


def test_a_batch_of_customers_and_their_orders_shows_in_the_crm_as_the_sor_has_them(
        crm, client, reports):
    customers = list(SPEC.iter("customer"))
    orders = [SPEC.record("order", i) for i in range(150)]
    envs = [event(c, 1) for c in customers] + [event(o, 1) for o in orders]
    results = sync_outbound(envs, crm=client, reports=reports)
    # The sample, like a real estate, has two customers the CRM's duplicate rule calls one
    # company (same name, same postal code): the second is refused and reported.
    seen, twins = set(), set()
    for c in customers:
        match = duplicates.keys_of(account_fields(c))[:2]
        if match in seen:
            twins.add(c.key)
        seen.add(match)
    assert twins and [r.code for r in results if r.outcome is not Outcome.SYNCED] == \
        ["DUPLICATES_DETECTED"] * len(twins)
    accounts = shown(crm)
    assert len(accounts) == 300 - len(twins)
    for c in (c for c in customers if c.key not in twins):
        assert accounts[c.key]["Name"] == c.name
        assert accounts[c.key]["Credit_Limit__c"] == float(c.credit_limit)
        assert accounts[c.key]["AccountNumber"] == c.key
    statuses = shown(crm, "Order")
    assert {k: v["Status"] for k, v in statuses.items()} == {
        o.key: o.status.value.replace("_", " ").title() for o in orders}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_and_duplicated_deliveries_never_regress_the_crm(crm, client, reports, seed):
    rng = random.Random(seed)
    envs = [event(SPEC.record("customer", i).model_copy(
        update={"credit_limit": Decimal(100 * v)}), v)
        for i in range(40) for v in range(1, 6)]
    envs += rng.sample(envs, 60)
    rng.shuffle(envs)
    high: dict[str, int] = {}
    start = 0
    while start < len(envs):
        size = rng.randint(1, 60)
        results = sync_outbound(envs[start:start + size], crm=client, reports=reports)
        assert {r.outcome for r in results} <= {Outcome.SYNCED, Outcome.STALE}
        for key, row in shown(crm).items():
            _, source = split_version(int(row["Coexist_Version__c"]))
            assert row["Credit_Limit__c"] == 100.0 * source
            assert source >= high.get(key, 0)
            high[key] = source
        start += size
    assert set(high.values()) == {5} and len(high) == 40


def test_faults_end_where_the_rules_say(crm, client, reports, store):
    a, b, c = (SPEC.record("customer", i) for i in range(3))
    crm.faults(lock={b.key: 1}, validation={c.key: "Credit review pending"})
    results = sync_outbound([event(a, 1), event(b, 1), event(c, 1)], crm=client,
                            reports=reports)
    assert [r.outcome for r in results] == [Outcome.SYNCED, Outcome.RETRY, Outcome.REFUSED]
    [record] = store.list(status="open")
    assert record.key == c.key and record.failure_class == "business"
    assert "Credit review pending" in record.error_message
    assert record.message_dict()["args"][0]["key"] == c.key  # replayable once fixed
    crm.faults(next=["503"])
    retried = sync_outbound([event(b, 1)], crm=client, reports=reports)
    assert retried[0].outcome is Outcome.RETRY
    crm.faults(limit_exceeded_s=600)
    paused = sync_outbound([event(b, 1), event(SPEC.record("customer", 4), 1)], crm=client,
                           reports=reports)
    assert {r.outcome for r in paused} == {Outcome.PAUSED}
    crm.faults()
    assert sync_outbound([event(b, 1)], crm=client, reports=reports)[0].outcome is \
        Outcome.SYNCED
    assert len(store.list(status="open")) == 1  # retries and pauses are not exceptions


def _poll(client, engine, erp, reports):
    def sor(domain, key):
        rec = erp.get(domain, key)
        return ("legacy", rec) if rec is not None else None

    return poll_inbound(crm=client, engine=engine, sor_record=sor,
                        directory=lambda: erp.stream("customer"), reports=reports)


@pytest.fixture
def erp():
    e = InMemoryErp("legacy")
    for i in range(20):
        c = SPEC.record("customer", i)
        e.upsert(c, source_version=1, idempotency_key=f"seed-{c.key}")
    return e


def _commands(engine) -> list[Envelope]:
    with Session(engine) as session:
        rows = session.execute(select(OutboxRecord.__table__)).all()
    return [Envelope.model_validate_json(r.payload) for r in rows]


def test_people_s_accounts_are_onboarded_and_their_erp_owned_edits_set_back(
        crm, client, engine, erp, reports, store):
    existing = SPEC.record("customer", 5)
    sync_outbound([event(existing, 3)], crm=client, reports=reports)
    bill_to = next(s for s in existing.sites if s.kind == "bill_to")
    # A new company, the same company again (the CRM's duplicate rule lets the rep save),
    # and an ERP customer typed in by hand.
    new = crm.person_create("rep1", "Account", {"Name": "Walk-in Hardware",
                                                "BillingPostalCode": "80202"}).json()["id"]
    again = crm.person_create("rep2", "Account", {"Name": "WALK-IN HARDWARE, INC.",
                                                  "BillingPostalCode": "80202"},
                              allow_duplicate=True).json()["id"]
    typed = SPEC.record("customer", 6)
    typed_bill = next(s for s in typed.sites if s.kind == "bill_to")
    known = crm.person_create("rep3", "Account", {
        "Name": typed.name.upper(), "BillingPostalCode": typed_bill.postal_code}).json()["id"]
    account = crm.by_external_id("Account", existing.key)
    crm.person_update("rep1", "Account", account["Id"],
                      {"Credit_Hold__c": not existing.credit_hold}).raise_for_status()
    stats = _poll(client, engine, erp, reports)
    assert (stats.created, stats.linked, stats.duplicates, stats.refused_edits) == (1, 1, 1, 1)
    [command] = _commands(engine)
    assert command.payload["channel"] == "crm" and command.payload["crm_account_id"] == new
    assert crm.by_external_id("Account", command.key)["Id"] == new
    assert crm.by_external_id("Account", typed.key)["Id"] == known
    assert crm.by_external_id("Account", typed.key)["Name"] == typed.name
    assert crm.by_external_id("Account", existing.key)["Credit_Hold__c"] is \
        existing.credit_hold
    kinds = sorted(r.error_type for r in store.list(status="open"))
    assert kinds == ["CrmDuplicateAccount", "OwnershipViolationReported"]
    assert again in next(r.error_message for r in store.list(status="open")
                         if r.error_type == "CrmDuplicateAccount")
    # Coexist's own link and set-back writes come back as echoes: nothing more to do.
    later = _poll(client, engine, erp, reports)
    assert later.read == later.echoes and len(_commands(engine)) == 1
    assert bill_to.postal_code  # the synced account kept its address


def test_an_expired_checkpoint_is_refused_loudly(crm, client, engine, erp, reports):
    crm.person_create("rep1", "Account", {"Name": "Walk-in Hardware"})
    _poll(client, engine, erp, reports)
    crm.person_create("rep1", "Account", {"Name": "Someone Else"})
    crm.advance_clock(DEFAULT_RETENTION_S + 60)
    fresh = CrmClient(crm.url, client_id=crm.client_id, client_secret=crm.client_secret)
    with pytest.raises(ReplayExpired, match="retention"):
        _poll(fresh, engine, erp, reports)
    fresh.close()


def test_the_consumer_pauses_on_request_limit_exceeded_and_resumes_with_nothing_lost(
        crm, client, engine, reports):
    """The real adapter and simulator: 403 REQUEST_LIMIT_EXCEEDED pauses the channel (the
    state row ``coexist status`` reads), the messages are re-queued, not failed; after the
    pause and once the CRM answers again, the same messages are shown."""
    from datetime import UTC, datetime, timedelta

    from workers.crm import state
    from workers.crm.consumer import CrmConsumer
    from workers.crm.status import crm_channel

    deferred: list[Envelope] = []
    now = [datetime.now(UTC)]
    consumer = CrmConsumer(crm=lambda: client, engine=engine, reports=reports,
                           defer=lambda env, _s: deferred.append(env), pause_s=30,
                           clock=lambda: now[0])
    envs = [event(c, 1) for c in list(SPEC.iter("customer"))[:5]]
    crm.faults(limit_exceeded_s=3600)
    assert {r.outcome for r in consumer(envs)} == {Outcome.PAUSED}
    assert deferred == envs
    shown = crm_channel(engine, True, now[0])
    assert shown["paused"] and "REQUEST_LIMIT_EXCEEDED" in shown["pause_reason"]
    assert ExceptionStore(engine).list(status=None) == []
    crm.faults(limit_exceeded_s=0)
    now[0] += timedelta(seconds=31)
    assert {r.outcome for r in consumer(deferred)} == {Outcome.SYNCED}
    assert state.paused_until(engine, now[0]) is None
    assert set(shown_keys(crm)) == {e.key for e in envs}


def shown_keys(sim) -> list[str]:
    return [r["Coexist_Id__c"] for r in sim.query("SELECT Coexist_Id__c FROM Account")
            if r["Coexist_Id__c"]]
