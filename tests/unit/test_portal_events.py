"""Canonical events -> queued webhook messages: scope, versions, coalescing, signatures."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.pool import StaticPool
from standardwebhooks import Webhook

from bus.envelope import new_envelope
from tests.support import records as r
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema
from workers.portal import delivery, signing
from workers.portal.endpoints import EndpointError, EndpointRegistry
from workers.portal.events import AVAILABILITY_WINDOW_S, publish
from workers.portal.store import DELIVERY

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _engine():
    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(engine)
    return engine


@pytest.fixture
def world():
    engine = _engine()
    registry = EndpointRegistry(engine)
    yield engine, registry
    engine.dispose()


def _event(record, version, *, kind="event", flag_version=1, message_id=None):
    payload = {} if kind == "delete" else {"record": record.model_dump(mode="json")}
    return new_envelope(domain=record.domain, kind=kind, key=record.key, payload=payload,
                        source_system="legacy", source_version=version,
                        flag_version=flag_version, message_id=message_id)


def _deliveries(engine):
    with engine.connect() as conn:
        return conn.execute(select(DELIVERY).order_by(DELIVERY.c.id)).all()


def _publish(engine, registry, envs, owners=None, now=T0):
    return publish(envs, engine=engine, registry=registry,
                   order_owner=lambda key: (owners or {}).get(key), now=now)


def _add(registry, customer, children=(), types=None):
    kw = {"event_types": types} if types else {}
    endpoint, _ = registry.add(customer, f"https://{customer.lower()}.example/hook",
                               actor="ops", reason="onboarding", children=children, **kw)
    return endpoint


def test_each_event_goes_only_to_endpoints_whose_customers_own_it(world):
    engine, registry = world
    parent = _add(registry, "C1", children=("C2",))
    other = _add(registry, "C3")
    out = _publish(engine, registry, [_event(r.order("O1", "C1"), 1),
                                      _event(r.order("O2", "C2"), 1),
                                      _event(r.invoice("I3", "O3", "C3"), 1),
                                      _event(r.shipment("S1", "O1"), 1)],
                   owners={"O1": "C1"})
    assert [o.status for o in out] == ["queued"] * 4
    got = {(x.endpoint_id, x.event_type, x.object_key) for x in _deliveries(engine)}
    assert got == {(parent.id, "order.status_changed", "O1"),
                   (parent.id, "order.status_changed", "O2"),
                   (other.id, "invoice.posted", "I3"),
                   (parent.id, "shipment.milestone", "S1")}


def test_the_payload_is_the_portal_view_never_cost_or_internal_fields(world):
    engine, registry = world
    _add(registry, "C1")
    _publish(engine, registry, [_event(r.price("P1", "C1", "WID-1"), 1),
                                _event(r.inventory("W01", "WID-1"), 1)])
    bodies = {x.event_type: json.loads(x.body) for x in _deliveries(engine)}
    assert set(bodies["availability.changed"]["data"]["record"]) == {
        "key", "schema_version", "warehouse", "sku", "available_to_promise"}
    assert bodies["price.changed"]["data"]["record"]["customer_key"] == "C1"


def test_a_duplicate_or_older_event_is_stale_and_a_change_nobody_sees_is_not_sent(world):
    engine, registry = world
    _add(registry, "C1")
    first = _event(r.order("O1", "C1"), 5)
    assert _publish(engine, registry, [first])[0].status == "queued"
    assert _publish(engine, registry, [first])[0].status == "stale"
    assert _publish(engine, registry, [_event(r.order("O1", "C1", status="closed"), 4)]
                    )[0].status == "stale"
    assert _publish(engine, registry, [_event(r.order("O1", "C1"), 6)])[0].status == "unchanged"
    assert _publish(engine, registry, [_event(r.order("O1", "C1", status="allocated"), 7)]
                    )[0].status == "queued"
    assert len(_deliveries(engine)) == 2


def test_a_switch_outranks_every_version_routed_before_it(world):
    engine, registry = world
    _add(registry, "C1")
    _publish(engine, registry, [_event(r.order("O1", "C1"), 900, flag_version=1)])
    out = _publish(engine, registry, [_event(r.order("O1", "C1", status="allocated"), 3,
                                             flag_version=2)])
    assert out[0].status == "queued"


def test_availability_changes_inside_the_window_fold_into_one_message(world):
    engine, registry = world
    _add(registry, "C1")
    for i, on_hand in enumerate((100, 90, 80)):
        _publish(engine, registry, [_event(r.inventory("W01", "WID-1", on_hand, 0), i + 1)],
                 now=T0 + timedelta(seconds=i))
    [row] = _deliveries(engine)
    assert json.loads(row.body)["data"]["record"]["available_to_promise"] == 80
    assert row.next_attempt_at.replace(tzinfo=UTC) == T0 + timedelta(
        seconds=AVAILABILITY_WINDOW_S)
    # Once attempted, a later change is a new message.
    with engine.begin() as conn:
        conn.execute(DELIVERY.update().values(attempts=1))
    _publish(engine, registry, [_event(r.inventory("W01", "WID-1", 70, 0), 4)])
    assert len(_deliveries(engine)) == 2


def test_a_delete_goes_only_to_endpoints_that_were_shown_the_object(world):
    engine, registry = world
    shown = _add(registry, "C1")
    _add(registry, "C3")
    order = r.order("O1", "C1")
    _publish(engine, registry, [_event(order, 1)])
    _publish(engine, registry, [_event(order, 2, kind="delete")])
    rows = _deliveries(engine)
    assert [(x.endpoint_id, json.loads(x.body)["data"]["deleted"]) for x in rows] == [
        (shown.id, False), (shown.id, True)]


def test_one_bad_envelope_never_fails_its_neighbours(world):
    engine, registry = world
    _add(registry, "C1")
    bad = new_envelope(domain="order", kind="event", key="O9", payload={"record": {"key": "O9"}},
                       source_system="legacy", source_version=1)
    out = _publish(engine, registry, [bad, _event(r.order("O1", "C1"), 1),
                                      _event(r.customer("C1"), 1)])
    assert [o.status for o in out] == ["failed", "queued", "ignored"]
    assert "O9" in out[0].detail


def test_an_endpoint_subscribed_to_some_types_gets_only_those(world):
    engine, registry = world
    _add(registry, "C1", types=("invoice.posted",))
    _publish(engine, registry, [_event(r.order("O1", "C1"), 1),
                                _event(r.invoice("I1", "O1", "C1"), 1)])
    assert [x.event_type for x in _deliveries(engine)] == ["invoice.posted"]
    with pytest.raises(EndpointError, match="order.created"):
        _add(registry, "C1", types=("order.created",))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["open", "allocated", "shipped", "invoiced", "closed"]),
                min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_a_receiver_applying_only_newer_versions_ends_equal_to_the_sor(statuses, rnd):
    engine = _engine()
    registry = EndpointRegistry(engine)
    _add(registry, "C1")
    history = [_event(r.order("O1", "C1", status=s), v + 1) for v, s in enumerate(statuses)]
    deliveries = history + [rnd.choice(history) for _ in range(len(history))]
    rnd.shuffle(deliveries)
    for env in deliveries:
        _publish(engine, registry, [env])
    bodies = [json.loads(x.body)["data"] for x in _deliveries(engine)]
    rnd.shuffle(bodies)
    held: dict | None = None
    for data in bodies:  # the receiver: apply only when newer
        if held is None or data["version"] > held["version"]:
            held = data
    # A change nobody can see is not sent, so the newest message may be an older version
    # with the same visible state: the receiver still holds what the SoR holds.
    assert held["record"]["status"] == statuses[-1]
    engine.dispose()


def test_signatures_verify_with_the_independent_standardwebhooks_package():
    secret = signing.new_secret()
    body = b'{"type":"order.status_changed"}'
    ts = int(datetime.now(UTC).timestamp())
    head = signing.headers([secret, signing.new_secret()], "msg_1", ts, body)
    assert Webhook(secret).verify(body, head) == {"type": "order.status_changed"}
    with pytest.raises(signing.BadSecret):
        signing.signature("nope", "msg_1", ts, body)


def test_the_retry_schedule_is_svixs_with_jitter_and_ends_after_eight_attempts():
    rng = random.Random(1)
    delays = [delivery.next_delay_s(n, None, rng) for n in range(1, 8)]
    for got, base in zip(delays, delivery.SCHEDULE_S[1:], strict=True):
        assert base * 0.8 <= got <= base * 1.2
    assert delivery.next_delay_s(8, None, rng) is None
    assert delivery.next_delay_s(1, 600.0, rng) == 600.0
    assert delivery.next_delay_s(1, 10 ** 9, rng) == delivery.MAX_RETRY_AFTER_S
