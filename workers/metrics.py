"""Prometheus metrics of the business: what the router captured, routed and wrote.

The bus counts its own plumbing (``coexist_outbox_*``, ``coexist_bus_*``); this
module counts what a migration team watches:

* per captured batch (``captured``, called once per committed batch by the
  capture loop): changes read, routed from the SoR, echoes suppressed, stray
  writes, messages queued, and how old the batch's newest change was;
* per write into an ERP (``counts_writes`` wraps the writer handler): target,
  kind (upsert, delete, repair) and result (applied, stale);
* at scrape time (``StateCollector``, registered by ``serve``): outbox backlog
  per domain and lag, open exceptions by domain and failure class (dead letters
  included), each domain's flag version, and the legacy capture lag (change-log
  rows the router has not captured yet).  Read from the state database when
  Prometheus asks, so every process reports the same truth, not its own share.

``serve(port, app)`` exposes them on ``127.0.0.1:port`` (``coexist run``,
``router`` and ``worker`` with ``--metrics-port``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine

from coexistence.ports import Applied, Change, Stale

log = logging.getLogger(__name__)

#: Address the metrics endpoint listens on: loopback only; expose it further through
#: the host's own proxy or agent, never by accident.
METRICS_ADDR = "127.0.0.1"

CAPTURED = Counter("coexist_changes_captured_total",
                   "Changes read from an ERP's change feed and committed as handled", ["system"])
ROUTED = Counter("coexist_changes_routed_total",
                 "Changes from the system of record routed to shadows and channels", ["system"])
ECHOES = Counter("coexist_echoes_suppressed_total",
                 "Changes that were coexist's own writes coming back (not routed)", ["system"])
STRAYS = Counter("coexist_stray_writes_total",
                 "People's changes in an ERP that is not the record's system of record",
                 ["system"])
QUEUED = Counter("coexist_router_messages_total",
                 "Messages the capture loop queued: ERP writes (incl. repairs) and channel events",
                 ["system", "purpose"])
CAPTURE_DELAY = Gauge("coexist_capture_delay_seconds",
                      "Age of the newest change of the last batch when it was committed",
                      ["system"])
WRITES = Counter("coexist_erp_writes_total",
                 "Writes into an ERP by the router's writers, by target, kind and result "
                 "(applied, or stale: the target already held a newer version)",
                 ["target", "kind", "result"])


def captured(system: str, stats: Any, changes: Sequence[Change] = ()) -> None:
    """Count one committed capture batch (``workers.router.capture.CaptureStats``)."""
    CAPTURED.labels(system).inc(stats.read)
    ROUTED.labels(system).inc(stats.routed)
    ECHOES.labels(system).inc(stats.echoes)
    STRAYS.labels(system).inc(stats.strays)
    QUEUED.labels(system, "write").inc(stats.writes)
    QUEUED.labels(system, "event").inc(stats.events)
    if changes:  # in cursor order: the last one is the newest
        CAPTURE_DELAY.labels(system).set(max(0.0, time.time() - changes[-1].at.timestamp()))


def wrote(target: str, kind: str, result: Any) -> None:
    """Count one write into ``target``; ``result`` is ``Applied`` or ``Stale``."""
    if isinstance(result, Applied):
        WRITES.labels(target, kind, "applied").inc()
    elif isinstance(result, Stale):
        WRITES.labels(target, kind, "stale").inc()


def counts_writes(fn: Callable) -> Callable:
    """Decorate ``apply_write(env, target, send)``: count its result by target, kind, result."""

    @functools.wraps(fn)
    def wrapper(env, target, *args, **kwargs):
        result = fn(env, target, *args, **kwargs)
        wrote(getattr(target, "system", "?"), env.kind, result)
        return result

    return wrapper


class StateCollector:
    """Gauges read from the state database (and the legacy change log) at scrape time."""

    def __init__(self, engine: Engine, legacy_feed: Any = None,
                 domains: Iterable[str] | None = None) -> None:
        from coexistence.canonical import DOMAINS

        self.engine = engine
        self.legacy_feed = legacy_feed
        self.domains = tuple(domains or DOMAINS)

    def collect(self):
        for name, build in (("outbox", self._outbox), ("exceptions", self._exceptions),
                            ("flags", self._flags), ("capture", self._capture)):
            try:
                yield from build()
            except Exception as exc:  # noqa: BLE001 - one source down must not fail the scrape
                log.warning("metrics: could not read %s: %s", name, exc)

    def _outbox(self):
        from bus import outbox

        backlog = GaugeMetricFamily("coexist_outbox_backlog",
                                    "Outbox rows not yet published", labels=["domain"])
        for domain in self.domains:
            backlog.add_metric([domain], outbox.backlog(self.engine, domain))
        lag = GaugeMetricFamily("coexist_outbox_lag_seconds",
                                "Age of the oldest unpublished outbox row")
        lag.add_metric([], outbox.lag_seconds(self.engine))
        return [backlog, lag]

    def _exceptions(self):
        from workers.observe.status import open_exceptions

        family = GaugeMetricFamily(
            "coexist_open_exceptions",
            "Open records in the exception store (business, technical, dead letters, "
            "undecodable) by domain and failure class", labels=["domain", "failure_class"])
        for domain, by_class in sorted(open_exceptions(self.engine).items()):
            for failure_class, n in sorted(by_class.items()):
                family.add_metric([domain, failure_class], n)
        return [family]

    def _flags(self):
        from workers.flags.audit import FlagAuditLog

        family = GaugeMetricFamily("coexist_flag_version",
                                   "Current cutover flag version of each domain (from the audit)",
                                   labels=["domain", "mode"])
        for domain, state in sorted(FlagAuditLog(self.engine).latest().items()):
            family.add_metric([domain, state.mode.value], state.version)
        return [family]

    def _capture(self):
        from workers import checkpoints
        from workers.router.capture import checkpoint_name

        if self.legacy_feed is None or not hasattr(self.legacy_feed, "last_cursor"):
            return []
        family = GaugeMetricFamily("coexist_capture_lag_changes",
                                   "Change-log rows the router has not captured yet",
                                   labels=["system"])
        routed = checkpoints.get(self.engine, checkpoint_name("legacy"))
        behind = self.legacy_feed.last_cursor() - routed
        family.add_metric(["legacy"], max(0, behind))
        return [family]


_registered: StateCollector | None = None


def register_state_collector(collector: StateCollector | None) -> None:
    """Make ``collector`` the one scrape-time collector of this process (``None`` removes it)."""
    global _registered
    if _registered is not None:
        REGISTRY.unregister(_registered)
    _registered = collector
    if collector is not None:
        REGISTRY.register(collector)


def serve(port: int, app: Any = None):
    """Serve ``/metrics`` on ``127.0.0.1:port`` (0: any free port); returns the server.

    With ``app`` (``workers.bootstrap.App``) the state gauges are served too.  Raises
    ``OSError`` naming the address when the port cannot be bound.
    """
    if app is not None:
        legacy = app.erps.get("legacy")
        register_state_collector(StateCollector(app.state, getattr(legacy, "feed", None)))
    try:
        server, _thread = start_http_server(port, addr=METRICS_ADDR)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {METRICS_ADDR}:{port}: {exc.strerror}") from None
    log.info("metrics on http://%s:%s/metrics", METRICS_ADDR, server.server_port)
    return server
