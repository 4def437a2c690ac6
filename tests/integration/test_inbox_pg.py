"""The inbox under concurrent delivery on real PostgreSQL."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlmodel import Session

from bus.db import create_state_engine
from bus.inbox import claim, claim_many
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration

THREADS = 6


@pytest.fixture
def engine(pg_url):
    engine = create_state_engine(pg_url, pool_size=THREADS + 2)
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE effect (message_id TEXT NOT NULL)"))
    yield engine
    engine.dispose()


def effects(engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT message_id FROM effect"))]


def test_a_second_delivery_waits_for_the_first_and_then_skips_its_effect(engine):
    first_claimed, release_first = threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}

    def first():
        with Session(engine) as session:
            outcome["first"] = claim(session, "crm", "m1")
            session.execute(text("INSERT INTO effect VALUES ('m1')"))
            first_claimed.set()
            release_first.wait(10)
            session.commit()

    def second():
        first_claimed.wait(10)
        with Session(engine) as session:
            outcome["second"] = claim(session, "crm", "m1")  # blocks until first commits
            if outcome["second"]:
                session.execute(text("INSERT INTO effect VALUES ('m1')"))
            session.commit()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_claimed.wait(10)
    threads[1].join(timeout=0.3)
    assert threads[1].is_alive(), "the second delivery did not wait for the first"
    release_first.set()
    for t in threads:
        t.join(timeout=10)
    assert outcome == {"first": True, "second": False}
    assert effects(engine) == ["m1"]


def test_when_the_first_delivery_rolls_back_the_concurrent_one_applies_the_effect(engine):
    first_claimed, release_first = threading.Event(), threading.Event()
    outcome: dict[str, bool] = {}

    def first():
        with Session(engine) as session:
            outcome["first"] = claim(session, "crm", "m1")
            first_claimed.set()
            release_first.wait(10)
            session.rollback()  # its effect failed

    def second():
        first_claimed.wait(10)
        with Session(engine) as session:
            outcome["second"] = claim(session, "crm", "m1")
            if outcome["second"]:
                session.execute(text("INSERT INTO effect VALUES ('m1')"))
            session.commit()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_claimed.wait(10)
    release_first.set()
    for t in threads:
        t.join(timeout=10)
    assert outcome == {"first": True, "second": True}
    assert effects(engine) == ["m1"]


def test_many_concurrent_duplicate_deliveries_apply_each_effect_once(engine):
    messages = [f"m{i}" for i in range(150)]
    deliveries = messages * 3
    random.Random(5).shuffle(deliveries)

    def deliver(message_id: str) -> bool:
        with Session(engine) as session:
            fresh = claim(session, "crm", message_id)
            if fresh:
                session.execute(text("INSERT INTO effect VALUES (:m)"), {"m": message_id})
            session.commit()
            return fresh

    with ThreadPoolExecutor(THREADS) as pool:
        applied = sum(pool.map(deliver, deliveries))
    assert applied == len(messages)
    assert sorted(effects(engine)) == sorted(messages)


def test_concurrent_overlapping_batch_claims_apply_each_effect_once(engine):
    """``claim_many`` (the batch consumer's one statement per batch) under redelivery:
    batches overlap, repeat ids inside one batch, and run concurrently."""
    messages = [f"m{i}" for i in range(300)]
    deliveries = messages * 3
    random.Random(7).shuffle(deliveries)
    batches = [deliveries[i : i + 40] for i in range(0, len(deliveries), 40)]

    def deliver(batch: list[str]) -> int:
        with engine.connect() as conn, conn.begin():
            fresh = claim_many(conn, "crm", batch)
            assert fresh <= set(batch)
            if fresh:
                conn.execute(text("INSERT INTO effect SELECT unnest(CAST(:m AS text[]))"),
                             {"m": sorted(fresh)})
            return len(fresh)

    with ThreadPoolExecutor(THREADS) as pool:
        applied = sum(pool.map(deliver, batches))
    assert applied == len(messages)
    assert sorted(effects(engine)) == sorted(messages)
