"""Trace readers of the two ERPs' change capture: the legacy change log (``CHGLOG``,
queried by key) and the cloud change feed (no key filter: a bounded window of cursors
around the router's checkpoint is scanned)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select

from coexistence.ports import COEXIST_WRITER
from coexistence.router import CLOUD, LEGACY
from workers.observe.sources import OK, UNAVAILABLE, SourceNote, one_line, utc
from workers.observe.timeline import Trace, TraceEvent, legacy_key
from workers.router import queues
from workers.router.capture import checkpoint_name
from workers.router.capture import message_id as derived_id

#: Page size of the cloud change-feed scan.
CLOUD_PAGE = 1000

_CHANNEL_WRITERS = set(queues.COMMAND_WRITERS.values())


def _writer_kind(writer: str) -> str:
    if writer == COEXIST_WRITER:
        return "coexist's write (echo)"
    if writer in _CHANNEL_WRITERS:
        return "channel command written by coexist"
    return "person's change"


def chglog(legacy: Engine | None, note: SourceNote | None, trace: Trace, since, limit,
           wanted: str | None) -> list[TraceEvent]:
    """The key's change-log rows (newest ``limit``), or only the one whose derived
    correlation id is ``wanted``; the source's note is appended to ``trace``."""
    if legacy is None:
        trace.sources.append(note or SourceNote("legacy change log", UNAVAILABLE, "not opened"))
        return []
    from workers.legacy_erp.capture import CHGLOG
    from workers.legacy_erp.schema import captured_tables

    tables = [t.table for t in captured_tables() if t.domain == trace.domain]
    chgkey, ts = CHGLOG.c.CHGKEY, CHGLOG.c.CHGTS
    # POS is the feed's cursor (NULL on PostgreSQL until the feed numbers the row).
    stmt = select(CHGLOG.c.POS, CHGLOG.c.TABNAME, chgkey, CHGLOG.c.OP, ts, CHGLOG.c.LCHGUSER
                  ).where(CHGLOG.c.TABNAME.in_(tables),
                          chgkey == legacy_key(trace.domain, trace.key))
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
        correlation = derived_id(LEGACY, seq, "change") if seq is not None else None
        if wanted is not None and correlation != wanted:
            continue
        at = f"cursor {seq}" if seq is not None else "not captured yet"
        what = f"{ops.get(op, op)} {tabname} ({at}): {_writer_kind(user)}"
        out.append(TraceEvent(datetime.fromtimestamp(ts_ms / 1000, UTC), LEGACY, what, user,
                              None, None, correlation, "chglog",
                              {"seq": seq, "table": tabname, "chgkey": chgkey, "op": op}))
    found = f"{len(out)} row(s)" + (f" (newest {limit} read)" if len(rows) == limit else "")
    trace.sources.append(SourceNote("legacy change log", OK, found))
    return out


def cloud_feed(state: Engine, cloud, note: SourceNote | None, trace: Trace, since, limit,
               scan: int, wanted: str | None) -> list[TraceEvent]:
    """The key's entries in the cloud change feed within ``scan`` cursors each side of the
    router's checkpoint (the feed has no key filter), filtered like ``chglog``."""
    name = "cloud change feed"
    if cloud is None:
        trace.sources.append(note or SourceNote(name, UNAVAILABLE, "not opened"))
        return []
    from workers import checkpoints

    checkpoint = checkpoints.get(state, checkpoint_name(CLOUD))
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




_ACK_WORDS = {"pending": "waiting for its 997", "none": "no 997 expected", "A": "997: accepted",
              "E": "997: accepted with errors", "R": "997: rejected", "M": "997: rejected",
              "W": "997: rejected", "X": "997: rejected"}


def edi_documents(state: Engine, trace: Trace, since, limit,
                  wanted: str | None) -> list[TraceEvent]:
    """The EDI documents of the object (``workers.edi.handlers.documents_for``): for an
    order its 850, the 997 answering it, the 855, every 856 and 810, with their control
    numbers (ISA13/GS06/ST02) and acknowledgment state."""
    from workers.edi.handlers import documents_for

    name = "EDI documents"
    try:
        if wanted is not None:
            docs = documents_for(state, correlation_id=wanted)
        elif trace.domain in ("order", "shipment", "invoice"):
            docs = documents_for(state, domain=trace.domain, key=trace.key)
        else:
            return []
    except Exception as exc:  # noqa: BLE001 - a source that fails is named, not fatal
        trace.sources.append(SourceNote(name, UNAVAILABLE, one_line(exc)))
        return []
    if since is not None:
        docs = [d for d in docs if d.created_at >= since]
    docs = docs[-limit:]
    out = []
    for d in docs:
        numbers = f"ISA13 {d.isa13} GS06 {d.gs06} ST02 {d.st02}"
        if d.direction == "in":
            # Inbound rows keep the claim's name (name.TOKEN.processing): show the partner's.
            shown = d.file_name.rsplit(".", 2)[0] if d.file_name.endswith(".processing") \
                else d.file_name
            what = (f"EDI {d.doc_type} from {d.partner} ({numbers}, file {shown}): "
                    f"answered AK5 {d.ack_status}" + (f", {d.ack_note}" if d.ack_note else ""))
        else:
            ack = _ACK_WORDS.get(d.ack_status, d.ack_status)
            if d.ack_note:
                ack += f" ({d.ack_note})"
            what = (f"EDI {d.doc_type} to {d.partner} ({numbers}, file {d.file_name}, "
                    f"{d.interchange_status}): {ack}")
        out.append(TraceEvent(d.created_at, f"edi {d.partner}", what, "edi", None, None,
                              d.correlation_id, "edi", {
                                  "document_id": d.id, "direction": d.direction,
                                  "type": d.doc_type, "isa13": d.isa13, "gs06": d.gs06,
                                  "st02": d.st02, "ack": d.ack_status, "file": d.file_name,
                                  "po_number": d.po_number,
                                  "business": f"{d.business_domain}:{d.business_key}"}))
    trace.sources.append(SourceNote(name, OK, f"{len(out)} document(s)"))
    return out
