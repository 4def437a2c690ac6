"""Trace readers of coexist's state database: outbox, exception store, inbox, routing
state, xref, flag audit and reconciliation findings."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, column, select, table

from bus.exception_store import ExceptionRecord
from bus.inbox import InboxRecord
from bus.outbox import OutboxRecord
from coexistence.router import split_version
from workers.flags.audit import FlagAudit
from workers.observe.sources import OK, UNAVAILABLE, SourceNote, has_table, utc
from workers.observe.timeline import Target, Trace, TraceEvent
from workers.router import queues
from workers.router.state import RecordRoute
from workers.xref_sql import XrefRow

_OUTBOX = OutboxRecord.__table__
_EXC = ExceptionRecord.__table__
_INBOX = InboxRecord.__table__
_AUDIT = FlagAudit.__table__
_ROUTE = RecordRoute.__table__
_XREF = XrefRow.__table__
_RUN = table("reconcile_run", column("id"), column("started_at"), column("finished_at"),
             column("status"))
_FINDING = table("reconcile_finding", column("run_id"), column("domain"), column("kind"),
                 column("key"), column("field"), column("data"))


def _after(stmt, col, since):
    return stmt if since is None else stmt.where(col >= since)


def outbox(state: Engine, target: Target, since, limit) -> list[TraceEvent]:
    stmt = select(_OUTBOX)
    if target.correlation_id:
        stmt = stmt.where(_OUTBOX.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(_OUTBOX.c.domain == target.domain,
                          _OUTBOX.c.partition_key == target.key)
    stmt = _after(stmt, _OUTBOX.c.created_at, since).order_by(_OUTBOX.c.id.desc()).limit(limit)
    with state.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [_message_event(r) for r in rows]


def _message_event(r) -> TraceEvent:
    try:
        env = json.loads(r["payload"])
    except ValueError:
        env = {}
    payload = env.get("payload") or {}
    kind = env.get("kind", "?")
    actor = r["actor_name"]
    source_system = env.get("source_system", "?")
    target = _actor_target(actor)
    if kind == queues.KIND_STRAY:
        fields = ", ".join(payload.get("fields") or []) or "no field differs"
        what = (f"stray write by {payload.get('writer')} in {payload.get('system')} "
                f"(SoR {payload.get('sor')}): {fields}; "
                + ("repair queued" if payload.get("repaired") else "reported only"))
        who = str(payload.get("writer") or source_system)
    elif kind == queues.KIND_REPAIR:
        what = f"repair of {target} from the SoR ({source_system})"
        who = "coexist"
    elif kind == queues.KIND_OWNERSHIP:
        what = (f"ownership violation: {payload.get('source')} may not change "
                f"{payload.get('field')} (owner {payload.get('owner')})")
        who = str(payload.get("source") or source_system)
    elif kind == queues.KIND_COMMAND:
        what = f"command from {payload.get('channel', source_system)} to the SoR"
        who = str(payload.get("channel") or source_system)
    elif actor in queues.WRITE_ACTOR.values():
        mode = f", mode {payload['mode']}" if payload.get("mode") else ""
        what = f"{kind} of {target} from {source_system} v{env.get('source_version')}{mode}"
        who = f"{source_system} ({payload.get('origin', 'erp')})"
    else:
        what = f"{kind} to {target}"
        who = source_system
    sent = utc(r["sent_at"])
    if sent is None:
        what += f" [unsent, {r['attempts']} attempt(s)]"
    detail = {"domain": env.get("domain", r["domain"]), "key": env.get("key",
                                                                        r["partition_key"]),
              "kind": kind, "actor": actor, "queue": r["queue_name"],
              "source_system": source_system, "source_version": env.get("source_version"),
              "causation_id": env.get("causation_id"), "occurred_at": env.get("occurred_at"),
              "sent_at": sent.isoformat() if sent else None, "attempts": r["attempts"],
              "last_error": r["last_error"]}
    for name in ("fields", "writer", "system", "sor", "policy", "repaired", "origin", "mode",
                 "channel", "field", "stray_cursor"):
        if name in payload:
            detail[name] = payload[name]
    return TraceEvent(utc(r["created_at"]), target, what, who, env.get("flag_version"),
                      r["message_id"], r["correlation_id"], "outbox", detail)


def _actor_target(actor: str) -> str:
    """Where a message goes: an ERP, the report queue, the command router or a channel."""
    for system, name in queues.WRITE_ACTOR.items():
        if actor == name:
            return system
    if actor == queues.REPORT_ACTOR:
        return "report"
    if actor == queues.COMMAND_ACTOR:
        return "router"
    if actor.startswith("channel_"):
        return f"channel {actor[len('channel_'):]}"
    return actor


def exceptions(state: Engine, target: Target, since, limit) -> list[TraceEvent]:
    stmt = select(_EXC)
    if target.correlation_id:
        stmt = stmt.where(_EXC.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(_EXC.c.domain == target.domain, _EXC.c.key == target.key)
    stmt = _after(stmt, _EXC.c.last_failed_at, since).order_by(_EXC.c.id.desc()).limit(limit)
    with state.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    out = []
    for r in rows:
        env = json.loads(r["envelope"]) if r["envelope"] else {}
        detail = {"domain": r["domain"], "key": r["key"], "record_id": r["id"],
                  "failure_class": r["failure_class"], "error_type": r["error_type"],
                  "error_message": r["error_message"], "call_site": r["call_site"],
                  "group": r["group_key"], "attempts": r["attempts"], "status": r["status"],
                  "replay_count": r["replay_count"]}
        what = f"{r['failure_class']} {r['error_type']} [{r['status']}]: {r['error_message']}"
        out.append(TraceEvent(utc(r["first_failed_at"]), "exception store", what,
                              r["actor_name"], env.get("flag_version"), r["message_id"],
                              r["correlation_id"], "exception", detail))
        if r["status"] != "open" and r["status_changed_at"] is not None:
            out.append(TraceEvent(utc(r["status_changed_at"]), "exception store",
                                  f"exception record {r['id']} {r['status']}", "",
                                  env.get("flag_version"), r["message_id"], r["correlation_id"],
                                  "exception", {"record_id": r["id"], "status": r["status"]}))
    return out


def inbox(state: Engine, ids: list[str]) -> list[TraceEvent]:
    if not ids:
        return []
    out = []
    with state.connect() as conn:
        for i in range(0, len(ids), 500):
            for r in conn.execute(select(_INBOX).where(_INBOX.c.message_id.in_(ids[i:i + 500]))):
                out.append(TraceEvent(utc(r.processed_at), r.consumer, "message applied",
                                      r.consumer, None, r.message_id, None, "inbox", {}))
    return out


def route(state: Engine, domain: str, key: str) -> dict[str, Any] | None:
    with state.connect() as conn:
        r = conn.execute(select(_ROUTE).where(_ROUTE.c.domain == domain,
                                              _ROUTE.c.key == key)).mappings().first()
    if r is None:
        return None
    flag_version, source_version = split_version(int(r["last_version"]))
    return {"pinned_sor": r["pinned_sor"], "last_version": int(r["last_version"]),
            "last_flag_version": flag_version, "last_source_version": source_version,
            "updated_at": utc(r["updated_at"]).isoformat()}


def xref(state: Engine, domain: str, key: str) -> dict[str, Any] | None:
    with state.connect() as conn:
        r = conn.execute(select(_XREF).where(_XREF.c.domain == domain,
                                             _XREF.c.canonical_key == key)).mappings().first()
    return None if r is None else {"legacy_key": r["legacy_key"], "cloud_id": r["cloud_id"]}


def audit(state: Engine, domain: str | None, target: Target, since, limit,
           versions: set[int]) -> list[TraceEvent]:
    if domain is None:
        return []
    base = select(_AUDIT).where(_AUDIT.c.domain == domain)
    with state.connect() as conn:
        rows = []
        if target.correlation_id is None:
            rows += conn.execute(_after(base, _AUDIT.c.at, since)
                                 .order_by(_AUDIT.c.version.desc()).limit(limit)).mappings().all()
        seen = {r["version"] for r in rows}
        missing = [v for v in versions if v not in seen and v > 0]
        if missing:  # versions named by messages, even outside the window
            rows += conn.execute(base.where(_AUDIT.c.version.in_(missing))).mappings().all()
    out = []
    for r in rows:
        forced = " FORCED" if r["forced"] else ""
        what = (f"flag {r['action']} {r['from_mode']} -> {r['to_mode']} "
                f"(v{r['version']}){forced}: {r['reason']}")
        detail = {"audit_id": r["id"], "action": r["action"], "from_mode": r["from_mode"],
                  "to_mode": r["to_mode"], "reason": r["reason"], "forced": bool(r["forced"]),
                  "overridden": json.loads(r["overridden"] or "[]"),
                  "to_state": json.loads(r["to_state"])}
        out.append(TraceEvent(utc(r["at"]), "cutover", what, r["actor"], r["version"], None,
                              None, "flag_audit", detail))
    return out


def findings(state: Engine, trace: Trace, since, limit) -> list[TraceEvent]:
    if not (has_table(state, "reconcile_finding") and has_table(state, "reconcile_run")):
        trace.sources.append(SourceNote("reconciliation", UNAVAILABLE, "no reconcile tables"))
        return []
    stmt = (select(_FINDING.c.kind, _FINDING.c.field, _FINDING.c.data, _RUN.c.id,
                   _RUN.c.started_at, _RUN.c.finished_at, _RUN.c.status)
            .join(_RUN, _RUN.c.id == _FINDING.c.run_id)
            .where(_FINDING.c.domain == trace.domain, _FINDING.c.key == trace.key))
    stmt = _after(stmt, _RUN.c.started_at, since).order_by(_RUN.c.started_at.desc()).limit(limit)
    with state.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    out = []
    for r in rows:
        data = r["data"] if isinstance(r["data"], dict) else json.loads(r["data"] or "{}")
        what = f"reconciliation finding: {r['kind']}" + (f" {r['field']}" if r["field"] else "")
        out.append(TraceEvent(utc(r["finished_at"] or r["started_at"]), "reconcile", what,
                              f"run {str(r['id'])[:8]}", None, None, None, "reconcile",
                              {"run_id": r["id"], "run_status": r["status"], **data}))
    trace.sources.append(SourceNote("reconciliation", OK, f"{len(out)} finding(s)"))
    return out

