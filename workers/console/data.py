"""What the cutover console shows, as JSON-able dicts: one source for the page and the CLI.

Each function takes the composition root's ``App`` and reads through the same parts and the
same functions the CLI commands use, so ``/api/status`` is ``coexist status --format json``,
``/api/exceptions/groups`` is ``coexist dlq list --group --format json``, ``/api/trace`` is
``coexist trace --format json`` and a board entry's guards are ``coexist cutover plan DOMAIN
NEXT --format json``'s checks (``tests/integration/test_console.py`` compares them).

Nothing here writes: the console is read-only (flag changes stay in the audited CLI).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from bus.exception_store import ExceptionRecord
from coexistence.canonical import DOMAINS
from coexistence.flags import MODES, Mode
from coexistence.preflight import TransitionPlan
from workers.observe.exceptions import group_dicts, record_detail, record_summary
from workers.observe.sources import has_table, utc

_EXC = ExceptionRecord.__table__

#: Error types counted as "stray writes" on the KPI strip.
STRAY_ERROR = "StrayWrite"


def status(app) -> dict[str, Any]:
    """``coexist status --format json``."""
    from workers.observe import collect_status

    return collect_status(app).to_dict()


def plan_dict(app, p: TransitionPlan, impact=None) -> dict[str, Any]:
    """A transition plan as ``coexist cutover plan --format json`` prints it."""
    return {
        "domain": p.current.domain, "from": p.current.to_dict(), "to": p.proposed.to_dict(),
        "direction": p.direction, "allowed": p.allowed(), "warnings": list(p.warnings),
        "records": None if impact is None else impact.records,
        "moving": None if impact is None else impact.moving,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail,
                    "overridable": c.overridable} for c in p.checks],
    }


def next_mode(mode: Mode) -> Mode | None:
    """The next forward step on the cutover path (``None`` at ``cloud_only``)."""
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None


def board(app, report: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each domain in dependency order: mode, rollout, flag version, SoR, the guards of the
    next forward move (each with its reason), last reconciliation, capture lag."""
    report = report if report is not None else status(app)
    capture = {c["system"]: c for c in report["capture"]}
    out = []
    for d in report["domains"]:
        flag = app.cutover.flags()[d["domain"]]
        nxt = next_mode(flag.base_mode)
        guards = None
        if nxt is not None:
            guards = plan_dict(app, app.cutover.plan(d["domain"], nxt))
        sor = flag.route_for("").sor.value if not flag.is_partial else "per record"
        out.append({
            "domain": d["domain"], "mode": d["mode"], "rollout": d["rollout"],
            "flag_version": d["flag_version"], "sor": sor,
            "next": None if nxt is None else nxt.value, "guards": guards,
            "backlog": d["backlog"], "open_exceptions": d["open_exceptions"],
            "last_reconciliation": d["last_reconciliation"],
            "capture_lag": {s: c.get("lag") for s, c in capture.items()},
        })
    return out


def exception_groups(app, status_filter: str | None = "open") -> list[dict[str, Any]]:
    """``coexist dlq list --group --format json`` (first and last failure included)."""
    return group_dicts(app.exceptions.groups(status=status_filter, domain=None))


def exceptions(app, group: str | None, status_filter: str | None = "open",
               limit: int = 100) -> list[dict[str, Any]]:
    """``coexist dlq list [--in-group G] --format json``."""
    return [record_summary(r) for r in
            app.exceptions.list(status=status_filter, domain=None, group=group, limit=limit)]


def exception_detail(app, record_id: int) -> dict[str, Any] | None:
    """``coexist dlq show ID --format json``, plus the commands an operator would run."""
    record = app.exceptions.get(record_id)
    if record is None:
        return None
    out = record_detail(record, app.exceptions.actions(record_id))
    out["commands"] = [
        f"coexist dlq replay {record_id} --reason '...'",
        f"coexist dlq archive {record_id} --reason '...'",
        f"coexist trace {record.correlation_id}" if record.correlation_id else
        f"coexist trace {record.domain}:{record.key}",
    ]
    return out


def trace_result(app, parsed, *, since: datetime | None = None, limit: int = 200,
                 cloud_scan: int = 20_000):
    """The timeline ``coexist trace`` prints, for a parsed target (``parse_target``)."""
    from workers.crm.trace import crm_source
    from workers.observe import build_trace
    from workers.observe.sources import cloud_source, legacy_source

    legacy, legacy_note = legacy_source(app)
    cloud, cloud_note = cloud_source(app)
    crm, crm_note = crm_source(app)
    try:
        return build_trace(app.state, parsed, since=since, limit=limit, legacy=legacy,
                           legacy_note=legacy_note, cloud=cloud, cloud_note=cloud_note,
                           cloud_scan=cloud_scan, crm=crm, crm_note=crm_note)
    finally:
        if cloud is not None:
            cloud.close()


def trace(app, target: str, *, since: datetime | None = None, limit: int = 200,
          cloud_scan: int = 20_000) -> dict[str, Any]:
    """``coexist trace TARGET --format json``; raises ``TraceInputError`` for bad input."""
    from workers.observe import parse_target

    return trace_result(app, parse_target(target), since=since, limit=limit,
                        cloud_scan=cloud_scan).to_dict()


def drift_history(state: Engine, limit_per_domain: int = 50) -> dict[str, list[dict]]:
    """Drift % per domain over the stored reconciliation runs (finished ones, oldest first)."""
    if not has_table(state, "reconcile_run"):
        return {}
    from workers.reconcile.store import ReconcileRun

    t = ReconcileRun.__table__
    out: dict[str, list[dict]] = {}
    with state.connect() as conn:
        for domain in DOMAINS:
            rows = conn.execute(
                select(t.c.id, t.c.finished_at, t.c.drift_pct, t.c.status)
                .where(t.c.domain == domain, t.c.finished_at.is_not(None),
                       t.c.drift_pct.is_not(None))
                .order_by(t.c.finished_at.desc()).limit(limit_per_domain)).all()
            if rows:
                out[domain] = [{"run": r.id, "at": utc(r.finished_at).isoformat(),
                                "drift_pct": float(r.drift_pct), "status": r.status}
                               for r in reversed(rows)]
    return out


def routed_per_minute(state: Engine, *, hours: float = 3.0,
                      now: Callable[[], datetime] = lambda: datetime.now(UTC)
                      ) -> list[dict[str, Any]]:
    """Messages the router committed to the outbox per minute over the last ``hours``."""
    from bus.outbox import OutboxRecord

    t = OutboxRecord.__table__
    since = now() - timedelta(hours=hours)
    counts: dict[str, int] = {}
    with state.connect() as conn:
        for (created,) in conn.execute(select(t.c.created_at).where(t.c.created_at >= since)):
            minute = utc(created).replace(second=0, microsecond=0).isoformat()
            counts[minute] = counts.get(minute, 0) + 1
    return [{"minute": m, "routed": n} for m, n in sorted(counts.items())]


def kpis(app, *, days: int = 7) -> dict[str, Any]:
    """The figures a migration is judged by, from coexist's own records."""
    state = app.state
    since = datetime.now(UTC) - timedelta(days=days)
    out: dict[str, Any] = {"since": since.isoformat(timespec="seconds")}
    with state.connect() as conn:
        strays = conn.execute(
            select(_EXC.c.domain, func.count()).where(_EXC.c.error_type == STRAY_ERROR)
            .group_by(_EXC.c.domain)).all()
        out["stray_writes_per_domain"] = {d or "-": int(n) for d, n in strays}
        per_day: dict[str, int] = {}
        for (first,) in conn.execute(select(_EXC.c.first_failed_at).where(
                _EXC.c.domain == "order", _EXC.c.first_failed_at >= since)):
            day = utc(first).date().isoformat()
            per_day[day] = per_day.get(day, 0) + 1
        out["order_exceptions_per_day"] = dict(sorted(per_day.items()))
        failed = conn.execute(
            select(_EXC.c.queue_name, func.count())
            .where(_EXC.c.status == "open", _EXC.c.queue_name.like("coexist.channel.%"))
            .group_by(_EXC.c.queue_name)).all()
        out["failed_syncs_per_channel"] = {
            q.removeprefix("coexist.channel."): int(n) for q, n in failed}
    out.update(_onboarding(state, days))
    return out


def _onboarding(state: Engine, days: int) -> dict[str, Any]:
    """Onboarding decisions by kind, and onboarding time (the same figure as ``coexist
    status``'s ``crm.onboarding_time`` over the same window)."""
    if not has_table(state, "crm_onboarding"):
        return {"duplicate_accounts_prevented": None, "onboarding": None,
                "onboarding_time": None}
    from workers.crm.state import DUPLICATE, LINK, CrmOnboarding
    from workers.crm.status import onboarding_time

    t = CrmOnboarding.__table__
    with state.connect() as conn:
        decisions = dict(conn.execute(
            select(t.c.decision, func.count()).group_by(t.c.decision)).all())
    return {
        "duplicate_accounts_prevented": int(decisions.get(LINK, 0))
        + int(decisions.get(DUPLICATE, 0)),
        "onboarding": {k: int(v) for k, v in decisions.items()},
        "onboarding_time": onboarding_time(state, days=days),
    }


def channels(app, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each channel's state: subscriptions with backlog, EDI partners' unacknowledged
    documents, portal endpoints failing or disabled."""
    report = report if report is not None else status(app)
    state = app.state
    out: dict[str, Any] = {"subscriptions": report.get("subscriptions", [])}
    out["crm"] = report.get("crm")
    if has_table(state, "edi_document"):
        from coexistence.edi.profiles import EdiSettings
        from workers.edi.handlers import acknowledgment_problems

        edi = app.settings.edi or EdiSettings()
        problems = acknowledgment_problems(state, edi, now=datetime.now(UTC))
        per_partner: dict[str, dict[str, int]] = {}
        for p in problems:
            per_partner.setdefault(p.document.partner, {}).setdefault(p.problem, 0)
            per_partner[p.document.partner][p.problem] += 1
        out["edi"] = {"partners": [pp.id for pp in edi.partners],
                      "problems": per_partner}
    if has_table(state, "portal_endpoint"):
        from workers.portal.delivery import notices

        out["portal"] = [{"endpoint": n.endpoint_id, "customer": n.customer_key,
                          "url": n.url, "state": n.state, "detail": n.detail,
                          "failed_deliveries": n.failed_deliveries}
                         for n in notices(state)]
    return out
