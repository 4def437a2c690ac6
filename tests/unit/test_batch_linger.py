"""The batch consumer's linger (``BatchConsumer.take``): it waits ``batch_wait_s`` for more
deliveries only when its queue is busy, so a lone change on an idle queue is handled at
once (light-load latency) while a burst still fills its batches."""

from __future__ import annotations

import time

from bus.batch import BatchConsumer


class Broker:
    def get_declared_actors(self):
        return []


class Consumer:
    """Deliveries ``first`` then ``buffered``; ``poll`` waits its timeout when empty, as
    RabbitMQ's would, and records every timeout it was given."""

    def __init__(self, first, buffered=()):
        self.first, self.buffered, self.timeouts = first, list(buffered), []

    def __next__(self):
        return self.first

    def poll(self, timeout_s):
        self.timeouts.append(timeout_s)
        if self.buffered:
            return self.buffered.pop(0)
        time.sleep(timeout_s)
        return None


def consumer_with(first, buffered=(), last_size=0, wait_s=0.2) -> BatchConsumer:
    batch = BatchConsumer(Broker(), "q", None)
    batch.batch_wait_s = wait_s
    batch._last_size = last_size
    batch.consumer = Consumer(first, buffered)
    return batch


def test_a_lone_delivery_on_an_idle_queue_is_taken_without_waiting_for_company():
    batch = consumer_with("m1", last_size=1)
    assert batch.take() == ["m1"]
    assert batch.consumer.timeouts == [0.0], "one look at what is buffered, no wait"


def test_a_busy_queue_lingers_for_more():
    batch = consumer_with("m1", buffered=["m2", "m3"], last_size=1, wait_s=0.05)
    assert batch.take() == ["m1", "m2", "m3"]
    assert any(t > 0 for t in batch.consumer.timeouts), "waited for more after the buffered"
    assert batch._last_size == 3
    # The batch after a batch of several lingers even if nothing is buffered yet.
    batch.consumer = Consumer("m4")
    start = time.monotonic()
    assert batch.take() == ["m4"]
    assert time.monotonic() - start >= 0.04
    assert batch._last_size == 1
