"""The CRM simulator driven by simple-salesforce, a Salesforce client nobody here wrote.

If the simulator's wire format drifted from Salesforce's (status codes, bodies, error
arrays, the limit header, query paging), this client would break here the same way it
would against the simulator's errors in production code.
"""

from __future__ import annotations

import pytest
import requests

from tests.support import crm_sim

simple_salesforce = pytest.importorskip("simple_salesforce")
from simple_salesforce import Salesforce  # noqa: E402
from simple_salesforce.exceptions import (  # noqa: E402
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

crm_simulator_tls, crm_tls = crm_sim.crm_simulator_tls, crm_sim.crm_tls

pytestmark = pytest.mark.integration


def connect(sim: crm_sim.CrmSim, version: str = "60.0") -> Salesforce:
    session = requests.Session()
    # Not the environment's CA bundle (REQUESTS_CA_BUNDLE would override verify) or proxies.
    session.trust_env = False
    session.verify = sim.ca_file
    token = session.post(f"{sim.url}/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": sim.client_id,
        "client_secret": sim.client_secret,
    })
    token.raise_for_status()
    answer = token.json()
    return Salesforce(instance_url=answer["instance_url"], session_id=answer["access_token"],
                      session=session, version=version)


@pytest.fixture
def sf(crm_tls):
    return connect(crm_tls)


ACME = {"Name": "Acme Supply Inc.", "BillingPostalCode": "80202", "Payment_Terms__c": "Net 30",
        "Account_Status__c": "Active", "Credit_Limit__c": 5000, "Credit_Hold__c": False}


def test_upsert_by_external_id_creates_then_updates(sf):
    assert sf.Account.upsert("Coexist_Id__c/10042", ACME) == 201
    assert sf.Account.upsert("Coexist_Id__c/10042", {"Credit_Hold__c": True}) == 200
    record = sf.Account.get_by_custom_id("Coexist_Id__c", "10042")
    assert record["Name"] == "Acme Supply Inc." and record["Credit_Hold__c"] is True
    assert record["attributes"]["type"] == "Account"
    assert sf.Account.get(record["Id"])["Coexist_Id__c"] == "10042"


def test_an_update_by_upsert_below_api_46_answers_204(crm_tls):
    sf = connect(crm_tls, version="45.0")
    response = sf.Account.upsert("Coexist_Id__c/10042", ACME, raw_response=True)
    assert response.status_code == 201 and "created" not in response.json()
    response = sf.Account.upsert("Coexist_Id__c/10042", {"Phone": "303 555 0100"},
                                 raw_response=True)
    assert response.status_code == 204 and response.content == b""


def test_collections_upsert_answers_in_request_order_with_per_record_errors(sf):
    records = [
        {"attributes": {"type": "Account"}, "Coexist_Id__c": "1", "Name": "One"},
        {"attributes": {"type": "Account"}, "Coexist_Id__c": "2", "Name": "Two",
         "Payment_Terms__c": "Net 31"},
        {"attributes": {"type": "Account"}, "Coexist_Id__c": "3", "Name": "Three"},
    ]
    results = sf.restful("composite/sobjects/Account/Coexist_Id__c", method="PATCH",
                         json={"allOrNone": False, "records": records})
    assert [r["success"] for r in results] == [True, False, True]
    assert results[0]["created"] is True
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert results[1]["errors"][0]["fields"] == ["Payment_Terms__c"]
    found = sf.query("SELECT Coexist_Id__c FROM Account ORDER BY Coexist_Id__c")
    assert [r["Coexist_Id__c"] for r in found["records"]] == ["1", "3"]


def test_all_or_none_rolls_the_whole_collection_back(sf):
    records = [
        {"attributes": {"type": "Account"}, "Coexist_Id__c": "1", "Name": "One"},
        {"attributes": {"type": "Account"}, "Coexist_Id__c": "2"},
    ]
    results = sf.restful("composite/sobjects/Account/Coexist_Id__c", method="PATCH",
                         json={"allOrNone": True, "records": records})
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert sf.query("SELECT Id FROM Account")["totalSize"] == 0


def test_an_invalid_picklist_value_is_a_malformed_request(sf):
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Account.upsert("Coexist_Id__c/10042", {**ACME, "Payment_Terms__c": "Net 31"})
    assert caught.value.content[0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"


def test_the_duplicate_rule_blocks_a_second_acme_and_names_the_first(sf):
    sf.Account.upsert("Coexist_Id__c/10042", ACME)
    first = sf.Account.get_by_custom_id("Coexist_Id__c", "10042")["Id"]
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Account.create({"Name": "ACME SUPPLY", "BillingPostalCode": "80202"})
    error = caught.value.content[0]
    assert error["errorCode"] == "DUPLICATES_DETECTED"
    matches = error["duplicateResult"]["matchResults"][0]["matchRecords"]
    assert [m["record"]["Id"] for m in matches] == [first]
    created = sf.Account.create({"Name": "ACME SUPPLY", "BillingPostalCode": "80202"},
                                headers={"Sforce-Duplicate-Rule-Header": "allowSave=true"})
    assert created["success"] is True


def test_a_unique_field_answers_duplicate_value(sf):
    sf.Account.upsert("Coexist_Id__c/10042", ACME)
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Account.create({"Name": "Other", "Coexist_Id__c": "10042"})
    assert caught.value.content[0]["errorCode"] == "DUPLICATE_VALUE"


def test_a_non_unique_external_id_answers_300_more_than_one_record(sf):
    sf.Account.create({"Name": "Imported A", "Legacy_Number__c": "0000010042"})
    sf.Account.create({"Name": "Imported B", "Legacy_Number__c": "0000010042"})
    with pytest.raises(SalesforceMoreThanOneRecord) as caught:
        sf.Account.upsert("Legacy_Number__c/0000010042", {"Phone": "1"})
    assert len(caught.value.content) == 2
    assert all("/sobjects/Account/001" in url for url in caught.value.content)


def test_an_unknown_object_or_field_is_not_found_and_a_body_id_is_malformed(sf):
    with pytest.raises(SalesforceResourceNotFound):
        sf.Widget__c.upsert("Coexist_Id__c/1", {"Name": "x"})
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.upsert("No_Such__c/1", {"Name": "x"})
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Account.upsert("Coexist_Id__c/1", {"Name": "x", "Coexist_Id__c": "1"})
    assert caught.value.content[0]["fields"] == ["Coexist_Id__c"]
    with pytest.raises(SalesforceMalformedRequest):
        sf.Account.upsert("Coexist_Id__c/1", {"Name": "x", "Id": "001000000000000AAA"})


def test_an_expired_session_raises_expired_session(sf, crm_tls):
    sf.Account.upsert("Coexist_Id__c/1", {"Name": "x"})
    crm_tls.expire_sessions()
    with pytest.raises(SalesforceExpiredSession) as caught:
        sf.Account.get_by_custom_id("Coexist_Id__c", "1")
    assert caught.value.content[0]["errorCode"] == "INVALID_SESSION_ID"


def test_usage_is_reported_on_every_response_and_over_budget_is_refused_403(sf, crm_tls):
    sf.Account.upsert("Coexist_Id__c/1", {"Name": "x"})
    sf.query("SELECT Id FROM Account")
    used = sf.api_usage["api-usage"]
    assert used.used >= 1 and used.total == 100_000
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] == 100_000
    crm_tls.limits(max=used.used)
    with pytest.raises(SalesforceRefusedRequest) as caught:
        sf.Account.upsert("Coexist_Id__c/2", {"Name": "y"})
    assert caught.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    crm_tls.limits(max=100_000)


def test_query_all_pages_past_2000_records(sf):
    for start in range(0, 2100, 200):
        records = [{"attributes": {"type": "Account"}, "Coexist_Id__c": str(i),
                    "Name": f"Account {i}"} for i in range(start, min(start + 200, 2100))]
        results = sf.restful("composite/sobjects/Account/Coexist_Id__c", method="PATCH",
                             json={"records": records})
        assert all(r["success"] for r in results)
    everything = sf.query_all("SELECT Id, Coexist_Id__c FROM Account")
    assert everything["totalSize"] == 2100
    assert len({r["Coexist_Id__c"] for r in everything["records"]}) == 2100
