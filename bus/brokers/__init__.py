"""Brokers for the bus: RabbitMQ when a URL is configured, else the embedded SQLite one.

Wiring in a composition root (the only place that names these)::

    broker = make_broker(settings.broker_url, sqlite_path=settings.home / "bus.db",
                         queue_type=settings.queue_type)
    store = ExceptionStore(state_engine)
    setup(broker, store=store)                 # correlation ids, failure classes
    dramatiq.set_broker(broker)                # before declaring actors

    # producer side: OutboxRelay(state_engine, bus.publish.make_publisher(broker))
    # worker side:   dramatiq.Worker(broker).start() and, next to it,
    #                bus.dlq_drain.make_drain(broker, store).run_forever(stop)

Actors take the envelope dict as their one argument (``bus.envelope.to_message_arg``)
and raise ``BusinessError``/``TechnicalError``; ``bus.retry`` does the rest.
One relay publisher and one drain per thread (pika connections are not shared).
Queue naming is documented in ``bus.brokers.base``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, cast

import dramatiq
from dramatiq.middleware import Retries

from bus.brokers.base import redelivery_requested, request_redelivery
from bus.brokers.rabbitmq import (
    QUEUE_TYPES,
    CoexistRabbitmqBroker,
    QueueType,
    connection_parameters,
    split_broker_urls,
)
from bus.brokers.sqlite import SqliteBroker
from bus.correlation import CorrelationMiddleware
from bus.errors import BusError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bus.retry import FailureRecorder

__all__ = [
    "CoexistRabbitmqBroker",
    "SqliteBroker",
    "connection_parameters",
    "make_broker",
    "redelivery_requested",
    "request_redelivery",
    "setup",
    "split_broker_urls",
]


def make_broker(
    url: str | None,
    *,
    sqlite_path: str | os.PathLike[str] | None = None,
    queue_type: str = "classic",
    middleware: list[dramatiq.Middleware] | None = None,
    **options: Any,
) -> dramatiq.Broker:
    """The broker for ``url``: RabbitMQ for ``amqp://``/``amqps://`` (several nodes of a
    cluster comma-separated, see ``split_broker_urls``), else embedded SQLite.

    ``sqlite_path`` is required when ``url`` is ``None``; ``queue_type``
    (``classic``/``quorum``) only applies to RabbitMQ.  ``options`` go to the
    broker class (``heartbeat``, ``delivery_limit``, ``lease_ms``...).
    """
    if url:
        try:
            split_broker_urls(url)
        except ValueError as exc:
            raise ValueError(f"broker URL: {exc} (or leave it empty for the embedded SQLite "
                             "broker)") from None
        if queue_type not in QUEUE_TYPES:
            raise ValueError(
                f"queue type must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}"
            )
        return CoexistRabbitmqBroker(
            url=url, queue_type=cast(QueueType, queue_type), middleware=middleware, **options
        )
    if sqlite_path is None:
        raise ValueError("no broker URL configured and no sqlite_path for the embedded broker")
    return SqliteBroker(sqlite_path, middleware=middleware, **options)


def setup(
    broker: dramatiq.Broker,
    *,
    store: FailureRecorder,
    retry_options: dict[str, Any] | None = None,
    ledger: dramatiq.Middleware | None = None,
    state: Engine | None = None,
) -> dramatiq.Broker:
    """Install our middleware stack on ``broker`` (idempotence is not attempted: call once).

    * dramatiq's ``Retries`` is removed and ``FailureClasses(store, **retry_options)``
      takes its place (see ``bus.retry``);
    * ``ledger`` (``bus.ledger.SettleLedger``), when given: marks each message settled
      once handled or recorded, its ``after_process_message`` running after theirs;
    * ``bus.inbox.InboxMiddleware`` on the state engine (``state``, else the exception
      store's engine): actors declaring ``inbox="consumer"`` claim each message in the
      transaction of their effect (``bus.inbox.current()``);
    * ``bus.batch.BatchConsumers``: actors declaring ``batch=<handler of a list>`` are
      consumed in batches, one state transaction and one ack per batch;
    * ``bus.correlation.CorrelationMiddleware`` first, so every log line of a handler
      carries the message's correlation id.
    """
    # Imported here: bus.retry imports bus.brokers.base, which runs this package first.
    from bus.batch import BatchConsumers
    from bus.inbox import DuplicateSkipped, InboxMiddleware
    from bus.retry import FailureClasses

    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, Retries)]
    broker.add_middleware(FailureClasses(store, **(retry_options or {})))
    if ledger is not None:  # before it in the list: dramatiq runs after_* hooks in reverse
        broker.add_middleware(ledger, before=FailureClasses)
    engine = state if state is not None else getattr(store, "engine", None)
    if engine is not None:
        pause = (retry_options or {}).get("redelivery_pause_ms", 500)
        # Last: its after-hook commits (or rolls back) before FailureClasses routes a failure.
        broker.add_middleware(InboxMiddleware(engine, redelivery_pause_ms=pause))
    broker.add_middleware(BatchConsumers(engine))
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(CorrelationMiddleware(), before=first)
    worker_log = logging.getLogger(DRAMATIQ_WORKER_LOGGER)
    for wanted in (ReportedByFailureClasses, DuplicateSkipped):
        if not any(isinstance(f, wanted) for f in worker_log.filters):
            worker_log.addFilter(wanted())
    return broker


#: The logger of dramatiq's worker threads (``dramatiq.worker``'s ``get_logger``).
DRAMATIQ_WORKER_LOGGER = "dramatiq.worker.WorkerThread"


class ReportedByFailureClasses(logging.Filter):
    """Drops dramatiq's "Failed to process message ... with unhandled exception" (ERROR with
    a traceback) when the exception is one of ours, business or technical: the failure
    middleware reports those itself, in one line, with what became of the message (retry
    in N ms, or recorded as exception N).  A stray write is a business event, and a 429
    that will be retried is routine: neither is an error with a traceback.  Any other
    exception (a bug) keeps dramatiq's ERROR and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BusError)
                    and str(record.msg).startswith("Failed to process message"))
