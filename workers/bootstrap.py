"""The composition root: the one place that names concrete adapters.

``App(settings)`` holds every part a process or a command needs and builds each one
from the ``Settings`` the first time it is asked for: coexist's state database, the
exception store, the broker (RabbitMQ when ``COEXIST_BROKER_URL`` is set, else the
embedded SQLite broker) with our middleware, the flag store (Redis in front of SQL, or
SQL) and the router's flag cache, the two ERPs (legacy SQL, cloud HTTP), the channel
subscriptions, the cutover guards.  Parts can be given instead (tests pass fakes:
``App(settings, erps={...})``).  Nothing is opened that a command does not use, so
``coexist --help`` and ``coexist sample`` touch no database.

Two ways to open things:

* a **command** (``status``, ``cutover``, ``dlq``, ``trace``, ``reconcile``...) never
  creates anything: a state database or legacy database that is not there is a
  ``SetupError`` naming the path and how to create it;
* a **process** (``start(app)`` / ``bootstrap(settings)``: ``coexist run|router|worker``,
  the demo, the tests' routers) needs the state database at the code's schema revision
  (``coexist run`` and the demo may create a new embedded one), creates the legacy
  reference ERP's schema on the embedded default's first start, opens Redis and both ERPs
  up front (so a wrong setting fails at start, in one line), and registers the router's
  actors; a broker that is down is waited for, not a failed start.

Every failure to open a part is a ``SetupError`` naming the setting and the target.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
from sqlalchemy import Engine

from bus.envelope import Envelope, register_payload_upcaster
from coexistence.canonical import MODELS
from coexistence.canonical.upcast import upcast
from coexistence.ports import Closeable, Erp
from coexistence.router import CLOUD, LEGACY
from workers.config import ConfigError, Settings, redact_url
from workers.errors import SetupError, opening
from workers.router import queues

log = logging.getLogger(__name__)

#: How to get a state database, for the error that says there is none.
CREATE_STATE_HINT = ("create it with `coexist db upgrade` (or `coexist run`, which creates a "
                     "new embedded one), or point COEXIST_HOME / COEXIST_STATE_URL at the "
                     "existing one")
#: How to get a legacy database, for the error that says there is none.
CREATE_LEGACY_HINT = ("create the reference ERP with `coexist legacy init` (or `seed`), or point "
                      "COEXIST_HOME / COEXIST_LEGACY_URL at the existing one")
#: Seconds a probe of the cloud ERP may take in ``status``, ``trace`` and ``doctor``.
CLOUD_PROBE_TIMEOUT_S = 5.0


def _payload_upcaster(domain: str, version: int, payload: dict) -> tuple[int, dict]:
    model = MODELS.get(domain)
    if model is None or "record" not in payload:
        return version, payload
    record = dict(payload["record"])
    record.setdefault("schema_version", version)
    record = upcast(domain, record, model.current_schema_version)
    return model.current_schema_version, {**payload, "record": record}



def subscriptions_from(settings: Settings) -> tuple[queues.Subscription, ...]:
    """The channel subscriptions declared in the configuration (``[subscriptions.NAME]``)."""
    return tuple(
        queues.Subscription(name, frozenset(sub.domains), frozenset(sub.kinds))
        for name, sub in sorted(settings.subscriptions.items())
    )


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for other databases and in-memory ones)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith(
            "file:"):
        return None
    return Path(parsed.database)


class App:
    """The parts of coexist for one process or command (see the module docstring)."""

    #: Parts that can be given to the constructor instead of built.
    PARTS = ("state", "exceptions", "broker", "flag_store", "flags", "legacy_engine", "legacy",
             "cloud", "erps", "subscriptions", "facts", "cutover", "edi", "crm")

    def __init__(self, settings: Settings | Callable[[], Settings], **parts: Any) -> None:
        unknown = set(parts) - set(self.PARTS)
        if unknown:
            raise TypeError(f"App has no part(s) {', '.join(sorted(unknown))}")
        self._settings = settings
        self._parts: dict[str, Any] = dict(parts)
        self._built: list[str] = []
        #: True for the long-running processes: they open the ERPs' schemas for writing.
        self.process = False
        #: The embedded default's first start (``coexist run``, the demo) may create a new
        #: SQLite state database; everything else needs one at the code's revision.
        self.create_state = False
        #: Overrides of the failure middleware's retry policy (``bus.retry``), for tests.
        self.retry_options: dict[str, Any] | None = None
        self.actors: dict[str, dramatiq.Actor] = {}
        self._publisher: Any = None
        self._lock = threading.RLock()

    def with_settings(self, **changes: Any) -> App:
        """A new app on these settings with ``changes`` (command-line overrides); the
        caller closes it."""
        from pydantic import ValidationError

        from workers.config import env_names_of, explain_validation

        data = {**self.settings.model_dump(), **changes}
        try:
            settings = Settings(**data)
        except ValidationError as exc:
            raise ConfigError(explain_validation(
                exc, env_names_of(Settings), dict.fromkeys(changes, "command line"))) from None
        return App(settings)

    # ------------------------------------------------------------------ parts

    @property
    def settings(self) -> Settings:
        if not isinstance(self._settings, Settings):
            self._settings = self._settings()
        return self._settings

    def _part(self, name: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._parts:
                self._parts[name] = build()
                self._built.append(name)
            return self._parts[name]

    def has(self, name: str) -> bool:
        """True when ``name`` is built (or was given)."""
        return name in self._parts

    @property
    def state(self) -> Engine:
        """coexist's state database (never created by a command; see ``process``)."""
        return self._part("state", self._open_state)

    @property
    def exceptions(self):
        from bus.exception_store import ExceptionStore

        return self._part("exceptions", lambda: ExceptionStore(self.state))

    @property
    def broker(self) -> dramatiq.Broker:
        return self._part("broker", self._open_broker)

    @property
    def flag_store(self):
        """Where flags live: Redis in front of the SQL audit, or the audit alone."""
        return self._part("flag_store", self._open_flag_store)

    @property
    def flags(self):
        """The router's flag cache, kept current by a watcher thread."""
        return self._part("flags", self._open_flag_cache)

    @property
    def legacy_engine(self) -> Engine:
        """The legacy ERP's database, with its tables (a command never creates them)."""
        return self._part("legacy_engine", lambda: self.open_legacy_engine(
            self.settings.legacy_url, create=self.process))

    @property
    def cloud(self) -> Erp:
        """The cloud ERP adapter the router writes with."""
        return self._part("cloud", lambda: self.cloud_client())

    @property
    def legacy(self) -> Erp:
        """The legacy ERP adapter (over ``legacy_engine``)."""
        if "erps" in self._parts:
            return self._parts["erps"][LEGACY]

        def build() -> Erp:
            from workers.legacy_erp.adapter import LegacyErp

            return LegacyErp(self.legacy_engine)

        return self._part("legacy", build)

    @property
    def erps(self) -> dict[str, Erp]:
        return self._part("erps", lambda: {LEGACY: self.legacy, CLOUD: self.cloud})

    @contextlib.contextmanager
    def reader(self, system: str) -> Iterator[Erp]:
        """An ERP to read from for a report: the app's own, else a short-lived cloud probe."""
        if "erps" in self._parts or system == LEGACY:
            yield self.erps[system] if "erps" in self._parts else self.legacy
            return
        cloud = self.cloud_probe()
        try:
            yield cloud
        finally:
            cloud.close()

    @property
    def crm(self):
        """The CRM adapter of the ``crm`` channel (``[crm]``; ``SetupError`` without it)."""
        return self._part("crm", self._open_crm)

    def _open_crm(self):
        from workers.crm.client import CrmClient

        section = self.settings.crm
        if section is None:
            raise SetupError("CRM", "[crm]", None, "no [crm] section in the configuration "
                             "(url, client_id; the secret in COEXIST_CRM_CLIENT_SECRET)")
        secret = self.settings.crm_client_secret
        with opening("CRM", "[crm] url", section.url):
            return CrmClient(section.url, client_id=section.client_id,
                             client_secret=secret.get_secret_value() if secret else "",
                             api_version=section.api_version, timeout_s=section.timeout_s,
                             slow_fraction=section.budget_slow_pct / 100,
                             pause_fraction=1 - section.budget_reserve_pct / 100)

    @property
    def subscriptions(self) -> tuple[queues.Subscription, ...]:
        return self._part("subscriptions", lambda: subscriptions_from(self.settings))

    @property
    def edi(self):
        """The EDI channel's handler dependencies (``workers.edi.consumer.edi_deps``)."""
        from workers.edi.consumer import edi_deps

        return self._part("edi", lambda: edi_deps(self))

    @property
    def facts(self):
        """What the cutover guards know (reconciliation, exceptions, backlog, in flight)."""
        from workers.flags import SqlPreflightFacts

        return self._part("facts", lambda: SqlPreflightFacts(self.state))

    @property
    def policy(self):
        from coexistence.preflight import GuardPolicy

        s = self.settings
        return GuardPolicy(max_drift_pct=s.max_drift_pct, max_backlog=s.cutover_max_backlog,
                           freeze_windows=s.freeze_windows,
                           max_reconcile_age_s=s.max_reconcile_age_s)

    @property
    def cutover(self):
        """Cutover operations (plan, set, rollback, drain) over this app's store and guards."""
        from workers.flags.ops import Cutover

        return self._part("cutover", lambda: Cutover(self.flag_store, self.facts, self.policy))

    # ------------------------------------------------------------------ opening

    def _open_state(self) -> Engine:
        from sqlalchemy.engine import make_url

        from workers.db import create_state_engine
        from workers.migrate import SchemaNotCurrent, prepare_state, require_current

        url = self.settings.state_url
        with opening("state database", "COEXIST_STATE_URL", url):
            backend = make_url(url).get_backend_name()
            if backend not in ("sqlite", "postgresql"):
                raise SetupError("state database", "COEXIST_STATE_URL", url,
                                 f"coexist keeps its state in SQLite or PostgreSQL, not "
                                 f"{backend}")
            path = sqlite_path(url)
            if path is not None and not path.is_file():
                if not (self.process and self.create_state):
                    raise SetupError("state database", "COEXIST_STATE_URL", url,
                                     f"no state database at {path}", CREATE_STATE_HINT)
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_state_engine(url)
            try:
                if self.process:
                    prepare_state(engine, create_if_new=self.create_state)
                else:
                    require_current(engine, where="it")
            except SchemaNotCurrent as exc:
                engine.dispose()
                raise SetupError("state database", "COEXIST_STATE_URL", url,
                                 str(exc)) from None
            except BaseException:
                engine.dispose()
                raise
        return engine

    def open_legacy_engine(self, url: str, *, create: bool = False,
                           setting: str = "COEXIST_LEGACY_URL") -> Engine:
        """An engine on a legacy ERP database: with ``create`` its schema is created when
        missing (the reference ERP), else a missing database or schema is a ``SetupError``."""
        from sqlalchemy import inspect
        from sqlalchemy.engine import make_url

        from workers.legacy_erp.capture import CHGLOG
        from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
        from workers.migrate import LEGACY as LEGACY_SCHEMA
        from workers.migrate import SchemaNotCurrent, require_current

        with opening("legacy ERP", setting, url):
            backend = make_url(url).get_backend_name()
            if backend not in ("sqlite", "postgresql"):
                raise SetupError("legacy ERP", setting, url,
                                 f"the legacy ERP runs on SQLite or PostgreSQL, not {backend}")
            path = sqlite_path(url)
            if path is not None and not path.is_file():
                if not create:
                    raise SetupError("legacy ERP", setting, url,
                                     f"no legacy database at {path}", CREATE_LEGACY_HINT)
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_legacy_engine(url)
            try:
                # Only a missing schema is created (the embedded default's first start); a
                # running legacy ERP is never touched by DDL here (`coexist db upgrade
                # --legacy` does that), and processes starting together do not race for
                # its write lock.
                if not inspect(engine).has_table(CHGLOG.name):
                    if not create:
                        raise SetupError("legacy ERP", setting, url,
                                         "the database has no legacy tables",
                                         CREATE_LEGACY_HINT)
                    create_legacy_schema(engine)
                elif create:
                    require_current(engine, LEGACY_SCHEMA, where="it")
            except SchemaNotCurrent as exc:
                engine.dispose()
                raise SetupError("legacy ERP", setting, url, str(exc)) from None
            except BaseException:
                engine.dispose()
                raise
        return engine

    def optional_legacy_engine(self) -> Engine | None:
        """The legacy database if it exists with its change log, else ``None``; never
        creates one (for the cutover's wait: a system coexist cannot see has no lag)."""
        try:
            return self.legacy_engine
        except SetupError:
            return None

    def cloud_client(self, **options: Any):
        """A new cloud ERP adapter as configured (``options`` tune timeouts and retries for
        a report); the caller closes it.  ``SetupError`` when no cloud ERP is configured."""
        from workers.cloud_erp import CloudErp

        s = self.settings
        if not s.cloud_url:
            raise SetupError("cloud ERP", "COEXIST_CLOUD_URL", None,
                             "not set (the URL of the cloud ERP API)")
        options.setdefault("attempts", s.cloud_retry_attempts)
        with opening("cloud ERP", "COEXIST_CLOUD_URL", s.cloud_url):
            return CloudErp.from_settings(s, **options)

    def cloud_probe(self):
        """A cloud ERP client with short timeouts and one retry, for reports."""
        return self.cloud_client(timeout_s=CLOUD_PROBE_TIMEOUT_S, attempts=2, max_backoff_s=0.5)

    @contextlib.contextmanager
    def feeds(self) -> Iterator[dict[str, Any]]:
        """The change feeds the router captures, for the cutover's lag wait; never creates
        anything.  The legacy feed only when its change log exists, the cloud feed only
        when a cloud ERP is configured: a system coexist cannot see has no lag to wait for."""
        from workers.legacy_erp.cdc import LegacyChangeFeed
        from workers.legacy_erp.schema import captured_tables, key_decoders

        feeds: dict[str, Any] = {}
        engine = self.optional_legacy_engine()
        if engine is not None:
            feeds[LEGACY] = LegacyChangeFeed(engine, captured_tables(), key_decoders())
        cloud = None
        if self.settings.cloud_url:
            cloud = feeds[CLOUD] = self.cloud_probe()
        try:
            yield feeds
        finally:
            if cloud is not None:
                cloud.close()

    def _open_broker(self) -> dramatiq.Broker:
        from bus.brokers import make_broker, setup
        from bus.ledger import SettleLedger

        s = self.settings
        setting = "COEXIST_BROKER_URL" if s.broker_url else "COEXIST_HOME"
        target = s.broker_url or str(s.bus_path)
        with opening("broker", setting, target):
            if not s.broker_url:
                s.ensure_home()
            options = {} if s.broker_url else {"lease_ms": int(s.bus_lease_s * 1000)}
            broker = make_broker(s.broker_url, sqlite_path=s.bus_path, queue_type=s.queue_type,
                                 **options)
            # As configured; a test's overrides win.
            retry_options = {**s.retry_options(), **(self.retry_options or {})}
            setup(broker, store=self.exceptions, retry_options=retry_options,
                  ledger=SettleLedger(self.state))
        dramatiq.set_broker(broker)
        return broker

    def _open_flag_store(self):
        from workers.flags import store_for

        s = self.settings
        with opening("Redis", "COEXIST_REDIS_URL", s.redis_url) if s.redis_url else \
                opening("state database", "COEXIST_STATE_URL", s.state_url):
            return store_for(s, self.state)

    def _open_flag_cache(self):
        from workers.flags import FlagCache

        s = self.settings
        store = self.flag_store
        with opening("Redis", "COEXIST_REDIS_URL", s.redis_url) if s.redis_url else \
                opening("state database", "COEXIST_STATE_URL", s.state_url):
            return FlagCache(store).start()

    def actor(self, explicit: str | None = None) -> str:
        """Who is making an operator change: ``--actor``, ``COEXIST_ACTOR`` or ``USER``."""
        who = self.settings.actor_for(explicit)
        if not who:
            raise ConfigError("who is making this change? pass --actor or set COEXIST_ACTOR")
        return who

    # ------------------------------------------------------------------ running

    def relay(self):
        from bus.outbox import OutboxRelay
        from bus.publish import make_publisher

        if self._publisher is None:
            self._publisher = make_publisher(self.broker)
        return OutboxRelay(self.state, self._publisher)

    def queue_names(self) -> list[str]:
        """Every queue this app's actors consume (writers, commands, reports, channels)."""
        names = [*queues.WRITE_QUEUE.values(), queues.COMMAND_QUEUE, queues.REPORT_QUEUE]
        return names + [s.queue for s in self.subscriptions]

    def consumed_queues(self) -> set[str] | None:
        """The queues this process's actors consume: a channel queue whose handler runs in
        another process is left to that consumer (its messages wait there, durable, instead
        of being dead-lettered here as "no such actor").  ``None`` without actors."""
        return {actor.queue_name for actor in self.actors.values()} or None

    def capture_loops(self):
        from workers.router.capture import CaptureLoop

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
        """Close what this app built (parts given to it belong to the caller)."""
        built = set(self._built)
        if "flags" in built:
            self._parts["flags"].stop()
        for name in ("cloud", "erps", "crm"):
            if name not in built:
                continue
            part = self._parts[name]
            for erp in (part.values() if isinstance(part, dict) else [part]):
                if isinstance(erp, Closeable):
                    erp.close()
        if isinstance(self._publisher, Closeable):
            self._publisher.close()
            self._publisher = None
        if "broker" in built:
            self._parts["broker"].close()
        for name in ("legacy_engine", "state"):
            if name in built:
                self._parts[name].dispose()
        for name in built:
            self._parts.pop(name, None)
        self._built.clear()


#: The channel handler of each subscription name this code base can run itself
#: (``module:function(app) -> handler``: ``channel_handler(app)`` in
#: ``workers/<channel>/consumer.py``), built only for the subscriptions the configuration
#: declares; a subscription not named here is consumed by another process.
CHANNEL_HANDLERS: dict[str, str] = {
    "edi": "workers.edi.consumer:channel_handler",
    "portal": "workers.portal.consumer:channel_handler",
    "crm": "workers.crm.consumer:channel_handler",
}
#: The configuration section a channel's handler needs in this process; without it the
#: subscription's queue is left to a process that has it (the CRM's URL and credentials).
CHANNEL_SECTIONS: dict[str, str] = {"crm": "crm"}


def channel_handlers_for(app: App) -> dict[str, Any]:
    """The handlers of the configured subscriptions that ``CHANNEL_HANDLERS`` names (and whose
    ``CHANNEL_SECTIONS`` entry, if any, is configured in this process)."""
    import importlib

    out: dict[str, Any] = {}
    for sub in app.subscriptions:
        target = CHANNEL_HANDLERS.get(sub.name)
        section = CHANNEL_SECTIONS.get(sub.name)
        if target is None or (section and getattr(app.settings, section, None) is None):
            continue
        module, _, name = target.partition(":")
        out[sub.name] = getattr(importlib.import_module(module), name)(app)
    return out


def start(app: App, *, register: bool = True,
          channel_handlers: dict[str, Any] | None = None,
          retry_options: dict[str, Any] | None = None, create_state: bool = False) -> App:
    """Make ``app`` a routing process: the state database at the code's schema revision
    (``create_state``: the embedded default's first start may create a new SQLite one),
    broker with middleware (connected), flag cache, both ERPs, the router's actors.
    ``channel_handlers`` maps a subscription name to the function this process runs for
    its events (subscriptions without one are consumed elsewhere; their queues are
    declared so nothing fanned out is dropped); by default, the ``CHANNEL_HANDLERS`` of
    the configured subscriptions."""
    from coexistence.ownership import validate_ownership

    validate_ownership()
    register_payload_upcaster(_payload_upcaster)
    app.process = True
    app.create_state = create_state
    if retry_options is not None:
        app.retry_options = retry_options
    settings = app.settings
    app.state  # noqa: B018 - open (and create) first: everything else stands on it
    # The broker is not connected here: a RabbitMQ that is down at start is waited for
    # (the relay and the workers retry, logging each change of state once).
    app.broker  # noqa: B018
    app.flags  # noqa: B018
    app.erps  # noqa: B018
    log.info("coexist bootstrapped", extra={
        "broker": redact_url(settings.broker_url) if settings.broker_url else "embedded",
        "state": redact_url(settings.state_url), "legacy": redact_url(settings.legacy_url),
        "cloud": redact_url(settings.cloud_url),
        "subscriptions": [s.name for s in app.subscriptions],
    })
    if register:
        from workers.router.actors import register_actors

        if channel_handlers is None:
            channel_handlers = channel_handlers_for(app)
        app.actors = register_actors(app, channel_handlers)
    return app


def bootstrap(
    settings: Settings,
    *,
    subscriptions: Iterable[queues.Subscription] | None = None,
    erps: dict[str, Erp] | None = None,
    register: bool = True,
    channel_handlers: dict[str, Any] | None = None,
    retry_options: dict[str, Any] | None = None,
    create_state: bool = False,
) -> App:
    """A started routing process's app from ``settings`` (``start``).  ``erps`` and
    ``subscriptions`` replace the configured ones (tests pass fakes)."""
    parts: dict[str, Any] = {}
    if erps is not None:
        parts["erps"] = erps
    if subscriptions is not None:
        parts["subscriptions"] = tuple(subscriptions)
    return start(App(settings, **parts), register=register, channel_handlers=channel_handlers,
                 retry_options=retry_options, create_state=create_state)


def start_dlq_drain(app: App, stop: threading.Event) -> threading.Thread:
    """Move dead letters (RabbitMQ ``.XQ`` queues, the embedded broker's dead-letter table)
    into the exception store continuously, so none waits in the broker or expires there."""
    from bus.dlq_drain import make_drain

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
        # Each capture in its own thread, at its own pace (``LeasedCaptures.run_due``): at
        # once after changes, soon while people are typing, ``poll_s`` when idle.
        captures.run_forever(stop, poll_s, relay.wake)
    finally:
        captures.close()
    relay_thread.join(10)
    drain_thread.join(10)
