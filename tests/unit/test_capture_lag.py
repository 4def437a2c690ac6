"""A flag switch waits until the router has routed every change logged before it."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session

from coexistence.canonical import decode
from workers import checkpoints
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema
from workers.router.lag import CaptureBehind, behind, feed_name, wait_for_capture

CUSTOMER = decode("customer", {
    "schema_version": 2, "key": "10042", "name": "Acme", "status": "active",
    "currency": "USD", "credit_limit": "5000", "credit_hold": False, "terms": "net30",
    "customer_group": "RETAIL", "region": "WEST",
})


@pytest.fixture
def engine(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def advance(engine, system: str, cursor: int) -> None:
    with Session(engine) as session:
        checkpoints.advance(session, feed_name(system), cursor)
        session.commit()


def test_nothing_logged_means_nothing_to_wait_for(engine):
    wait_for_capture(engine, {"legacy": InMemoryErp("legacy")}, timeout_s=0.1)


def test_a_switch_with_unrouted_changes_is_refused_with_how_far_behind(engine):
    legacy = InMemoryErp("legacy")
    for i in range(3):
        legacy.person_upsert(CUSTOMER.model_copy(update={"key": str(20000 + i)}), "JSMITH")
    advance(engine, "legacy", 1)
    assert behind(engine, {"legacy": legacy}) == {"legacy": (1, 3)}
    with pytest.raises(CaptureBehind, match="legacy 2 change"):
        wait_for_capture(engine, {"legacy": legacy}, timeout_s=0.3, poll_s=0.05)


def test_the_wait_ends_when_the_router_catches_up_with_the_head_it_started_from(engine):
    legacy = InMemoryErp("legacy")
    legacy.person_upsert(CUSTOMER, "JSMITH")
    legacy.person_upsert(CUSTOMER.model_copy(update={"name": "Acme 2"}), "JSMITH")
    timer = threading.Timer(0.3, advance, args=(engine, "legacy", 2))
    timer.start()
    wait_for_capture(engine, {"legacy": legacy}, timeout_s=10, poll_s=0.05)
    timer.join()
    assert behind(engine, {"legacy": legacy}) == {}
