"""The Prometheus endpoint of ``coexist run|router|worker --metrics-port``.

Serves the business counters of ``workers.metrics`` and, at scrape time
(``StateCollector``, registered by ``serve``), gauges read from the state database:
outbox backlog per domain and lag, open exceptions by domain and failure class (dead
letters included), each domain's flag version, and the legacy capture lag (change-log
rows the router has not captured yet).  Read when Prometheus asks, so every process
reports the same truth, not its own share.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine

# Imported here, never inside collect(): the registry holds its (non-reentrant) lock while
# it calls a collector, and a module imported then that registers a metric of its own
# (bus.inbox does) would wait for that lock forever.
from bus import outbox
from coexistence.canonical import DOMAINS
from coexistence.ports import FeedHead
from workers import checkpoints
from workers.flags.audit import FlagAuditLog
from workers.observe.status import open_exceptions
from workers.router.capture import checkpoint_name

log = logging.getLogger(__name__)

#: Address the metrics endpoint listens on: loopback only; expose it further through
#: the host's own proxy or agent, never by accident.
METRICS_ADDR = "127.0.0.1"


class StateCollector:
    """Gauges read from the state database (and the legacy change log) at scrape time."""

    def __init__(self, engine: Engine, legacy_feed: Any = None,
                 domains: Iterable[str] | None = None) -> None:
        self.engine = engine
        self.legacy_feed = legacy_feed
        self.domains = tuple(domains or DOMAINS)

    def describe(self):
        """Nothing: the registry must not call ``collect`` (database reads) to register us."""
        return []

    def collect(self):
        for name, build in (("outbox", self._outbox), ("exceptions", self._exceptions),
                            ("flags", self._flags), ("capture", self._capture)):
            try:
                yield from build()
            except Exception as exc:  # noqa: BLE001 - one source down must not fail the scrape
                log.warning("metrics: could not read %s: %s", name, exc)

    def _outbox(self):
        backlog = GaugeMetricFamily("coexist_outbox_backlog",
                                    "Outbox rows not yet published", labels=["domain"])
        for domain in self.domains:
            backlog.add_metric([domain], outbox.backlog(self.engine, domain))
        lag = GaugeMetricFamily("coexist_outbox_lag_seconds",
                                "Age of the oldest unpublished outbox row")
        lag.add_metric([], outbox.lag_seconds(self.engine))
        return [backlog, lag]

    def _exceptions(self):
        family = GaugeMetricFamily(
            "coexist_open_exceptions",
            "Open records in the exception store (business, technical, dead letters, "
            "undecodable) by domain and failure class", labels=["domain", "failure_class"])
        for domain, by_class in sorted(open_exceptions(self.engine).items()):
            for failure_class, n in sorted(by_class.items()):
                family.add_metric([domain, failure_class], n)
        return [family]

    def _flags(self):
        family = GaugeMetricFamily("coexist_flag_version",
                                   "Current cutover flag version of each domain (from the audit)",
                                   labels=["domain", "mode"])
        for domain, state in sorted(FlagAuditLog(self.engine).latest().items()):
            family.add_metric([domain, state.mode.value], state.version)
        return [family]

    def _capture(self):
        if not isinstance(self.legacy_feed, FeedHead):
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
