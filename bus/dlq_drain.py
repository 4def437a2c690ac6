"""Drain dead letters from the broker into the SQL exception store, where they never expire.

RabbitMQ dead-letters a message to ``<queue>.XQ`` when a worker rejects it, when
it does not decode as a dramatiq message, or when a quorum queue's delivery
limit is reached.  The embedded broker keeps the same in ``bus_dead_letters``.
Both drains record each message (``failure_class="dead_letter"``, or
``"undecodable"`` with the raw bytes when it is not a dramatiq message) and only
then remove it from the broker: a drain killed in between leaves the message
where it was, and the next pass records it again, which the store turns into an
update of the same record (same message id and actor).

Run ``run_forever`` next to the workers (the worker process or the relay
process of the composition root), or ``run_once`` from a scheduler.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.common import xq_name
from dramatiq.errors import ConnectionClosed, ConnectionFailed, DecodeError
from sqlalchemy.exc import SQLAlchemyError

from bus.brokers.rabbitmq import CoexistRabbitmqBroker
from bus.brokers.sqlite import SqliteBroker, connect
from bus.errors import TechnicalError
from bus.retry import FailureRecorder

log = logging.getLogger(__name__)

#: Pause between two drain passes that found nothing.
DRAIN_INTERVAL_S = 5.0
#: Most messages moved per pass (keeps a pass short under a flood).
DRAIN_BATCH = 1000


def _record(store: FailureRecorder, *, queue_name: str, body: bytes, reason: str,
            message_id: str | None, attempts: int) -> int:
    try:
        message = dramatiq.Message.decode(body)
    except DecodeError as exc:
        return store.record(
            failure_class="undecodable", queue_name=queue_name, actor_name="<unknown>",
            # The store keeps a dead letter without an id; bus.retry's Protocol is narrower.
            message_id=message_id,  # type: ignore[arg-type]
            envelope=None, raw=body, message=None,
            error_type="UndecodableMessage",
            error_message=f"dead-lettered from {queue_name} ({reason}), not a dramatiq "
                          f"message: {exc}",
            call_site=f"broker:{queue_name}", attempts=attempts,
        )
    args = message.args
    envelope = args[0] if args and isinstance(args[0], dict) else None
    last_error = message.options.get("last_error")
    detail = f"; last error: {last_error}" if last_error else ""
    return store.record(
        failure_class="dead_letter", queue_name=queue_name, actor_name=message.actor_name,
        message_id=message.message_id, envelope=envelope, raw=None, message=message.asdict(),
        error_type="DeadLetter",
        error_message=f"dead-lettered from {queue_name} ({reason}){detail}",
        call_site=f"broker:{queue_name}", attempts=attempts,
    )


class RabbitmqDlqDrain:
    """Moves messages from ``<queue>.XQ`` into the exception store, acking after each commit.

    ``queues`` are the work queues whose dead letters to drain; by default every
    queue declared on ``broker`` (its actors' queues).
    """

    def __init__(self, broker: CoexistRabbitmqBroker, store: FailureRecorder,
                 queues: Iterable[str] | None = None):
        self.broker = broker
        self.store = store
        self.queues = list(queues) if queues is not None else None
        self._conn: pika.BlockingConnection | None = None

    def _channel(self):
        if self._conn is None or not self._conn.is_open:
            self._conn = pika.BlockingConnection(self.broker.parameters)
            self._ch = self._conn.channel()
        return self._ch

    def run_once(self, limit: int = DRAIN_BATCH) -> int:
        """Drain up to ``limit`` dead letters; returns how many were recorded."""
        moved = 0
        queues = self.queues if self.queues is not None else sorted(self.broker.queues)
        try:
            for queue in queues:
                self.broker.declare_queue(queue, ensure=True)
                channel = self._channel()
                while moved < limit:
                    method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
                    if method is None:
                        break
                    reason, count = _death(properties)
                    _record(self.store, queue_name=queue, body=body, reason=reason,
                            message_id=properties.message_id, attempts=count)
                    # Only now: the record is committed.
                    channel.basic_ack(method.delivery_tag)
                    moved += 1
        except Exception:
            self.close()  # unacked messages go back to .XQ with the connection
            raise
        if moved:
            log.info("Drained %d dead letters into the exception store.", moved)
        return moved

    def run_forever(self, stop: threading.Event, interval_s: float = DRAIN_INTERVAL_S) -> None:
        """Drain until ``stop`` is set; errors are logged and retried next pass."""
        while not stop.is_set():
            try:
                if self.run_once() >= DRAIN_BATCH:
                    continue
            except Exception as exc:
                _log_failed_pass(exc, interval_s)
            stop.wait(interval_s)
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                log.debug("closing the drain's connection failed", exc_info=True)


def _death(properties: Any) -> tuple[str, int]:
    """(reason, delivery count) from RabbitMQ's ``x-death`` / quorum delivery headers."""
    headers = properties.headers or {}
    deaths = headers.get("x-death") or []
    reason = str(deaths[0].get("reason", "rejected")) if deaths else "rejected"
    if isinstance(reason, bytes):
        reason = reason.decode()
    count = int(headers.get("x-delivery-count", 0) or 0) + 1
    if deaths:
        count = max(count, int(deaths[0].get("count", 1)))
    return reason, count


class SqliteDlqDrain:
    """Moves rows of the embedded broker's ``bus_dead_letters`` into the exception store."""

    def __init__(self, broker: SqliteBroker, store: FailureRecorder):
        self.broker = broker
        self.store = store

    def run_once(self, limit: int = DRAIN_BATCH) -> int:
        conn = connect(self.broker.path)
        try:
            rows = conn.execute(
                "SELECT id, queue_name, message_id, body, reason, deliveries"
                " FROM bus_dead_letters ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            for row_id, queue, message_id, body, reason, deliveries in rows:
                _record(self.store, queue_name=queue, body=bytes(body), reason=reason,
                        message_id=message_id, attempts=deliveries)
                conn.execute("DELETE FROM bus_dead_letters WHERE id = ?", (row_id,))
        finally:
            conn.close()
        return len(rows)

    def run_forever(self, stop: threading.Event, interval_s: float = DRAIN_INTERVAL_S) -> None:
        while not stop.is_set():
            try:
                if self.run_once() >= DRAIN_BATCH:
                    continue
            except Exception as exc:
                _log_failed_pass(exc, interval_s)
            stop.wait(interval_s)


def _log_failed_pass(exc: Exception, interval_s: float) -> None:
    """An unreachable broker or database is routine (one WARNING line; the log handler
    collapses the repeats); anything else keeps its traceback."""
    routine = isinstance(exc, (TechnicalError, ConnectionClosed, ConnectionFailed, OSError,
                               sqlite3.Error, pika.exceptions.AMQPError, SQLAlchemyError))
    log.log(logging.WARNING if routine else logging.ERROR,
            "Dead-letter drain pass failed (%s: %s); retrying in %.0f s.",
            type(exc).__name__, exc, interval_s, exc_info=not routine)


def make_drain(broker: dramatiq.Broker, store: FailureRecorder,
               queues: Iterable[str] | None = None):
    """The dead-letter drain for ``broker`` (ours, from ``bus.brokers.make_broker``)."""
    if isinstance(broker, CoexistRabbitmqBroker):
        return RabbitmqDlqDrain(broker, store, queues)
    if isinstance(broker, SqliteBroker):
        return SqliteDlqDrain(broker, store)
    raise TypeError(f"no dead-letter drain for {type(broker).__name__}")
