"""kill -9 of a batch consumer mid-batch loses nothing and applies nothing twice in effect.

The worker program (``tests/integration/bus_worker.py``, production middleware and the
batch consumer of ``bus.batch``) writes a whole batch's inbox claims and effects in one
state transaction and, told to, holds that transaction open before its commit; the test
kill -9s it there, starts a fresh worker, and counts effects and inbox rows in the state
database and what is left in the broker: every message applied once, none left queued.
Once on PostgreSQL + RabbitMQ, once on the embedded default
(SQLite broker and state).
"""

from __future__ import annotations

import contextlib
import queue as queue_module
import sqlite3
import threading

import pytest
from sqlalchemy import select

from bus.brokers.sqlite import SqliteBroker
from bus.db import create_state_engine
from bus.exception_store import ExceptionStore
from tests.integration import bus_worker
from tests.support.bus_runs import Worker, rabbit_run
from tests.support.bus_runs import assert_exactly_once as _assert_exactly_once
from tests.support.bus_runs import publish_all as _publish_all
from tests.support.bus_runs import wait_for as _wait_for

#: Messages in a run: a few batches (the batch consumer takes up to 200 at once).
MESSAGES = 600
#: How long the victim holds its first batch open; it is killed long before.
HOLD_S = "60"
HOLD_WAIT_S = 30


def _holding(worker: Worker) -> int:
    """Wait for the victim's ``holding N`` line: a batch's effects are written, uncommitted."""
    lines: queue_module.Queue[str] = queue_module.Queue()
    threading.Thread(target=lambda: lines.put(worker.proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=HOLD_WAIT_S)
    except queue_module.Empty:
        raise AssertionError(f"the worker never held a batch:\n{worker.tail()}") from None
    assert line.startswith("holding "), f"unexpected line {line!r}:\n{worker.tail()}"
    return int(line.split()[1])


def _crash_mid_batch_then_restart(engine, broker, queue: str, start_worker,
                                  visible_effects=None) -> None:
    batch_queue = bus_worker.batch_queue(queue)
    messages = [bus_worker.message_for("apply_batch", n, batch_queue) for n in range(MESSAGES)]
    if isinstance(broker, SqliteBroker):
        broker.enqueue_many(messages)
    else:
        _publish_all(broker, messages)
    victim = start_worker("--hold-batch-s", HOLD_S)
    held = _holding(victim)
    assert held > 1
    visible = visible_effects() if visible_effects else bus_worker.effect_counts(engine)[0]
    assert visible <= MESSAGES - held, "the held batch's effects were visible before its commit"
    victim.kill9()
    survivor = start_worker()
    _wait_for(lambda: bus_worker.effect_counts(engine)[1] >= MESSAGES, "every effect",
              [survivor])
    # Stopping the survivor settles the question: what it held goes back to the queue,
    # and then the broker must hold nothing that could still be applied later.
    survivor.stop()
    assert survivor.proc.returncode == 0, survivor.tail()
    _assert_exactly_once(engine, MESSAGES)
    assert ExceptionStore(engine).open_count() == 0


@pytest.mark.integration
def test_kill_9_mid_batch_on_postgresql_and_rabbitmq(pg_url, rabbit_vhost, tmp_path):
    # Classic queues: the quorum queues' redelivery after a dead consumer is proven by
    # test_bus_failures.py; what is new here is the batch's one commit and one ack.
    queue = "batchcrash_classic"
    with rabbit_run(pg_url, rabbit_vhost, tmp_path, queue,
                    declare=(bus_worker.batch_queue(queue),)) as run:
        _crash_mid_batch_then_restart(run.engine, run.broker, queue, run.start_worker)
        assert run.broker.get_queue_message_counts(bus_worker.batch_queue(queue)) == (0, 0, 0)


def test_kill_9_mid_batch_on_the_embedded_broker(tmp_path):
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_state_engine(state_url)
    bus_worker.prepare_state(engine)
    broker = SqliteBroker(tmp_path / "bus.db")
    workers: list[Worker] = []

    def start_worker(*extra: str) -> Worker:
        w = Worker(tmp_path, "--state-url", state_url, "--sqlite", str(tmp_path / "bus.db"),
                   "--lease-ms", "1000", *extra)
        workers.append(w)
        return w

    def visible_effects() -> int:
        # A plain reader: the state engine's transactions take SQLite's write lock, which
        # the victim holds with its open batch.
        with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as conn:
            return conn.execute("SELECT count(*) FROM bus_test_effects").fetchone()[0]

    try:
        _crash_mid_batch_then_restart(engine, broker, bus_worker.QUEUE, start_worker,
                                      visible_effects)
        assert broker.message_counts(bus_worker.batch_queue()) == (0, 0)
    finally:
        for w in workers:
            w.stop()
        broker.close()
        engine.dispose()


@pytest.mark.integration
def test_a_technical_failure_in_a_batch_is_retried_through_the_delay_queue(pg_url, rabbit_vhost,
                                                                           tmp_path):
    """The message fails in its batch and alone, waits in ``.DQ``, comes back and is applied
    once; its neighbours are applied at once."""
    queue = "batchretry"
    batch_queue = bus_worker.batch_queue(queue)
    with rabbit_run(pg_url, rabbit_vhost, tmp_path, queue, declare=(batch_queue,)) as run:
        engine, broker = run.engine, run.broker
        messages = [bus_worker.message_for("apply_batch", n, batch_queue) for n in range(60)]
        flaky = bus_worker.message_for("apply_batch", 1000, batch_queue, fail_times=2)
        _publish_all(broker, [*messages[:30], flaky, *messages[30:]])
        worker = run.start_worker("--min-backoff-ms", "50", "--max-backoff-ms", "100")
        _wait_for(lambda: bus_worker.effect_counts(engine)[1] >= 61, "every effect", [worker],
                  timeout_s=30)
        worker.stop()
        assert worker.proc.returncode == 0, worker.tail()
        with engine.connect() as conn:
            attempts = dict(conn.execute(select(bus_worker.ATTEMPTS)).all())
        assert attempts == {flaky.message_id: 3}  # in its batch, alone, then the retry
        _assert_exactly_once(engine, 61)
        assert broker.get_queue_message_counts(batch_queue) == (0, 0, 0)
        assert ExceptionStore(engine).open_count() == 0
