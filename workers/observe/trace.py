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
  filtered to the key, so a person's own edit sits next to what it caused;
* the EDI documents of an order, shipment or invoice (850, its 997, 855, 856, 810)
  with their control numbers and acknowledgment state.
* portal orders placed through the API (``POST /v1/orders``: correlation id,
  Idempotency-Key, the answer), sampled inquiry calls (``GET``: who asked, which system
  answered), and the portal's webhooks with every delivery attempt
  (``workers.portal.trace``).

For a correlation id the timeline holds every message and exception carrying
it, the flag changes their versions name, and the captured change that
started it (a change's correlation id is derived from its system and cursor,
``workers.router.capture.correlation_of``), found by scanning the key's
change-log rows.  Every source is bounded (``since``, ``limit``); the cloud
feed has no key filter, so a window of cursors around the router's checkpoint
is scanned and named in the source notes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from coexistence.canonical import DOMAINS
from coexistence.errors import TranslationError
from workers.observe import trace_feeds, trace_state
from workers.observe.sources import OK, SourceNote
from workers.observe.timeline import Target, Trace, TraceEvent, TraceInputError, legacy_key
from workers.portal import trace as trace_portal

__all__ = ["DEFAULT_CLOUD_SCAN", "DEFAULT_LIMIT", "Target", "Trace", "TraceEvent",
           "TraceInputError", "build_trace", "parse_target"]

#: Rows read per source unless ``--limit`` says otherwise.
DEFAULT_LIMIT = 200
#: Cloud change-feed entries scanned on each side of the router's checkpoint.
DEFAULT_CLOUD_SCAN = 20_000

_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


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
            legacy_key(domain, key)
        except TranslationError as exc:
            raise TraceInputError(f"{text!r} is not a valid {domain} key: {exc}") from None
        return Target(domain=domain, key=key)
    if not _ID.match(text):
        raise TraceInputError(f"{text[:60]!r} is not a correlation id (1-128 printable "
                              "characters, no spaces) nor domain:key")
    return Target(correlation_id=text)


# Order of events at the same instant: a cause before its effects.
_SOURCE_RANK = {"flag_audit": 0, "api": 1, "api_inquiry": 1, "chglog": 1, "cloud_feed": 1, "edi": 1,
                "outbox": 2, "inbox": 3, "portal_delivery": 3, "portal_attempt": 4,
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
    crm: Any = None,
    crm_note: SourceNote | None = None,
) -> Trace:
    """The timeline of ``target``, oldest first.  ``legacy`` (an engine on the legacy
    database) and ``cloud`` (a ``ChangeFeed``) are optional; their notes say why not."""
    if limit <= 0:
        raise TraceInputError(f"--limit must be at least 1, got {limit}")
    trace = Trace(target, target.domain, target.key)
    events: list[TraceEvent] = []
    messages = trace_state.outbox(state, target, since, limit)
    events += messages
    trace.sources.append(SourceNote("outbox", OK, f"{len(messages)} message(s)"))
    failures = trace_state.exceptions(state, target, since, limit)
    events += failures
    trace.sources.append(SourceNote("exception store", OK, f"{len(failures)} record(s)"))
    portal = (trace_portal.api_orders(state, target, trace, since, limit)
              + trace_portal.inquiries(state, target, trace, since, limit)
              + trace_portal.deliveries(state, target, trace, since, limit))
    events += portal
    if trace.domain is None:
        # A correlation id names its object through the messages that carry it.
        for e in messages + failures + portal:
            if e.detail.get("domain") and e.detail.get("key"):
                trace.domain, trace.key = e.detail["domain"], e.detail["key"]
                break
    ids = [e.message_id for e in messages + failures if e.message_id]
    events += trace_state.inbox(state, ids)
    if trace.domain is not None and trace.key is not None:
        trace.route = trace_state.route(state, trace.domain, trace.key)
        trace.xref = trace_state.xref(state, trace.domain, trace.key)
        if target.correlation_id is None:
            events += trace_state.findings(state, trace, since, limit)
        wanted = target.correlation_id
        events += trace_feeds.chglog(legacy, legacy_note, trace, since, limit, wanted)
        events += trace_feeds.cloud_feed(state, cloud, cloud_note, trace, since, limit,
                                         cloud_scan, wanted)
        events += trace_feeds.edi_documents(state, trace, since, limit, wanted)
        if crm is not None or crm_note is not None:
            from workers.crm.trace import crm_events

            events += crm_events(state, crm, crm_note, trace, wanted)
    else:
        for name in ("legacy change log", "cloud change feed"):
            trace.sources.append(SourceNote(name, "skipped", "no domain and key to look up"))
    audit = trace_state.audit(state, trace.domain, target, since, limit,
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


def _flag_ref(version: int, audit: TraceEvent | None) -> dict[str, Any]:
    if version == 0:
        return {"version": 0, "change": "initial flag (legacy), never changed"}
    if audit is None:
        return {"version": version, "change": "no audit row found for this version"}
    d = audit.detail
    return {"version": version, "audit_id": d["audit_id"], "at": audit.at.isoformat(),
            "actor": audit.who, "reason": d["reason"], "action": d["action"],
            "change": f"{d['from_mode']} -> {d['to_mode']}", "forced": d["forced"]}

