"""The CRM channel handlers on fakes: the in-memory CRM and ERP, in-memory SQLite state.

Outbound: each record's result on its own, duplicates and reordering absorbed, failures
where the rules put them.  Inbound: echoes suppressed, people's new accounts onboarded
into exactly one customer, ownership refused and set back, contacts to the SoR.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.envelope import Envelope
from bus.outbox import OutboxRecord
from coexistence.crm.ports import VERSION_FIELD
from coexistence.flags import FlagSource
from coexistence.router import routed_version, split_version
from coexistence.sample import SampleSpec
from tests.support.crm import ListReports, deleted, event, memory_state_engine
from workers import checkpoints
from workers.crm import handlers, state
from workers.crm.handlers import Outcome, poll_inbound, sync_outbound
from workers.crm_memory import InMemoryCrm
from workers.erp_memory import InMemoryErp
from workers.router import queues
from workers.router.handlers import route_command

SPEC = SampleSpec(customers=30, seed=21)


def customer(i: int, **changes):
    c = SPEC.record("customer", i)
    return c.model_copy(update=changes) if changes else c


@pytest.fixture
def crm():
    return InMemoryCrm()


@pytest.fixture
def reports():
    return ListReports()


# ===================================================================== outbound


def test_each_record_s_result_is_its_own_and_one_bad_record_never_fails_its_neighbours(
        crm, reports):
    first = customer(0)
    twin = first.model_copy(update={"key": "55555", "name": first.name.upper()})
    batch = [event(customer(1), 1), event(twin, 1), event(customer(2), 1)]
    sync_outbound([event(first, 1)], crm=crm, reports=reports)
    results = sync_outbound(batch, crm=crm, reports=reports)
    assert [r.outcome for r in results] == [Outcome.SYNCED, Outcome.REFUSED, Outcome.SYNCED]
    assert [r.message_id for r in results] == [e.message_id for e in batch]
    [refusal] = reports.of("CrmRefused:DUPLICATES_DETECTED")
    assert refusal.key == "55555" and crm.records["Account"][first.key]["Id"] in refusal.message
    assert refusal.envelope == batch[1]


def test_a_batch_is_one_request_per_object_and_parents_go_first(crm, reports):
    order = SPEC.record("order", 4)
    parent = next(c for c in SPEC.iter("customer") if c.key == order.customer_key)
    before = crm.budget_used
    results = sync_outbound([event(order, 1), event(parent, 1)], crm=crm, reports=reports)
    assert [r.outcome for r in results] == [Outcome.SYNCED, Outcome.SYNCED]
    assert crm.budget_used - before == 2
    assert crm.records["Order"][order.key]["AccountId"] == \
        crm.records["Account"][parent.key]["Id"]


def test_a_document_without_its_parent_is_retried_not_refused(crm, reports):
    [result] = sync_outbound([event(SPEC.record("order", 5), 1)], crm=crm, reports=reports)
    assert result.outcome is Outcome.RETRY and reports.all == []


def test_within_a_batch_the_newest_version_of_a_key_wins_and_duplicates_share_a_result(
        crm, reports):
    old, new = event(customer(3, credit_hold=False), 5), event(customer(3, credit_hold=True), 9)
    results = sync_outbound([new, old, new], crm=crm, reports=reports)
    assert [r.outcome for r in results] == [Outcome.SYNCED, Outcome.STALE, Outcome.SYNCED]
    assert crm.records["Account"][customer(3).key]["Credit_Hold__c"] is True


def test_an_older_version_arriving_late_is_stale(crm, reports):
    sync_outbound([event(customer(4, credit_limit=Decimal(900)), 9)], crm=crm, reports=reports)
    [late] = sync_outbound([event(customer(4, credit_limit=Decimal(100)), 8)], crm=crm,
                           reports=reports)
    assert late.outcome is Outcome.STALE
    assert crm.records["Account"][customer(4).key]["Credit_Limit__c"] == 900.0


def test_a_switch_outranks_every_version_routed_before_it(crm, reports):
    sync_outbound([event(customer(5, credit_limit=Decimal(1)), 10_000, flag_version=1)], crm=crm,
                  reports=reports)
    [after] = sync_outbound([event(customer(5, credit_limit=Decimal(2)), 3, flag_version=2,
                                   sor="cloud")], crm=crm, reports=reports)
    assert after.outcome is Outcome.SYNCED
    shown = crm.records["Account"][customer(5).key]
    assert shown["Credit_Limit__c"] == 2.0 and shown["ERP_System__c"] == "Cloud ERP"


def test_a_spent_budget_pauses_every_envelope_and_reports_nothing(crm, reports):
    crm.pause()
    results = sync_outbound([event(customer(6), 1), event(SPEC.record("order", 1), 1)],
                            crm=crm, reports=reports)
    assert {r.outcome for r in results} == {Outcome.PAUSED} and reports.all == []


def test_an_unavailable_crm_means_retry_for_the_whole_batch(crm, reports):
    crm.unavailable(1)
    results = sync_outbound([event(customer(7), 1), event(customer(8), 1)], crm=crm,
                            reports=reports)
    assert {r.outcome for r in results} == {Outcome.RETRY}


def test_a_delete_flags_the_record_and_a_delete_of_something_never_shown_is_skipped(
        crm, reports):
    sync_outbound([event(customer(9), 1)], crm=crm, reports=reports)
    results = sync_outbound([deleted("customer", customer(9).key, 2),
                             deleted("customer", "42", 2)], crm=crm, reports=reports)
    assert [r.outcome for r in results] == [Outcome.SYNCED, Outcome.SKIPPED]
    assert crm.records["Account"][customer(9).key]["ERP_Deleted__c"] is True


def test_bad_input_is_refused_and_recorded_and_other_domains_are_skipped(crm, reports):
    bad = event(customer(10), 1).model_copy(update={"payload": {"record": {"key": "x"}}})
    other = event(SPEC.record("product", 1), 1)
    command = event(customer(11), 1).model_copy(update={"kind": queues.KIND_COMMAND})
    results = sync_outbound([bad, other, command], crm=crm, reports=reports)
    assert [r.outcome for r in results] == [Outcome.REFUSED, Outcome.SKIPPED, Outcome.REFUSED]
    assert {r.error_type for r in reports.all} == {"CrmRefused:BAD_EVENT",
                                                   "CrmRefused:NOT_AN_EVENT"}


def test_a_locked_row_is_retried_alone(crm, reports):
    crm.lock(customer(12).key)
    results = sync_outbound([event(customer(12), 1), event(customer(13), 1)], crm=crm,
                            reports=reports)
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.SYNCED]
    assert results[0].code == "UNABLE_TO_LOCK_ROW"


def _deliveries(rng: random.Random, n_keys: int, versions: int) -> tuple[list[Envelope], dict]:
    """Every version of every key as an event, shuffled, some delivered twice."""
    envs, newest = [], {}
    for i in range(n_keys):
        for v in range(1, versions + 1):
            c = customer(i, credit_limit=Decimal(100 * v), credit_hold=v % 2 == 0)
            envs.append(event(c, v))
        newest[customer(i).key] = 100 * versions
    envs += rng.sample(envs, len(envs) // 3)
    rng.shuffle(envs)
    return envs, newest


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 25))
def test_shuffled_and_duplicated_deliveries_never_regress_a_crm_record(seed, batch):
    crm, reports = InMemoryCrm(), ListReports()
    rng = random.Random(seed)
    envs, newest = _deliveries(rng, n_keys=6, versions=5)
    high: dict[str, int] = {}
    for start in range(0, len(envs), batch):
        results = sync_outbound(envs[start:start + batch], crm=crm, reports=reports)
        assert {r.outcome for r in results} <= {Outcome.SYNCED, Outcome.STALE}
        for key, shown in crm.records["Account"].items():
            _, source = split_version(shown[VERSION_FIELD])
            assert shown["Credit_Limit__c"] == 100.0 * source  # the version's own values
            assert source >= high.get(key, 0)  # never behind what it showed before
            high[key] = source
    assert {k: r["Credit_Limit__c"] for k, r in crm.records["Account"].items()} == \
        {k: float(v) for k, v in newest.items()}
    assert reports.all == []


# ===================================================================== inbound


@pytest.fixture
def engine():
    return memory_state_engine()


@pytest.fixture
def erp():
    e = InMemoryErp("legacy")
    for c in SPEC.iter("customer"):
        e.upsert(c, source_version=1, idempotency_key=f"seed-{c.key}")
    return e


def poll(crm, engine, erp, reports, **kwargs):
    def sor(domain, key):
        record = erp.get(domain, key)
        return ("legacy", record) if record is not None else None

    return poll_inbound(crm=crm, engine=engine, sor_record=sor,
                        directory=lambda: erp.stream("customer"), reports=reports, **kwargs)


def outbox(engine) -> list[Envelope]:
    with Session(engine) as session:
        rows = session.execute(select(OutboxRecord.__table__)).all()
    return [Envelope.model_validate_json(r.payload) for r in rows]


def test_coexist_s_own_writes_come_back_as_echoes_and_cause_nothing(crm, engine, erp,
                                                                    reports):
    sync_outbound([event(customer(0), 1), event(customer(1), 1)], crm=crm, reports=reports)
    stats = poll(crm, engine, erp, reports)
    assert stats.read == stats.echoes == 2 and outbox(engine) == []
    assert checkpoints.get(engine, handlers.FEED) == stats.last_replay_id > 0


def test_a_new_account_becomes_one_create_command_whose_number_flows_back(crm, engine, erp,
                                                                          reports):
    crm_id = crm.person_create("Account", {
        "Name": "Walk-in Hardware", "BillingStreet": "1 Main St", "BillingCity": "Denver",
        "BillingState": "CO", "BillingPostalCode": "80202", "BillingCountry": "US"})
    stats = poll(crm, engine, erp, reports)
    [command] = outbox(engine)
    assert stats.created == 1 and command.kind == queues.KIND_COMMAND
    assert command.payload["channel"] == "crm" and command.key == "9000000001"
    assert crm.by_id[crm_id]["Coexist_Id__c"] == "9000000001"
    # The router writes it into the SoR as COEXCRM...
    route_command(command, {"legacy": erp, "cloud": InMemoryErp("cloud")}, FlagSource(),
                  lambda *a: None)
    created = erp.get("customer", "9000000001")
    assert created.name == "Walk-in Hardware" and created.credit_hold is True
    assert erp.read(0, 10**6)[-1].writer == "COEXCRM"
    # ...and the SoR's change comes back to the CRM on the same account.
    sync_outbound([event(created, 2)], crm=crm, reports=reports)
    shown = crm.by_id[crm_id]
    assert shown["AccountNumber"] == "9000000001" and shown["Credit_Hold__c"] is True
    assert len(crm.records["Account"]) == 1


def test_the_same_company_typed_twice_is_one_customer(crm, engine, erp, reports):
    first = crm.person_create("Account", {"Name": "Walk-in Hardware",
                                          "BillingPostalCode": "80202"})
    poll(crm, engine, erp, reports)
    second = crm.person_create("Account", {"Name": "WALK-IN HARDWARE INC.",
                                           "BillingPostalCode": "80202"},
                               allow_duplicate=True)
    stats = poll(crm, engine, erp, reports)
    assert len(outbox(engine)) == 1 and stats.duplicates == 1
    [dup] = reports.of("CrmDuplicateAccount")
    assert first in dup.message and second in dup.message
    assert crm.by_id[second].get("Coexist_Id__c") is None


def test_typed_twice_before_the_sor_created_the_first_still_one_customer(crm, engine, erp,
                                                                         reports):
    crm.person_create("Account", {"Name": "Walk-in Hardware", "BillingPostalCode": "80202"})
    crm.person_create("Account", {"Name": "Walk In Hardware LLC",
                                  "BillingPostalCode": "80202", "Phone": "1"},
                      allow_duplicate=True)
    poll(crm, engine, erp, reports)
    assert len(outbox(engine)) == 1 and len(reports.of("CrmDuplicateAccount")) == 1


def test_a_company_the_erp_has_is_linked_not_created(crm, engine, erp, reports):
    existing = customer(7)
    bill_to = next(s for s in existing.sites if s.kind == "bill_to")
    crm_id = crm.person_create("Account", {"Name": existing.name.lower() + " inc",
                                           "BillingPostalCode": bill_to.postal_code})
    stats = poll(crm, engine, erp, reports)
    assert stats.linked == 1 and outbox(engine) == []
    shown = crm.by_id[crm_id]
    assert shown["Coexist_Id__c"] == existing.key and shown["Name"] == existing.name
    assert state.decision_of(engine, crm_id).decision == state.LINK


def test_an_erp_owned_edit_is_refused_reported_and_set_back(crm, engine, erp, reports):
    c = customer(8)
    sync_outbound([event(c, 4)], crm=crm, reports=reports)
    poll(crm, engine, erp, reports)
    account = crm.records["Account"][c.key]
    crm.person_update("Account", account["Id"], {"Credit_Limit__c": 1_000_000.0,
                                                 "Description": "big spender"})
    stats = poll(crm, engine, erp, reports)
    assert stats.refused_edits == 1 and stats.set_backs == 1 and outbox(engine) == []
    [violation] = reports.of("OwnershipViolationReported")
    assert "Credit_Limit__c" in violation.message and violation.key == c.key
    shown = crm.records["Account"][c.key]
    assert shown["Credit_Limit__c"] == float(c.credit_limit)
    assert shown["Description"] == "big spender"
    assert shown[VERSION_FIELD] == routed_version(1, 4)  # set back at the same version


def test_a_primary_contact_change_becomes_a_command_for_the_sor(crm, engine, erp, reports):
    c = customer(9)
    sync_outbound([event(c, 1)], crm=crm, reports=reports)
    account_id = crm.records["Account"][c.key]["Id"]
    crm.person_create("Contact", {"AccountId": account_id, "LastName": "Okafor",
                                  "FirstName": "Ada", "Email": "ada@example.com",
                                  "Primary_Contact__c": True})
    crm.person_create("Contact", {"AccountId": account_id, "LastName": "Other"})
    poll(crm, engine, erp, reports)
    [command] = outbox(engine)
    assert command.key == c.key and command.payload["channel"] == "crm"
    route_command(command, {"legacy": erp, "cloud": InMemoryErp("cloud")}, FlagSource(),
                  lambda *a: None)
    assert erp.get("customer", c.key).contact_name == "Ada Okafor"
    assert erp.get("customer", c.key).credit_limit == c.credit_limit


def test_a_new_account_and_its_contact_in_one_batch_are_one_command(crm, engine, erp,
                                                                    reports):
    crm_id = crm.person_create("Account", {"Name": "Walk-in Hardware"})
    crm.person_create("Contact", {"AccountId": crm_id, "LastName": "Okafor",
                                  "Email": "o@example.com", "Primary_Contact__c": True})
    poll(crm, engine, erp, reports)
    [command] = outbox(engine)
    assert command.payload["record"]["contact_email"] == "o@example.com"


def test_a_crash_before_the_commit_reads_the_same_events_and_ends_the_same_way(
        crm, engine, erp, reports, monkeypatch):
    crm.person_create("Account", {"Name": "Walk-in Hardware", "BillingPostalCode": "80202"})
    real = checkpoints.advance

    def crash(*args, **kwargs):
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(checkpoints, "advance", crash)
    with pytest.raises(RuntimeError):
        poll(crm, engine, erp, reports)
    assert outbox(engine) == [] and checkpoints.get(engine, handlers.FEED) == 0
    monkeypatch.setattr(checkpoints, "advance", real)
    poll(crm, engine, erp, reports)
    [command] = outbox(engine)
    assert command.key == "9000000001"
    assert poll(crm, engine, erp, reports).read == 0 and len(outbox(engine)) == 1
