"""The inbox middleware and the batch consumer on the embedded broker, in one process.

Each test runs a real ``dramatiq.Worker`` on a ``SqliteBroker`` with the production
middleware (``bus.brokers.setup``) and a SQLite state database; effects are rows of a
table without a unique constraint, so anything applied twice shows as two rows.
"""

from __future__ import annotations

import logging
import time

import dramatiq
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from bus import inbox
from bus.batch import BatchConsumers
from bus.brokers import make_broker, setup
from bus.db import create_state_engine
from bus.envelope import from_dict, new_envelope, to_message_arg
from bus.errors import BusinessError, TechnicalError
from bus.exception_store import ExceptionStore
from workers.migrate import upgrade as upgrade_schema

METADATA = MetaData()
EFFECTS = Table("effects", METADATA,
                Column("id", Integer, primary_key=True, autoincrement=True),
                Column("message_id", String(128), nullable=False),
                Column("n", Integer, nullable=False))
WAIT_S = 20


@pytest.fixture
def bus(tmp_path):
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    METADATA.create_all(state)
    broker = make_broker(None, sqlite_path=tmp_path / "bus.db", poll_interval_ms=5)
    store = ExceptionStore(state)
    setup(broker, store=store, retry_options={"max_retries": 2, "min_backoff_ms": 10,
                                              "max_backoff_ms": 20, "redelivery_pause_ms": 0})
    workers: list[dramatiq.Worker] = []

    def start() -> dramatiq.Worker:
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
        worker.start()
        workers.append(worker)
        return worker

    yield state, broker, store, start
    for worker in workers:
        worker.stop(timeout=10_000)
    broker.close()
    state.dispose()


def _message(actor: str, queue: str, n: int, **payload) -> dramatiq.Message:
    env = new_envelope(domain="test", kind="tick", key=f"k{n}", payload={"n": n, **payload},
                       source_system="test", source_version=n)
    return dramatiq.Message(queue_name=queue, actor_name=actor, args=(to_message_arg(env),),
                            kwargs={}, options={}, message_id=env.message_id)


def _effects(state) -> tuple[int, int]:
    with state.connect() as conn:
        rows, distinct = conn.execute(
            select(func.count(), func.count(EFFECTS.c.message_id.distinct()))).one()
    return int(rows), int(distinct)


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.02)


def _write(env: dict) -> None:
    e = from_dict(env)
    inbox.current().execute(insert(EFFECTS).values(message_id=e.message_id, n=e.payload["n"]))


def test_inbox_middleware_applies_once_rolls_back_on_failure_and_acks_duplicates(bus, caplog):
    state, broker, store, start = bus
    attempts: dict[str, int] = {}

    @dramatiq.actor(broker=broker, queue_name="single", actor_name="apply_one", inbox="one")
    def apply_one(env: dict) -> None:
        _write(env)  # written first: a failure after it must roll it back
        n = attempts[env["message_id"]] = attempts.get(env["message_id"], 0) + 1
        if n <= env["payload"].get("fail_times", 0):
            raise TechnicalError("cloud ERP answered 503")

    messages = [_message("apply_one", "single", n) for n in range(20)]
    flaky = _message("apply_one", "single", 99, fail_times=2)
    caplog.set_level(logging.DEBUG, logger="bus.inbox")
    broker.enqueue_many([*messages, *messages[:5], flaky])  # five delivered twice
    start()
    _wait(lambda: _effects(state)[1] >= 21, "21 effects")
    broker.join("single", timeout=10_000)
    assert _effects(state) == (21, 21)
    assert attempts[flaky.message_id] == 3
    assert broker.message_counts("single") == (0, 0)  # duplicates acked, not dead-lettered
    assert store.open_count() == 0
    assert sum("already applied" in r.getMessage() for r in caplog.records) == 5
    with pytest.raises(RuntimeError, match="no inbox transaction"):
        inbox.current()


def test_a_failing_claim_hands_the_message_back_instead_of_running_the_actor(bus):
    state, broker, store, start = bus
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="single", actor_name="apply_one", inbox="one")
    def apply_one(env: dict) -> None:
        ran.append(env["message_id"])
        _write(env)

    with state.begin() as conn:  # the claim's INSERT fails while the table is missing
        conn.exec_driver_sql("ALTER TABLE inbox RENAME TO inbox_away")
    broker.redelivery_delay_ms = 50
    message = _message("apply_one", "single", 1)
    broker.enqueue(message)
    start()
    _wait(lambda: broker.db.conn.execute(
        "SELECT deliveries FROM bus_queue").fetchone()[0] >= 2, "a redelivery")
    assert ran == []
    with state.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE inbox_away RENAME TO inbox")
    _wait(lambda: _effects(state)[1] == 1, "the effect")
    broker.join("single", timeout=10_000)
    assert _effects(state) == (1, 1)
    assert broker.message_counts("single") == (0, 0)


def test_batches_commit_once_and_a_poisoned_message_fails_alone(bus):
    state, broker, store, start = bus
    sizes: list[int] = []

    def apply_many(envs: list[dict]) -> None:
        sizes.append(len(envs))
        for env in envs:
            if env["payload"].get("poison"):
                raise BusinessError(f"poisoned {env['key']}")
            _write(env)

    @dramatiq.actor(broker=broker, queue_name="many", actor_name="apply_batch",
                    inbox="batch", batch=apply_many, batch_size=50)
    def apply_batch(env: dict) -> None:
        apply_many([env])

    messages = [_message("apply_batch", "many", n) for n in range(300)]
    poison = _message("apply_batch", "many", 1000, poison=True)
    broker.enqueue_many([*messages[:150], poison, *messages[150:], *messages[:40]])
    start()
    _wait(lambda: store.open_count() == 1 and _effects(state)[1] >= 300, "every effect")
    broker.join("many", timeout=10_000)
    assert _effects(state) == (300, 300)  # the 40 redelivered copies had no effect
    assert broker.message_counts("many") == (0, 0)
    [record] = store.list()
    assert (record.failure_class, record.message_id) == ("business", poison.message_id)
    assert max(sizes) == 50 and len(sizes) < 60  # batches, not one call per message
    # The poisoned batch was split: its neighbours and the poison went alone once each
    # (a batch the fetch timing cut to one message may add a few more singles).
    assert 50 <= sizes.count(1) <= 55


def test_the_batch_queue_is_not_also_consumed_by_dramatiqs_threads(bus):
    state, broker, store, start = bus
    calls: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="many", actor_name="apply_batch",
                    batch=lambda envs: calls.append("batch"))
    def apply_batch(env: dict) -> None:
        calls.append("one")

    broker.enqueue_many([_message("apply_batch", "many", n) for n in range(30)])
    worker = start()
    assert "many" not in worker.consumers
    assert any(isinstance(m, BatchConsumers) for m in broker.middleware)
    broker.join("many", timeout=10_000)
    worker.join()
    assert calls and set(calls) == {"batch"}
