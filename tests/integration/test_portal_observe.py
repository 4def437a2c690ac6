"""``coexist status`` shows the portal's endpoint notices and webhook backlog; ``coexist
trace`` shows the portal order's API call and every webhook delivery attempt (the real
router's composition root on the embedded default, a real HTTP receiver, the API's ASGI
app)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from coexistence.router import CLOUD, LEGACY
from tests.support import api_world as w
from tests.support.receiver import serving, step
from workers.api.app import create_app
from workers.api.deps import ApiDeps, ApiSettings
from workers.bootstrap import bootstrap
from workers.cli import cli
from workers.config import Settings, SubscriptionSection
from workers.driver import Driver
from workers.erp_memory import InMemoryErp
from workers.portal.delivery import Dispatcher
from workers.portal.endpoints import EndpointRegistry

ORDER = {"customer_key": w.ACCOUNT, "customer_po": "PO-77",
         "lines": [{"sku": w.SKU, "quantity": 60}]}


@pytest.fixture
def receiver():
    with serving() as rec:
        yield rec


@pytest.fixture
def world(tmp_path):
    settings = Settings(home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}",
                        legacy_url="sqlite://", cloud_url=None, subscriptions={
                            "portal": SubscriptionSection(domains=("order", "shipment"))})
    legacy, cloud = InMemoryErp("legacy"), InMemoryErp("cloud")
    w.seed(legacy, w.records())
    app = bootstrap(settings, erps={LEGACY: legacy, CLOUD: cloud}, create_state=True)
    app.broker.flush_all()
    driver = Driver(app)
    dispatcher = Dispatcher(app.state, EndpointRegistry(app.state), app.exceptions,
                            timeout_s=2.0)
    yield app, driver, dispatcher
    dispatcher.close()
    driver.stop()


def _cli(app, *args):
    result = CliRunner().invoke(cli, list(args), obj=app)
    return result, result.output


def test_status_shows_a_failing_endpoint_and_the_webhook_backlog_and_trace_every_attempt(
        world, receiver):
    app, driver, dispatcher = world
    EndpointRegistry(app.state).add(w.ACCOUNT, receiver.script("/acme", [500, 200]),
                                    actor="ops", reason="onboarding")
    api = TestClient(create_app(ApiDeps.from_app(app, ApiSettings(cache_ttl_s=0),
                                                 consumers=w.consumers())))
    res = api.post("/v1/orders", json=ORDER,
                   headers={**w.auth("portal"), "Idempotency-Key": '"k-1"',
                            "X-Correlation-Id": "portal-call-1"})
    assert res.status_code == 201, res.text
    order_key = res.json()["data"]["order_key"]
    driver.settle()  # capture of the SoR's write -> fan-out -> the portal consumer

    result, out = _cli(app, "status", "--format", "json", "--max-outbox-lag", "0")
    report = json.loads(out.splitlines()[0])
    assert report["portal"]["endpoints"] == {"active": 1, "disabled": 0, "failing": 0}
    assert report["portal"]["deliveries"]["due"] == 1
    assert any(a.startswith("portal: 1 webhook(s) due") for a in report["attention"])

    now = datetime.now(UTC)
    step(dispatcher, now)  # 500: retried, the endpoint is failing
    result, out = _cli(app, "status")
    assert result.exit_code == 1
    assert "portal webhooks: endpoints 1 active, 0 disabled, 1 failing" in out
    assert f"endpoint 1 ({w.ACCOUNT}, {receiver.url('/acme')}): failing" in out
    report = json.loads(_cli(app, "status", "--format", "json")[1].splitlines()[0])
    assert report["portal"]["deliveries"]["waiting_retry"] == 1
    assert any(a.startswith(f"portal endpoint 1 ({w.ACCOUNT}") and "failing" in a
               for a in report["attention"])

    step(dispatcher, now + timedelta(minutes=1))  # 200: delivered, no longer failing
    report = json.loads(_cli(app, "status", "--format", "json")[1].splitlines()[0])
    assert report["portal"]["notices"] == []
    assert report["portal"]["deliveries"] == {"due": 0, "waiting_retry": 0, "failed": 0,
                                              "oldest_due_s": 0.0}

    result, out = _cli(app, "trace", f"order:{order_key}", "--format", "json")
    assert result.exit_code == 0, out
    events = json.loads(out)["events"]
    sources = [e["source"] for e in events]
    assert sources.count("api") == 1 and sources.count("portal_delivery") == 1
    assert sources.count("portal_attempt") == 2
    call = next(e for e in events if e["source"] == "api")
    assert call["correlation_id"] == "portal-call-1" and "answered 201" in call["what"]
    attempts = [e for e in events if e["source"] == "portal_attempt"]
    assert [(a["detail"]["status_code"], a["detail"]["outcome"]) for a in attempts] == [
        (500, "retry"), (200, "delivered")]
    # The API call comes before the webhook it caused, the attempts after the queueing.
    assert sources.index("api") < sources.index("portal_delivery") < sources.index(
        "portal_attempt")
    # The correlation id the webhook carried (X-Correlation-Id) finds the same deliveries.
    [request, *_] = receiver.at("/acme")
    by_cid = json.loads(_cli(app, "trace", request.headers["x-correlation-id"],
                             "--format", "json")[1])
    assert {e["source"] for e in by_cid["events"]} >= {"portal_delivery", "portal_attempt"}
    # And the API call's own correlation id finds the call.
    by_call = json.loads(_cli(app, "trace", "portal-call-1", "--format", "json")[1])
    assert [e["source"] for e in by_call["events"]] == ["api"]
    assert by_call["key"] == order_key
