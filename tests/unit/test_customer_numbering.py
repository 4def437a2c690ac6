"""Customer numbers from the SoR ("create and assign a number", ``NumberingErp``): the
legacy ERP's control record, the in-memory ERP, and onboarding using them without ever
making a second customer (a crash between the SoR's create and coexist's record of it)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from coexistence.crm.onboarding import new_customer
from coexistence.ports import NumberingErp
from coexistence.sample import SampleSpec
from tests.support.crm import ListReports, memory_state_engine
from workers.crm import handlers, state
from workers.crm.handlers import poll_inbound
from workers.crm_memory import InMemoryCrm
from workers.erp_memory import InMemoryErp
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.numbering import FIRST_CUSTOMER_NUMBER, SYSCTL, XCOEXNUM
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

SPEC = SampleSpec(customers=6, seed=7)
ACCOUNT = {"Name": "Walk-in Hardware", "BillingStreet": "1 Main St", "BillingCity": "Denver",
           "BillingState": "CO", "BillingPostalCode": "80202", "BillingCountry": "US"}


@pytest.fixture
def legacy(tmp_path):
    engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(engine)
    yield LegacyErp(engine)
    engine.dispose()


def _new(name: str = "Walk-in Hardware"):
    return new_customer("0", {**ACCOUNT, "Name": name})


def test_the_legacy_erp_numbers_a_new_customer_from_its_control_record(legacy):
    assert isinstance(legacy, NumberingErp)
    first = legacy.create_numbered(_new(), idempotency_key="a", writer="COEXCRM")
    second = legacy.create_numbered(_new("Other Co"), idempotency_key="b", writer="COEXCRM")
    assert (first, second) == (str(FIRST_CUSTOMER_NUMBER), str(FIRST_CUSTOMER_NUMBER + 1))
    made = legacy.get("customer", first)
    assert made.name == "WALK-IN HARDWARE" and made.sites[0].postal_code == "80202"
    with legacy.engine.connect() as conn:
        assert conn.execute(select(SYSCTL.c.NEXTNO)).scalar() == FIRST_CUSTOMER_NUMBER + 2
    # The change log names the channel's writer (the router routes it on, not an echo).
    writers = {c.key: c.writer for c in legacy.read(0, 100)}
    assert writers == {first: "COEXCRM", second: "COEXCRM"}


def test_the_same_idempotency_key_is_the_same_customer_whatever_the_record_says(legacy):
    first = legacy.create_numbered(_new(), idempotency_key="crm-onboard:001", writer="COEXCRM")
    again = legacy.create_numbered(_new("Renamed Since"), idempotency_key="crm-onboard:001",
                                   writer="COEXCRM")
    assert again == first
    assert [c.key for c in legacy.stream("customer")] == [first]
    with legacy.engine.connect() as conn:
        assert conn.execute(select(XCOEXNUM.c.RECKEY)).scalars().all() == [first]


def test_numbers_people_typed_or_coexist_copied_in_are_skipped(legacy):
    typed = SPEC.record("customer", 0).model_copy(update={"key": str(FIRST_CUSTOMER_NUMBER)})
    legacy.person_upsert(typed, "JSMITH")
    legacy.person_upsert(typed.model_copy(update={"key": "100007"}), "JSMITH")
    assert legacy.create_numbered(_new(), idempotency_key="a") == "100008"
    assert legacy.create_numbered(_new("Two"), idempotency_key="b") == "100009"


def test_a_rolled_back_create_gives_its_number_back(legacy, monkeypatch):
    from workers.legacy_erp import numbering

    real = numbering.next_number

    def take_then_fail(conn, header):
        real(conn, header)
        raise RuntimeError("the insert failed")

    monkeypatch.setattr(numbering, "next_number", take_then_fail)
    with pytest.raises(RuntimeError):
        legacy.create_numbered(_new(), idempotency_key="bad")
    monkeypatch.setattr(numbering, "next_number", real)
    assert legacy.create_numbered(_new(), idempotency_key="good") == str(FIRST_CUSTOMER_NUMBER)
    assert [c.key for c in legacy.stream("customer")] == [str(FIRST_CUSTOMER_NUMBER)]


def test_the_in_memory_erp_numbers_customers_idempotently():
    erp = InMemoryErp("legacy")
    for c in SPEC.iter("customer"):
        erp.upsert(c, source_version=1, idempotency_key=f"seed-{c.key}")
    top = max(int(c.key) for c in erp.stream("customer"))
    key = erp.create_numbered(_new(), idempotency_key="k", writer="COEXCRM")
    assert int(key) == max(top, 99_999) + 1
    assert erp.create_numbered(_new("Else"), idempotency_key="k") == key
    assert erp.read(0, 10**6)[-1].writer == "COEXCRM"


# ------------------------------------------------------------------ onboarding


class _Crash(BaseException):
    """Stands for the process dying right after the SoR's create (the kill -9 test does it
    for real, in tests/integration/test_crm_processes.py)."""


def _poll(crm, engine, legacy, reports, create):
    def sor(domain, key):
        record = legacy.get(domain, key)
        return ("legacy", record) if record is not None else None

    return poll_inbound(crm=crm, engine=engine, sor_record=sor,
                        directory=lambda: legacy.stream("customer"), reports=reports,
                        create_customer=create)


def _create(legacy):
    return lambda customer, idem: legacy.create_numbered(customer, idempotency_key=idem,
                                                         writer="COEXCRM")


def test_onboarding_creates_the_customer_in_the_sor_under_the_sor_s_number(legacy):
    crm, engine, reports = InMemoryCrm(), memory_state_engine(), ListReports()
    crm_id = crm.person_create("Account", dict(ACCOUNT))
    stats = _poll(crm, engine, legacy, reports, _create(legacy))
    assert stats.created == 1
    key = str(FIRST_CUSTOMER_NUMBER)
    assert [c.key for c in legacy.stream("customer")] == [key]
    assert crm.by_id[crm_id]["Coexist_Id__c"] == key
    decision = state.decision_of(engine, crm_id)
    assert (decision.decision, decision.customer_key, decision.state) == ("create", key, "done")


def test_a_crash_after_the_sor_created_the_customer_never_makes_a_second(legacy):
    crm, engine, reports = InMemoryCrm(), memory_state_engine(), ListReports()
    crm_id = crm.person_create("Account", dict(ACCOUNT))
    create = _create(legacy)

    def create_then_die(customer, idem):
        create(customer, idem)
        raise _Crash

    with pytest.raises(_Crash):
        _poll(crm, engine, legacy, reports, create_then_die)
    [made] = list(legacy.stream("customer"))
    pending = state.decision_of(engine, crm_id)
    assert pending.customer_key == state.NUMBER_PENDING and pending.state == "decided"
    # The restarted poller reads the same event again and asks the SoR under the same key.
    stats = _poll(crm, engine, legacy, reports, create)
    assert stats.created == 1 and [c.key for c in legacy.stream("customer")] == [made.key]
    assert crm.by_id[crm_id]["Coexist_Id__c"] == made.key
    assert state.decision_of(engine, crm_id).customer_key == made.key
    assert handlers.numbered_create_key(crm_id) in {
        r for r in legacy.engine.connect().execute(select(XCOEXNUM.c.IDEMKEY)).scalars()}


def test_a_sor_that_refuses_the_create_is_reported_and_the_feed_moves_on(legacy):
    from bus.errors import BusinessError

    crm, engine, reports = InMemoryCrm(), memory_state_engine(), ListReports()
    crm.person_create("Account", dict(ACCOUNT))

    def refuse(customer, idem):
        raise BusinessError("422 IdempotencyKeyReused")

    stats = _poll(crm, engine, legacy, reports, refuse)
    [report] = reports.of("CrmOnboardingRefused")
    assert "IdempotencyKeyReused" in report.message and stats.last_replay_id > 0
    assert list(legacy.stream("customer")) == []


def test_the_sor_s_change_reaching_the_crm_first_never_makes_a_second_account(legacy):
    """The SoR has the customer before the poller keyed the person's account: the outbound
    consumer holds the customer while its number is pending, then keys that account
    first, so the CRM shows one account."""
    from tests.support.crm import event
    from workers.crm.consumer import PENDING_RECHECK_S, CrmConsumer
    from workers.crm.handlers import Outcome

    crm, engine, reports, deferred = InMemoryCrm(), memory_state_engine(), ListReports(), []
    consumer = CrmConsumer(crm=lambda: crm, engine=engine, reports=reports,
                           defer=lambda env, s: deferred.append((env.message_id, s)))
    crm_id = crm.person_create("Account", dict(ACCOUNT))
    other = SPEC.record("customer", 1)
    create = _create(legacy)

    def create_then_die(customer, idem):
        create(customer, idem)
        raise _Crash

    with pytest.raises(_Crash):
        _poll(crm, engine, legacy, reports, create_then_die)
    [made] = list(legacy.stream("customer"))
    # The router's event of the SoR's create arrives while the number is pending: held
    # (re-queued shortly), as is every customer of that delivery; nothing reaches the CRM.
    first, bystander = event(made, 1), event(other, 1)
    results = consumer([first, bystander])
    assert {r.outcome for r in results} == {Outcome.PAUSED}
    assert sorted(deferred) == sorted([(first.message_id, PENDING_RECHECK_S),
                                       (bystander.message_id, PENDING_RECHECK_S)])
    assert _accounts(crm) == [crm_id]
    # The number recorded (here by hand: the poller's own turn links the account as
    # well), the redelivered event keys the person's account first and updates it.
    state.set_number(engine, crm_id, made.key)
    consumer([first, bystander])
    assert crm.by_id[crm_id]["Coexist_Id__c"] == made.key
    assert crm.by_id[crm_id]["AccountNumber"] == made.key
    assert len(_accounts(crm)) == 2  # the person's, and the bystander's
    assert reports.of("CrmDuplicateAccount") == []


def _accounts(crm) -> list[str]:
    return sorted(i for i in crm.by_id if i.startswith("001"))


def test_a_crm_that_cannot_take_the_link_now_holds_only_that_customer(legacy):
    from coexistence.crm.ports import CrmUnavailable
    from tests.support.crm import event
    from workers.crm.consumer import CrmConsumer

    crm, engine, reports, deferred = InMemoryCrm(), memory_state_engine(), ListReports(), []
    consumer = CrmConsumer(crm=lambda: crm, engine=engine, reports=reports,
                           defer=lambda env, s: deferred.append(env.message_id))
    crm_id = crm.person_create("Account", dict(ACCOUNT))
    _poll(crm, engine, legacy, reports, _create(legacy))
    crm.by_id[crm_id]["Coexist_Id__c"] = None  # as if the poller's link had not landed
    [made] = list(legacy.stream("customer"))

    def down(*_a, **_k):
        raise CrmUnavailable("503")

    crm.link = down
    mine, bystander = event(made, 1), event(SPEC.record("customer", 1), 1)
    consumer([mine, bystander])
    assert deferred == [mine.message_id]
    keys = [crm.by_id[i].get("Coexist_Id__c") for i in _accounts(crm)]
    assert len(keys) == 2 and bystander.key in keys and keys.count(made.key) <= 1
