"""The portal consumer in the production path: the composition root registers it for the
``portal`` subscription, the router's channel actor runs it on the embedded broker, and
duplicated, reordered and batched deliveries queue each webhook once and never an older
state after a newer one."""

from __future__ import annotations

import json
import random

import dramatiq
import pytest
from sqlalchemy import select

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from coexistence.router import CLOUD, LEGACY
from tests.support import records as r
from workers.bootstrap import CHANNEL_HANDLERS, bootstrap
from workers.config import Settings, SubscriptionSection
from workers.erp_memory import InMemoryErp
from workers.portal.consumer import channel_handler
from workers.portal.endpoints import EndpointRegistry
from workers.portal.events import webhook_id
from workers.portal.store import DELIVERY
from workers.router import queues


@pytest.fixture
def app(tmp_path):
    settings = Settings(home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}",
                        legacy_url="sqlite://", cloud_url=None, subscriptions={
                            "portal": SubscriptionSection(domains=("order", "shipment"))})
    legacy, cloud = InMemoryErp("legacy"), InMemoryErp("cloud")
    app = bootstrap(settings, erps={LEGACY: legacy, CLOUD: cloud}, create_state=True)
    app.broker.flush_all()
    yield app
    app.close()


def _event(record, version, *, message_id=None, kind="event"):
    payload = {} if kind == "delete" else {"record": record.model_dump(mode="json")}
    return new_envelope(domain=record.domain, kind=kind, key=record.key, payload=payload,
                        source_system="legacy", source_version=version, flag_version=0,
                        message_id=message_id)


def _rows(app):
    with app.state.connect() as conn:
        return conn.execute(select(DELIVERY).order_by(DELIVERY.c.id)).all()


def _apply_newer(rows) -> dict:
    """A receiver: per object, apply a body only when its version is newer."""
    held: dict[str, dict] = {}
    for row in rows:
        data = json.loads(row.body)["data"]
        if data["key"] not in held or data["version"] > held[data["key"]]["version"]:
            held[data["key"]] = data
    return held


def test_the_composition_root_registers_the_portal_consumer_for_its_subscription(app):
    assert CHANNEL_HANDLERS["portal"] == "workers.portal.consumer:channel_handler"
    sub = next(s for s in app.subscriptions if s.name == "portal")
    assert sub.actor in app.actors
    assert app.actors[sub.actor].queue_name == "coexist.channel.portal"
    assert "coexist.channel.portal" in app.consumed_queues()


def test_duplicated_and_reordered_deliveries_through_the_actor_queue_each_webhook_once(app):
    EndpointRegistry(app.state).add("10001", "https://acme.example/hook", actor="ops",
                                    reason="onboarding")
    statuses = ["open", "allocated", "shipped", "invoiced", "closed"]
    history = [_event(r.order("300001", "10001", status=s), v + 1)
               for v, s in enumerate(statuses)]
    history += [_event(r.order("300002", "10001", status=s), v + 1)
                for v, s in enumerate(statuses[:3])]
    rnd = random.Random(7)
    deliveries = history + [rnd.choice(history) for _ in range(len(history))]
    rnd.shuffle(deliveries)
    sub = next(s for s in app.subscriptions if s.name == "portal")
    for env in deliveries:  # as the relay does: every copy is its own broker message
        app.broker.enqueue(dramatiq.Message(
            queue_name=sub.queue, actor_name=sub.actor, args=(env.model_dump(mode="json"),),
            kwargs={}, options={}))
    worker = dramatiq.Worker(app.broker, worker_threads=1, queues={sub.queue})
    worker.start()
    try:
        app.broker.join(sub.queue, timeout=20_000)
        worker.join()
    finally:
        worker.stop()

    rows = _rows(app)
    ids = [row.webhook_id for row in rows]
    assert len(ids) == len(set(ids)), "no webhook queued twice"
    assert set(ids) <= {webhook_id(e) for e in history}
    held = _apply_newer(rows)
    assert held["300001"]["record"]["status"] == "closed"
    assert held["300002"]["record"]["status"] == "shipped"
    # Versions queued per object only ever increase, in the order they were queued.
    for key in ("300001", "300002"):
        versions = [json.loads(row.body)["data"]["version"] for row in rows
                    if row.object_key == key]
        assert versions == sorted(versions)
    assert ExceptionStore(app.state).open_count() == 0


def test_a_batch_with_duplicates_queues_once_and_a_repeated_batch_queues_nothing(app):
    EndpointRegistry(app.state).add("10001", "https://acme.example/hook", actor="ops",
                                    reason="onboarding")
    handle = channel_handler(app)
    batch = [_event(r.order(f"3000{i:02d}", "10001"), 1) for i in range(20)]
    handle(batch + batch[:5])
    assert len(_rows(app)) == 20
    handle(list(reversed(batch)))  # the broker redelivers the whole batch after a crash
    assert len(_rows(app)) == 20


def test_a_shipment_reaches_the_customer_of_its_order_read_from_the_order_sor(app):
    registry = EndpointRegistry(app.state)
    registry.add("10001", "https://acme.example/hook", actor="ops", reason="onboarding")
    registry.add("10003", "https://globex.example/hook", actor="ops", reason="onboarding")
    app.erps[LEGACY].person_upsert(r.order("300001", "10001"), "CLERK")
    handle = channel_handler(app)
    handle([_event(r.shipment("400001", "300001"), 1)])
    rows = _rows(app)
    assert [(row.endpoint_id, row.domain, row.object_key) for row in rows] == [
        (1, "shipment", "400001")]


def test_a_record_that_cannot_be_decoded_is_refused_alone_as_a_business_error(app):
    from bus.errors import BusinessError

    EndpointRegistry(app.state).add("10001", "https://acme.example/hook", actor="ops",
                                    reason="onboarding")
    handle = channel_handler(app)
    good = _event(r.order("300001", "10001"), 1)
    bad = new_envelope(domain="order", kind=queues.KIND_EVENT, key="300009",
                       payload={"record": {"key": "300009", "lines": "nope"}},
                       source_system="legacy", source_version=1, flag_version=0)
    with pytest.raises(BusinessError, match="300009|portal event"):
        handle([bad, good])
    assert [row.object_key for row in _rows(app)] == ["300001"]
