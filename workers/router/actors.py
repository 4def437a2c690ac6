"""The router's dramatiq actors: decode the envelope, call a handler, nothing else.

Retries, failure classes, correlation ids, the inbox and the exception store are the
middleware's job (``bus.brokers.setup``).

The ERP writers are consumed by the batch consumer too (``handlers.apply_writes``: one
read and one conditioned write request per batch); every message that needs a decision
(a repair, a target someone else changed, a lost race, a business error) is left to the
per-message path, ``handlers.apply_write``.  The command router and the report actor
are consumed one message at a time by dramatiq's worker threads.  Each subscription's
channel handler (a function of a sequence of envelopes) is consumed by the batch
consumer (``bus.batch``): up to ``CHANNEL_BATCH_SIZE`` deliveries per call, acked after
the call returned; a failing batch falls back to one message per call, so failures
keep their classes.  A channel handler that marks itself with ``bus.inbox.uses_inbox``
gets the inbox of its subscription's name: claims and whatever it writes through
``bus.inbox.current()`` commit in one state transaction per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq

from bus.envelope import Envelope, from_dict
from bus.inbox import wants_inbox
from coexistence.router import CLOUD, LEGACY
from workers.router import handlers, queues
from workers.router.state import get_route

if TYPE_CHECKING:
    from workers.bootstrap import App

#: Most envelopes one channel handler call receives.
CHANNEL_BATCH_SIZE = 200
#: A channel handler with this attribute set to False is consumed one message per call
#: (dramatiq's own threads) instead of by the batch consumer.
BATCHED_ATTR = "batched"
#: A channel handler with this attribute (a function of a sequence of envelopes that
#: returns positions into it) is called with each batch instead, and the deliveries at
#: the positions it returns go through the per-message path one by one (the handler
#: itself, with the bus's retries and failure classes) while the rest are acked with the
#: batch: the CRM's per-record row locks.  Not with an inbox.
MANY_ATTR = "many"
#: How long the batch consumer waits for more deliveries after the first one.
CHANNEL_BATCH_WAIT_MS = 5

#: Most routed writes one ERP writer call takes (the cloud's ``$batch`` limit); the
#: setting ``COEXIST_WRITE_BATCH_SIZE`` lowers it (1: one message at a time).
WRITE_BATCH_SIZE = 200
#: How long an ERP writer's batch consumer waits for more writes after the first one.
WRITE_BATCH_WAIT_MS = 5

ChannelHandler = Callable[[Sequence[Envelope]], None]


def register_actors(
    app: App, channel_handlers: dict[str, ChannelHandler] | None = None
) -> dict[str, dramatiq.Actor]:
    """Declare the router's actors (and one per subscription) on ``app.broker``."""

    def pinned_sor(domain: str, key: str) -> str | None:
        with app.state.connect() as conn:
            route = get_route(conn, domain, key)
        return route.pinned_sor if route else None

    context = handlers.WriteContext(app.flags, pinned_sor, app.state, app.erps)

    def writer(system: str):
        def write(envelope: dict) -> None:
            handlers.apply_write(from_dict(envelope), app.erps[system], app.send, context)

        write.__name__ = queues.WRITE_ACTOR[system]
        return write

    def batch_writer(system: str):
        def write_many(envelopes: list[dict]) -> list[int]:
            return handlers.apply_writes([from_dict(e) for e in envelopes], app.erps[system],
                                         app.send, context)

        return write_many

    def route_command(envelope: dict) -> None:
        handlers.route_command(from_dict(envelope), app.erps, app.flags, app.send, pinned_sor)

    def report(envelope: dict) -> None:
        handlers.report(from_dict(envelope))

    actors = {}
    for system in (LEGACY, CLOUD):
        size = int(getattr(app.settings, "write_batch_size", WRITE_BATCH_SIZE))
        batching: dict[str, Any] = {} if size <= 1 else {
            "batch": batch_writer(system), "batch_size": min(size, WRITE_BATCH_SIZE),
            "batch_wait_ms": WRITE_BATCH_WAIT_MS}
        actors[queues.WRITE_ACTOR[system]] = dramatiq.actor(
            writer(system), actor_name=queues.WRITE_ACTOR[system],
            queue_name=queues.WRITE_QUEUE[system], broker=app.broker, **batching)
    actors[queues.COMMAND_ACTOR] = dramatiq.actor(
        route_command, actor_name=queues.COMMAND_ACTOR, queue_name=queues.COMMAND_QUEUE,
        broker=app.broker)
    actors[queues.REPORT_ACTOR] = dramatiq.actor(
        report, actor_name=queues.REPORT_ACTOR, queue_name=queues.REPORT_QUEUE,
        broker=app.broker)
    for sub in app.subscriptions:
        handle = (channel_handlers or {}).get(sub.name)
        if handle is None:
            # Another process consumes this channel; the queue must exist for the relay.
            app.broker.declare_queue(sub.queue)
            continue

        def deliver(envelope: dict, _handle=handle) -> None:
            _handle([from_dict(envelope)])

        def deliver_many(envelopes: list[dict], _handle=handle,
                         _many=getattr(handle, MANY_ATTR, None)) -> list[int] | None:
            if _many is not None:
                return _many([from_dict(e) for e in envelopes])
            _handle([from_dict(e) for e in envelopes])
            return None

        options: dict[str, Any] = {}
        if getattr(handle, BATCHED_ATTR, True):
            options.update(batch=deliver_many, batch_size=CHANNEL_BATCH_SIZE,
                           batch_wait_ms=CHANNEL_BATCH_WAIT_MS)
        if wants_inbox(handle):
            options["inbox"] = sub.name
        actors[sub.actor] = dramatiq.actor(deliver, actor_name=sub.actor,
                                           queue_name=sub.queue, broker=app.broker, **options)
    return actors
