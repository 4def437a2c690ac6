"""A batch consumer busy longer than RabbitMQ's heartbeat timeout keeps its connection.

The batch consumer thread both consumes and handles; pika's ``BlockingConnection`` does no
I/O between calls into it. In the full-size chaos run (2026-12-03) batches on
``coexist.write.legacy`` fell to the per-message path at load ~25; handling them took
longer than RabbitMQ's heartbeat timeout, the server closed the connection ("missed
heartbeats from client, timeout: 60s"), every delivery not yet acked came back, and the
queue grew to 12,000 while the same batches were taken, applied and dropped again (the
writers' deliveries have no inbox: a redelivery is applied again and refused by version).

Here the heartbeat is 1 s and a batch takes 4 s: in its batch transaction, or as 16
messages of ~0.25 s each handled alone. Every message must be handled once, with no lost
connection and nothing left queued.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

import dramatiq
import pytest

from bus.batch import BatchConsumer
from bus.brokers import make_broker, setup
from bus.db import create_state_engine
from bus.exception_store import ExceptionStore
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration

MESSAGES = 16
ALONE_S = 0.25
WAIT_S = 30


@pytest.fixture
def broker(rabbit_vhost, tmp_path):
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    b = make_broker(f"{rabbit_vhost}?heartbeat=1")
    setup(b, store=ExceptionStore(state),
          retry_options={"max_retries": 0, "redelivery_pause_ms": 0})
    b.work = f"hb_{uuid.uuid4().hex[:8]}"
    yield b
    for name in b.queue_names(b.work):
        b.channel.queue_delete(name)
    b.close()
    state.dispose()


@pytest.mark.parametrize("slow", ["batch", "alone"])
def test_a_batch_longer_than_the_heartbeat_timeout_keeps_the_connection_and_every_ack(
        broker, caplog, slow):
    handled: Counter[int] = Counter()
    batches: list[int] = []

    def leave_all(args: list[dict]) -> list[int] | None:
        batches.append(len(args))
        if slow == "batch":
            time.sleep(MESSAGES * ALONE_S)  # a batch transaction that long, whatever its size
            for arg in args:
                handled[arg["n"]] += 1
            return None
        return list(range(len(args)))  # nothing taken now: every one goes alone

    @dramatiq.actor(broker=broker, queue_name=broker.work, actor_name="slow_alone",
                    batch=leave_all, batch_size=MESSAGES)
    def slow_alone(arg: dict) -> None:
        time.sleep(ALONE_S if slow == "alone" else 0)
        handled[arg["n"]] += 1

    for n in range(MESSAGES):
        broker.enqueue(dramatiq.Message(queue_name=broker.work, actor_name="slow_alone",
                                        args=({"n": n},), kwargs={}, options={}))
    consumer = BatchConsumer(broker, broker.work, None, idle_timeout_ms=200)
    caplog.set_level(logging.WARNING, logger="bus.batch")
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        # This thread's connection has a 1 s heartbeat too: it asks every 0.1 s.
        while (broker.get_queue_message_counts(broker.work)[:2] != (0, 0)
               or sum(handled.values()) < MESSAGES):
            assert time.monotonic() < deadline, f"handled {dict(handled)} in {WAIT_S} s"
            time.sleep(0.1)
        for _ in range(30):  # three heartbeat intervals more: a dropped connection shows
            time.sleep(0.1)
            broker.get_queue_message_counts(broker.work)  # this thread's connection's I/O
    finally:
        consumer.stop()
        thread.join(10)
    assert "lost its broker connection" not in caplog.text
    assert handled == Counter(range(MESSAGES))  # each once: no delivery came back
    assert broker.get_queue_message_counts(broker.work)[:2] == (0, 0)
    assert sum(batches) == MESSAGES  # taken once: no delivery came back
