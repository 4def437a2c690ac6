"""The bus failure tests' common parts: the worker program (``tests/integration/bus_worker.py``)
as a subprocess, a PostgreSQL + RabbitMQ run with its clean-up, and the waits and counts the
kill -9 / connection-loss / batch-crash tests judge by."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bus.brokers import make_broker
from bus.db import create_state_engine
from bus.publish import PublishError, make_publisher
from tests.integration import bus_worker

ROOT = Path(__file__).resolve().parents[2]
#: Default bound on waiting for a run to complete.
RUN_TIMEOUT_S = 60


class Worker:
    """The worker subprocess; its stderr goes to a file shown when a test fails."""

    def __init__(self, tmp_path: Path, *args: str):
        self.log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, "dramatiq_restart_delay": "300", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.bus_worker", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"worker did not start:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class RabbitRun:
    """A state engine and broker on PostgreSQL + RabbitMQ, and the workers started on them."""

    engine: Any
    broker: Any
    queue: str
    start_worker: Callable[..., Worker]
    workers: list[Worker] = field(default_factory=list)


@contextlib.contextmanager
def rabbit_run(pg_url: str, amqp_url: str, tmp_path: Path, queue: str,
               queue_type: str = "classic", declare: tuple[str, ...] = ()) -> Iterator[RabbitRun]:
    """Prepared state, a broker for ``queue_type`` (``declare``: queues to declare first), and
    ``start_worker(*extra)`` for workers on ``queue``; on exit every worker is stopped, the
    queues (``queue`` and ``declare``, with their delay/dead-letter queues) deleted, the
    broker closed and the engine disposed."""
    engine = create_state_engine(pg_url)
    bus_worker.prepare_state(engine)
    broker = make_broker(amqp_url, queue_type=queue_type)
    workers: list[Worker] = []

    def start_worker(*extra: str) -> Worker:
        w = Worker(tmp_path, "--state-url", pg_url, "--broker", amqp_url, "--queue", queue,
                   "--queue-type", queue_type, *extra)
        workers.append(w)
        return w

    try:
        for name in declare:
            broker.declare_queue(name)
        yield RabbitRun(engine, broker, queue, start_worker, workers)
    finally:
        for w in workers:
            w.stop()
        for q in (queue, *declare):
            for name in broker.queue_names(q):
                with contextlib.suppress(Exception):  # the run's vhost goes at the end anyway
                    broker.channel.queue_delete(name)
        broker.close()
        engine.dispose()


def wait_for(predicate, what: str, workers=(), timeout_s: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tails = "\n---\n".join(w.tail() for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def publish_all(broker, messages, batch: int = 500) -> None:
    publish = make_publisher(broker)
    for i in range(0, len(messages), batch):
        chunk = messages[i : i + batch]
        for _attempt in range(20):  # what the outbox relay does: retry the whole batch
            try:
                publish(chunk)
                break
            except PublishError:
                time.sleep(0.2)
        else:
            raise AssertionError("could not publish a batch in 20 attempts")
    publish.close()


def assert_exactly_once(engine, expected: int) -> None:
    rows, distinct = bus_worker.effect_counts(engine)
    assert (rows, distinct) == (expected, expected)
    with engine.connect() as conn:
        inbox_rows = conn.execute(select(func.count()).select_from(
            bus_worker.inbox.InboxRecord.__table__)).scalar_one()
    assert inbox_rows == expected
