"""The legacy reference ERP seen as ``coexistence.ports.Erp`` (system ``"legacy"``).

Reads go through the domain's legacy translator (header row + line rows ->
canonical record).  Writes are coexist's own: each runs in one transaction that

1. marks itself as coexist's (``capture.coexist_transaction``: the change log
   attributes its changes to the write's ``writer``, ``COEXIST_WRITER`` unless a
   channel command names its own);
2. replays the first result if the idempotency key was seen (same write) or
   refuses it (another write);
3. advances the record's applied source version in ``XCOEXVER`` with one
   conditional upsert, which also locks it against a concurrent writer of the
   same record - a version not newer than the applied one is ``Stale`` (a
   ``repair`` also applies an equal one, never an older one);
4. writes the header and replaces the lines, stamped ``LCHGUSER = writer``.

Revision: the record's latest ``CHGLOG`` row (its ``SEQ``, ``LCHGUSER``,
``CHGTS``) says who made its current state - a person, coexist, a channel
writer - whatever the row's own audit stamp says (an update that did not stamp
``LCHGUSER`` is logged as ``?``).  ``get_current`` reads it by key (index
``CHGLOG_KEY``); a write with ``if_revision`` locks the header row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write transaction holds the
database lock from its first statement) and compares that revision again inside
its own transaction, so a person's edit committed between the caller's read and
the write is seen: the write answers ``Changed`` and changes nothing.

The version survives a delete (a tombstone row), so an older upsert arriving
late never resurrects a deleted record.  A person's write (``person_upsert``,
``person_delete``: how tests and the demo simulate someone at a green screen)
does not touch the applied version.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CHAR, Engine, and_, bindparam, case, func, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from bus.errors import BusinessError
from coexistence.canonical import CanonicalRecord
from coexistence.errors import CoexistError
from coexistence.ports import (
    ABSENT,
    COEXIST_WRITER,
    Applied,
    Changed,
    Current,
    Stale,
    WriteOp,
    WriteResult,
)
from coexistence.writes import applies
from workers.legacy_erp import numbering
from workers.legacy_erp.capture import (
    CHGLOG,
    KEY_SEPARATOR,
    XCOEXIDM,
    XCOEXVER,
    coexist_transaction,
    register_writer,
)
from workers.legacy_erp.cdc import LegacyChangeFeed
from workers.legacy_erp.schema import captured_tables, key_decoders, translator

__all__ = ["LegacyErp", "LegacyIdempotencyConflict"]

#: Header rows fetched per round trip while streaming a domain.
STREAM_BATCH_ROWS = 500
#: Keys per ``IN`` list of ``get_many`` (two binds each for a composite key: far below
#: SQLite's 32,766 and PostgreSQL's 65,535 bind parameters).
GET_MANY_CHUNK = 500


class LegacyIdempotencyConflict(BusinessError):
    """An idempotency key reused for a different write."""


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


class _Domain:
    """Tables, key columns and canonical sort expression of one domain."""

    def __init__(self, domain: str) -> None:
        self.name = domain
        self.t = translator(domain)
        self.header = self.t.TABLE.__table__
        self.child = self.t.CHILD_TABLE.__table__ if self.t.CHILD_TABLE is not None else None
        self.keys: tuple[str, ...] = tuple(self.t.KEY_COLUMNS)
        if tuple(c for c, _ in CANONICAL_KEY_PARTS[domain]) != self.keys:  # pragma: no cover
            raise ValueError(f"{domain}: canonical key parts do not match {self.keys}")
        # Columns a write must not update: the key, and a surrogate primary key
        # (kept as first inserted, so a person's row keeps its number).
        fixed = set(self.keys) | {c.name for c in self.header.primary_key}
        self.updatable = [c.name for c in self.header.c if c.name not in fixed]
        self.child_order = (
            [self.child.c[c.name] for c in self.child.primary_key if c.name not in self.keys]
            if self.child is not None else []
        )
        # Reads by key are the router's hot path: statements built once, keys bound.
        self.read_header = select(self.header).where(self._by_key(self.header))
        self.lock_header = select(*(self.header.c[k] for k in self.keys)).where(
            self._by_key(self.header)).with_for_update()
        tables = [self.header.name] + ([self.child.name] if self.child is not None else [])
        self.last_change = (
            select(CHGLOG.c.SEQ, CHGLOG.c.LCHGUSER, CHGLOG.c.CHGTS, CHGLOG.c.OP)
            .where(bindparam("chgkey") == CHGLOG.c.CHGKEY, CHGLOG.c.TABNAME.in_(tables))
            .order_by(CHGLOG.c.SEQ.desc()).limit(1)
        )
        self.applied = select(XCOEXVER.c.SRCVER).where(
            domain == XCOEXVER.c.DOMAIN, bindparam("reckey") == XCOEXVER.c.RECKEY)
        self.read_children = (
            select(self.child).where(self._by_key(self.child)).order_by(*self.child_order)
            if self.child is not None else None
        )
        # get_many: headers, and their lines in record then line order, of a list of keys.
        self.read_headers = select(self.header).where(self._in_keys(self.header))
        self.read_lines = (
            select(self.child).where(self._in_keys(self.child)).order_by(
                *(self.child.c[k] for k in self.keys), *self.child_order)
            if self.child is not None else None
        )

    def _by_key(self, table):
        return and_(*(table.c[k] == bindparam(f"key_{k}") for k in self.keys))

    def _in_keys(self, table):
        keys = bindparam("keys", expanding=True)
        if len(self.keys) == 1:
            return table.c[self.keys[0]].in_(keys)
        return tuple_(*(table.c[k] for k in self.keys)).in_(keys)

    def ident(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """A record's key columns without their padding: what a row read back matches."""
        return tuple(str(values[k]).rstrip() for k in self.keys)

    def in_value(self, table, ident: tuple[str, ...]):
        """The bind value of ``ident`` in :meth:`_in_keys` (padded as the columns are)."""
        padded = tuple(_padded(table.c[k], v) for k, v in zip(self.keys, ident, strict=True))
        return padded[0] if len(padded) == 1 else padded

    def chgkey(self, values: Mapping[str, Any]) -> str:
        """The record's ``CHGLOG.CHGKEY`` (key columns, padding dropped, joined)."""
        return KEY_SEPARATOR.join(str(values[k]).rstrip() for k in self.keys)

    def key_params(self, table, values: Mapping[str, Any]) -> dict[str, Any]:
        return {f"key_{k}": _padded(table.c[k], values[k]) for k in self.keys}

    def where(self, table, values: Mapping[str, Any]):
        return and_(*(table.c[k] == _padded(table.c[k], values[k]) for k in self.keys))

    def sort_key(self, table, dialect: str):
        """SQL for the record's canonical key, so SQL sorts exactly as Python sorts keys."""
        return _canonical_key_sql(self, table, dialect)


def _padded(column, value):
    # Legacy CHAR columns are space-padded on SQLite too (the translators pad).
    if isinstance(value, str) and isinstance(column.type, CHAR) and column.type.length:
        return value.ljust(column.type.length)
    return value


def _number(column):
    trimmed = func.ltrim(column, "0")
    return case((trimmed == "", literal("0")), else_=trimmed)


def _canonical_key_sql(d: _Domain, table, dialect: str):
    """The canonical key of a row in SQL, per the translators' key conventions:
    zero-padded numbers lose their zeros, codes their padding, and composite
    keys are joined as the canonical key joins them."""
    parts = []
    for spec in CANONICAL_KEY_PARTS[d.name]:
        col = table.c[spec[0]]
        parts.append(_number(col) if spec[1] == "number" else func.rtrim(col))
    expr = parts[0]
    for part in parts[1:]:
        expr = expr.concat(CANONICAL_KEY_JOIN).concat(part)
    # Python compares str by code point: the "C" collation on PostgreSQL, BINARY on SQLite.
    return expr.collate("C") if dialect == "postgresql" else expr


#: Domain -> the key columns and how each reads in the canonical key.
CANONICAL_KEY_PARTS: dict[str, tuple[tuple[str, str], ...]] = {
    "customer": (("CUSTNO", "number"),),
    "product": (("ITEMNO", "code"),),
    "price": (("CONTNO", "number"),),
    "inventory": (("WHSE", "code"), ("ITEMNO", "code")),
    "order": (("ORDNO", "number"),),
    "shipment": (("SHPNO", "number"),),
    "invoice": (("INVNO", "number"),),
}
#: How the canonical key joins the parts of a composite key.
CANONICAL_KEY_JOIN = ":"


class LegacyErp:
    """``Erp`` and ``ChangeFeed`` over the legacy database (SQLite or PostgreSQL)."""

    system = "legacy"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._domains: dict[str, _Domain] = {}
        self._writers: set[str] = set()
        self.feed = LegacyChangeFeed(engine, captured_tables(), key_decoders())

    # ------------------------------------------------------------------ reads

    def get(self, domain: str, key: str) -> CanonicalRecord | None:
        return self.get_many(domain, [key]).get(key)

    def get_many(self, domain: str, keys: Iterable[str]) -> dict[str, CanonicalRecord]:
        """The records of ``keys`` that exist (the router's batches), in bulk
        (:meth:`_records`) on one connection."""
        d = self._domain(domain)
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        with self.engine.connect() as conn:
            return self._records(conn, d, keys)

    @staticmethod
    def _records(conn, d: _Domain, keys: Iterable[str]) -> dict[str, CanonicalRecord]:
        """The records of ``keys`` that exist: one query for the headers and one for their
        lines per ``GET_MANY_CHUNK`` keys (``IN`` lists), lines grouped to their header."""
        # Key columns (rstripped, as CHAR comparison ignores padding) -> the keys asked.
        wanted: dict[tuple[str, ...], list[str]] = {}
        for key in dict.fromkeys(keys):
            values = d.t.key_columns(d.t.legacy_key(key))
            wanted.setdefault(d.ident(values), []).append(key)
        out: dict[str, CanonicalRecord] = {}
        idents = list(wanted)
        for i in range(0, len(idents), GET_MANY_CHUNK):
            chunk = idents[i:i + GET_MANY_CHUNK]
            params = {"keys": [d.in_value(d.header, ident) for ident in chunk]}
            headers = {d.ident(row): row
                       for row in conn.execute(d.read_headers, params).mappings()}
            if not headers:
                continue
            lines: dict[tuple[str, ...], list] = {}
            if d.read_lines is not None:
                params = {"keys": [d.in_value(d.child, ident) for ident in headers]}
                for row in conn.execute(d.read_lines, params).mappings():
                    lines.setdefault(d.ident(row), []).append(row)
            for ident, row in headers.items():
                record = d.t.to_canonical(row, lines.get(ident, ()))
                for key in wanted.get(ident, ()):
                    out[key] = record
        return out

    def get_current(self, domain: str, key: str) -> Current | None:
        d = self._domain(domain)
        with self.engine.connect() as conn:
            return self._current(conn, d, key)

    def _current(self, conn, d: _Domain, key: str) -> Current | None:
        values = d.t.key_columns(d.t.legacy_key(key))
        last = conn.execute(d.last_change, {"chgkey": d.chgkey(values)}).first()
        version = int(conn.execute(d.applied, {"reckey": key}).scalar() or 0)
        header = conn.execute(d.read_header, d.key_params(d.header, values)).mappings().first()
        if last is None:
            if header is None and not version:
                return None
            # Change log pruned: the row's audit stamp is all there is.
            writer = str(header["LCHGUSER"]).rstrip() if header is not None else COEXIST_WRITER
            return Current("0", writer, version, header is not None)
        at = datetime.fromtimestamp(int(last.CHGTS) / 1000, UTC)
        return Current(str(last.SEQ), str(last.LCHGUSER).rstrip(), version,
                       header is not None, at)

    def stream(self, domain: str) -> Iterator[CanonicalRecord]:
        """Every record of ``domain`` in canonical key order, holding one batch in memory.

        One consistent snapshot (a read transaction on SQLite, REPEATABLE READ on
        PostgreSQL) read through a server-side cursor per table; lines are
        merge-joined to their headers on the canonical key.
        """
        d = self._domain(domain)
        conn = self.engine.connect()
        try:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            opts = {"stream_results": True, "yield_per": STREAM_BATCH_ROWS}
            hkey = d.sort_key(d.header, self.dialect).label("XSORTKEY")
            headers = conn.execution_options(**opts).execute(
                select(d.header, hkey).order_by(hkey)
            ).mappings()
            lines = iter(())
            if d.child is not None:
                ckey = d.sort_key(d.child, self.dialect).label("XSORTKEY")
                lines = conn.execution_options(**opts).execute(
                    select(d.child, ckey).order_by(ckey, *d.child_order)
                ).mappings()
            pending = next(lines, None)
            for header in headers:
                sort_key = header["XSORTKEY"]
                children = []
                # Lines sort with their header; lines of no header (orphans) are skipped.
                while pending is not None and pending["XSORTKEY"] <= sort_key:
                    if pending["XSORTKEY"] == sort_key:
                        children.append(pending)
                    pending = next(lines, None)
                yield d.t.to_canonical(header, children)
        finally:
            conn.close()

    # ------------------------------------------------------------------ writes

    def upsert(
        self,
        record: CanonicalRecord,
        *,
        source_version: int,
        idempotency_key: str,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> WriteResult:
        d = self._domain(record.domain)
        self._register(writer)
        now = datetime.now(UTC)
        header, children = d.t.from_canonical(record, changed_by=writer, changed_at=now)
        fingerprint = _fingerprint("upsert", d.name, record.key, source_version, writer, repair,
                                   record.model_dump_json())
        with self.engine.begin() as conn, \
                coexist_transaction(conn, writer):
            return self._write(conn, d, record.key, source_version, repair, idempotency_key,
                               fingerprint, lambda: self._replace(conn, d, header, children),
                               if_revision)

    def upsert_many(
        self,
        items: Iterable[tuple[CanonicalRecord, int, str]],
        *,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> list[WriteResult | CoexistError]:
        """Upsert (record, source_version, idempotency_key) items of one domain in **one**
        transaction, each with the checks of :meth:`upsert` (idempotency replay, version:
        newer applies, equal too for a ``repair``, older never; ``if_revision`` for every
        item, e.g. ``ABSENT``: only where no record exists, so a person's record made
        meanwhile wins as ``Changed``).

        A record the legacy schema cannot hold is answered by its ``CoexistError`` in
        its place (the others are still written); a database error rolls back the whole
        batch.  Another helper's ``upsert`` changes stay independent of this method.
        """
        items = list(items)
        if not items:
            return []
        domains = {record.domain for record, _, _ in items}
        if len(domains) != 1:
            raise ValueError(f"upsert_many takes one domain per call, got {sorted(domains)}")
        d = self._domain(domains.pop())
        self._register(writer)
        now = datetime.now(UTC)
        results: list[WriteResult | CoexistError | None] = [None] * len(items)
        prepared = []
        for i, (record, version, idem) in enumerate(items):
            try:
                header, children = d.t.from_canonical(record, changed_by=writer, changed_at=now)
            except CoexistError as exc:
                results[i] = exc
                continue
            fingerprint = _fingerprint("upsert", d.name, record.key, version, writer, repair,
                                       record.model_dump_json())
            prepared.append((i, record.key, version, idem, fingerprint, header, children))
        with self.engine.begin() as conn, coexist_transaction(conn, writer):
            for i, key, version, idem, fingerprint, header, children in prepared:
                results[i] = self._write(
                    conn, d, key, version, repair, idem, fingerprint,
                    lambda h=header, c=children: self._replace(conn, d, h, c), if_revision)
        return results  # type: ignore[return-value]

    def delete(
        self,
        domain: str,
        key: str,
        *,
        source_version: int,
        idempotency_key: str,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> WriteResult:
        d = self._domain(domain)
        self._register(writer)
        values = d.t.key_columns(d.t.legacy_key(key))
        fingerprint = _fingerprint("delete", d.name, key, source_version, writer, repair)
        with self.engine.begin() as conn, \
                coexist_transaction(conn, writer):
            return self._write(conn, d, key, source_version, repair, idempotency_key,
                               fingerprint, lambda: self._remove(conn, d, values), if_revision)

    # ------------------------------------------------------------------ batches

    def read_many(self, domain: str, keys: Sequence[str]
                  ) -> dict[str, tuple[CanonicalRecord | None, Current | None]]:
        """``BatchErp``: each record and its ``Current`` on one connection (the revision
        first: an edit landing after it fails the write's re-check, never goes unseen)."""
        d = self._domain(domain)
        with self.engine.connect() as conn:
            currents = {key: self._current(conn, d, key) for key in dict.fromkeys(keys)}
            records = self._records(
                conn, d, [k for k, c in currents.items() if c is not None and c.exists])
        return {key: (records.get(key), current) for key, current in currents.items()}

    def write_many(self, ops: Sequence[WriteOp]) -> list[WriteResult | Exception]:
        """``BatchErp``: one transaction per writer for the whole batch, each op with the
        checks of :meth:`upsert` / :meth:`delete` (idempotency replay, the re-check of its
        revision under the row lock, the version).  A record the legacy schema cannot
        hold, or a reused idempotency key, is that op's business error (nothing of it is
        written); a database error rolls back the whole batch and raises."""
        results: list[WriteResult | Exception | None] = [None] * len(ops)
        by_writer: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            by_writer.setdefault(op.writer, []).append(i)
        now = datetime.now(UTC)
        for writer, indexes in by_writer.items():
            self._register(writer)
            with self.engine.begin() as conn, coexist_transaction(conn, writer):
                # Rows locked in key order: two writers' batches sharing records (two
                # changes of one record in two workers' batches) then wait for each other
                # instead of deadlocking, which rolled a whole batch back to be written
                # one message at a time (a chaos run's cloud phase).
                for i in sorted(indexes, key=lambda i: (ops[i].domain, ops[i].key)):
                    op = ops[i]
                    try:
                        results[i] = self._write_op(conn, op, now)
                    except BusinessError as exc:
                        results[i] = exc
        return results  # type: ignore[return-value]

    def _write_op(self, conn, op: WriteOp, now: datetime) -> WriteResult:
        d = self._domain(op.domain)
        condition = op.current.revision if op.current is not None else ABSENT
        if op.record is None:
            values = d.t.key_columns(d.t.legacy_key(op.key))
            fingerprint = _fingerprint("delete", d.name, op.key, op.source_version, op.writer,
                                       op.repair)
            return self._write(conn, d, op.key, op.source_version, op.repair,
                               op.idempotency_key, fingerprint,
                               lambda: self._remove(conn, d, values), condition)
        header, children = d.t.from_canonical(op.record, changed_by=op.writer, changed_at=now)
        fingerprint = _fingerprint("upsert", d.name, op.key, op.source_version, op.writer,
                                   op.repair, op.record.model_dump_json())
        return self._write(conn, d, op.key, op.source_version, op.repair, op.idempotency_key,
                           fingerprint, lambda: self._replace(conn, d, header, children),
                           condition)

    # ------------------------------------------------------------------ change feed

    def read(self, after: int, limit: int):
        """The legacy change log (see ``LegacyChangeFeed.read``)."""
        return self.feed.read(after, limit)

    # ------------------------------------------------------------------ numbering

    def create_numbered(self, record: CanonicalRecord, *, idempotency_key: str,
                        writer: str = COEXIST_WRITER) -> str:
        """Create ``record`` (a customer; its key is ignored) under the next number of the
        ERP's customer sequence, taken in the insert's transaction; returns its key.

        An earlier create with ``idempotency_key`` returns the customer it made and
        creates nothing (found by the key first, whatever the record says now)."""
        d = self._domain(record.domain)
        if d.name != "customer":
            raise CoexistError(f"the legacy ERP numbers customers only, not {d.name}")
        self._register(writer)
        now = datetime.now(UTC)
        with self.engine.begin() as conn, coexist_transaction(conn, writer):
            earlier = numbering.created_by(conn, idempotency_key)
            if earlier is not None:
                return earlier
            number = numbering.next_number(conn, d.header)
            key = str(number)
            header, children = d.t.from_canonical(record.model_copy(update={"key": key}),
                                                  changed_by=writer, changed_at=now)
            conn.execute(d.header.insert().values(header))
            if d.child is not None and children:
                conn.execute(d.child.insert(), children)
            conn.execute(numbering.XCOEXNUM.insert().values(
                IDEMKEY=idempotency_key, DOMAIN=d.name, RECKEY=key, WRITER=writer,
                CRTTS=int(time.time() * 1000)))
            return key

    def created_by(self, domain: str, idempotency_key: str) -> str | None:
        """The key of the record a numbered create with ``idempotency_key`` made, if any."""
        with self.engine.connect() as conn:
            return numbering.created_by(conn, idempotency_key)

    # ------------------------------------------------------------------ people

    def person_upsert(self, record: CanonicalRecord, writer: str) -> None:
        """Someone typed ``record`` into the legacy ERP as user ``writer`` (no version)."""
        d = self._domain(record.domain)
        header, children = d.t.from_canonical(record, changed_by=writer,
                                              changed_at=datetime.now(UTC))
        with self.engine.begin() as conn:
            self._replace(conn, d, header, children)

    def person_delete(self, domain: str, key: str, writer: str) -> None:
        """Someone deleted the record as user ``writer`` (stamped first, as the ERP's
        delete screen does, so the change log names them)."""
        d = self._domain(domain)
        values = d.t.key_columns(d.t.legacy_key(key))
        with self.engine.begin() as conn:
            conn.execute(d.header.update().where(d.where(d.header, values))
                         .values(LCHGUSER=_padded(d.header.c.LCHGUSER, writer)))
            self._remove(conn, d, values)

    def forget_idempotency_keys(self, older_than_s: float) -> int:
        """Drop remembered idempotency keys older than ``older_than_s``; returns how many.

        Keep them longer than any message can be redelivered (the broker's
        retry horizon): after that a replay is caught by the version check alone,
        as ``Stale`` instead of the first result.
        """
        cutoff = int((time.time() - older_than_s) * 1000)
        with self.engine.begin() as conn:
            return conn.execute(XCOEXIDM.delete().where(cutoff > XCOEXIDM.c.CRTTS)).rowcount

    def applied_version(self, domain: str, key: str) -> int:
        """The last source version coexist applied to the record (0 if none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(XCOEXVER.c.SRCVER).where(domain == XCOEXVER.c.DOMAIN,
                                                key == XCOEXVER.c.RECKEY)
            ).scalar() or 0)

    def tables(self, domain: str) -> _Domain:
        """The domain's tables, key columns and canonical sort expression
        (``header``, ``child``, ``keys``, ``child_order``, ``sort_key(table, dialect)``,
        translator ``t``), for readers that must sort exactly as :meth:`stream`."""
        return self._domain(domain)

    # ------------------------------------------------------------------ internals

    def _domain(self, domain: str) -> _Domain:
        d = self._domains.get(domain)
        if d is None:
            d = self._domains[domain] = _Domain(domain)
        return d

    def _register(self, writer: str) -> None:
        if writer not in self._writers:
            with self.engine.begin() as conn:
                register_writer(conn, writer)
            self._writers.add(writer)

    def _write(self, conn, d: _Domain, key: str, version: int, repair: bool, idem: str,
               fingerprint: str, effect, if_revision: str | None = None) -> WriteResult:
        seen = conn.execute(
            select(XCOEXIDM.c.FPRINT, XCOEXIDM.c.RESULT, XCOEXIDM.c.SRCVER, XCOEXIDM.c.CURVER)
            .where(idem == XCOEXIDM.c.IDEMKEY)
        ).first()
        if seen is not None:
            if fingerprint != seen.FPRINT:
                raise LegacyIdempotencyConflict(
                    f"idempotency key {idem!r} was already used for another write "
                    f"({d.name} {key})"
                )
            return (Applied(d.name, key, seen.SRCVER) if seen.RESULT == "A"
                    else Stale(d.name, key, seen.SRCVER, seen.CURVER))
        if if_revision is not None:
            values = d.t.key_columns(d.t.legacy_key(key))
            if self.dialect == "postgresql":
                conn.execute(d.lock_header, d.key_params(d.header, values)).first()
            current = self._current(conn, d, key)
            held = current.revision if current is not None else ABSENT
            if held != if_revision:
                # Not remembered under the idempotency key: the caller decides again
                # and its next attempt is a write of its own.
                return Changed(d.name, key, if_revision, current)
        if self._advance_version(conn, d.name, key, version, repair):
            effect()
            result: WriteResult = Applied(d.name, key, version, self._revision(conn, d, key))
        else:
            current = conn.execute(
                select(XCOEXVER.c.SRCVER).where(d.name == XCOEXVER.c.DOMAIN,
                                                key == XCOEXVER.c.RECKEY)
            ).scalar_one()
            result = Stale(d.name, key, version, int(current))
        conn.execute(XCOEXIDM.insert().values(
            IDEMKEY=idem, FPRINT=fingerprint, DOMAIN=d.name, RECKEY=key,
            RESULT="A" if isinstance(result, Applied) else "S", SRCVER=version,
            CURVER=result.version if isinstance(result, Applied) else result.current,
            CRTTS=int(time.time() * 1000),
        ))
        return result

    def _revision(self, conn, d: _Domain, key: str) -> str:
        values = d.t.key_columns(d.t.legacy_key(key))
        last = conn.execute(d.last_change, {"chgkey": d.chgkey(values)}).first()
        return str(last.SEQ) if last is not None else ""

    def _advance_version(self, conn, domain: str, key: str, version: int, repair: bool) -> bool:
        """One conditional upsert: newer applies; equal too for a repair; older never."""
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        ins = dialect_insert(XCOEXVER).values(DOMAIN=domain, RECKEY=key, SRCVER=int(version))
        newer = applies(ins.excluded.SRCVER, XCOEXVER.c.SRCVER, repair)
        stmt = ins.on_conflict_do_update(
            index_elements=[XCOEXVER.c.DOMAIN, XCOEXVER.c.RECKEY],
            set_={"SRCVER": ins.excluded.SRCVER},
            where=newer,
        )
        # RETURNING, not rowcount: psycopg reports -1 for this statement here.
        return conn.execute(stmt.returning(XCOEXVER.c.SRCVER)).first() is not None

    def _replace(self, conn, d: _Domain, header: dict, children: list[dict]) -> None:
        # Header first: the line triggers read its LCHGUSER for the change log.
        updated = conn.execute(
            d.header.update().where(d.where(d.header, header))
            .values({c: header[c] for c in d.updatable if c in header})
        ).rowcount
        if not updated:
            conn.execute(d.header.insert().values(header))
        if d.child is not None:
            conn.execute(d.child.delete().where(d.where(d.child, header)))
            if children:
                conn.execute(d.child.insert(), children)

    def _remove(self, conn, d: _Domain, values: Mapping[str, Any]) -> None:
        if d.child is not None:
            conn.execute(d.child.delete().where(d.where(d.child, values)))
        conn.execute(d.header.delete().where(d.where(d.header, values)))
