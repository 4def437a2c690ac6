"""A graceful stop does not wait for a failed batch's messages one at a time.

When a batch handler raises, the batch consumer handles each of its messages alone (up
to ``batch_size``, each with its own retries: under a cloud fault window each can take
seconds).  A stop that arrives meanwhile used to wait for all of them (``Worker.stop``
joins the batch threads for up to 60 s, beyond a supervisor's or a test's 30 s); now the
ones not started yet go back to their queue unapplied and are applied once, later.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import dramatiq
import pytest

from bus.brokers import make_broker, setup
from tests.support.retry_bus import FakeStore, wait_for

MESSAGES = 60
#: Each message handled alone takes this long (a write waiting out a 503's Retry-After,
#: shortened): all of them alone take MESSAGES x this = 6 s.
ALONE_S = 0.1


@pytest.fixture
def broker(tmp_path):
    b = make_broker(None, sqlite_path=tmp_path / "bus.db", poll_interval_ms=5)
    setup(b, store=FakeStore(), retry_options={"max_retries": 0, "redelivery_pause_ms": 0})
    yield b
    b.close()


def test_a_stop_hands_back_the_messages_of_a_failed_batch_not_yet_handled(broker):
    applied: Counter = Counter()
    lock = threading.Lock()
    cloud_down = threading.Event()
    cloud_down.set()

    def apply_many(envs):
        if cloud_down.is_set():
            raise RuntimeError("the cloud answered 503 to the batch")
        with lock:
            applied.update(env["n"] for env in envs)

    @dramatiq.actor(broker=broker, queue_name="slow", actor_name="apply_slow",
                    batch=apply_many, batch_size=MESSAGES, batch_wait_ms=200,
                    batch_consumers=1)
    def apply_slow(env: dict) -> None:
        time.sleep(ALONE_S)
        with lock:
            applied[env["n"]] += 1

    broker.enqueue_many([apply_slow.message({"n": n}) for n in range(MESSAGES)])
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    wait_for(lambda: len(applied) >= 3, within_s=20)
    started = time.monotonic()
    worker.stop(timeout=20_000)
    stopped_in = time.monotonic() - started
    handled_first = len(applied)
    # The message in hand is finished, the rest go back: well under the 6 s they need.
    assert stopped_in < MESSAGES * ALONE_S / 3, (stopped_in, handled_first)
    assert handled_first < MESSAGES / 2

    cloud_down.clear()  # the rest is applied as a batch
    again = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    again.start()
    try:
        wait_for(lambda: len(applied) == MESSAGES, within_s=30)
        broker.join("slow", timeout=10_000)
    finally:
        again.stop(timeout=20_000)
    assert set(applied) == set(range(MESSAGES))
    assert set(applied.values()) == {1}  # none applied twice, none lost
