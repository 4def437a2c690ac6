"""The flag audit on PostgreSQL (production): concurrent writers, restore into Redis."""

from __future__ import annotations

import threading

import pytest

from coexistence.flags import FULL, FlagState, Mode
from workers.db import create_state_engine
from workers.flags import FlagConflict, RedisFlagStore, SqlFlagStore
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(pg_url):
    engine = create_state_engine(pg_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def test_of_many_concurrent_writers_from_one_version_exactly_one_wins(engine):
    store = SqlFlagStore(engine)
    c0 = store.load()["customer"]
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def writer(i: int) -> None:
        after = FlagState("customer", Mode.SHADOW, Mode.SHADOW, FULL, 1)
        barrier.wait()
        try:
            store.commit(c0, after, actor=f"w{i}", reason="race", action="set")
            outcomes.append("won")
        except FlagConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    assert [e.version for e in store.history("customer")] == [1]


def test_redis_is_refilled_from_the_postgresql_audit_after_a_flush(engine, redis_prefix):
    url, prefix = redis_prefix
    store = RedisFlagStore.from_url(url, prefix, engine)
    try:
        c0 = store.load()["invoice"]
        c1 = store.commit(c0, FlagState("invoice", Mode.SHADOW, Mode.SHADOW, FULL, 1),
                          actor="alice", reason="pilot", action="set")
        store.client.delete(store.key)
        assert store.load()["invoice"] == c1
        assert c1.changed_at is not None and c1.changed_at.tzinfo is not None
        assert store.history("invoice")[0].at == c1.changed_at
    finally:
        store.client.close()
