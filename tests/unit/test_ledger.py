"""The settle ledger: consumers mark routed messages settled through middleware.

A real dramatiq Worker over dramatiq's StubBroker, with our middleware stack
(``bus.brokers.setup``: failure classes, then the ledger) and a real exception store on
a SQLite state database, so each test asserts on the outbox row: settled, how, or not.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select
from sqlalchemy.orm import Session

from bus import ledger
from bus.brokers import setup
from bus.db import create_state_engine
from bus.envelope import new_envelope
from bus.errors import BusinessError, TechnicalError
from bus.exception_store import ExceptionStore
from bus.outbox import OutboxRecord, add_to_outbox
from workers.migrate import upgrade as upgrade_schema

QUEUE = "coexist.write.cloud"


class Processed(dramatiq.Middleware):
    """Counts finished deliveries per message (first in the list: dramatiq runs ``after_*``
    hooks in reverse order, so this one runs after every other)."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.changed = threading.Condition()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        with self.changed:
            self.done[message.message_id] += 1
            self.changed.notify_all()

    def wait(self, message_id: str, deliveries: int = 1, timeout_s: float = 10) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.done[message_id] >= deliveries,
                                         timeout_s), f"{message_id} not processed"


@pytest.fixture
def engine(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def world(engine):
    broker = StubBroker()
    broker.emit_after("process_boot")
    setup(broker, store=ExceptionStore(engine), ledger=ledger.SettleLedger(engine),
          retry_options={"min_backoff_ms": 1, "max_backoff_ms": 5, "max_retries": 1})
    seen = Processed()
    broker.add_middleware(seen, before=type(broker.middleware[0]))  # after_* hooks run last
    calls: Counter[str] = Counter()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="write_cloud")
    def write(envelope: dict) -> None:
        calls[envelope["key"]] += 1
        behaviour = envelope["payload"]["then"]
        if behaviour == "business":
            raise BusinessError("unknown customer")
        if behaviour == "technical":
            raise TechnicalError("cloud ERP answered 503")
        if behaviour == "slow_retry":
            raise TechnicalError("cloud ERP answered 503")

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    yield broker, seen, calls, write
    worker.stop()
    broker.close()


def route(engine, broker, key: str, then: str, *, flag_version: int = 3, **options) -> str:
    """An outbox row as the router commits it, then published as the relay does."""
    env = new_envelope(domain="customer", kind="upsert", key=key, payload={"then": then},
                       source_system="legacy", source_version=1, flag_version=flag_version)
    with Session(engine) as session:
        add_to_outbox(session, env, actor_name="write_cloud", queue_name=QUEUE)
        session.commit()
    broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="write_cloud",
                                    args=(env.model_dump(mode="json"),), kwargs={},
                                    options=options, message_id=env.message_id))
    return env.message_id


def row(engine, message_id: str):
    t = OutboxRecord.__table__
    with engine.connect() as conn:
        return conn.execute(select(t.c.flag_version, t.c.settled_at, t.c.outcome)
                            .where(t.c.message_id == message_id)).one()


def test_a_routed_message_is_unsettled_until_a_consumer_handles_it(engine, world):
    broker, seen, _calls, _ = world
    t = OutboxRecord.__table__
    env = new_envelope(domain="customer", kind="upsert", key="10001", payload={"then": "ok"},
                       source_system="legacy", source_version=1, flag_version=3)
    with Session(engine) as session:
        add_to_outbox(session, env, actor_name="write_cloud", queue_name=QUEUE)
        session.commit()
    pending = ledger.unsettled(engine, domain="customer", queues=[QUEUE])
    assert (pending.unsent, pending.in_broker, pending.by_version) == (1, 0, {3: 1})
    with engine.begin() as conn:  # the relay published it
        conn.execute(t.update().values(sent_at=t.c.created_at))
    assert ledger.unsettled(engine, domain="customer").describe() == \
        "1 (1 in the broker, 0 unsent)"
    broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="write_cloud",
                                    args=(env.model_dump(mode="json"),), kwargs={}, options={},
                                    message_id=env.message_id))
    seen.wait(env.message_id)
    flag_version, settled_at, outcome = row(engine, env.message_id)
    assert (flag_version, outcome) == (3, ledger.HANDLED) and settled_at is not None
    assert ledger.unsettled(engine, domain="customer").total == 0


def test_a_business_failure_recorded_in_the_exception_store_is_settled(engine, world):
    broker, seen, calls, _ = world
    mid = route(engine, broker, "10002", "business")
    seen.wait(mid)
    assert calls["10002"] == 1
    assert row(engine, mid).outcome == ledger.RECORDED
    assert ExceptionStore(engine).open_count("customer") == 1
    assert ledger.unsettled(engine, domain="customer").total == 0


def test_a_technical_failure_that_is_retried_is_not_settled(engine, world):
    broker, seen, calls, _ = world
    # A long backoff: the retry waits in the broker's delay queue while we look.
    mid = route(engine, broker, "10003", "slow_retry", min_backoff=600_000,
                max_backoff=600_000)
    seen.wait(mid)
    assert calls["10003"] == 1
    assert row(engine, mid).settled_at is None
    assert ExceptionStore(engine).open_count("customer") == 0
    assert ledger.unsettled(engine, domain="customer", below_version=4).by_version == {3: 1}
    assert ledger.unsettled(engine, domain="customer", below_version=3).total == 0


def test_a_message_retried_then_recorded_is_settled_once_recorded(engine, world):
    broker, seen, calls, _ = world
    mid = route(engine, broker, "10004", "technical")
    seen.wait(mid, deliveries=2)  # max_retries=1: the first failure retries, the second records
    assert calls["10004"] == 2
    assert row(engine, mid).outcome == ledger.RECORDED
    [record] = ExceptionStore(engine).list(domain="customer")
    assert (record.failure_class, record.attempts) == ("technical", 2)
    assert ledger.unsettled(engine, domain="customer").total == 0


def test_a_dead_letter_the_drain_recorded_counts_as_settled(engine):
    env = new_envelope(domain="customer", kind="upsert", key="10005", payload={},
                       source_system="legacy", source_version=1, flag_version=2)
    with Session(engine) as session:
        add_to_outbox(session, env, actor_name="write_cloud", queue_name=QUEUE)
        session.commit()
    assert ledger.unsettled(engine, domain="customer").total == 1
    ExceptionStore(engine).record(
        failure_class="dead_letter", queue_name=QUEUE, actor_name="write_cloud",
        message_id=env.message_id, envelope=env, raw=None, message=None,
        error_type="DeadLetter", error_message="over the delivery limit", call_site="-",
        attempts=21)
    assert ledger.unsettled(engine, domain="customer").total == 0


def test_a_batch_the_batch_consumer_committed_is_settled_before_its_ack(tmp_path, engine):
    """Channel subscriptions run on the batch consumer (``bus.batch``), which does not pass
    each message through ``after_process_message``: its committed batch is settled in one
    statement, so the outbox rows are finished (and purgeable) like any other."""
    from bus.brokers import make_broker

    broker = make_broker(None, sqlite_path=tmp_path / "bus.db", poll_interval_ms=5)
    setup(broker, store=ExceptionStore(engine), ledger=ledger.SettleLedger(engine))
    seen: list[str] = []

    def handle(envelopes: list[dict]) -> None:
        seen.extend(e["key"] for e in envelopes)

    def one(envelope: dict) -> None:  # the per-message path; never used for a batch
        raise AssertionError("a batch actor's messages go through its batch handler")

    dramatiq.actor(one, broker=broker, queue_name="coexist.channel.t", actor_name="channel_t",
                   batch=handle)
    ids = []
    for n in range(5):
        env = new_envelope(domain="customer", kind="event", key=str(n), payload={},
                           source_system="legacy", source_version=n, flag_version=2)
        with Session(engine) as session:
            add_to_outbox(session, env, actor_name="channel_t", queue_name="coexist.channel.t")
            session.commit()
        broker.enqueue(dramatiq.Message(queue_name="coexist.channel.t", actor_name="channel_t",
                                        args=(env.model_dump(mode="json"),), kwargs={},
                                        options={}, message_id=env.message_id))
        ids.append(env.message_id)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not all(row(engine, i).settled_at for i in ids):
            assert time.monotonic() < deadline, [row(engine, i) for i in ids]
            time.sleep(0.05)
    finally:
        worker.stop()
        broker.close()
    assert sorted(seen) == [str(n) for n in range(5)]
    assert {row(engine, i).outcome for i in ids} == {ledger.HANDLED}
