"""A capture batch of coexist's own writes (echoes: the cloud's feed after a burst of
routed writes) is decided without the routing state: an echo never consults it, so the
batch reads no ``record_route`` row, before its transaction or in it."""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from bus.db import create_state_engine
from coexistence.flags import FlagSource
from coexistence.ports import COEXIST_WRITER
from coexistence.router import CLOUD, LEGACY
from tests.support.records import ACME as CUSTOMER
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema
from workers.router.capture import CaptureLoop
from workers.router.queues import Subscription


@pytest.fixture
def state():
    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def route_reads(engine) -> list[str]:
    seen: list[str] = []

    def before(conn, cursor, statement, *args):
        if "record_route" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen


def capture(state, cloud) -> CaptureLoop:
    return CaptureLoop(CLOUD, cloud, {LEGACY: InMemoryErp(LEGACY), CLOUD: cloud},
                       FlagSource(), state,
                       subscriptions=[Subscription("probe", frozenset({"customer"}))])


def test_a_batch_of_echoes_reads_no_routing_state(state):
    cloud = InMemoryErp(CLOUD)
    for key in ("10042", "10043", "10044"):
        cloud.person_upsert(CUSTOMER.model_copy(update={"key": key}), COEXIST_WRITER)
    loop = capture(state, cloud)
    reads = route_reads(state)
    stats = loop.run_once()
    assert (stats.read, stats.echoes) == (3, 3)
    assert reads == [], "an echo is decided without its route"


def test_a_persons_change_beside_echoes_still_reads_its_route(state):
    cloud = InMemoryErp(CLOUD)
    cloud.person_upsert(CUSTOMER.model_copy(update={"key": "10043"}), COEXIST_WRITER)
    cloud.person_upsert(CUSTOMER, "JSMITH")
    loop = capture(state, cloud)
    reads = route_reads(state)
    stats = loop.run_once()
    assert (stats.read, stats.echoes) == (2, 1)
    assert reads, "the person's change is decided with its route (a stray write?)"
