"""What ``coexist status`` shows on one screen, and whether anything needs attention.

``collect_status(app)`` reads, through the composition root's parts: which state
database it is, every domain's flag (mode, rollout, version), outbox backlog and
lag, open exceptions by failure class, the last reconciliation (judged against
``COEXIST_MAX_DRIFT_PCT``), the messages routed but not yet applied (the settle
ledger, by flag version), stuck outbox rows, the change capture position of both
ERPs (the router's checkpoint against the feed's last cursor), the broker's queues
(``workers.observe.broker``: ready / unacked / consumers), the channel subscriptions
and their queues, the portal's endpoints, webhook backlog and notices, Redis, and the
freeze windows.  ``StatusReport.attention`` lists
the reasons a person should look (open exceptions, backlog or lag over a threshold,
capture lag, drift above the limit, an unreadable configured source, an unreachable
broker or Redis, a queue holding messages with no consumer, messages routed under an
older flag version than the domain's current one still not applied); empty means all
is well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from bus import ledger, outbox
from bus.exception_store import ExceptionRecord
from coexistence.canonical import DOMAINS
from coexistence.router import CLOUD, LEGACY
from workers import checkpoints
from workers.config import redact_url
from workers.errors import first_line
from workers.flags.audit import FlagAuditLog
from workers.flags.facts import SETTLED_QUEUES
from workers.observe.broker import BrokerView, read_broker
from workers.observe.sources import (
    NOT_CONFIGURED,
    OK,
    UNAVAILABLE,
    SourceNote,
    cloud_source,
    has_table,
    legacy_source,
    one_line,
    utc,
)
from workers.router.capture import checkpoint_name

#: Cloud change-feed entries read past the checkpoint to measure capture lag; a lag at
#: least this large is shown as ">= N" (the feed has no "last cursor" query).
CLOUD_LAG_PROBE = 1000
#: Feed name of each ERP's capture loop (``CaptureLoop.feed_name``).
FEEDS = {LEGACY: checkpoint_name(LEGACY), CLOUD: checkpoint_name(CLOUD)}

_EXC = ExceptionRecord.__table__


@dataclass(frozen=True)
class Thresholds:
    """Above these, ``status`` says something needs attention (and exits 1)."""

    #: Unsent outbox rows, all domains together.
    max_backlog: int = 1000
    #: Age in seconds of the oldest unsent outbox row.
    max_outbox_lag_s: float = 60.0
    #: Changes in an ERP's feed the router has not captured yet.
    max_capture_lag: int = 1000


@dataclass
class StatusReport:
    state: str
    broker: BrokerView
    domains: list[dict[str, Any]]
    outbox: dict[str, Any]
    capture: list[dict[str, Any]]
    sources: list[SourceNote]
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    redis: dict[str, Any] | None = None
    freeze: list[dict[str, Any]] = field(default_factory=list)
    max_drift_pct: float = 0.0
    #: EDI trading partners (``workers.edi.handlers.partner_status``), when configured.
    edi: list[dict[str, Any]] = field(default_factory=list)
    #: The portal channel (``workers.portal.status``): endpoints, webhook backlog, notices.
    portal: dict[str, Any] | None = None
    #: The CRM channel (``workers.crm.status.crm_channel``) when ``crm`` is subscribed.
    crm: dict[str, Any] | None = None
    attention: list[str] = field(default_factory=list)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "state": self.state, "broker": self.broker.to_dict(),
                "redis": self.redis, "domains": self.domains, "outbox": self.outbox,
                "capture": self.capture, "subscriptions": self.subscriptions,
                "freeze_windows": self.freeze, "max_drift_pct": self.max_drift_pct,
                "edi": self.edi,
                "portal": self.portal,
                "crm": self.crm,
                "sources": [s.to_dict() for s in self.sources],
                "attention": self.attention, "ok": not self.attention}


def open_exceptions(state: Engine) -> dict[str, dict[str, int]]:
    """Open exception records per domain (``-`` for none) and failure class."""
    stmt = (select(_EXC.c.domain, _EXC.c.failure_class, func.count())
            .where(_EXC.c.status == "open").group_by(_EXC.c.domain, _EXC.c.failure_class))
    out: dict[str, dict[str, int]] = {}
    with state.connect() as conn:
        for domain, failure_class, n in conn.execute(stmt):
            out.setdefault(domain or "-", {})[failure_class] = int(n)
    return out


def last_reconciliations(state: Engine) -> dict[str, dict[str, Any]] | None:
    """Each domain's newest reconciliation run, or ``None`` when the table is absent."""
    if not has_table(state, "reconcile_run"):
        return None
    from workers.reconcile.store import RunStore

    store = RunStore(state)
    out = {}
    for domain in DOMAINS:
        run = store.last(domain)
        if run is not None:
            out[domain] = {"status": run["status"], "drift_pct": run["drift_pct"],
                           "max_drift_pct": run["max_drift_pct"],
                           "finished_at": (utc(run["finished_at"]).isoformat()
                                           if run["finished_at"] else None)}
    return out


def capture_lag(app, state: Engine) -> tuple[list[dict[str, Any]], list[SourceNote]]:
    """Per ERP: the router's checkpoint, the feed's last cursor and the changes between."""
    rows, notes = [], []
    engine, note = legacy_source(app)
    notes.append(note)
    checkpoint = checkpoints.get(state, FEEDS[LEGACY])
    row = {"system": LEGACY, "feed": FEEDS[LEGACY], "checkpoint": checkpoint,
           "last_cursor": None, "lag": None, "lag_at_least": False, "state": note.state}
    if engine is not None:
        try:
            from workers.legacy_erp.cdc import LegacyChangeFeed
            from workers.legacy_erp.schema import captured_tables, key_decoders

            last = LegacyChangeFeed(engine, captured_tables(), key_decoders()).last_cursor()
            row.update(last_cursor=last, lag=max(0, last - checkpoint))
        except Exception as exc:  # noqa: BLE001
            notes[-1] = SourceNote(note.name, UNAVAILABLE,
                                   one_line(exc, app.settings.legacy_url))
            row["state"] = UNAVAILABLE
    rows.append(row)

    cloud, note = cloud_source(app)
    checkpoint = checkpoints.get(state, FEEDS[CLOUD])
    row = {"system": CLOUD, "feed": FEEDS[CLOUD], "checkpoint": checkpoint,
           "last_cursor": None, "lag": None, "lag_at_least": False, "state": note.state}
    if cloud is not None:
        try:
            pending = cloud.read(checkpoint, CLOUD_LAG_PROBE)
            row.update(lag=len(pending), lag_at_least=len(pending) >= CLOUD_LAG_PROBE,
                       last_cursor=pending[-1].cursor if pending else checkpoint)
        except Exception as exc:  # noqa: BLE001
            note = SourceNote(note.name, UNAVAILABLE, one_line(exc, app.settings.cloud_url))
            row["state"] = UNAVAILABLE
        finally:
            cloud.close()
    notes.append(note)
    rows.append(row)
    return rows, notes


def redis_status(app) -> dict[str, Any] | None:
    """Whether the configured Redis answers (``None`` when none is configured)."""
    url = app.settings.redis_url
    if not url:
        return None
    try:
        app.flag_store.client.ping()
    except Exception as exc:  # noqa: BLE001 - a report, never a crash
        return {"url": redact_url(url), "reachable": False, "error": first_line(exc)}
    return {"url": redact_url(url), "reachable": True, "error": None}


def freeze_windows(app, now: datetime) -> list[dict[str, Any]]:
    out = []
    for w in app.settings.freeze_windows:
        when = "active" if w.active(now) else ("upcoming" if now < w.start else "past")
        out.append({"window": str(w), "start": w.start.isoformat(), "end": w.end.isoformat(),
                    "state": when})
    return out


def subscriptions(app, broker: BrokerView) -> list[dict[str, Any]]:
    """Each configured channel subscription with its queue's backlog and consumers."""
    out = []
    for sub in app.subscriptions:
        q = broker.queue(sub.queue)
        out.append({"name": sub.name, "domains": sorted(sub.domains),
                    "kinds": sorted(sub.kinds), "queue": sub.queue,
                    "backlog": None if q is None or not broker.reachable else q.held,
                    "consumers": None if q is None else q.consumers})
        if sub.name == "crm":
            from workers.crm.status import crm_channel

            out[-1]["crm"] = crm_channel(app.state, app.settings.crm is not None)
    return out


def edi_partners(app, now: datetime, notes: list[SourceNote]) -> list[dict[str, Any]]:
    """The EDI trading partners' acknowledgments and folders (none configured: ``[]``)."""
    edi = app.settings.edi
    if edi is None or not edi.partners:
        return []
    from workers.edi.handlers import partner_status

    try:
        return partner_status(app.state, edi, now=now)
    except Exception as exc:  # noqa: BLE001 - a source that fails is named, not fatal
        notes.append(SourceNote("EDI partners", UNAVAILABLE, str(exc).splitlines()[0][:200]))
        return []


def collect_status(app, thresholds: Thresholds = Thresholds()) -> StatusReport:
    state = app.state
    settings = app.settings
    flags = FlagAuditLog(state).latest()
    exceptions = open_exceptions(state)
    runs = last_reconciliations(state)
    from workers.router.waits import waiting as repairs_waiting

    waiting = repairs_waiting(state)
    domains = []
    for domain in DOMAINS:
        flag = flags[domain]
        run = (runs or {}).get(domain)
        domains.append({
            "domain": domain, "mode": flag.mode.value, "base_mode": flag.base_mode.value,
            "rollout": flag.rollout.describe(), "flag_version": flag.version,
            "backlog": outbox.backlog(state, domain),
            "lag_s": round(outbox.lag_seconds(state, domain), 3),
            "unsettled": ledger.unsettled(state, domain=domain,
                                          queues=SETTLED_QUEUES).to_dict(),
            "open_exceptions": exceptions.get(domain, {}),
            "last_reconciliation": run,
            "repairs_waiting": waiting.get(domain, {"count": 0, "oldest_s": None,
                                                    "recorded": 0}),
        })
    stuck = outbox.stuck(state)
    box = {"backlog": outbox.backlog(state), "lag_s": round(outbox.lag_seconds(state), 3),
           "stuck": [{"id": r.id, "message_id": r.message_id, "domain": r.domain,
                      "key": r.partition_key, "attempts": r.attempts,
                      "last_error": r.last_error} for r in stuck],
           "open_exceptions_without_domain": exceptions.get("-", {})}
    capture, notes = capture_lag(app, state)
    if runs is None:
        notes.append(SourceNote("reconciliation", UNAVAILABLE, "no reconcile_run table"))
    broker = read_broker(settings, app.queue_names())
    report = StatusReport(redact_url(settings.state_url), broker, domains, box, capture, notes,
                          subscriptions=subscriptions(app, broker), redis=redis_status(app),
                          max_drift_pct=settings.max_drift_pct)
    report.crm = next((s["crm"] for s in report.subscriptions if "crm" in s), None)
    report.freeze = freeze_windows(app, report.at)
    report.edi = edi_partners(app, report.at, notes)
    if has_table(state, "portal_endpoint"):
        from workers.portal.status import portal_status

        report.portal = portal_status(state, report.at)
    report.attention = _attention(report, thresholds)
    return report


def _attention(report: StatusReport, t: Thresholds) -> list[str]:
    from workers.observe.waits_text import waiting_attention

    reasons = []
    for d in report.domains:
        older = {v: n for v, n in d["unsettled"]["by_flag_version"].items()
                 if int(v) < d["flag_version"]}
        if older:
            versions = ", ".join(f"v{v}: {n}" for v, n in older.items())
            reasons.append(f"{d['domain']}: {sum(older.values())} message(s) routed under "
                           f"flag version(s) older than {d['flag_version']} not yet applied "
                           f"({versions})")
        said = waiting_attention(d["domain"], d.get("repairs_waiting"))
        if said:
            reasons.append(said)
        n = sum(d["open_exceptions"].values())
        if n:
            by_class = ", ".join(f"{k} {v}" for k, v in sorted(d["open_exceptions"].items()))
            reasons.append(f"{d['domain']}: {n} open exception(s) ({by_class})")
        run = d["last_reconciliation"]
        if run and run["drift_pct"] is not None and run["drift_pct"] > report.max_drift_pct:
            reasons.append(f"{d['domain']}: last reconciliation drift {run['drift_pct']:g}% "
                           f"above the limit {report.max_drift_pct:g}% (COEXIST_MAX_DRIFT_PCT)")
    loose = sum(report.outbox["open_exceptions_without_domain"].values())
    if loose:
        reasons.append(f"{loose} open exception(s) without a domain (undecodable messages)")
    if report.outbox["backlog"] > t.max_backlog:
        reasons.append(f"outbox backlog {report.outbox['backlog']} > {t.max_backlog}")
    if report.outbox["lag_s"] > t.max_outbox_lag_s:
        reasons.append(f"outbox lag {report.outbox['lag_s']:.1f}s > {t.max_outbox_lag_s:g}s")
    if report.outbox["stuck"]:
        reasons.append(f"{len(report.outbox['stuck'])} outbox row(s) keep failing to publish")
    for c in report.capture:
        if c["lag"] is not None and c["lag"] > t.max_capture_lag:
            reasons.append(f"{c['system']} capture lag {c['lag']} change(s) > "
                           f"{t.max_capture_lag}")
    for note in report.sources:
        if note.state not in (OK, NOT_CONFIGURED) and note.name != "reconciliation":
            reasons.append(f"{note.name} {note.state}: {note.detail}")
    for p in report.edi:
        reasons += [f"EDI partner {p['partner']}: {why}" for why in p["attention"]]
    for sub in report.subscriptions:
        crm = sub.get("crm")
        if crm and crm["paused"]:
            reasons.append(f"CRM channel paused until {crm['paused_until']} (API budget; "
                           f"nothing lost): {crm['pause_reason']}")
    reasons += report.broker.attention()
    if report.portal is not None:
        from workers.portal.status import attention as portal_attention

        reasons += portal_attention(report.portal, t.max_outbox_lag_s)
    if report.redis is not None and not report.redis["reachable"]:
        reasons.append(f"Redis (COEXIST_REDIS_URL={report.redis['url']}) unreachable: "
                       f"{report.redis['error']}")
    return reasons
