"""Confirmed batch publishers for ``bus.outbox.OutboxRelay``.

A publisher is a callable ``publish_batch(rows)`` that returns only once the
broker has taken responsibility for EVERY row, and raises otherwise (the relay
then leaves the rows unsent and retries; consumers absorb duplicates: the inbox
or version checks, see docs/architecture.md).  A row is anything with
``to_message() -> dramatiq.Message`` (``bus.outbox.OutboxRow``) or a
``dramatiq.Message`` itself.

* ``RabbitmqBatchPublisher``: one channel in confirm mode; publishes the whole
  batch, then waits for the confirms (one round trip per batch instead of one
  per message, which is what dramatiq's ``enqueue`` with confirms costs).
  pika's ``BlockingChannel`` only offers per-message waits, so the batch is
  published on its underlying asynchronous channel (``_impl``), driven by the
  blocking connection's I/O loop.  Messages are ``mandatory``: one that no
  queue takes comes back and fails the batch.  pika queues every frame (three per
  message) as its own buffer and sends each with its own ``send()``, each of which
  releases the GIL and must win it back from whatever else runs in the process (the
  router's capture); the batch's frames are joined into one buffer before the I/O loop
  runs, so a batch costs a handful of sends.  Outbox rows are encoded from their
  stored envelope text when dramatiq's JSON encoder is in use (``OutboxRow.encoded``).
* ``SqliteBatchPublisher``: one SQLite transaction per batch on the embedded broker.

``make_publisher(broker)`` picks the right one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.encoder import JSONEncoder

from bus.brokers.rabbitmq import CoexistRabbitmqBroker, connection_node
from bus.brokers.sqlite import SqliteBroker
from bus.errors import TechnicalError

log = logging.getLogger(__name__)

#: Longest wait for the broker's confirms of one batch.
CONFIRM_TIMEOUT_S = 30.0


class PublishError(TechnicalError):
    """The broker did not confirm every message of a batch; publish it again."""


def _messages(rows: Iterable[Any]) -> list[dramatiq.Message]:
    return [r if isinstance(r, dramatiq.Message) else r.to_message() for r in rows]


class _Outgoing:
    """What ``RabbitmqBatchPublisher`` sends of one row: queue, message id and body."""

    __slots__ = ("queue_name", "message_id", "body")

    def __init__(self, row: Any, fast: bool):
        if isinstance(row, dramatiq.Message):
            self.queue_name, self.message_id, self.body = \
                row.queue_name, row.message_id, row.encode()
        elif fast and hasattr(row, "encoded"):
            self.queue_name, self.message_id, self.body = \
                row.queue_name, row.message_id, row.encoded()
        else:
            message = row.to_message()
            self.queue_name, self.message_id, self.body = \
                message.queue_name, message.message_id, message.encode()


def _json_encoder_in_use() -> bool:
    return type(dramatiq.get_encoder()) is JSONEncoder


def coalesce_frames(connection: Any) -> int:
    """Join the frames pika has queued on ``connection`` (a ``BlockingConnection``) into
    one buffer, so they go out in as few ``send()`` calls as the socket allows; returns
    how many buffers were joined (0: nothing to do, or a pika whose transport this does
    not know, which then sends frame by frame as before)."""
    transport = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    if not isinstance(buffers, deque) or len(buffers) < 2:
        return 0
    joined = b"".join(buffers)
    count = len(buffers)
    buffers.clear()
    buffers.append(joined)  # the byte count pika keeps is unchanged
    return count


class SqliteBatchPublisher:
    """Publishes a batch onto the embedded broker in one SQLite transaction."""

    def __init__(self, broker: SqliteBroker):
        self.broker = broker

    def __call__(self, rows: Iterable[Any]) -> None:
        messages = _messages(rows)
        if messages:
            self.broker.enqueue_many(messages)


class RabbitmqBatchPublisher:
    """Publishes a batch to RabbitMQ and waits for all its publisher confirms.

    Queues are declared through ``broker`` (so they get its queue type, delivery
    limit and dead-letter arguments) the first time a batch names them.  Not
    thread-safe: give each relay thread its own publisher.
    """

    def __init__(
        self, broker: CoexistRabbitmqBroker, *, confirm_timeout_s: float = CONFIRM_TIMEOUT_S
    ):
        self.broker = broker
        self.confirm_timeout_s = confirm_timeout_s
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._next_tag = 1
        self._pending: set[int] = set()
        self._nacked: list[int] = []
        self._returned: list[str] = []
        self._declared: set[str] = set()
        self._opens = 0

    def __call__(self, rows: Iterable[Any]) -> None:
        fast = _json_encoder_in_use()
        messages = [_Outgoing(r, fast) for r in rows]
        if not messages:
            return
        try:
            self._publish(messages)
        except PublishError:
            self.close()
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise PublishError(f"publishing {len(messages)} messages failed: {exc!r}") from exc

    def _publish(self, messages: list[_Outgoing]) -> None:
        for queue_name in {m.queue_name for m in messages} - self._declared:
            self.broker.declare_queue(queue_name, ensure=True)
            self._declared.add(queue_name)
        channel = self._open()
        self._nacked.clear()
        self._returned.clear()
        for message in messages:
            channel.basic_publish(
                exchange="",
                routing_key=message.queue_name,
                body=message.body,
                properties=pika.BasicProperties(delivery_mode=2, message_id=message.message_id),
                mandatory=True,
            )
            self._pending.add(self._next_tag)
            self._next_tag += 1
        coalesce_frames(self._conn)
        deadline = time.monotonic() + self.confirm_timeout_s
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishError(
                    f"{len(self._pending)} of {len(messages)} messages not confirmed within "
                    f"{self.confirm_timeout_s:.0f} s (is RabbitMQ blocking publishers?)"
                )
            assert self._conn is not None  # opened above; closed only by close()
            self._conn.process_data_events(time_limit=min(remaining, 1.0))
        if self._returned:
            # The queue vanished (deleted by hand, lost with a node): declare it
            # again before the relay's next attempt instead of failing forever.
            for queue_name in {m.queue_name for m in messages}:
                self._declared.discard(queue_name)
                self.broker.queues_pending.add(queue_name)
        if self._nacked or self._returned:
            raise PublishError(
                f"RabbitMQ refused {len(self._nacked)} and could not route {len(self._returned)} "
                f"of {len(messages)} messages (first unroutable: {self._returned[:1]})"
            )

    def _open(self) -> Any:
        if self._conn is not None and self._conn.is_open and self._channel.is_open:
            return self._channel
        self.close()
        self._conn = pika.BlockingConnection(self.broker.parameters)
        self._opens += 1
        if self._opens > 1:  # one line per reconnect: which node of a cluster it went to
            log.info("Outbox publisher reconnected to %s.", connection_node(self._conn))
        blocking = self._conn.channel()
        channel = blocking._impl  # the asynchronous channel; see the module docstring
        selected: list[bool] = []
        channel.add_on_return_callback(self._on_return)
        def on_selected(_frame):
            selected.append(True)
            self._conn.add_callback_threadsafe(_nothing)

        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=on_selected)
        deadline = time.monotonic() + self.confirm_timeout_s
        while not selected:
            if time.monotonic() > deadline:
                raise PublishError("RabbitMQ did not acknowledge confirm mode")
            self._conn.process_data_events(time_limit=0.1)
        self._blocking = blocking
        self._channel = channel
        self._next_tag = 1
        self._pending.clear()
        return channel

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            {t for t in self._pending if t <= method.delivery_tag}
            if method.multiple
            else {method.delivery_tag}
        )
        self._pending -= tags
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked.extend(tags)
        if not self._pending and self._conn is not None:
            # Confirms arrive on the asynchronous channel, which the blocking
            # connection does not count as an event: wake process_data_events.
            self._conn.add_callback_threadsafe(_nothing)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        self._returned.append(f"{properties.message_id} -> {method.routing_key}")

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        self._pending.clear()
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to save
                log.debug("closing the publisher's connection failed", exc_info=True)


def _nothing() -> None:
    pass


def make_publisher(broker: dramatiq.Broker):
    """The confirmed batch publisher for ``broker`` (ours, from ``bus.brokers.make_broker``)."""
    if isinstance(broker, CoexistRabbitmqBroker):
        return RabbitmqBatchPublisher(broker)
    if isinstance(broker, SqliteBroker):
        return SqliteBatchPublisher(broker)
    raise TypeError(f"no confirmed batch publisher for {type(broker).__name__}")
