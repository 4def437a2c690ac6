"""The composition root: the one place that names concrete adapters.

``bootstrap(settings)`` builds everything a process needs from the settings:
coexist's state database, the broker (RabbitMQ when ``COEXIST_BROKER_URL`` is
set, else the embedded SQLite broker) with our middleware, the two ERPs
(legacy SQL, cloud HTTP), the flag cache, the exception store, the outbox
relay, the capture loops and the router's actors.  CLI commands, the demo and
the tests all start from here, so what runs in the demo is what runs in
production.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from sqlalchemy import Engine

from bus.brokers import make_broker, setup
from bus.dlq_drain import make_drain
from bus.envelope import Envelope, register_payload_upcaster
from bus.exception_store import ExceptionStore
from bus.outbox import OutboxRelay
from bus.publish import make_publisher
from coexistence.canonical import MODELS
from coexistence.canonical.upcast import upcast
from coexistence.ownership import validate_ownership
from coexistence.ports import Erp
from coexistence.router import CLOUD, LEGACY
from workers.config import Settings, redact_url
from workers.flags import FlagCache, open_state, store_for
from workers.router import queues
from workers.router.capture import CaptureLoop

log = logging.getLogger(__name__)


def _payload_upcaster(domain: str, version: int, payload: dict) -> tuple[int, dict]:
    model = MODELS.get(domain)
    if model is None or "record" not in payload:
        return version, payload
    record = dict(payload["record"])
    record.setdefault("schema_version", version)
    record = upcast(domain, record, model.current_schema_version)
    return model.current_schema_version, {**payload, "record": record}


@dataclass
class App:
    settings: Settings
    state: Engine
    broker: dramatiq.Broker
    exceptions: ExceptionStore
    flags: FlagCache
    erps: dict[str, Erp]
    subscriptions: tuple[queues.Subscription, ...] = ()
    actors: dict[str, dramatiq.Actor] = field(default_factory=dict)
    _publisher: Any = None

    # ------------------------------------------------------------------ parts

    def relay(self) -> OutboxRelay:
        if self._publisher is None:
            self._publisher = make_publisher(self.broker)
        return OutboxRelay(self.state, self._publisher)

    def queue_names(self) -> list[str]:
        """Every queue this app's actors consume (writers, commands, reports, channels)."""
        names = [*queues.WRITE_QUEUE.values(), queues.COMMAND_QUEUE, queues.REPORT_QUEUE]
        return names + [s.queue for s in self.subscriptions]

    def capture_loops(self) -> list[CaptureLoop]:
        return [
            CaptureLoop(system, self.erps[system], self.erps, self.flags, self.state,
                        subscriptions=self.subscriptions)
            for system in (LEGACY, CLOUD)
        ]

    def send(self, actor: str, queue: str, env: Envelope) -> None:
        """Enqueue one envelope directly (used from inside handlers, never for state changes)."""
        self.broker.enqueue(dramatiq.Message(
            queue_name=queue, actor_name=actor, args=(env.model_dump(mode="json"),),
            kwargs={}, options={}, message_id=env.message_id,
        ))

    def close(self) -> None:
        self.flags.stop()
        for erp in self.erps.values():
            close = getattr(erp, "close", None)
            if close:
                close()
        if self._publisher is not None and hasattr(self._publisher, "close"):
            self._publisher.close()
        self.broker.close()
        self.state.dispose()


def open_legacy(settings: Settings) -> Erp:
    from sqlalchemy import inspect

    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.migrate import LEGACY, require_current

    engine = create_legacy_engine(settings.legacy_url)
    # Only a missing schema is created (the embedded default's first start); a running
    # legacy ERP is never touched by DDL here (`coexist db upgrade --legacy` does that),
    # and worker processes starting together do not race for its write lock.
    if not inspect(engine).has_table("CHGLOG"):
        create_legacy_schema(engine)
    else:
        require_current(engine, LEGACY)
    return LegacyErp(engine)


def open_cloud(settings: Settings) -> Erp:
    from workers.cloud_erp import CloudErp

    return CloudErp.from_settings(settings)


def open_feeds(settings: Settings) -> dict[str, Any]:
    """The change feeds the router captures, for lag checks; never creates anything.

    The legacy feed only when its change log exists, the cloud feed only when a cloud
    ERP is configured: a system coexist cannot see yet has no lag to wait for.
    """
    from sqlalchemy import inspect

    from workers.legacy_erp.capture import CHGLOG
    from workers.legacy_erp.cdc import LegacyChangeFeed
    from workers.legacy_erp.schema import captured_tables, create_legacy_engine, key_decoders

    feeds: dict[str, Any] = {}
    engine = create_legacy_engine(settings.legacy_url)
    if inspect(engine).has_table(CHGLOG.name):
        feeds[LEGACY] = LegacyChangeFeed(engine, captured_tables(), key_decoders())
    if settings.cloud_url:
        feeds[CLOUD] = open_cloud(settings)
    return feeds


def bootstrap(
    settings: Settings,
    *,
    subscriptions: Iterable[queues.Subscription] = (),
    erps: dict[str, Erp] | None = None,
    register: bool = True,
    channel_handlers: dict[str, Any] | None = None,
    retry_options: dict[str, Any] | None = None,
    create_state: bool = False,
) -> App:
    """Build a process's parts.  ``erps`` overrides the ERPs (tests pass fakes);
    ``channel_handlers`` maps a subscription name to the function this process
    runs for its events (subscriptions without one are consumed elsewhere);
    ``retry_options`` override the failure middleware's retry policy (``bus.retry``);
    ``create_state``: the embedded default's first start may create a new SQLite state
    database (else the state database must be at the code's revision)."""
    validate_ownership()
    register_payload_upcaster(_payload_upcaster)
    state = open_state(settings, create_if_new=create_state)
    exceptions = ExceptionStore(state)
    broker = make_broker(settings.broker_url, sqlite_path=settings.ensure_home() / "bus.db",
                         queue_type=settings.queue_type)
    setup(broker, store=exceptions, retry_options=retry_options)
    dramatiq.set_broker(broker)
    flags = FlagCache(store_for(settings, state)).start()
    if erps is None:
        erps = {LEGACY: open_legacy(settings), CLOUD: open_cloud(settings)}
    app = App(settings, state, broker, exceptions, flags, erps, tuple(subscriptions))
    log.info("coexist bootstrapped", extra={
        "broker": redact_url(settings.broker_url) if settings.broker_url else "embedded",
        "state": redact_url(settings.state_url), "legacy": redact_url(settings.legacy_url),
        "cloud": redact_url(settings.cloud_url),
    })
    if register:
        from workers.router.actors import register_actors

        app.actors = register_actors(app, channel_handlers)
    return app


def start_dlq_drain(app: App, stop: threading.Event) -> threading.Thread:
    """Move dead letters (RabbitMQ ``.XQ`` queues, the embedded broker's dead-letter table)
    into the exception store continuously, so none waits in the broker or expires there."""
    drain = make_drain(app.broker, app.exceptions, app.queue_names())
    thread = threading.Thread(target=drain.run_forever, args=(stop,), name="dlq-drain",
                              daemon=True)
    thread.start()
    return thread


def run_router(app: App, stop: threading.Event, *, poll_s: float = 0.2,
               lease_s: float | None = None) -> None:
    """Capture the feeds this process holds the lease of (``workers.router.lease``: any
    number of routers may run, one captures each ERP), relay the outbox and drain dead
    letters until ``stop`` is set; ``lease_s`` overrides the lease's TTL."""
    from workers.router.lease import LEASE_TTL_S, LeasedCaptures

    captures = LeasedCaptures(app.state, app.capture_loops(), ttl_s=lease_s or LEASE_TTL_S)
    relay = app.relay()
    relay_thread = threading.Thread(target=relay.run_forever, args=(stop,), name="outbox-relay",
                                    daemon=True)
    relay_thread.start()
    drain_thread = start_dlq_drain(app, stop)
    captures.start()
    try:
        while not stop.is_set():
            if captures.run_once():
                relay.wake()
            else:
                stop.wait(poll_s)
    finally:
        captures.close()
    relay_thread.join(10)
    drain_thread.join(10)
