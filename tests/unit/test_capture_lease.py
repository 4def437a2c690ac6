"""The capture lease on the embedded default (SQLite in memory): one holder per ERP, a
standby that takes over once it expires, and a fence that refuses a lost holder's batch.

Two ``Lease`` objects with different holders stand for two router processes; expiry is
made by moving the row's expiry into the past (state, not a clock)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.pool import StaticPool

from bus.db import create_state_engine
from bus.outbox import backlog
from coexistence.flags import FlagSource
from coexistence.router import CLOUD, LEGACY
from tests.support.records import ACME as CUSTOMER
from workers import checkpoints
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema
from workers.router.capture import CaptureLoop, checkpoint_name
from workers.router.lease import Lease, LeasedCaptures, LeaseLost, holders, lease_name
from workers.router.queues import Subscription

NAME = lease_name(LEGACY)


@pytest.fixture
def state():
    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def expire(engine, name: str = NAME) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE capture_lease SET expires_at_ms = 1 WHERE name = :n"),
                     {"n": name})


def test_the_first_router_takes_the_lease_and_a_second_one_stands_by_while_it_renews(state):
    a, b = Lease(state, NAME, "host-a:1:x"), Lease(state, NAME, "host-b:2:y")
    assert a.try_acquire() and a.token == 1
    assert not b.try_acquire() and not b.held
    assert a.renew() and a.token == 1
    assert not b.try_acquire()
    [info] = holders(state)
    assert (info.name, info.holder, info.token, info.state) == (NAME, "host-a:1:x", 1, "held")
    assert 0 < info.expires_in_s <= 5


def test_a_standby_takes_an_expired_lease_with_a_new_token_and_the_old_holder_learns_it(state):
    a, b = Lease(state, NAME, "a"), Lease(state, NAME, "b")
    a.try_acquire()
    expire(state)
    assert holders(state)[0].state == "expired"
    assert b.try_acquire() and b.token == 2
    assert not a.renew() and not a.held
    assert holders(state)[0].holder == "b"


def test_a_lease_whose_holder_renews_in_time_is_never_taken(state):
    a, b = Lease(state, NAME, "a"), Lease(state, NAME, "b")
    a.try_acquire()
    expire(state)
    assert a.renew()  # renewed before any standby looked: still the holder's
    assert not b.try_acquire() and a.token == 1


def test_a_released_lease_goes_to_a_standby_at_once(state):
    a, b = Lease(state, NAME, "a"), Lease(state, NAME, "b")
    a.try_acquire()
    a.release()
    assert not a.held and holders(state)[0].state == "released"
    assert b.try_acquire() and b.token == 2


def test_each_erp_has_its_own_lease(state):
    a_legacy, b_cloud = Lease(state, NAME, "a"), Lease(state, lease_name(CLOUD), "b")
    assert a_legacy.try_acquire() and b_cloud.try_acquire()
    assert [(i.name, i.holder) for i in holders(state)] == [("capture.cloud", "b"),
                                                           ("capture.legacy", "a")]


def loop_on(state, legacy: InMemoryErp) -> CaptureLoop:
    cloud = InMemoryErp(CLOUD)
    return CaptureLoop(LEGACY, legacy, {LEGACY: legacy, CLOUD: cloud}, FlagSource(), state,
                       subscriptions=[Subscription("probe", frozenset({"customer"}))])


def test_a_holder_that_lost_its_lease_while_paused_commits_nothing_and_the_new_one_routes(state):
    legacy = InMemoryErp(LEGACY)
    legacy.person_upsert(CUSTOMER, "JSMITH")
    a_loop, b_loop = loop_on(state, legacy), loop_on(state, legacy)
    a, b = Lease(state, NAME, "a"), Lease(state, NAME, "b")
    a_loop.fence, b_loop.fence = a.fence, b.fence
    a.try_acquire()
    expire(state)  # a was paused past its lease...
    b.try_acquire()  # ...and b took over
    with pytest.raises(LeaseLost, match="taken over from a"):
        a_loop.run_once()
    assert not a.held
    assert checkpoints.get(state, checkpoint_name(LEGACY)) == 0 and backlog(state) == 0
    assert b_loop.run_once().routed == 1
    assert checkpoints.get(state, checkpoint_name(LEGACY)) == 1 and backlog(state) == 1


def test_a_router_captures_only_the_erps_whose_lease_it_holds(state):
    class Loop:
        def __init__(self, system):
            self.system, self.fence, self.runs = system, None, 0

        def run_once(self):
            self.runs += 1
            return type("Stats", (), {"read": 0})()

    other = Lease(state, lease_name(CLOUD), "other")
    other.try_acquire()
    loops = [Loop(LEGACY), Loop(CLOUD)]
    captures = LeasedCaptures(state, loops, holder="me")
    for lease in captures.leases.values():
        lease.try_acquire()
    assert captures.held() == [LEGACY]
    captures.run_once()
    assert [loop.runs for loop in loops] == [1, 0]
    assert loops[0].fence == captures.leases[LEGACY].fence
    captures.close()
    assert {i.name: i.state for i in holders(state)} == {"capture.cloud": "held",
                                                         "capture.legacy": "released"}
