"""Control numbers: ISA13, GS06 and ST02 unique and increasing per partner.

Numbers are allocated by ``UPDATE edi_counter SET last = last + n ...
RETURNING last`` inside the caller's transaction, the same one that records
the outbound interchange and its documents (``record_outbound``).  The row
lock serialises concurrent allocators (PostgreSQL row lock; SQLite's write
lock, taken up front by ``BEGIN IMMEDIATE``), so two workers never get the
same number, and a rolled-back transaction gives its numbers back: a number
the partner sees is always one that was committed together with its bytes.

A crash after the commit and before the file's final rename leaves the row
``allocated`` (or ``staged``); ``flush_pending`` writes it with the same bytes, so the
partner sees neither a gap nor a reused number; a crash after the rename leaves it
``staged`` with its stage file gone, and it is marked written, never written twice.
Within ``numbering_batch`` (a batch's one transaction) each counter row is updated
once at its first use, which takes the same lock, and once at the end with the final
value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from bus.errors import BusinessError
from coexistence.edi import validate, x12
from coexistence.edi.profiles import PartnerProfile
from workers.edi.store import COUNTER, DOCUMENT, INTERCHANGE

#: Counter kinds.
ISA, GS, ST = "isa", "gs", "st"
#: EDI order keys come from one sequence shared by every partner.
ORDER_KEYS_PARTNER = "*"
ORDER_KEY_KIND = "order_key"
#: First canonical order key given to an order that arrives by EDI (numeric: the legacy
#: ERP's ORDNO is a zero-padded 10-digit number), far above the sample's document keys.
EDI_ORDER_KEY_BASE = 7_000_000_000


class ControlNumbersExhausted(BusinessError):
    """A partner's counter reached 999999999; an operator must agree a reset with it."""


# Statements of the hot path, built once: building a SQLAlchemy statement (and its cache
# key) per call cost more CPU than running it (py-spy, scripts/bench/edi.py).
_ALLOCATE = (update(COUNTER)
             .where(COUNTER.c.partner == bindparam("b_partner"),
                    COUNTER.c.kind == bindparam("b_kind"))
             .values(last=COUNTER.c.last + bindparam("b_count", type_=BigInteger))
             .returning(COUNTER.c.last))
_INSERT_INTERCHANGE = insert(INTERCHANGE).returning(INTERCHANGE.c.id)
_INSERT_DOCUMENT = insert(DOCUMENT)


#: ``conn.info`` key of a batch's counters (``numbering_batch``).
_BATCH_KEY = "coexist_edi_numbers"
#: ``conn.info`` key of a batch's deferred document rows (``deferred_documents``).
_DOCS_KEY = "coexist_edi_documents"


@contextlib.contextmanager
def deferred_documents(conn):
    """Within it, ``insert_documents`` on ``conn`` collects ``edi_document`` rows and the
    block's end inserts them all in one multi-row statement (py-spy on
    scripts/bench/edi.py: one INSERT per 850 and per 997 was a tenth of the inbound
    batch's CPU).  Only for a caller that reads none of those rows back before the end;
    on an error nothing is written and the caller's transaction rolls back."""
    if _DOCS_KEY in conn.info:  # nested: the outer block writes
        yield
        return
    rows: list[dict[str, Any]] = []
    conn.info[_DOCS_KEY] = rows
    try:
        yield
        if rows:
            conn.execute(_INSERT_DOCUMENT, rows)
    finally:
        conn.info.pop(_DOCS_KEY, None)


def insert_documents(conn, rows: list[dict[str, Any]]) -> None:
    """Insert ``edi_document`` rows now, or at the end of the ``deferred_documents`` block."""
    if not rows:
        return
    deferred = conn.info.get(_DOCS_KEY)
    if deferred is not None:
        deferred.extend(rows)
    else:
        conn.execute(_INSERT_DOCUMENT, rows)


@contextlib.contextmanager
def numbering_batch(conn):
    """Within it, ``allocate`` on ``conn`` touches each (partner, kind) counter row once
    (that first UPDATE locks the row until the commit, as every allocation does) and hands
    out the following numbers from memory; the counters' final values are written once
    each when the block ends without error.  A batch of N interchanges costs 2 statements
    per counter instead of 3 x N (py-spy on scripts/bench/edi.py: the per-interchange
    statements were most of the inbound CPU).  On an error nothing is written, and the
    caller's transaction must roll back (it does: the block sits inside it)."""
    if _BATCH_KEY in conn.info:  # nested: the outer block writes
        yield
        return
    counters: dict[tuple[str, str], list[int]] = {}
    conn.info[_BATCH_KEY] = counters
    try:
        yield
        for (partner, kind), (db_last, last) in counters.items():
            if last != db_last:
                conn.execute(_ALLOCATE, {"b_partner": partner, "b_kind": kind,
                                         "b_count": last - db_last})
    finally:
        conn.info.pop(_BATCH_KEY, None)


def allocate(conn, partner: str, kind: str, count: int = 1) -> int:
    """Reserve ``count`` consecutive numbers; returns the first.  In the caller's transaction."""
    counters = conn.info.get(_BATCH_KEY)
    if counters is not None:
        held = counters.get((partner, kind))
        if held is None:
            first = _allocate(conn, partner, kind, count)
            counters[(partner, kind)] = [first + count - 1, first + count - 1]
            return first
        last = held[1] + count
        _check_exhausted(partner, kind, last)
        held[1] = last
        return last - count + 1
    return _allocate(conn, partner, kind, count)


def _check_exhausted(partner: str, kind: str, last: int) -> None:
    if kind != ORDER_KEY_KIND and last > x12.MAX_CONTROL_NUMBER:
        raise ControlNumbersExhausted(
            f"partner {partner}: {kind.upper()} control numbers exhausted (next would be "
            f"{last}); agree a reset with the partner before sending more")


def _allocate(conn, partner: str, kind: str, count: int) -> int:
    params = {"b_partner": partner, "b_kind": kind, "b_count": count}
    last = conn.execute(_ALLOCATE, params).scalar_one_or_none()
    if last is None:
        ins = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(ins(COUNTER).values(partner=partner, kind=kind, last=0)
                     .on_conflict_do_nothing())
        last = conn.execute(_ALLOCATE, params).scalar_one()
    last = int(last)
    _check_exhausted(partner, kind, last)
    return last - count + 1


def next_order_key(conn) -> str:
    return str(EDI_ORDER_KEY_BASE + allocate(conn, ORDER_KEYS_PARTNER, ORDER_KEY_KIND))


@dataclass(frozen=True, slots=True)
class OutSet:
    """One outbound transaction set and the business facts recorded with it."""

    code: str
    body: Sequence[Sequence[str]]
    business_domain: str | None = None
    business_key: str | None = None
    order_key: str | None = None
    po_number: str | None = None
    correlation_id: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outbound:
    id: int
    partner: str
    isa13: int
    file_name: str
    content: bytes


def file_name(partner: str, kind: str, isa13: int) -> str:
    """``ACME-000000042-856.x12``: a partner reading its folder in name order reads in the
    order we sent (an 810 is never read before the 856 it bills)."""
    return f"{partner}-{isa13:09d}-{kind}.x12"


def record_outbound(conn, profile: PartnerProfile, *, kind: str, at: datetime,
                    sets: Sequence[OutSet] = (), extra: Sequence[Sequence[str]] = (),
                    answers: int | None = None) -> Outbound:
    """Allocate numbers, build the interchange and record it ``allocated`` with its documents.

    All sets go into one functional group per functional id, in order.  ``extra``
    is a segment outside any group (a TA1).  Nothing is committed here.
    """
    for s in sets:
        findings = validate.check_outbound(s.code, s.body)
        if findings:
            raise x12.X12WriteError("; ".join(findings[:5]))
    isa13 = allocate(conn, profile.id, ISA)
    by_fid: dict[str, list[OutSet]] = {}
    for s in sets:
        by_fid.setdefault(_fid(s.code), []).append(s)
    groups: list[x12.GroupSpec] = []
    numbered: list[tuple[OutSet, int, int]] = []
    if sets:
        first_st = allocate(conn, profile.id, ST, len(sets))
        n = 0
        for fid, members in by_fid.items():
            gs06 = allocate(conn, profile.id, GS)
            specs = []
            for s in members:
                st = first_st + n
                n += 1
                specs.append(x12.SetSpec(s.code, st, s.body))
                numbered.append((s, gs06, st))
            groups.append(x12.GroupSpec(fid, profile.our_gs, profile.partner_gs, gs06, specs))
    text = x12.write_interchange(
        sender=profile.our_isa.party(), receiver=profile.partner_isa.party(), control=isa13,
        at=at, groups=groups, separators=profile.separators, usage=profile.isa15,
        segment_suffix=profile.segment_suffix, extra=extra)
    content = text.encode("ascii")
    name = file_name(profile.id, kind, isa13)
    ic_id = conn.execute(_INSERT_INTERCHANGE, {
        "partner": profile.id, "direction": "out",
        "sender": f"{profile.our_isa.qualifier}:{profile.our_isa.id}", "isa13": isa13,
        "digest": hashlib.sha256(content).hexdigest(), "status": "allocated", "kind": kind,
        "file_name": name, "content": content, "answers": answers, "resends": 0,
        "created_at": at, "dedupe_key": None, "problems": None, "ta1": None,
        "written_at": None}).scalar_one()
    rows = [{
        "partner": profile.id, "direction": "out", "doc_type": s.code, "interchange_id": ic_id,
        "gs06": gs06, "st02": x12.set_control(st), "business_domain": s.business_domain,
        "business_key": s.business_key, "order_key": s.order_key, "po_number": s.po_number,
        "correlation_id": s.correlation_id,
        "ack_status": "pending" if (profile.sends_997 and s.code != "997") else "none",
        "ack_note": None, "ack_at": None,
        "detail": json.dumps(s.detail, default=str) if s.detail is not None else None,
        "created_at": at,
    } for s, gs06, st in numbered]
    insert_documents(conn, rows)
    return Outbound(int(ic_id), profile.id, isa13, name, content)


def _fid(code: str) -> str:
    from coexistence.edi.acks import FUNCTIONAL_IDS

    return FUNCTIONAL_IDS[code]
