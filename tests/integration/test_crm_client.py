"""The CRM adapter against the simulator: every fault and error code ends where it must.

Technical (``CrmUnavailable``, retried by the bus): 503, timeouts, a connection cut
mid-answer.  One token refresh on 401.  ``CrmPaused`` on a spent budget, and before it,
slower requests from the client's own budget.  Business (``Refused``): duplicates, unique
values, required fields, restricted picklists, validation rules.
"""

from __future__ import annotations

import httpx
import pytest

from coexistence.crm.ports import CrmPaused, CrmUnavailable, CrmUpsert, Refused, Retry, Synced
from coexistence.sample import SampleSpec
from tests.support import crm_sim
from workers.crm.client import CrmClient, _result

crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

SPEC = SampleSpec(customers=20, seed=11)


def item(i: int, version: int = 1) -> CrmUpsert:
    c = SPEC.record("customer", i)
    return CrmUpsert("customer", c.key, c, version, f"corr-{i}", "legacy")


def client_for(sim, **kwargs) -> CrmClient:
    kwargs.setdefault("timeout_s", 5.0)
    return CrmClient(sim.url, client_id=sim.client_id, client_secret=sim.client_secret,
                     **kwargs)


@pytest.fixture
def client(crm):
    c = client_for(crm)
    try:
        yield c
    finally:
        c.close()


def coexist_writes(sim, key: str) -> int:
    rows = sim.query(f"SELECT Id FROM Account WHERE Coexist_Id__c = '{key}'")
    return len(rows)


def test_an_expired_token_is_refreshed_once_and_the_request_goes_through(crm, client):
    client.upsert("customer", [item(0)])
    crm.expire_sessions()
    assert isinstance(client.upsert("customer", [item(0, 2)])[0], Synced)
    assert client.find("customer", item(0).key).version == 2


def test_a_second_401_in_a_row_is_a_technical_error_not_a_loop(crm, client):
    client.upsert("customer", [item(0)])
    crm.faults(next=["401", "401"])
    with pytest.raises(CrmUnavailable, match="401"):
        client.upsert("customer", [item(0, 2)])


def test_wrong_credentials_are_reported_clearly(crm):
    bad = CrmClient(crm.url, client_id=crm.client_id, client_secret="wrong", timeout_s=5.0)
    with pytest.raises(CrmUnavailable, match="client id and secret"):
        bad.upsert("customer", [item(0)])
    bad.close()


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_a_503_or_a_cut_connection_is_technical_and_the_resend_applies_once(crm, client,
                                                                           fault):
    crm.faults(next=[fault])
    with pytest.raises(CrmUnavailable):
        client.upsert("customer", [item(1)])
    # The bus sends the message again: same record, same version.
    assert isinstance(client.upsert("customer", [item(1)])[0], Synced)
    assert coexist_writes(crm, item(1).key) == 1


def test_a_timeout_is_technical(crm):
    slow = client_for(crm, timeout_s=0.3)
    crm.faults(next=["timeout"], hang_s=2)
    with pytest.raises(CrmUnavailable, match="Timeout"):
        slow.upsert("customer", [item(2)])
    slow.close()


def test_a_row_lock_is_retried_per_record(crm, client):
    crm.faults(lock={item(3).key: 1})
    results = client.upsert("customer", [item(3), item(4)])
    assert isinstance(results[0], Retry) and results[0].code == "UNABLE_TO_LOCK_ROW"
    assert isinstance(results[1], Synced)


def test_validation_rules_and_required_fields_are_business_refusals(crm, client):
    crm.faults(validation={item(5).key: "Credit review pending"})
    first, fine = client.upsert("customer", [item(5), item(6)])
    assert isinstance(first, Refused) and first.code == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert first.message == "Credit review pending" and isinstance(fine, Synced)
    crm.faults(required={"Account": ["Phone"]})
    [second] = client.upsert("customer", [item(7)])
    assert isinstance(second, Refused) and second.code == "REQUIRED_FIELD_MISSING"
    assert second.fields == ("Phone",)


def test_a_restricted_picklist_value_and_a_duplicate_value_name_what_the_crm_said(crm):
    # The mapping only produces values the org allows, so these answers come from raw
    # requests and go through the adapter's classification.
    token = httpx.post(f"{crm.url}/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": crm.client_id,
        "client_secret": crm.client_secret}).json()["access_token"]
    url = f"{crm.url}/services/data/v60.0/composite/sobjects/Account/Coexist_Id__c"
    records = [{"attributes": {"type": "Account"}, "Coexist_Id__c": "1", "Name": "One",
                "Payment_Terms__c": "Net 31"},
               {"attributes": {"type": "Account"}, "Coexist_Id__c": "2", "Name": "Two"}]
    answers = httpx.patch(url, json={"records": records},
                          headers={"Authorization": f"Bearer {token}"}).json()
    picklist = _result("1", answers[0])
    assert isinstance(picklist, Refused)
    assert picklist.code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert picklist.fields == ("Payment_Terms__c",)
    created = httpx.post(f"{crm.url}/services/data/v60.0/sobjects/Account",
                         json={"Name": "Other", "Coexist_Id__c": "2"},
                         headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 400
    entry = created.json()[0]
    dup = _result("2", {"success": False, "errors": [
        {"statusCode": entry["errorCode"], "message": entry["message"],
         "fields": entry["fields"]}]})
    assert isinstance(dup, Refused) and dup.code == "DUPLICATE_VALUE"
    assert dup.matched_ids == (answers[1]["id"],)


def test_the_client_slows_down_before_the_limit_then_pauses_without_sending(crm):
    waits: list[float] = []
    c = client_for(crm, sleep=waits.append, slow_fraction=0.5, pause_fraction=0.9,
                   max_delay_s=1.0, probe_s=3600)
    crm.limits(max=20)
    with pytest.raises(CrmPaused) as caught:
        for _ in range(30):
            c.upsert("customer", [item(1)])
    # Waits grew as the budget ran down, and the client stopped at 90% on its own: the
    # org's limit (20) was never reached, so people keep their share.  18 writes, then
    # one read of /limits to see whether the budget came back.
    assert len(waits) >= 5 and waits == sorted(waits) and max(waits) <= 1.0
    assert caught.value.budget.used == 19
    assert crm.limits()["used"] == 19
    c.close()


def test_a_paused_client_sees_the_budget_return(crm):
    c = client_for(crm, sleep=lambda s: None, pause_fraction=0.5, slow_fraction=0.4,
                   probe_s=0.0)
    crm.limits(max=10)
    with pytest.raises(CrmPaused):
        for i in range(10):
            c.upsert("customer", [item(i)])
    crm.limits(max=100_000)
    assert isinstance(c.upsert("customer", [item(11)])[0], Synced)
    c.close()


def test_a_spent_org_budget_is_a_pause_with_the_budget_attached(crm, client):
    client.upsert("customer", [item(0)])
    crm.limits(max=1)
    with pytest.raises(CrmPaused) as caught:
        client.upsert("customer", [item(1)])
    assert caught.value.budget is not None and caught.value.budget.max == 1


def test_latency_beyond_the_timeout_is_technical(crm):
    slow = client_for(crm, timeout_s=0.2)
    slow.budget(refresh=True)  # logged in before the latency starts
    crm.faults(latency_ms=1000)
    with pytest.raises(CrmUnavailable, match="Timeout"):
        slow.upsert("customer", [item(3)])
    slow.close()


def test_the_daily_budget_is_rolling_and_returns_a_day_later(crm, client):
    crm.limits(max=3)
    client.upsert("customer", [item(0)])
    client.upsert("customer", [item(1)])
    client.upsert("customer", [item(2)])
    with pytest.raises(CrmPaused):
        client.upsert("customer", [item(3)])
    crm.advance_clock(24 * 3600 + 120)
    fresh = client_for(crm)  # the old token expired with the day as well
    assert isinstance(fresh.upsert("customer", [item(3)])[0], Synced)
    fresh.close()
