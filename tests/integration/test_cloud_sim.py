"""The cloud ERP simulator over real HTTP: the API the adapter and the demo rely on."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.support import cloud_sim
from workers.cloud_sim import start_simulator

simulator, sim = cloud_sim.simulator, cloud_sim.sim

pytestmark = pytest.mark.integration


def customer(number: str, **extra) -> dict:
    doc = {
        "number": number, "displayName": f"Acme {number}", "status": "Active",
        "currencyCode": "USD", "creditLimit": "1000.00", "creditHold": False,
        "paymentTermsCode": "Net30", "customerGroupCode": "RETAIL", "salesRegionCode": "WEST",
        "addresses": [{
            "code": "S1", "addressType": "ShipTo", "name": "Dock", "addressLine1": "1 Main St",
            "city": "Denver", "state": "CO", "postalCode": "80202", "country": "US",
        }],
    }
    doc.update(extra)
    return doc


@pytest.fixture
def http(sim):
    with httpx.Client(base_url=sim.url, headers={"X-Client-Id": "tester"}) as client:
        yield client


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


# ---------------------------------------------------------------------------- validation


def test_malformed_json_is_a_400_in_the_odata_error_shape(http):
    response = http.post("/customers", content=b'{"number": ')
    assert response.status_code == 400
    assert error_of(response)["code"] == "MalformedJson"


def test_a_wrong_type_deep_in_a_document_is_a_422_naming_the_field_path(http):
    doc = customer("10001")
    doc["addresses"][0]["postalCode"] = 80202
    response = http.post("/customers", json=doc)
    assert response.status_code == 422
    assert [d["target"] for d in error_of(response)["details"]] == ["addresses/0/postalCode"]


def test_an_unknown_field_is_a_422_naming_it(http):
    response = http.post("/customers", json=customer("10001", shoeSize=42))
    assert response.status_code == 422
    assert error_of(response)["details"][0]["target"] == "shoeSize"


# ---------------------------------------------------------------------------- resources


def test_a_created_record_is_found_by_id_by_alternate_key_and_by_filter(http):
    created = http.post("/customers", json=customer("10042"))
    assert created.status_code == 201
    doc = created.json()
    assert len(doc["id"]) == 36 and doc["@odata.etag"] == created.headers["ETag"]
    by_id = http.get(f"/customers({doc['id']})").json()
    by_key = http.get("/customers(number='10042')").json()
    by_filter = http.get("/customers", params={"$filter": "number eq '10042'"}).json()["value"]
    assert by_id == by_key == by_filter[0] == doc
    assert http.get("/customers(number='99999')").status_code == 404


def test_a_second_create_of_the_same_number_is_a_409(http):
    http.post("/customers", json=customer("10001"))
    response = http.post("/customers", json=customer("10001"))
    assert response.status_code == 409
    assert error_of(response)["code"] == "EntityAlreadyExists"


def test_a_create_with_if_none_match_star_never_revives_a_tombstone(http):
    doc = http.post("/customers", json=customer("10001", coexistSourceVersion=4)).json()
    http.delete(f"/customers({doc['id']})", headers={"X-Coexist-Source-Version": "9"})
    refused = http.post("/customers", json=customer("10001"), headers={"If-None-Match": "*"})
    assert refused.status_code == 412 and error_of(refused)["code"] == "PreconditionFailed"
    tomb = http.get("/customers(number='10001')", params={"includeDeleted": "true"}).json()
    assert tomb["@removed"] and tomb["coexistSourceVersion"] == 9
    fresh = http.post("/customers", json=customer("10002"), headers={"If-None-Match": "*"})
    assert fresh.status_code == 201
    # Without it a create revives the tombstone, as before.
    assert http.post("/customers", json=customer("10001")).status_code == 201


def test_a_stored_document_keeps_every_value_of_its_body(http):
    """The create path serialises the validated document once (pydantic-core): what is
    read back is what the body said, non-ASCII text and decimals included."""
    doc = customer("10003", displayName="Zürich Ærø Ölbaum 東京", creditLimit="1234.50",
                   email="anna@example.com", coexistSourceVersion=3)
    created = http.post("/customers", json=doc)
    assert created.status_code == 201
    doc["addresses"][0]["addressLine2"] = None  # a default, stored as the dict path did
    read = http.get("/customers(number='10003')").json()
    for name, value in doc.items():
        assert read[name] == value, name
    assert [json.loads(line) for line in http.get("/export/customers").text.splitlines()
            ] == [{k: v for k, v in read.items() if k != "lastModifiedBy"}]


def test_patch_honours_if_match_and_moves_the_etag(http):
    doc = http.post("/customers", json=customer("10001")).json()
    url = f"/customers({doc['id']})"
    stale = http.patch(url, json={"creditHold": True}, headers={"If-Match": 'W/"99"'})
    assert stale.status_code == 412
    ok = http.patch(url, json={"creditHold": True}, headers={"If-Match": doc["@odata.etag"]})
    assert ok.status_code == 200
    assert ok.json()["creditHold"] is True and ok.headers["ETag"] != doc["@odata.etag"]
    # Without If-Match the write applies unconditionally (a person's edit).
    assert http.patch(url, json={"creditHold": False}).status_code == 200


def test_a_delete_leaves_a_tombstone_with_the_deleting_source_version(http):
    doc = http.post("/customers", json=customer("10001", coexistSourceVersion=4)).json()
    response = http.delete(f"/customers({doc['id']})", headers={"X-Coexist-Source-Version": "9"})
    assert response.status_code == 204
    assert http.get("/customers(number='10001')").status_code == 404
    tomb = http.get("/customers(number='10001')", params={"includeDeleted": "true"}).json()
    assert tomb["@removed"] == {"reason": "deleted"} and tomb["coexistSourceVersion"] == 9
    assert http.get("/export/customers").text == ""


def test_select_and_prefer_minimal_trim_what_travels(http):
    minimal = {"Prefer": "return=minimal"}
    created = http.post("/customers", json=customer("10001", coexistSourceVersion=2),
                        headers=minimal)
    assert created.status_code == 204 and created.content == b""
    assert created.headers["Preference-Applied"] == "return=minimal"
    head = http.get("/customers(number='10001')",
                    params={"$select": "id,coexistSourceVersion"}).json()
    assert set(head) == {"@odata.etag", "id", "coexistSourceVersion"}
    assert head["coexistSourceVersion"] == 2 and head["@odata.etag"] == created.headers["ETag"]
    named = http.get("/customers(number='10001')", params={"$select": "displayName"}).json()
    assert named == {"@odata.etag": head["@odata.etag"], "displayName": "Acme 10001"}
    patched = http.patch(f"/customers({head['id']})", json={"creditHold": True}, headers=minimal)
    assert patched.status_code == 204 and patched.headers["ETag"] != head["@odata.etag"]


# ---------------------------------------------------------------------------- idempotency


def test_the_same_idempotency_key_and_body_replay_the_first_answer_and_change_nothing(http, sim):
    headers = {"Idempotency-Key": "msg-1"}
    first = http.post("/customers", json=customer("10001"), headers=headers)
    again = http.post("/customers", json=customer("10001"), headers=headers)
    assert again.status_code == first.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotency-Replayed"] == "true"
    assert len(sim.changes()) == 1


def test_the_same_idempotency_key_with_another_body_is_a_422(http, sim):
    http.post("/customers", json=customer("10001"), headers={"Idempotency-Key": "msg-1"})
    response = http.post("/customers", json=customer("10002"), headers={"Idempotency-Key": "msg-1"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "IdempotencyKeyReused"
    assert len(sim.changes()) == 1


# ---------------------------------------------------------------------------- lists, export, feed


def test_lists_page_by_top_and_next_link_in_number_order(http):
    numbers = [f"{n:05d}" for n in range(25, 0, -1)]
    batch = [{"id": n, "method": "POST", "url": "customers", "body": customer(n)} for n in numbers]
    assert all(r["status"] == 201 for r in http.post("/$batch", json={"requests": batch}).json()[
        "responses"])
    seen, url = [], "/customers?$top=10"
    while url:
        page = http.get(url).json()
        seen += [d["number"] for d in page["value"]]
        url = page.get("@odata.nextLink")
    assert seen == sorted(numbers)


def test_modified_since_and_the_last_modified_filter_return_only_later_writes(http):
    first = http.post("/customers", json=customer("10001")).json()
    http.post("/customers", json=customer("10002"))
    since = first["lastModifiedDateTime"]
    by_param = http.get("/customers", params={"modifiedSince": since}).json()["value"]
    by_filter = http.get("/customers", params={
        "$filter": f"lastModifiedDateTime gt {since}"}).json()["value"]
    assert [d["number"] for d in by_param] == [d["number"] for d in by_filter] == ["10002"]
    bad = http.get("/customers", params={"$filter": "displayName eq 'x'"})
    assert bad.status_code == 400 and "unsupported $filter" in error_of(bad)["message"]


def test_export_streams_ndjson_sorted_by_number_and_resumes_after_a_number(http):
    for n in ("30", "10", "20"):
        http.post("/customers", json=customer(n))
    lines = http.get("/export/customers").text.splitlines()
    assert [json.loads(line)["number"] for line in lines] == ["10", "20", "30"]
    resumed = http.get("/export/customers", params={"after": "10"}).text.splitlines()
    assert [json.loads(line)["number"] for line in resumed] == ["20", "30"]


def test_the_change_feed_has_increasing_cursors_and_names_each_client(http, sim):
    http.post("/customers", json=customer("10001"))
    http.patch("/customers(number='10001')", json={"creditHold": True},
               headers={"X-Client-Id": "JSMITH"})
    http.delete("/customers(number='10001')")
    feed = sim.changes()
    assert [(c["op"], c["clientId"]) for c in feed] == [
        ("upsert", "tester"), ("upsert", "JSMITH"), ("delete", "tester")]
    assert [c["cursor"] for c in feed] == [1, 2, 3]
    assert sim.changes(after=2) == feed[2:]


# ---------------------------------------------------------------------------- $batch


def test_a_batch_answers_each_operation_and_refuses_more_than_200(http):
    ops = [
        {"id": "a", "method": "POST", "url": "customers", "body": customer("10001")},
        {"id": "b", "method": "POST", "url": "customers", "body": customer("10002", status=1)},
        {"id": "c", "method": "GET", "url": "customers(number='10001')"},
        {"id": "d", "method": "GET", "url": "nowhere"},
    ]
    answers = http.post("/$batch", json={"requests": ops}).json()["responses"]
    assert [(a["id"], a["status"]) for a in answers] == [
        ("a", 201), ("b", 422), ("c", 200), ("d", 404)]
    assert answers[1]["body"]["error"]["details"][0]["target"] == "status"
    too_many = [{"id": str(i), "method": "GET", "url": "customers"} for i in range(201)]
    assert http.post("/$batch", json={"requests": too_many}).status_code == 413


# ---------------------------------------------------------------------------- faults


def test_a_dropped_connection_cuts_the_answer_but_the_write_was_committed(http, sim):
    sim.faults(next=["drop:write"])
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/customers", json=customer("10001"))
    assert http.get("/customers(number='10001')").status_code == 200


def test_a_timeout_fault_never_answers(http, sim):
    sim.faults(next=["timeout:any"], hang_s=2)
    with pytest.raises(httpx.ReadTimeout):
        http.get("/customers", timeout=0.3)
    assert http.get("/customers").status_code == 200


def test_fault_settings_are_validated_with_the_field_named(http):
    response = http.put("/admin/faults", json={"error_rate": 3})
    assert response.status_code == 422
    assert "error_rate=3" in error_of(response)["message"]


# ---------------------------------------------------------------------------- process


def test_a_restart_loses_nothing(tmp_path):
    db = tmp_path / "cloud.db"
    with start_simulator(db) as first:
        httpx.post(f"{first.url}/items", json={
            "number": "SKU-1", "displayName": "Widget", "baseUnitOfMeasureCode": "EA",
            "netWeightKg": "1.5", "status": "Active", "currencyCode": "USD",
            "unitPrice": "9.99", "unitCost": "5.00"}).raise_for_status()
    with start_simulator(db) as second:
        assert httpx.get(f"{second.url}/items(number='SKU-1')").json()["unitPrice"] == "9.99"
        assert len(httpx.get(f"{second.url}/changes").json()["value"]) == 1


def test_tokens_name_the_client_and_the_rate_limit_answers_429_with_retry_after(tmp_path):
    tokens = {"COEXIST": "t0k3n-a"}
    # One token per 5 s: however slow this machine, the bucket cannot refill mid-test.
    with start_simulator(tmp_path / "c.db", tokens=tokens, rate_per_s=0.2, burst=3) as s:
        assert httpx.get(f"{s.url}/customers").status_code == 401
        auth = {"Authorization": "Bearer t0k3n-a"}
        with httpx.Client(base_url=s.url, headers=auth) as client:
            client.post("/customers", json=customer("10001")).raise_for_status()
            statuses = [client.get("/customers").status_code for _ in range(3)]
            assert statuses[-1] == 429
            limited = client.get("/customers")
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 4
            feed = httpx.get(f"{s.url}/changes", headers=auth)
            assert feed.status_code in (200, 429)


def test_the_command_line_refuses_bad_faults_without_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "workers.cloud_sim", "--db", str(tmp_path / "x.db"),
         "--faults", "drop_rate=2"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "drop_rate=2.0" in out.stderr and "Traceback" not in out.stderr
