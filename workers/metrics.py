"""Prometheus metrics of the business: what the router captured, routed and wrote.

The bus counts its own plumbing (``coexist_outbox_*``, ``coexist_bus_*``); this
module counts what a migration team watches:

* per captured batch (``captured``, called once per committed batch by the
  capture loop): changes read, routed from the SoR, echoes suppressed, stray
  writes, messages queued, and how old the batch's newest change was;
* per write into an ERP (``counts_writes`` wraps the writer handler): target,
  kind (upsert, delete, repair) and result (applied, stale);
The gauges read from the state database at scrape time, and the endpoint that serves
both, are in ``workers.metrics_server`` (which reads the router's and the observers'
state; this module stays a leaf that the router imports).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge

from coexistence.ports import Applied, Change, Stale

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
