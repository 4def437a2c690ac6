"""Inquiry and portal orders over the real reference ERPs: the legacy SQL ERP and the cloud
simulator (a subprocess over HTTP), per flag state, a 50% rollout and a pinned order."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from fastapi.testclient import TestClient

from coexistence.flags import Rollout, bucket
from tests.support import api_world as w
from tests.support import cloud_sim
from tests.support import records as r
from workers.api.app import create_app
from workers.api.deps import ApiDeps, ApiSettings
from workers.api.queries import CloudQueries, LegacyQueries
from workers.cloud_erp import CloudErp
from workers.db import create_state_engine
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema
from workers.router.state import put_route

simulator, sim = cloud_sim.simulator, cloud_sim.sim
CUSTOMERS = [str(20000 + i) for i in range(24)]


@pytest.fixture
def world(sim, tmp_path):
    legacy_engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy_engine)
    legacy = LegacyErp(legacy_engine)
    cloud = CloudErp(sim.url, attempts=1)
    w.seed(legacy, w.records("L") + [r.customer(k, credit_limit=Decimal("1000.00"))
                                     for k in CUSTOMERS])
    w.seed(cloud, w.records("C") + [r.customer(k, credit_limit=Decimal("2000.00"))
                                    for k in CUSTOMERS])
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    flags = w.flags()
    http = httpx.Client(base_url=sim.url)
    deps = ApiDeps.build(erps={"legacy": legacy, "cloud": cloud},
                         queries={"legacy": LegacyQueries(legacy), "cloud": CloudQueries(http)},
                         flags=flags, state=state, consumers=w.consumers(),
                         settings=ApiSettings(cache_ttl_s=0), send=lambda *a: None)
    client = TestClient(create_app(deps))
    yield client, flags, legacy, cloud, state
    http.close()
    cloud.close()
    legacy_engine.dispose()
    state.dispose()


def _get(client, path, role="inquiry"):
    res = client.get(path, headers=w.auth(role))
    assert res.status_code == 200, res.text
    return res.json()


def _system(body, domain):
    return {s["system"] for s in body["meta"]["answered_by"] if s["domain"] == domain}


def test_credit_follows_the_customer_flag_from_legacy_to_cloud(world):
    client, flags, *_ = world
    body = _get(client, f"/v1/customers/{w.ACCOUNT}/credit")
    assert (body["data"]["credit_limit"], _system(body, "customer")) == ("1000.00", {"legacy"})
    assert body["data"]["exposure"] == "182.16"
    w.set_mode(flags, "customer", "shadow")
    assert _system(_get(client, f"/v1/customers/{w.ACCOUNT}/credit"), "customer") == {"legacy"}
    w.set_mode(flags, "customer", "cloud")
    body = _get(client, f"/v1/customers/{w.ACCOUNT}/credit")
    assert (body["data"]["credit_limit"], _system(body, "customer")) == ("2000.00", {"cloud"})


def test_a_50_percent_rollout_answers_each_customer_from_its_sor(world):
    client, flags, *_ = world
    w.set_mode(flags, "customer", "cloud", base="legacy", rollout=Rollout(5000))
    seen = set()
    for key in CUSTOMERS:
        body = _get(client, f"/v1/customers/{key}/credit")
        expected = "cloud" if bucket("customer", key) < 5000 else "legacy"
        assert _system(body, "customer") == {expected}
        assert body["data"]["credit_limit"] == ("2000.00" if expected == "cloud" else "1000.00")
        seen.add(expected)
    assert seen == {"legacy", "cloud"}


def test_a_pinned_order_is_read_from_the_legacy_erp_after_the_order_domain_moved(world):
    client, flags, _, _, state = world
    w.set_mode(flags, "order", "cloud")
    with state.begin() as conn:
        put_route(conn, "order", "300001", pinned_sor="legacy", last_version=1)
    pinned = _get(client, "/v1/orders/300001", role="portal")
    assert pinned["data"]["order"]["customer_po"] == "POL"
    assert [s for s in pinned["meta"]["answered_by"] if s["domain"] == "order"] == [
        {"domain": "order", "system": "legacy", "flag_version": 1, "mode": "cloud",
         "pinned": True}]
    assert _get(client, "/v1/orders/300002")["data"]["order"]["customer_po"] == "POC"


def test_price_and_availability_come_from_their_own_domains_sor(world):
    client, flags, *_ = world
    w.set_mode(flags, "inventory", "cloud")
    price = _get(client, f"/v1/prices?customer={w.ACCOUNT}&sku={w.SKU}&qty=50", role="portal")
    assert (price["data"]["unit_price"], _system(price, "price")) == ("8.00", {"legacy"})
    stock = _get(client, f"/v1/availability?sku={w.SKU}", role="portal")
    assert (stock["data"]["available_to_promise"], _system(stock, "inventory")) == (80,
                                                                                   {"cloud"})


def test_a_portal_order_reaches_the_sor_before_and_after_the_order_domain_moves(world):
    client, flags, legacy, cloud, _ = world
    body = {"customer_key": w.ACCOUNT, "lines": [{"sku": w.SKU, "quantity": 5}]}
    before = client.post("/v1/orders", json=body,
                         headers={**w.auth("portal"), "Idempotency-Key": '"before"'})
    assert before.status_code == 201, before.text
    key = before.json()["data"]["order_key"]
    assert legacy.get("order", key).channel == "portal"
    assert [c.writer for c in legacy.feed.read(0, 100_000) if c.key == key] == ["COEXPORTAL"]
    w.set_mode(flags, "order", "cloud")
    after = client.post("/v1/orders", json=body,
                        headers={**w.auth("portal"), "Idempotency-Key": '"after"'})
    assert after.status_code == 201 and after.json()["data"]["system"] == "cloud"
    key2 = after.json()["data"]["order_key"]
    assert cloud.get("order", key2).channel == "portal"
    assert [c.writer for c in cloud.read(0, 1000) if c.key == key2] == ["COEXPORTAL"]
    assert legacy.get("order", key2) is None
