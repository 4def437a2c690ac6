"""The failure middleware's test bench: an embedded broker with ``bus.retry`` set up over an
exception store in memory, a real dramatiq Worker on it, and a short wait.

``tests/unit/test_retry.py`` and ``tests/unit/test_retry_budget.py`` assert where a message
ended (its queue, the store, the dead-letter table) through these.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq

from bus.brokers import setup
from bus.brokers.sqlite import SqliteBroker


class FakeStore:
    """Exception store in memory; ``down`` makes ``record`` fail like a lost database."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.down = False

    def record(self, **fields) -> int:
        if self.down:
            raise ConnectionError("exception store unreachable")
        self.records.append(fields)
        return len(self.records)


@contextlib.contextmanager
def retry_broker(path: Path, store: FakeStore, *, broker_cls: type[SqliteBroker] = SqliteBroker,
                 **retry_options: Any) -> Iterator[SqliteBroker]:
    """An embedded broker at ``path`` with the failure middleware (backoffs of 5-20 ms, no
    redelivery pause, ``retry_options`` on top) as the global broker, so that actors
    declared in the block land on it; the previous global broker afterwards."""
    b = broker_cls(path, lease_ms=2000, poll_interval_ms=5, redelivery_delay_ms=0)
    setup(b, store=store, retry_options={"min_backoff_ms": 5, "max_backoff_ms": 20,
                                         "redelivery_pause_ms": 0, **retry_options})
    previous = dramatiq.broker.global_broker
    dramatiq.set_broker(b)
    try:
        yield b
    finally:
        dramatiq.set_broker(previous)
        b.close()


@contextlib.contextmanager
def running_worker(broker, threads: int) -> Iterator[dramatiq.Worker]:
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=threads)
    w.start()
    try:
        yield w
    finally:
        w.stop(timeout=5000)


def wait_for(predicate: Callable[[], Any], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")
