"""The transactional outbox and its relay, on SQLite files."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text, update
from sqlmodel import Session, select

from bus.db import create_state_engine
from bus.envelope import MAX_ENVELOPE_BYTES, EnvelopeTooLarge, envelope_from_message, new_envelope
from bus.outbox import (
    OutboxLease,
    OutboxPublishError,
    OutboxRecord,
    OutboxRelay,
    add_all_to_outbox,
    add_to_outbox,
    backlog,
    lag_seconds,
    purge_sent,
    stuck,
)
from workers.migrate import upgrade as upgrade_schema


class FakePublisher:
    """Records what it published; fails the next ``fail_next`` batches."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []  # (key, message_id)
        self.fail_next = 0
        self.batches = 0

    def __call__(self, rows) -> None:
        self.batches += 1
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker unreachable")
        self.published.extend((r.partition_key, r.message_id) for r in rows)


@pytest.fixture
def engine(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def env(key="C001", domain="customer", version=1, **kw):
    return new_envelope(domain=domain, kind="upserted", key=key, payload={"v": version},
                        source_system="legacy", source_version=version, **kw)


def put(engine, *envelopes):
    with Session(engine) as session:
        for e in envelopes:
            add_to_outbox(session, e, actor_name="sync_crm", queue_name="crm")
        session.commit()


def test_a_message_commits_only_with_the_state_change_that_caused_it(engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE account (id TEXT PRIMARY KEY, name TEXT)"))
    with Session(engine) as session:
        session.execute(text("INSERT INTO account VALUES ('C001', 'Acme')"))
        add_to_outbox(session, env(), actor_name="sync_crm", queue_name="crm")
        session.rollback()
    assert backlog(engine) == 0
    with Session(engine) as session:
        session.execute(text("INSERT INTO account VALUES ('C001', 'Acme')"))
        add_to_outbox(session, env(), actor_name="sync_crm", queue_name="crm")
        session.commit()
    assert backlog(engine) == 1
    with Session(engine) as session:
        (row,) = session.exec(select(OutboxRecord)).all()
        assert row.correlation_id == row.message_id  # a first cause is its own correlation


def test_an_oversized_envelope_fails_the_state_change_instead_of_being_stuck(engine):
    with Session(engine) as session, pytest.raises(EnvelopeTooLarge):
        big = new_envelope(domain="customer", kind="upserted", key="C1",
                           payload={"x": "y" * MAX_ENVELOPE_BYTES}, source_system="legacy",
                           source_version=1)
        add_to_outbox(session, big, actor_name="a", queue_name="q")


def test_the_relay_publishes_every_row_once_in_id_order_and_marks_it_sent(engine):
    envelopes = [env(key=f"K{i % 3}", version=i) for i in range(10)]
    put(engine, *envelopes)
    publisher = FakePublisher()
    relay = OutboxRelay(engine, publisher)
    assert relay.run_once(batch_size=4) == 4
    assert relay.run_once(batch_size=4) == 4
    assert relay.run_once(batch_size=4) == 2
    assert relay.run_once(batch_size=4) == 0
    assert [mid for _, mid in publisher.published] == [e.message_id for e in envelopes]
    assert backlog(engine) == 0


def test_a_failed_publish_leaves_rows_unsent_and_counts_the_attempt(engine):
    put(engine, env(key="A"), env(key="B"))
    publisher = FakePublisher()
    publisher.fail_next = 3  # the batch, then A alone, then B as a probe: the broker is down
    relay = OutboxRelay(engine, publisher)
    for _ in range(2):
        with pytest.raises(OutboxPublishError, match="broker unreachable"):
            relay.run_once()
    assert backlog(engine) == 2
    with Session(engine) as session:
        rows = session.exec(select(OutboxRecord)).all()
        assert {r.attempts for r in rows} == {2}
        assert all("ConnectionError: broker unreachable" in r.last_error for r in rows)
    assert [r.partition_key for r in stuck(engine, min_attempts=2)] == ["A", "B"]
    assert stuck(engine, min_attempts=3) == []
    assert all(r.quarantined_until is None for r in stuck(engine, min_attempts=1))
    assert relay.run_once() == 1  # one at a time after a failure...
    assert relay.run_once() == 1  # ...until one goes through
    assert backlog(engine) == 0
    assert stuck(engine, min_attempts=1) == []
    assert [k for k, _ in publisher.published] == ["A", "B"]


def test_lag_is_the_age_of_the_oldest_unsent_row(engine):
    assert lag_seconds(engine) == 0.0
    put(engine, env(domain="customer"))
    t = OutboxRecord.__table__
    with engine.begin() as conn:
        conn.execute(update(t).values(created_at=datetime.now(UTC) - timedelta(seconds=90)))
    put(engine, env(domain="order"))
    assert 89 < lag_seconds(engine) < 120
    assert lag_seconds(engine, domain="order") < 30
    OutboxRelay(engine, FakePublisher()).run_once()
    assert lag_seconds(engine) == 0.0


class RefusingPublisher(FakePublisher):
    """A broker that refuses every batch holding a message of one key."""

    def __init__(self, refused_key: str) -> None:
        super().__init__()
        self.refused_key = refused_key

    def __call__(self, rows) -> None:
        if any(r.partition_key == self.refused_key for r in rows):
            self.batches += 1
            raise ValueError(f"queue refuses {self.refused_key}")
        super().__call__(rows)


def test_a_row_the_broker_keeps_refusing_is_quarantined_and_holds_back_only_its_key(engine):
    put(engine, env(key="P", version=1), env(key="X"), env(key="P", version=2), env(key="Y"))
    publisher = RefusingPublisher("P")
    relay = OutboxRelay(engine, publisher)
    with pytest.raises(OutboxPublishError):
        relay.run_once()  # the whole batch fails
    assert relay.run_once() == 1  # P alone fails, X goes through, P fails again
    assert relay.run_once() == 1  # Y; P's second row waits behind the quarantined first
    assert relay.run_once() == 0
    assert [k for k, _ in publisher.published] == ["X", "Y"]
    (poison,) = stuck(engine, min_attempts=3)
    assert poison.partition_key == "P" and poison.quarantined_until is not None
    assert "queue refuses P" in poison.last_error
    publisher.refused_key = None  # fixed; the quarantine ends
    t = OutboxRecord.__table__
    with engine.begin() as conn:
        conn.execute(update(t).values(quarantined_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert relay.run_once() == 2
    assert [k for k, _ in publisher.published] == ["X", "Y", "P", "P"]
    versions = [json.loads(r.payload)["source_version"] for r in published_rows(engine, "P")]
    assert versions == [1, 2]


def test_a_broker_that_refuses_everything_quarantines_nothing(engine):
    put(engine, env(key="A"), env(key="B"), env(key="C"))
    publisher = FakePublisher()
    publisher.fail_next = 100
    relay = OutboxRelay(engine, publisher)
    for _ in range(5):
        with pytest.raises(OutboxPublishError):
            relay.run_once()
    with Session(engine) as session:
        assert all(r.quarantined_until is None
                   for r in session.exec(select(OutboxRecord)).all())
    publisher.fail_next = 0
    assert relay.run_once() == 1
    assert relay.run_once() == 2
    assert [k for k, _ in publisher.published] == ["A", "B", "C"]


def published_rows(engine, key):
    with Session(engine) as session:
        return session.exec(select(OutboxRecord).where(OutboxRecord.partition_key == key)
                            .order_by(OutboxRecord.sent_at, OutboxRecord.id)).all()


def test_backlog_counts_unsent_rows_per_domain(engine):
    put(engine, env(domain="customer"), env(domain="customer", key="C2"), env(domain="order"))
    assert backlog(engine) == 3
    assert backlog(engine, domain="customer") == 2
    assert backlog(engine, domain="invoice") == 0


def test_a_second_relay_on_sqlite_waits_for_the_first_ones_lease(engine):
    put(engine, env())
    first, second = FakePublisher(), FakePublisher()
    relay_a = OutboxRelay(engine, first, name="a")
    relay_b = OutboxRelay(engine, second, name="b")
    assert relay_a.run_once() == 1
    put(engine, env(key="C2"))
    assert relay_b.run_once() == 0
    relay_a.release_lease()
    assert relay_b.run_once() == 1
    assert len(first.published) == len(second.published) == 1


def test_a_relay_that_died_without_releasing_its_lease_is_taken_over_after_expiry(engine):
    put(engine, env())
    OutboxRelay(engine, FakePublisher(), name="dead").run_once()
    put(engine, env(key="C2"))
    survivor = FakePublisher()
    relay = OutboxRelay(engine, survivor, name="survivor")
    assert relay.run_once() == 0
    lease = OutboxLease.__table__
    with engine.begin() as conn:
        conn.execute(update(lease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert relay.run_once() == 1
    assert [k for k, _ in survivor.published] == ["C2"]


def test_purge_deletes_only_rows_sent_long_enough_ago_and_settled(engine):
    put(engine, env(key="old"), env(key="old_unsettled"), env(key="recent"), env(key="unsent"))
    with engine.begin() as conn:
        now = datetime.now(UTC)
        t = OutboxRecord.__table__
        conn.execute(update(t).where(t.c.partition_key.in_(["old", "old_unsettled"]))
                     .values(created_at=now - timedelta(days=8, seconds=1),
                             sent_at=now - timedelta(days=8)))
        conn.execute(update(t).where(t.c.partition_key == "old").values(settled_at=now))
        conn.execute(update(t).where(t.c.partition_key == "recent").values(sent_at=now))
    assert purge_sent(engine, timedelta(days=7)) == 1
    with Session(engine) as session:
        left = sorted(r.partition_key for r in session.exec(select(OutboxRecord)))
    # A consumer has not finished with old_unsettled: the ledger keeps it (bus.ledger).
    assert left == ["old_unsettled", "recent", "unsent"]


def test_run_forever_publishes_backs_off_on_failure_and_stops_when_asked(engine):
    put(engine, env(key="A"))
    publisher = FakePublisher()
    publisher.fail_next = 1
    relay = OutboxRelay(engine, publisher, idle_poll_s=0.01, backoff_min_s=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,))
    thread.start()
    try:
        put(engine, env(key="B"))
        relay.wake()
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while backlog(engine) and datetime.now(UTC) < deadline:
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert backlog(engine) == 0
    assert publisher.batches >= 2
    assert sorted(k for k, _ in publisher.published) == ["A", "B"]


def test_relayed_rows_reach_a_dramatiq_actor_with_their_envelope(engine):
    broker = StubBroker()
    received = []

    @dramatiq.actor(broker=broker, queue_name="crm", actor_name="sync_crm")
    def sync_crm(envelope_dict):
        received.append(envelope_dict)

    def publish(rows):
        for row in rows:
            broker.enqueue(row.to_message())

    sent = [env(key="C1"), env(key="C2")]
    with Session(engine) as session:
        add_all_to_outbox(session, sent, actor_name="sync_crm", queue_name="crm")
        session.commit()
    assert OutboxRelay(engine, publish).run_once() == 2
    worker = dramatiq.Worker(broker, worker_timeout=10)
    worker.start()
    try:
        broker.join("crm", timeout=5000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(r["message_id"] for r in received) == sorted(e.message_id for e in sent)
    assert broker.queues["crm"].qsize() == 0
    assert envelope_from_message(
        dramatiq.Message(queue_name="crm", actor_name="sync_crm", args=(received[0],),
                         kwargs={}, options={})
    ).key in {"C1", "C2"}
