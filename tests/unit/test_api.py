"""The governed API on in-memory ERPs (no socket: Starlette's test client over ASGI)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.pool import StaticPool

from bus.errors import TechnicalError
from coexistence.flags import Rollout, bucket
from tests.support import api_world as w
from tests.support import records as r
from workers.api import idempotency
from workers.api.app import create_app
from workers.api.deps import ApiDeps, ApiSettings
from workers.api.queries import MemoryQueries
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema
from workers.router.state import put_route

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


class Switchable:
    """An ERP (or its queries) that can be made unreachable."""

    def __init__(self, inner):
        self.inner = inner
        self.down = False
        self.system = getattr(inner, "system", "?")

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if callable(attr) and name in ("get", "find", "upsert", "stream"):
            def guarded(*a, **kw):
                if self.down:
                    raise TechnicalError("connection refused")
                return attr(*a, **kw)
            return guarded
        return attr


class World:
    def __init__(self, settings: ApiSettings | None = None, **modes):
        self.legacy = Switchable(InMemoryErp("legacy"))
        self.cloud = Switchable(InMemoryErp("cloud"))
        w.seed(self.legacy.inner, w.records("L"))
        w.seed(self.cloud.inner, w.records("C"))
        self.flags = w.flags(**modes)
        self.state = create_state_engine("sqlite://", poolclass=StaticPool)
        upgrade_schema(self.state)
        self.sent = []
        self.queries = {"legacy": Switchable(MemoryQueries(self.legacy.inner)),
                        "cloud": Switchable(MemoryQueries(self.cloud.inner))}
        self.deps = ApiDeps.build(
            erps={"legacy": self.legacy, "cloud": self.cloud}, queries=self.queries,
            flags=self.flags, state=self.state, consumers=w.consumers(),
            settings=settings or ApiSettings(cache_ttl_s=0),
            send=lambda *a: self.sent.append(a), now=lambda: NOW)
        self.client = TestClient(create_app(self.deps), raise_server_exceptions=False)

    def down(self, system: str, is_down: bool = True):
        getattr(self, system).down = is_down
        self.queries[system].down = is_down

    def get(self, path, role="portal", **kw):
        return self.client.get(path, headers={**w.auth(role), **kw.pop("headers", {})}, **kw)

    def post(self, body, key='"k-1"', role="portal", **headers):
        head = {**w.auth(role), **headers}
        if key is not None:
            head["Idempotency-Key"] = key
        return self.client.post("/v1/orders", json=body, headers=head)


@pytest.fixture
def world():
    world = World()
    yield world
    world.state.dispose()


def _systems(response):
    return {(s["domain"], s["system"]) for s in response.json()["meta"]["answered_by"]}


# --------------------------------------------------------------------------- auth, shape


def test_no_or_a_wrong_credential_is_a_401_problem_carrying_the_correlation_id(world):
    res = world.client.get(f"/v1/customers/{w.ACCOUNT}/credit",
                           headers={"X-Correlation-Id": "corr-123"})
    assert res.status_code == 401
    assert res.headers["content-type"] == "application/problem+json"
    assert res.headers["x-correlation-id"] == "corr-123"
    body = res.json()
    assert (body["code"], body["status"], body["schema_version"], body["correlation_id"]) == (
        "unauthorized", 401, 1, "corr-123")
    assert world.client.get(f"/v1/customers/{w.ACCOUNT}/credit",
                            headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_correlation_id_is_made_when_none_or_a_bad_one_is_sent(world):
    res = world.get(f"/v1/customers/{w.ACCOUNT}/credit", headers={"X-Correlation-Id": "a b"})
    assert res.status_code == 200 and res.headers["x-correlation-id"] != "a b"


def test_unknown_routes_and_bad_parameters_are_problems_too(world):
    assert world.get("/v1/nothing").json()["code"] == "not_found"
    res = world.get("/v1/prices?customer=10001&sku=WID-1000&qty=0")
    assert (res.status_code, res.json()["code"], res.json()["field"]) == (
        422, "invalid_request", "qty")


# --------------------------------------------------------------------------- inquiry


def test_credit_is_answered_by_the_customer_sor_with_exposure_from_open_documents(world):
    res = world.get(f"/v1/customers/{w.ACCOUNT}/credit")
    assert res.status_code == 200
    body = res.json()
    assert body["schema_version"] == 1
    assert body["data"] == {"customer_key": w.ACCOUNT, "currency": "USD",
                            "credit_limit": "1000.00", "credit_hold": False,
                            "exposure": "182.16", "available_credit": "817.84",
                            "open_orders": 1, "open_invoices": 1}
    assert {"domain": "customer", "system": "legacy", "flag_version": 0, "mode": "legacy",
            "pinned": False} in body["meta"]["answered_by"]


def test_after_the_switch_the_cloud_answers_under_the_new_flag_version(world):
    state = w.set_mode(world.flags, "customer", "cloud")
    body = world.get(f"/v1/customers/{w.ACCOUNT}/credit").json()
    assert body["data"]["credit_limit"] == "2000.00"
    [src] = [s for s in body["meta"]["answered_by"] if s["domain"] == "customer"]
    assert (src["system"], src["flag_version"], src["mode"]) == ("cloud", state.version,
                                                                  "cloud")


def test_the_portal_asks_about_its_account_and_children_only(world):
    assert world.get(f"/v1/customers/{w.CHILD}/credit").status_code == 200
    res = world.get(f"/v1/customers/{w.OTHER}/credit")
    assert (res.status_code, res.json()["code"]) == (403, "forbidden")
    assert world.get(f"/v1/customers/{w.OTHER}/credit", role="inquiry").status_code == 200
    assert world.get(f"/v1/customers/{w.OTHER}/credit", role="partner").status_code == 403


def test_a_50_percent_rollout_answers_each_customer_from_its_own_sor(world):
    keys = [str(20000 + i) for i in range(40)]
    for k in keys:
        w.seed(world.legacy.inner, [r.customer(k, credit_limit=Decimal("1000.00"))])
        w.seed(world.cloud.inner, [r.customer(k, credit_limit=Decimal("2000.00"))])
    w.set_mode(world.flags, "customer", "cloud", base="legacy", rollout=Rollout(5000))
    seen = set()
    for k in keys:
        body = world.get(f"/v1/customers/{k}/credit", role="inquiry").json()
        expected = "cloud" if bucket("customer", k) < 5000 else "legacy"
        [src] = [s for s in body["meta"]["answered_by"] if s["domain"] == "customer"]
        assert src["system"] == expected
        assert body["data"]["credit_limit"] == ("2000.00" if expected == "cloud" else "1000.00")
        seen.add(expected)
    assert seen == {"legacy", "cloud"}


def test_a_segment_rollout_reads_the_records_segment_before_choosing(world):
    w.seed(world.legacy.inner, [r.customer("20001", region="EAST")])
    w.seed(world.cloud.inner, [r.customer("20001", region="EAST",
                                          credit_limit=Decimal("2000.00"))])
    w.set_mode(world.flags, "customer", "cloud", base="legacy",
               rollout=Rollout(10000, {"region": frozenset({"EAST"})}))
    east = world.get("/v1/customers/20001/credit", role="inquiry").json()
    west = world.get(f"/v1/customers/{w.ACCOUNT}/credit", role="inquiry").json()
    assert east["data"]["credit_limit"] == "2000.00"
    assert west["data"]["credit_limit"] == "1000.00"


def test_a_pinned_order_is_read_from_its_pinned_sor_whatever_the_flag(world):
    w.set_mode(world.flags, "order", "cloud")
    with world.state.begin() as conn:
        put_route(conn, "order", "300001", pinned_sor="legacy", last_version=1)
    pinned = world.get("/v1/orders/300001").json()
    assert pinned["data"]["order"]["customer_po"] == "POL"
    assert {"domain": "order", "system": "legacy", "flag_version": 1, "mode": "cloud",
            "pinned": True} in pinned["meta"]["answered_by"]
    unpinned = world.get("/v1/orders/300002", role="inquiry").json()
    assert unpinned["data"]["order"]["customer_po"] == "POC"


def test_an_order_comes_with_its_shipments_and_invoices_in_the_callers_view(world):
    body = world.get("/v1/orders/300001").json()["data"]
    assert body["order"]["total"] == "90.00"
    assert [s["key"] for s in body["shipments"]] == ["400001"]
    crm = world.get("/v1/orders/300001", role="crm").json()["data"]
    assert "lines" not in crm["order"] and crm["shipments"][0]["tracking_number"] == "1ZL"


def test_another_customers_order_is_not_found_for_the_portal(world):
    res = world.get("/v1/orders/300002")
    assert (res.status_code, res.json()["code"]) == (404, "not_found")
    assert world.get("/v1/orders/300002", role="partner").status_code == 200
    assert world.get("/v1/orders/999999", role="inquiry").status_code == 404


def test_price_answers_the_break_that_applies_and_its_validity(world):
    body = world.get(f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}&qty=60").json()["data"]
    assert (body["unit_price"], body["applied_break"], body["agreement_key"]) == (
        "8.00", {"min_quantity": 50, "unit_price": "8.00"}, "2001")
    assert body["valid_from"] == "2020-01-01" and body["valid_to"] is None
    one = world.get(f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}").json()["data"]
    assert one["unit_price"] == "9.00"


def test_the_portal_never_sees_another_customers_price(world):
    res = world.get(f"/v1/prices?customer={w.OTHER}&sku={w.SKU}")
    assert res.status_code == 403
    assert world.get(f"/v1/prices?customer={w.OTHER}&sku={w.SKU}",
                     role="inquiry").json()["data"]["unit_price"] == "7.00"
    assert world.get(f"/v1/prices?customer={w.ACCOUNT}&sku=NONE-1").status_code == 404
    assert world.get(f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}", role="crm"
                     ).status_code == 403


def test_availability_shows_the_portal_what_can_be_promised_and_inquiry_the_books(world):
    portal = world.get(f"/v1/availability?sku={w.SKU}").json()["data"]
    assert portal["available_to_promise"] == 80
    assert portal["balances"] == [
        {"warehouse": "W01", "sku": w.SKU, "on_hand": None, "allocated": None,
         "available_to_promise": 70},
        {"warehouse": "W02", "sku": w.SKU, "on_hand": None, "allocated": None,
         "available_to_promise": 10}]
    desk = world.get(f"/v1/availability?sku={w.SKU}&warehouse=W01", role="inquiry").json()
    assert desk["data"]["balances"] == [{"warehouse": "W01", "sku": w.SKU, "on_hand": 100,
                                         "allocated": 30, "available_to_promise": 70}]


# --------------------------------------------------------------------------- cache, outages


def test_answers_are_cached_with_their_age_and_a_switch_misses_the_cache_at_once():
    world = World(ApiSettings(cache_ttl_s=60))
    first = world.get(f"/v1/customers/{w.ACCOUNT}/credit").json()["meta"]
    second = world.get(f"/v1/customers/{w.ACCOUNT}/credit")
    assert (first["cached"], second.json()["meta"]["cached"]) == (False, True)
    assert second.headers["cache-control"] == "max-age=60"
    w.set_mode(world.flags, "customer", "cloud")
    third = world.get(f"/v1/customers/{w.ACCOUNT}/credit").json()
    assert third["meta"]["cached"] is False and third["data"]["credit_limit"] == "2000.00"


def test_an_unreachable_sor_is_a_503_with_retry_after_never_a_wrong_answer(world):
    world.down("legacy")
    res = world.get(f"/v1/customers/{w.ACCOUNT}/credit")
    assert (res.status_code, res.json()["code"], res.headers["retry-after"]) == (
        503, "sor_unavailable", "5")
    # The cloud holds a copy, but it is not the SoR: it is never asked instead.
    assert "legacy" in res.json()["detail"]


def test_with_stale_serving_on_an_outage_answers_from_the_cache_marked_stale():
    world = World(ApiSettings(cache_ttl_s=0.000001, serve_stale=True, stale_max_s=3600))
    assert world.get(f"/v1/customers/{w.ACCOUNT}/credit").status_code == 200
    world.down("legacy")
    res = world.get(f"/v1/customers/{w.ACCOUNT}/credit")
    assert res.status_code == 200
    assert res.json()["meta"]["stale"] is True and res.json()["meta"]["cached"] is True


# --------------------------------------------------------------------------- orders

ORDER = {"customer_key": w.ACCOUNT, "customer_po": "PO-77",
         "lines": [{"sku": w.SKU, "quantity": 60}, {"sku": w.SKU2, "quantity": 1}]}


def test_a_portal_order_is_written_into_the_sor_under_the_portal_writer(world):
    res = world.post(ORDER)
    assert res.status_code == 201, res.text
    data = res.json()["data"]
    assert (data["order_key"], data["system"], data["status"]) == ("70000001", "legacy",
                                                                    "accepted")
    assert [ln["unit_price"] for ln in data["lines"]] == ["8.00", "20.00"]
    assert data["total"] == "500.00"
    assert res.headers["location"] == "/v1/orders/70000001"
    order = world.legacy.inner.get("order", "70000001")
    assert (order.channel, order.customer_po) == ("portal", "PO-77")
    assert [c.writer for c in world.legacy.inner.read(0, 10_000)][-1] == "COEXPORTAL"
    assert world.cloud.inner.get("order", "70000001") is None


def test_after_the_order_domain_moves_a_portal_order_goes_to_the_cloud(world):
    w.set_mode(world.flags, "order", "cloud")
    data = world.post(ORDER).json()["data"]
    assert (data["system"], data["mode"]) == ("cloud", "cloud")
    assert world.cloud.inner.get("order", data["order_key"]) is not None
    assert world.legacy.inner.get("order", data["order_key"]) is None


def test_the_same_key_and_body_replays_the_stored_answer(world):
    first = world.post(ORDER)
    again = world.post({**ORDER})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len([c for c in world.legacy.inner.read(0, 10_000) if c.domain == "order"
                and c.writer == "COEXPORTAL"]) == 1


def test_a_missing_key_is_400_and_a_reused_key_with_another_body_is_422(world):
    res = world.post(ORDER, key=None)
    assert (res.status_code, res.json()["code"]) == (400, "idempotency_key_missing")
    world.post(ORDER)
    res = world.post({**ORDER, "customer_po": "OTHER"})
    assert (res.status_code, res.json()["code"], res.json()["field"]) == (
        422, "idempotency_key_reused", "Idempotency-Key")


def test_a_key_still_in_flight_is_409(world):
    idempotency.begin(world.state, w.ACCOUNT, "k-1", _fingerprint(ORDER),
                      correlation_id="c", order_number_base=70_000_000, now=NOW)
    res = world.post(ORDER)
    assert (res.status_code, res.json()["code"]) == (409, "idempotency_key_in_flight")


def test_keys_are_scoped_by_account(world):
    held = {**ORDER, "customer_key": w.HELD}
    assert world.post(ORDER).status_code == 201
    assert world.post(held, role="held").json()["code"] == "credit_hold"


def test_credit_hold_and_unknown_sku_are_refused_naming_the_field_and_replayed(world):
    held = world.post({**ORDER, "customer_key": w.HELD}, role="held")
    assert (held.status_code, held.json()["code"], held.json()["field"]) == (
        422, "credit_hold", "customer_key")
    again = world.post({**ORDER, "customer_key": w.HELD}, role="held")
    assert again.json() == held.json() and again.headers["idempotent-replayed"] == "true"
    res = world.post({**ORDER, "lines": [{"sku": "NOPE-1", "quantity": 1}]}, key='"k-2"')
    assert (res.json()["code"], res.json()["field"]) == ("unknown_sku", "lines[0].sku")
    res = world.post({**ORDER, "lines": [{"sku": w.OLD, "quantity": 1}]}, key='"k-3"')
    assert res.json()["code"] == "sku_not_orderable"


def test_the_portal_may_neither_order_for_others_nor_set_prices(world):
    res = world.post({**ORDER, "customer_key": w.OTHER})
    assert (res.status_code, res.json()["field"]) == (403, "customer_key")
    res = world.post({**ORDER, "lines": [{"sku": w.SKU, "quantity": 1, "unit_price": "0.01"}]})
    assert (res.status_code, res.json()["field"]) == (422, "lines.0.unit_price")
    assert world.post(ORDER, role="inquiry").status_code == 403


def test_an_sor_outage_is_503_and_the_retry_writes_the_same_order_once(world):
    world.down("legacy")
    res = world.post(ORDER)
    assert (res.status_code, res.json()["code"]) == (503, "sor_unavailable")
    world.down("legacy", False)
    done = world.post(ORDER)
    assert done.status_code == 201 and done.json()["data"]["order_key"] == "70000001"
    assert world.post(ORDER, key='"k-9"').json()["data"]["order_key"] == "70000002"


def test_a_write_that_fails_after_the_order_was_built_resumes_with_the_same_command(world):
    original = world.legacy.inner.upsert
    calls = []

    def flaky(record, **kw):
        calls.append(record)
        if len(calls) == 1:
            original(record, **kw)  # the write lands, then the answer is lost
            raise TechnicalError("connection reset after commit")
        return original(record, **kw)

    world.legacy.inner.upsert = flaky
    assert world.post(ORDER).status_code == 503
    res = world.post(ORDER)
    assert res.status_code == 201
    assert calls[0] == calls[1]
    assert len([c for c in world.legacy.inner.read(0, 10_000)
                if c.key == "70000001"]) == 1


def _state_commits(world, request) -> int:
    from sqlalchemy import event

    commits = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(world.state, "commit", listener)
    try:
        request()
    finally:
        event.remove(world.state, "commit", listener)
    return len(commits)


def test_an_accepted_order_commits_two_state_transactions_and_a_refused_one_one(world):
    """The claim carries the command (built before it), a refusal found while building is
    the key's stored answer in that same transaction; replays still replay."""
    res = []
    assert _state_commits(world, lambda: res.append(world.post(ORDER))) == 2
    assert res[-1].status_code == 201
    held = {**ORDER, "customer_key": w.HELD}
    assert _state_commits(world, lambda: res.append(world.post(held, role="held"))) == 1
    assert res[-1].json()["code"] == "credit_hold" and "idempotent-replayed" not in res[-1].headers
    # A replay: the claim's one transaction reads the stored answer and writes nothing.
    assert _state_commits(world, lambda: res.append(world.post(held, role="held"))) == 1
    assert res[-1].headers["idempotent-replayed"] == "true"
    assert res[-1].json() == res[-2].json()


def test_a_replay_needs_no_sor_and_a_claimed_keys_stored_command_is_the_one_written(world):
    first = world.post(ORDER)
    world.down("legacy")
    again = world.post(ORDER)
    assert again.status_code == 201 and again.json() == first.json()
    world.down("legacy", False)
    assert len([c for c in world.legacy.inner.read(0, 10_000)
                if c.domain == "order" and c.writer == "COEXPORTAL"]) == 1


def _fingerprint(body):
    import hashlib
    import json

    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()
