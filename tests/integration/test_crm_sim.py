"""The CRM simulator over real HTTP: what the Salesforce REST API would answer.

The faithfulness of the common paths is proven by simple-salesforce
(``test_crm_sim_simple_salesforce.py``); this file covers what that client does not
reach: change data capture (origins, long polling, retention), the org's automation,
the limits of sObject Collections, token expiry and a restart.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.support import crm_sim
from workers.crm_sim import start_crm_simulator
from workers.crm_sim.app import DEFAULT_RETENTION_S, DEFAULT_SESSION_TTL_S

crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

pytestmark = pytest.mark.integration

V = "/services/data/v60.0"
FEED = "/services/pubsub/topic/data/ChangeEvents"


def login(sim, base_url: str | None = None) -> httpx.Client:
    url = base_url or sim.url
    token = httpx.post(f"{url}/services/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": sim.client_id,
        "client_secret": sim.client_secret}).json()["access_token"]
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def api(crm):
    with login(crm) as client:
        yield client


def events(api, after: int = 0, **params) -> list[dict]:
    response = api.get(FEED, params={"replayId": after, **params})
    assert response.status_code == 200, response.text
    return response.json()["events"]


def upsert(api, sobject: str, key: str, body: dict, **headers) -> httpx.Response:
    return api.patch(f"{V}/sobjects/{sobject}/Coexist_Id__c/{key}", json=body, headers=headers)


# ---------------------------------------------------------------------------- change events


def test_change_origin_names_the_api_client_and_is_empty_for_a_person(crm, api):
    upsert(api, "Account", "1", {"Name": "One"}, **{"Sforce-Call-Options": "client=coexist"})
    upsert(api, "Account", "2", {"Name": "Two"})
    crm.person_create("jsmith", "Account", {"Name": "Three"}).raise_for_status()
    origins = [e["event"]["ChangeEventHeader"]["changeOrigin"] for e in events(api)]
    assert origins == ["com/salesforce/api/rest/60.0;client=coexist",
                       "com/salesforce/api/rest/60.0", ""]


def test_an_update_lists_changed_and_nulled_fields_and_a_delete_is_an_event(crm, api):
    upsert(api, "Account", "1", {"Name": "One", "Phone": "555", "Credit_Hold__c": False})
    upsert(api, "Account", "1", {"Phone": None, "Credit_Hold__c": True})
    record = api.get(f"{V}/sobjects/Account/Coexist_Id__c/1").json()
    api.delete(f"{V}/sobjects/Account/{record['Id']}").raise_for_status()
    create, update, delete = events(api)
    assert create["event"]["ChangeEventHeader"]["changeType"] == "CREATE"
    head = update["event"]["ChangeEventHeader"]
    assert set(head["changedFields"]) == {"Phone", "Credit_Hold__c", "LastModifiedDate"}
    assert head["nulledFields"] == ["Phone"] and update["event"]["Credit_Hold__c"] is True
    assert delete["event"]["ChangeEventHeader"]["changeType"] == "DELETE"
    assert delete["event"]["ChangeEventHeader"]["recordIds"] == [record["Id"]]


def test_a_long_poll_returns_as_soon_as_a_change_commits(crm, api):
    got: list = []
    reader = threading.Thread(target=lambda: got.append(events(api, waitMs=15000)))
    reader.start()
    with login(crm) as writer:
        # The reader may not be waiting yet; either way it must see this event.
        upsert(writer, "Account", "1", {"Name": "One"})
    reader.join(20)
    assert not reader.is_alive() and [len(g) for g in got] == [1]


def test_an_expired_replay_id_is_a_clear_400_and_earliest_still_works(crm, api):
    upsert(api, "Account", "1", {"Name": "One"})
    crm.advance_clock(DEFAULT_RETENTION_S + 60)
    response = api.get(FEED, params={"replayId": 0})
    assert response.status_code == 401  # the token expired with the clock too
    with login(crm) as fresh:
        response = fresh.get(FEED, params={"replayId": 0})
        assert response.status_code == 400
        assert response.json()[0]["errorCode"] == "INVALID_REPLAY_ID"
        assert "retention" in response.json()[0]["message"]
        upsert(fresh, "Account", "2", {"Name": "Two"})
        early = fresh.get(FEED, params={"replayPreset": "EARLIEST"}).json()["events"]
        assert [e["event"]["Coexist_Id__c"] for e in early] == ["2"]
        ahead = fresh.get(FEED, params={"replayId": 999})
        assert ahead.status_code == 400 and "newer" in ahead.json()[0]["message"]


def test_a_token_expires_after_the_session_timeout(crm, api):
    assert api.get(f"{V}/limits").status_code == 200
    crm.advance_clock(DEFAULT_SESSION_TTL_S + 1)
    response = api.get(f"{V}/limits")
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid",
                                "errorCode": "INVALID_SESSION_ID"}]


# ---------------------------------------------------------------------------- automation


def test_invoices_roll_up_into_the_account_and_documents_into_the_order(api):
    upsert(api, "Account", "A1", {"Name": "Acme"}).raise_for_status()
    order = {"Account": {"Coexist_Id__c": "A1"}, "EffectiveDate": "2026-01-05",
             "Status": "Allocated"}
    upsert(api, "Order", "O1", order).raise_for_status()
    invoice = {"Name": "I1", "Account__r": {"Coexist_Id__c": "A1"},
               "Order__r": {"Coexist_Id__c": "O1"}, "Status__c": "Open", "Total__c": 150.0,
               "Amount_Paid__c": 50.0, "Issued_On__c": "2026-01-06"}
    upsert(api, "Invoice__c", "I1", invoice).raise_for_status()
    upsert(api, "Shipment__c", "S1", {"Name": "S1", "Order__r": {"Coexist_Id__c": "O1"},
                                      "Status__c": "Picked",
                                      "Picked_At__c": "2026-01-05T10:00:00Z"}
           ).raise_for_status()
    account = api.get(f"{V}/sobjects/Account/Coexist_Id__c/A1").json()
    placed = api.get(f"{V}/sobjects/Order/Coexist_Id__c/O1").json()
    assert account["Open_Balance__c"] == 100.0
    assert placed["Ship_Status__c"] == "Picked" and placed["Invoice_Status__c"] == "Open"
    upsert(api, "Invoice__c", "I1", {"Status__c": "Void"}).raise_for_status()
    assert api.get(f"{V}/sobjects/Account/Coexist_Id__c/A1").json()["Open_Balance__c"] == 0
    denied = upsert(api, "Account", "A1", {"Open_Balance__c": 5})
    assert denied.json()[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    blocked = api.delete(f"{V}/sobjects/Account/{account['Id']}")
    assert blocked.status_code == 400 and blocked.json()[0]["errorCode"] == "DELETE_FAILED"


def test_a_missing_parent_names_the_foreign_key(api):
    response = upsert(api, "Order", "O1", {"Account": {"Coexist_Id__c": "nobody"},
                                           "EffectiveDate": "2026-01-05", "Status": "Open"})
    assert response.status_code == 400
    assert response.json()[0]["message"].startswith("Foreign key external ID: nobody")


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("body, code", [
    ({"Name": "x" * 256}, "STRING_TOO_LONG"),
    ({"Name": "x", "Nope__c": 1}, "INVALID_FIELD"),
    ({"Name": "x", "Credit_Limit__c": "lots"}, "INVALID_TYPE_ON_FIELD_IN_RECORD"),
    ({"Name": "x", "Account_Status__c": "Dormant"}, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
    ({"Phone": "1"}, "REQUIRED_FIELD_MISSING"),
])
def test_bad_values_are_400_with_the_platform_s_code_and_field(api, body, code):
    response = upsert(api, "Account", "1", body)
    assert response.status_code == 400 and response.json()[0]["errorCode"] == code


def test_bad_json_and_bad_soql_are_400(api):
    response = api.patch(f"{V}/sobjects/Account/Coexist_Id__c/1", content=b'{"Name": ')
    assert response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    response = api.get(f"{V}/query", params={"q": "SELECT Id FROM Account WHERE A = 1 OR B = 2"})
    assert response.status_code == 400


def test_collections_refuse_over_200_records_other_types_and_old_api_versions(api):
    url = f"{V}/composite/sobjects/Account/Coexist_Id__c"
    many = [{"attributes": {"type": "Account"}, "Coexist_Id__c": str(i), "Name": "n"}
            for i in range(201)]
    assert api.patch(url, json={"records": many}).status_code == 400
    mixed = [{"attributes": {"type": "Contact"}, "Coexist_Id__c": "1", "LastName": "n"}]
    assert api.patch(url, json={"records": mixed}).status_code == 400
    old = "/services/data/v45.0/composite/sobjects/Account/Coexist_Id__c"
    assert api.patch(old, json={"records": many[:1]}).status_code == 404
    twice = [many[0], many[0]]
    answers = api.patch(url, json={"records": twice}).json()
    assert [a["errors"][0]["statusCode"] for a in answers] == ["DUPLICATE_EXTERNAL_ID"] * 2


def test_a_restart_keeps_records_events_and_sessions(tmp_path):
    db = tmp_path / "crm.db"
    clients = {"coexist": "secret"}
    with start_crm_simulator(db, clients=clients) as first:
        sim = crm_sim.CrmSim(first.url, None, "coexist", "secret")
        with login(sim) as api:
            upsert(api, "Account", "1", {"Name": "One"}).raise_for_status()
            token = api.headers["Authorization"]
    with start_crm_simulator(db, clients=clients) as second, \
            httpx.Client(base_url=second.url, headers={"Authorization": token}) as api:
        assert api.get(f"{V}/sobjects/Account/Coexist_Id__c/1").json()["Name"] == "One"
        assert len(events(api)) == 1
