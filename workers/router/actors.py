"""The router's dramatiq actors: decode the envelope, call a handler, nothing else.

Retries, failure classes, correlation ids and the exception store are the
middleware's job (``bus.brokers.setup``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dramatiq

from bus.envelope import from_dict
from coexistence.router import CLOUD, LEGACY
from workers.router import handlers, queues
from workers.router.state import get_route

if TYPE_CHECKING:
    from workers.bootstrap import App


def register_actors(
    app: App, channel_handlers: dict[str, Callable[[Any], None]] | None = None
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

    def route_command(envelope: dict) -> None:
        handlers.route_command(from_dict(envelope), app.erps, app.flags, app.send, pinned_sor)

    def report(envelope: dict) -> None:
        handlers.report(from_dict(envelope))

    actors = {}
    for system in (LEGACY, CLOUD):
        actors[queues.WRITE_ACTOR[system]] = dramatiq.actor(
            writer(system), actor_name=queues.WRITE_ACTOR[system],
            queue_name=queues.WRITE_QUEUE[system], broker=app.broker)
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
            _handle(from_dict(envelope))

        actors[sub.actor] = dramatiq.actor(deliver, actor_name=sub.actor,
                                           queue_name=sub.queue, broker=app.broker)
    return actors
