"""One timeline of what happened to one business object, across every system.

``build_trace(state, target, ...)`` joins, for a correlation id or a
``domain:key``:

* the outbox rows (every message the router and the channels queued: shadow
  writes, repairs, stray-write reports, channel events, commands), each with
  the flag version it was routed under and the flag change (audit row) that
  version was;
* the exception store's records (business exceptions, exhausted retries, dead
  letters) and inbox rows (a consumer applied the message);
* the flag audit of the domain (who moved it, when, why, from what to what);
* reconciliation findings about the key (when the tables exist);
* the legacy ERP's change log (``CHGLOG``) and the cloud ERP's change feed,
  filtered to the key, so a person's own edit sits next to what it caused.

For a correlation id the timeline holds every message and exception carrying
it, the flag changes their versions name, and the captured change that
started it (a change's correlation id is derived from its system and cursor,
``workers.router.capture.correlation_of``), found by scanning the key's
change-log rows.  Every source is bounded (``since``, ``limit``); the cloud
feed has no key filter, so a window of cursors around the router's checkpoint
is scanned and named in the source notes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, column, select, table

from bus.exception_store import ExceptionRecord
from bus.inbox import InboxRecord
from bus.outbox import OutboxRecord
from coexistence.canonical import DOMAINS
from coexistence.errors import TranslationError
from coexistence.ports import COEXIST_WRITER
from coexistence.router import CLOUD, LEGACY, split_version
from workers.flags.audit import FlagAudit
from workers.observe.sources import (
    OK,
    UNAVAILABLE,
    SourceNote,
    has_table,
    one_line,
    utc,
)
from workers.router import queues
from workers.router.capture import message_id as derived_id
from workers.router.state import RecordRoute
from workers.xref_sql import XrefRow

#: Rows read per source unless ``--limit`` says otherwise.
DEFAULT_LIMIT = 200
#: Cloud change-feed entries scanned on each side of the router's checkpoint.
DEFAULT_CLOUD_SCAN = 20_000
#: Page size of the cloud change-feed scan.
CLOUD_PAGE = 1000

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

_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_CHANNEL_WRITERS = set(queues.COMMAND_WRITERS.values())


class TraceInputError(ValueError):
    """The argument is neither a correlation id nor a valid ``domain:key``."""


@dataclass(frozen=True)
class Target:
    """What to trace: a correlation id, or a domain and canonical key."""

    correlation_id: str | None = None
    domain: str | None = None
    key: str | None = None

    def describe(self) -> str:
        if self.correlation_id:
            return f"correlation {self.correlation_id}"
        return f"{self.domain}:{self.key}"


def parse_target(text: str) -> Target:
    """``domain:key`` (the key is canonical, ``customer:10042``, ``inventory:DAL1:WID-1``)
    or a correlation id.  A word before the first ``:`` names a domain; an unknown one is
    an error rather than a silently empty trace."""
    text = (text or "").strip()
    if not text:
        raise TraceInputError("give a correlation id or domain:key (e.g. customer:10042)")
    head, sep, key = text.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_]+", head):
        domain = head.lower()
        if domain not in DOMAINS:
            raise TraceInputError(f"unknown domain {head!r} in {text!r}; known: "
                                  f"{', '.join(DOMAINS)}")
        if not key.strip():
            raise TraceInputError(f"{text!r}: the key after '{head}:' is empty")
        key = key.strip()
        try:
            _legacy_key(domain, key)
        except TranslationError as exc:
            raise TraceInputError(f"{text!r} is not a valid {domain} key: {exc}") from None
        return Target(domain=domain, key=key)
    if not _ID.match(text):
        raise TraceInputError(f"{text[:60]!r} is not a correlation id (1-128 printable "
                              "characters, no spaces) nor domain:key")
    return Target(correlation_id=text)


def _legacy_key(domain: str, key: str) -> str:
    from workers.legacy_erp.schema import translator

    return translator(domain).legacy_key(key)


@dataclass
class TraceEvent:
    """One line of the timeline."""

    at: datetime
    #: Where it happened: legacy, cloud, cutover, exception store, reconcile, or a queue's target.
    system: str
    what: str
    #: Person, writer or component that did it.
    who: str = ""
    flag_version: int | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    #: outbox, exception, inbox, flag_audit, reconcile, chglog, cloud_feed.
    source: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    #: The audit row of ``flag_version`` (filled in by ``build_trace``).
    flag: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "system": self.system, "what": self.what,
                "who": self.who, "flag_version": self.flag_version, "flag": self.flag,
                "message_id": self.message_id, "correlation_id": self.correlation_id,
                "source": self.source, "detail": self.detail}


@dataclass
class Trace:
    target: Target
    domain: str | None
    key: str | None
    events: list[TraceEvent] = field(default_factory=list)
    route: dict[str, Any] | None = None
    xref: dict[str, Any] | None = None
    sources: list[SourceNote] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.describe(), "correlation_id": self.target.correlation_id,
                "domain": self.domain, "key": self.key, "route": self.route, "xref": self.xref,
                "events": [e.to_dict() for e in self.events],
                "sources": [s.to_dict() for s in self.sources]}


# Order of events at the same instant: a cause before its effects.
_SOURCE_RANK = {"flag_audit": 0, "chglog": 1, "cloud_feed": 1, "outbox": 2, "inbox": 3,
                "exception": 4, "reconcile": 5}


def build_trace(
    state: Engine,
    target: Target,
    *,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    legacy: Engine | None = None,
    legacy_note: SourceNote | None = None,
    cloud: Any = None,
    cloud_note: SourceNote | None = None,
    cloud_scan: int = DEFAULT_CLOUD_SCAN,
) -> Trace:
    """The timeline of ``target``, oldest first.  ``legacy`` (an engine on the legacy
    database) and ``cloud`` (a ``ChangeFeed``) are optional; their notes say why not."""
    if limit <= 0:
        raise TraceInputError(f"--limit must be at least 1, got {limit}")
    trace = Trace(target, target.domain, target.key)
    events: list[TraceEvent] = []
    messages = _outbox(state, target, since, limit)
    events += messages
    trace.sources.append(SourceNote("outbox", OK, f"{len(messages)} message(s)"))
    failures = _exceptions(state, target, since, limit)
    events += failures
    trace.sources.append(SourceNote("exception store", OK, f"{len(failures)} record(s)"))
    if trace.domain is None:
        # A correlation id names its object through the messages that carry it.
        for e in messages + failures:
            if e.detail.get("domain") and e.detail.get("key"):
                trace.domain, trace.key = e.detail["domain"], e.detail["key"]
                break
    ids = [e.message_id for e in messages + failures if e.message_id]
    events += _inbox(state, ids)
    if trace.domain is not None and trace.key is not None:
        trace.route = _route(state, trace.domain, trace.key)
        trace.xref = _xref(state, trace.domain, trace.key)
        if target.correlation_id is None:
            events += _findings(state, trace, since, limit)
        wanted = target.correlation_id
        events += _chglog(legacy, legacy_note, trace, since, limit, wanted)
        events += _cloud_feed(state, cloud, cloud_note, trace, since, limit, cloud_scan, wanted)
    else:
        for name in ("legacy change log", "cloud change feed"):
            trace.sources.append(SourceNote(name, "skipped", "no domain and key to look up"))
    audit = _audit(state, trace.domain, target, since, limit,
                   {e.flag_version for e in events if e.flag_version is not None})
    flags = {e.flag_version: e for e in audit}
    events += audit if target.correlation_id is None else [
        e for e in audit if e.flag_version in {m.flag_version for m in events}]
    for e in events:
        if e.flag_version is not None and e.source != "flag_audit":
            e.flag = _flag_ref(e.flag_version, flags.get(e.flag_version))
    events.sort(key=lambda e: (e.at, _SOURCE_RANK.get(e.source, 9)))
    trace.events = events
    return trace


# ---------------------------------------------------------------------------- state DB


def _since(stmt, col, since):
    return stmt if since is None else stmt.where(col >= since)


def _outbox(state: Engine, target: Target, since, limit) -> list[TraceEvent]:
    stmt = select(_OUTBOX)
    if target.correlation_id:
        stmt = stmt.where(_OUTBOX.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(_OUTBOX.c.domain == target.domain,
                          _OUTBOX.c.partition_key == target.key)
    stmt = _since(stmt, _OUTBOX.c.created_at, since).order_by(_OUTBOX.c.id.desc()).limit(limit)
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
    for system, name in queues.WRITE_ACTOR.items():
        if actor == name:
            return system
    if actor == queues.REPORT_ACTOR:
        return "exception store"
    if actor == queues.COMMAND_ACTOR:
        return "router"
    if actor.startswith("channel_"):
        return f"channel {actor[len('channel_'):]}"
    return actor


def _exceptions(state: Engine, target: Target, since, limit) -> list[TraceEvent]:
    stmt = select(_EXC)
    if target.correlation_id:
        stmt = stmt.where(_EXC.c.correlation_id == target.correlation_id)
    else:
        stmt = stmt.where(_EXC.c.domain == target.domain, _EXC.c.key == target.key)
    stmt = _since(stmt, _EXC.c.last_failed_at, since).order_by(_EXC.c.id.desc()).limit(limit)
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
                                  f"record {r['id']} {r['status']}", "operator",
                                  env.get("flag_version"), r["message_id"], r["correlation_id"],
                                  "exception", {"record_id": r["id"], "status": r["status"]}))
    return out


def _inbox(state: Engine, ids: list[str]) -> list[TraceEvent]:
    if not ids:
        return []
    out = []
    with state.connect() as conn:
        for i in range(0, len(ids), 500):
            for r in conn.execute(select(_INBOX).where(_INBOX.c.message_id.in_(ids[i:i + 500]))):
                out.append(TraceEvent(utc(r.processed_at), r.consumer, "message applied",
                                      r.consumer, None, r.message_id, None, "inbox", {}))
    return out


def _route(state: Engine, domain: str, key: str) -> dict[str, Any] | None:
    with state.connect() as conn:
        r = conn.execute(select(_ROUTE).where(_ROUTE.c.domain == domain,
                                              _ROUTE.c.key == key)).mappings().first()
    if r is None:
        return None
    flag_version, source_version = split_version(int(r["last_version"]))
    return {"pinned_sor": r["pinned_sor"], "last_version": int(r["last_version"]),
            "last_flag_version": flag_version, "last_source_version": source_version,
            "updated_at": utc(r["updated_at"]).isoformat()}


def _xref(state: Engine, domain: str, key: str) -> dict[str, Any] | None:
    with state.connect() as conn:
        r = conn.execute(select(_XREF).where(_XREF.c.domain == domain,
                                             _XREF.c.canonical_key == key)).mappings().first()
    return None if r is None else {"legacy_key": r["legacy_key"], "cloud_id": r["cloud_id"]}


def _audit(state: Engine, domain: str | None, target: Target, since, limit,
           versions: set[int]) -> list[TraceEvent]:
    if domain is None:
        return []
    base = select(_AUDIT).where(_AUDIT.c.domain == domain)
    with state.connect() as conn:
        rows = []
        if target.correlation_id is None:
            rows += conn.execute(_since(base, _AUDIT.c.at, since)
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


def _flag_ref(version: int, audit: TraceEvent | None) -> dict[str, Any]:
    if version == 0:
        return {"version": 0, "change": "initial flag (legacy), never changed"}
    if audit is None:
        return {"version": version, "change": "no audit row found for this version"}
    d = audit.detail
    return {"version": version, "audit_id": d["audit_id"], "at": audit.at.isoformat(),
            "actor": audit.who, "reason": d["reason"], "action": d["action"],
            "change": f"{d['from_mode']} -> {d['to_mode']}", "forced": d["forced"]}


def _findings(state: Engine, trace: Trace, since, limit) -> list[TraceEvent]:
    if not (has_table(state, "reconcile_finding") and has_table(state, "reconcile_run")):
        trace.sources.append(SourceNote("reconciliation", UNAVAILABLE, "no reconcile tables"))
        return []
    stmt = (select(_FINDING.c.kind, _FINDING.c.field, _FINDING.c.data, _RUN.c.id,
                   _RUN.c.started_at, _RUN.c.finished_at, _RUN.c.status)
            .join(_RUN, _RUN.c.id == _FINDING.c.run_id)
            .where(_FINDING.c.domain == trace.domain, _FINDING.c.key == trace.key))
    stmt = _since(stmt, _RUN.c.started_at, since).order_by(_RUN.c.started_at.desc()).limit(limit)
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


# ---------------------------------------------------------------------------- ERP feeds


def _writer_kind(writer: str) -> str:
    if writer == COEXIST_WRITER:
        return "coexist's write (echo)"
    if writer in _CHANNEL_WRITERS:
        return "channel command written by coexist"
    return "person's change"


def _chglog(legacy: Engine | None, note: SourceNote | None, trace: Trace, since, limit,
            wanted: str | None) -> list[TraceEvent]:
    if legacy is None:
        trace.sources.append(note or SourceNote("legacy change log", UNAVAILABLE, "not opened"))
        return []
    from workers.legacy_erp.capture import CHGLOG
    from workers.legacy_erp.schema import captured_tables

    tables = [t.table for t in captured_tables() if t.domain == trace.domain]
    chgkey, ts = CHGLOG.c.CHGKEY, CHGLOG.c.CHGTS
    stmt = select(CHGLOG).where(CHGLOG.c.TABNAME.in_(tables),
                                chgkey == _legacy_key(trace.domain, trace.key))
    if since is not None:
        stmt = stmt.where(ts >= int(since.timestamp() * 1000))
    try:
        with legacy.connect() as conn:
            rows = conn.execute(stmt.order_by(CHGLOG.c.SEQ.desc()).limit(limit)).all()
    except Exception as exc:  # noqa: BLE001 - a source that fails is named, not fatal
        trace.sources.append(SourceNote("legacy change log", UNAVAILABLE, one_line(exc)))
        return []
    out = []
    ops = {"I": "insert", "U": "update", "D": "delete"}
    for seq, tabname, chgkey, op, ts_ms, user in rows:
        user = (user or "").strip()
        correlation = derived_id(LEGACY, seq, "change")
        if wanted is not None and correlation != wanted:
            continue
        what = f"{ops.get(op, op)} {tabname} (SEQ {seq}): {_writer_kind(user)}"
        out.append(TraceEvent(datetime.fromtimestamp(ts_ms / 1000, UTC), LEGACY, what, user,
                              None, None, correlation, "chglog",
                              {"seq": seq, "table": tabname, "chgkey": chgkey, "op": op}))
    found = f"{len(out)} row(s)" + (f" (newest {limit} read)" if len(rows) == limit else "")
    trace.sources.append(SourceNote("legacy change log", OK, found))
    return out


def _cloud_feed(state: Engine, cloud, note: SourceNote | None, trace: Trace, since, limit,
                scan: int, wanted: str | None) -> list[TraceEvent]:
    name = "cloud change feed"
    if cloud is None:
        trace.sources.append(note or SourceNote(name, UNAVAILABLE, "not opened"))
        return []
    from workers import checkpoints

    checkpoint = checkpoints.get(state, f"router.{CLOUD}")
    start = max(0, checkpoint - scan)
    after, read, out = start, 0, []
    try:
        while read < 2 * scan:
            page = cloud.read(after, min(CLOUD_PAGE, 2 * scan - read))
            if not page:
                break
            read += len(page)
            after = page[-1].cursor
            out += [c for c in page if c.domain == trace.domain and c.key == trace.key]
    except Exception as exc:  # noqa: BLE001
        trace.sources.append(SourceNote(name, UNAVAILABLE, one_line(exc)))
        return []
    events = []
    for c in out[-limit:]:
        at = utc(c.at)
        correlation = derived_id(CLOUD, c.cursor, "change")
        if (since is not None and at < since) or (wanted is not None and correlation != wanted):
            continue
        events.append(TraceEvent(at, CLOUD, f"{c.op} (cursor {c.cursor}, rev {c.version}): "
                                            f"{_writer_kind(c.writer)}", c.writer, None, None,
                                 correlation, "cloud_feed",
                                 {"cursor": c.cursor, "version": c.version, "op": c.op}))
    window = f"cursors {start + 1}..{after} scanned ({read} entries)"
    if start > 0:
        window += f"; entries up to {start} not scanned (raise --cloud-scan)"
    trace.sources.append(SourceNote(name, OK, f"{len(events)} entry(ies); {window}"))
    return events

