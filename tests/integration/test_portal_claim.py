"""Claiming due webhook deliveries in one statement (UPDATE ... RETURNING): two dispatchers
on the same state database never take the same row, lanes still hold, and a leased row is
not taken again before its lease runs out.  On SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from tests.support import records as r
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema
from workers.portal import delivery as d
from workers.portal.endpoints import EndpointRegistry
from workers.portal.events import publish
from workers.portal.store import DELIVERY

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = create_state_engine(url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def _queue(engine, registry, customers, per_customer):
    envs = []
    for c in customers:
        for n in range(per_customer):
            order = r.order(f"{c}-{n}", customer_key=c)
            envs.append(new_envelope(domain="order", kind="event", key=order.key,
                                     payload={"record": order.model_dump(mode="json")},
                                     source_system="legacy", source_version=1))
    publish(envs, engine=engine, registry=registry, order_owner=lambda k: None, now=T0)


def test_two_dispatchers_claim_disjoint_rows_within_their_lanes(engine):
    registry = EndpointRegistry(engine)
    customers = ["C1", "C2", "C3"]
    for c in customers:
        registry.add(c, f"http://127.0.0.1:9/{c}", actor="ops", reason="test")
    _queue(engine, registry, customers, 4)
    wall = T0.timestamp()
    a, b = (d.Dispatcher(engine, registry, ExceptionStore(engine), per_endpoint=2,
                         threads=16, wall=lambda: wall) for _ in range(2))
    try:
        first = a._claim(T0, 16)
        second = b._claim(T0, 16)
        again = a._claim(T0, 16)  # a's own lanes are not counted here (nothing in flight)
    finally:
        a.close()
        b.close()
    # Each claim fills every endpoint's lane of 2 and takes nothing another holds.
    assert sorted(c.endpoint_id for c in first).count(first[0].endpoint_id) == 2
    assert len(first) == len(second) == 6 and again == []
    ids = [c.id for c in first + second]
    assert len(set(ids)) == 12
    with engine.connect() as conn:
        rows = {x.id: x for x in conn.execute(select(DELIVERY))}
    for c in first + second:  # the claim carries the row as stored, and its lease
        row = rows[c.id]
        assert (c.webhook_id, c.body, c.endpoint_id, c.attempts) == (
            row.webhook_id, row.body, row.endpoint_id, row.attempts)
        lease = row.lease_until if row.lease_until.tzinfo else row.lease_until.replace(
            tzinfo=UTC)
        assert lease == T0 + timedelta(seconds=d.DELIVERY_TIMEOUT_S + d.LEASE_MARGIN_S)


def test_a_leased_row_is_taken_again_once_its_lease_ran_out(engine):
    registry = EndpointRegistry(engine)
    registry.add("C1", "http://127.0.0.1:9/C1", actor="ops", reason="test")
    _queue(engine, registry, ["C1"], 1)
    wall = [T0.timestamp()]
    a = d.Dispatcher(engine, registry, ExceptionStore(engine), wall=lambda: wall[0])
    try:
        (claim,) = a._claim(T0, 4)
        assert a._claim(T0, 4) == []
        wall[0] += d.DELIVERY_TIMEOUT_S + d.LEASE_MARGIN_S + 1
        assert [c.id for c in a._claim(T0, 4)] == [claim.id]
    finally:
        a.close()
