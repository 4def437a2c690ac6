"""dramatiq's RabbitMQ broker with the gaps we cannot live with closed.

* Publisher confirms are always on: ``enqueue`` returns only once RabbitMQ has
  taken responsibility for the message (and unroutable messages raise).
* Dead letters never expire.  dramatiq declares ``<queue>.XQ`` with
  ``x-message-ttl`` = 7 days, so an unnoticed dead letter silently vanishes;
  ours has no TTL, and ``bus.dlq_drain`` moves it into the SQL exception store.
* Quorum queues on request (``queue_type="quorum"``), for clusters: RabbitMQ 4
  has no replicated classic queues and dramatiq only declares classic ones.
  The work, ``.DQ`` and ``.XQ`` queues are all quorum queues then, with a
  ``x-delivery-limit`` (crash loops end in ``.XQ``, like the embedded broker's
  ``delivery_limit``) and at-least-once dead-lettering so a message moving to
  ``.XQ`` cannot be lost on the way.  Our retries re-publish to ``.DQ`` (a new
  delivery count each time), so the delivery limit only counts deliveries that
  ended with no verdict: a killed worker, a lost connection, a redelivery
  request; ``MAX_RETRIES`` in ``bus.retry`` bounds the failures.
* A message whose failure could not be recorded (``bus.brokers.base
  .request_redelivery``) is nacked with ``requeue=True`` instead of being
  dead-lettered.

* Several nodes (a cluster): ``url`` may name them all, comma-separated
  (``split_broker_urls``).  Each process tries the nodes in its own random order
  (so connections spread over the cluster) and every reconnect - of a consumer,
  the relay's publisher or the dead-letter drain - walks that list again, so a
  lost node's clients land on the survivors.  Queues should then be quorum
  queues: a classic queue lives on one node and goes with it.

Changing a queue's type or arguments needs the old queue drained and deleted
first: RabbitMQ refuses to redeclare a queue with different arguments.
"""

from __future__ import annotations

import logging
import random
import threading
from functools import partial
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed

from bus.brokers.base import redelivery_requested

QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: tuple[str, ...] = ("classic", "quorum")

#: Deliveries without an ack or reject (worker killed, connection lost, redelivery
#: requested) after which a quorum queue dead-letters a message to ``.XQ``.
DELIVERY_LIMIT = 20

log = logging.getLogger(__name__)

#: What separates the nodes of a cluster in a broker URL (``;`` is dramatiq's own).
URL_SEPARATORS = (",", ";")


def split_broker_urls(url: str) -> list[str]:
    """The AMQP URLs in a broker setting: one URL, or a cluster's nodes separated by commas
    (``amqp://u:p@10.0.0.1:5672/prod,amqp://u:p@10.0.0.2:5672/prod``).

    Raises ``ValueError`` naming the bad item (never its password): an empty item, a
    scheme other than amqp/amqps, no host, a bad port, or nodes that disagree on the
    vhost or the user (one cluster has one vhost; coexist logs in once)."""
    text = url.strip()
    for sep in URL_SEPARATORS[1:]:
        text = text.replace(sep, URL_SEPARATORS[0])
    items = [item.strip() for item in text.split(URL_SEPARATORS[0])]
    several = len(items) > 1
    seen: tuple[str, str] | None = None
    for n, item in enumerate(items, 1):
        where = f"node {n} of {len(items)} " if several else ""
        if not item:
            raise ValueError(f"{where}is empty (a stray comma?)")
        scheme = item.split("://", 1)[0] if "://" in item else ""
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"{where}must start with amqp:// or amqps://, got "
                             f"{(scheme or item.split(':', 1)[0])!r}")
        try:
            parts = urlsplit(item)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"{where}has a bad host or port ({exc})") from None
        if not parts.hostname:
            raise ValueError(f"{where}names no host")
        vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
        identity = (vhost, unquote(parts.username or "guest"))
        if seen is not None and identity != seen:
            what = "vhost" if identity[0] != seen[0] else "user"
            raise ValueError(f"{where}names another {what} than node 1 "
                             f"({identity[0 if what == 'vhost' else 1]!r} vs "
                             f"{seen[0 if what == 'vhost' else 1]!r}): the nodes of one "
                             "cluster share the vhost and the login")
        seen = identity
    return items


def connection_parameters(url: str, *, shuffle: bool = True) -> list[pika.URLParameters]:
    """pika's parameters for every node in ``url`` (``split_broker_urls``), in a random
    order unless ``shuffle`` is false; ``pika.BlockingConnection`` takes the first node
    that answers."""
    params = [pika.URLParameters(u) for u in split_broker_urls(url)]
    if shuffle:
        random.shuffle(params)
    return params


class CoexistRabbitmqBroker(RabbitmqBroker):
    """``RabbitmqBroker`` with confirms on, durable dead letters and optional quorum queues.

    Parameters:
      url: the AMQP URL, or a cluster's node URLs comma-separated (``Settings.broker_url``).
      queue_type: ``"classic"`` (default, one node) or ``"quorum"`` (clusters).
      delivery_limit: quorum queues only, see ``DELIVERY_LIMIT``.
    """

    def __init__(
        self,
        *,
        url: str,
        queue_type: QueueType = "classic",
        delivery_limit: int = DELIVERY_LIMIT,
        middleware=None,
        **kwargs: Any,
    ):
        if queue_type not in QUEUE_TYPES:
            raise ValueError(
                f"queue_type must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}"
            )
        if queue_type == "quorum" and kwargs.get("max_priority"):
            raise ValueError("quorum queues do not support max_priority")
        nodes = split_broker_urls(url)
        super().__init__(url=nodes if len(nodes) > 1 else url, confirm_delivery=True,
                         middleware=middleware, **kwargs)
        if isinstance(self.parameters, list):  # this process's order of the nodes
            random.shuffle(self.parameters)
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self._consumer_starts: dict[str, int] = {}
        self._consumer_lock = threading.Lock()

    def consumer_started(self, queue_name: str, connection: pika.BlockingConnection) -> None:
        """Say which node a consumer of ``queue_name`` is connected to: DEBUG the first
        time, INFO on every reconnect (after a lost node or a closed connection), so a
        log shows consumers moving to the survivors of a cluster."""
        node = connection_node(connection)
        with self._consumer_lock:
            starts = self._consumer_starts[queue_name] = (
                self._consumer_starts.get(queue_name, 0) + 1)
        if starts == 1:
            log.debug("Consumer of %s connected to %s.", queue_name, node)
        else:
            log.info("Consumer of %s reconnected to %s (connection %d of this process).",
                     queue_name, node, starts)

    @property
    def consumer_class(self):
        return _CoexistRabbitmqConsumer

    def _type_arguments(self) -> dict[str, Any]:
        if self.queue_type == "quorum":
            return {"x-queue-type": "quorum"}
        return {}

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments = super()._build_queue_arguments(queue_name)
        arguments.update(self._type_arguments())
        if self.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.delivery_limit
            # at-least-once dead-lettering (3.10+) requires reject-publish overflow.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def _declare_xq_queue(self, queue_name: str):
        # No x-message-ttl: dead letters wait for the drain, however long that takes.
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=self._type_arguments()
        )

    def queue_names(self, queue_name: str) -> tuple[str, str, str]:
        """(work queue, delay queue, dead-letter queue) names for ``queue_name``."""
        return queue_name, dq_name(queue_name), xq_name(queue_name)


def connection_node(connection: pika.BlockingConnection) -> str:
    """``host:port`` of the node ``connection`` went to (of the several it was given)."""
    params = getattr(getattr(connection, "_impl", None), "params", None)
    return f"{params.host}:{params.port}" if params is not None else "?"


class _CoexistRabbitmqConsumer(_RabbitmqConsumer):
    def __init__(self, broker: CoexistRabbitmqBroker, queue_name: str, prefetch: int,
                 timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        broker.consumer_started(queue_name, self.connection)

    def poll(self, timeout_s: float):
        """The next delivery if one is buffered or arrives within ``timeout_s``, else None
        (the batch consumer's "what arrived within a few ms")."""
        try:
            if not self.channel.get_waiting_message_count():
                self.connection.process_data_events(time_limit=timeout_s)
            if not self.channel.get_waiting_message_count():
                return None
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None
        return next(self)

    def pump(self) -> None:
        """Let the connection do its I/O now, without waiting: send the acks queued by
        ``add_callback_threadsafe`` and the heartbeats, and buffer what arrived.

        A ``BlockingConnection`` does no I/O between calls into it: the batch consumer's
        thread calls this while its work thread handles a long batch (``bus.batch``);
        otherwise RabbitMQ drops the connection after missed heartbeats ("missed
        heartbeats from client") and every delivery not yet acked comes back. Only the
        thread that owns the connection may call it.
        """
        try:
            self.connection.process_data_events(time_limit=0)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def ack_many(self, messages) -> None:
        """Ack ``messages`` with ONE ``basic_ack(multiple=True)`` of the highest tag.

        Only for a consumer used by one thread that settled every earlier delivery
        (acked or nacked) first: a multiple ack covers every unacked tag up to it.
        """
        tags = [m._tag for m in messages]
        if not tags:
            return
        missing = [t for t in tags if t not in self.known_tags]
        if missing:  # the channel was reset: these tags mean nothing any more
            self.logger.warning("Failed to ack %d messages: not in known tags.", len(missing))
            return
        self.known_tags.difference_update(tags)
        try:
            self.connection.add_callback_threadsafe(
                partial(self.channel.basic_ack, max(tags), multiple=True)
            )
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def nack(self, message) -> None:
        if not redelivery_requested(message):
            super().nack(message)
            return
        try:
            self.known_tags.remove(message._tag)
            self.connection.add_callback_threadsafe(
                partial(self.channel.basic_nack, message._tag, requeue=True)
            )
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            # The connection is gone: RabbitMQ requeues every unacked delivery itself.
            raise ConnectionClosed(e) from None
        except KeyError:
            self.logger.warning("Failed to requeue message: not in known tags.")
