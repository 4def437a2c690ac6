"""Running the portal's delivery side in a process: ``coexist portal deliver`` (its own
supervisord program) and a thread of ``coexist run`` (the embedded default).

``Delivery(app, ...)`` declares the ``portal_redeliver`` actor (``coexist dlq replay`` sends
replayed dead letters to it) on the app's broker, so it must be built before the process's
dramatiq worker starts; ``start(stop)`` runs the dispatcher in a thread until ``stop`` is
set; ``close()`` waits for the attempts in flight and closes its HTTP client.  Any number
of dispatchers may run on one state database: a claim is a lease (``workers.portal
.delivery``), so two never attempt one message at the same time, and a killed one's claims
run out and are taken by another.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import dramatiq

from bus.envelope import from_dict
from workers.portal.delivery import (
    DELIVERY_TIMEOUT_S,
    LEASE_MARGIN_S,
    POOL_THREADS,
    REDELIVER_ACTOR,
    REDELIVER_QUEUE,
    SLOT_BATCH,
    Dispatcher,
    redeliver,
)
from workers.portal.endpoints import EndpointRegistry

if TYPE_CHECKING:
    from workers.bootstrap import App


class Delivery:
    """The dispatcher and the redeliver actor of one process."""

    def __init__(self, app: App, *, threads: int = POOL_THREADS,
                 timeout_s: float = DELIVERY_TIMEOUT_S,
                 lease_margin_s: float = LEASE_MARGIN_S, poll_s: float = 0.2,
                 batch: int = SLOT_BATCH) -> None:
        self.app = app
        self.registry = EndpointRegistry(app.state)
        self.poll_s = poll_s
        registry = self.registry

        def portal_redeliver(envelope: dict) -> None:
            redeliver(from_dict(envelope).payload, app.state, registry)

        if REDELIVER_ACTOR not in app.actors:
            app.actors[REDELIVER_ACTOR] = dramatiq.actor(
                portal_redeliver, actor_name=REDELIVER_ACTOR, queue_name=REDELIVER_QUEUE,
                broker=app.broker)
        self.dispatcher = Dispatcher(app.state, registry, app.exceptions, threads=threads,
                                     timeout_s=timeout_s, lease_margin_s=lease_margin_s,
                                     batch=batch)
        self.thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> threading.Thread:
        self.thread = threading.Thread(target=self.dispatcher.run_forever, args=(stop,),
                                       kwargs={"poll_s": self.poll_s},
                                       name="portal-dispatcher", daemon=True)
        self.thread.start()
        return self.thread

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(self.dispatcher.timeout_s + 10)
        self.dispatcher.close()
