"""Drive the router step by step: capture, relay and consume until nothing moves.

The long-running ``coexist run`` loops forever; the demo and the end-to-end
tests need "apply everything that is pending, then tell me".  ``Driver`` runs
the same parts (capture loops, outbox relay, a dramatiq worker on the app's
broker) and ``settle()`` returns once two rounds in a row moved nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dramatiq

from bus.brokers import SqliteBroker
from bus.dlq_drain import make_drain
from bus.outbox import backlog
from workers.bootstrap import App
from workers.router.capture import CaptureStats


class Driver:
    def __init__(self, app: App, threads: int = 2):
        self.app = app
        self.loops = app.capture_loops()
        self.relay = app.relay()
        self.drain = make_drain(app.broker, app.exceptions, app.queue_names())
        self.captured = CaptureStats()
        #: More feeds to read every round (the CRM's inbound poller): each returns how
        #: many changes it read.
        self.pollers: list[Callable[[], int]] = []
        self.worker = dramatiq.Worker(app.broker, worker_threads=threads, worker_timeout=100,
                                      queues=app.consumed_queues())
        self.worker.start()

    def settle(self, timeout_s: float = 120.0) -> CaptureStats:
        """Capture, relay and consume until two quiet rounds in a row; returns what was captured."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        captured = CaptureStats()
        while quiet < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the router did not settle within {timeout_s:g} s")
            moved = 0
            for loop in self.loops:
                stats = loop.drain()
                captured.add(stats)
                moved += stats.read
            for poll in self.pollers:
                moved += poll()
            moved += self.relay.run_once(5000)
            for name in self.app.consumed_queues() or self.app.queue_names():
                self._join(name, int(timeout_s * 1000))
            self.worker.join()
            moved += self.drain.run_once()
            moved += backlog(self.app.state)
            quiet = quiet + 1 if moved == 0 else 0
        self.captured.add(captured)
        return captured

    def _join(self, queue: str, timeout_ms: int) -> None:
        if isinstance(self.app.broker, SqliteBroker):
            self.app.broker.join(queue, timeout=timeout_ms)
        else:
            # dramatiq's defaults (10 empty polls 100 ms apart per queue) cost seconds per
            # round; two polls suffice because the worker is joined right after.
            self.app.broker.join(queue, min_successes=2, idle_time=20, timeout=timeout_ms)

    def stop(self) -> None:
        self.worker.stop()
        self.relay.close()  # its own connection, outside the pool the app disposes
        self.app.close()
