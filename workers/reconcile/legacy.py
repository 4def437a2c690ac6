"""Reading the legacy ERP for reconciliation: raw rows in canonical key order.

Each record becomes an ``Item`` whose digest is computed from the rows as
read (no translation: the rows already are the legacy normal form, see
``coexistence.reconcile.digest``); the record is translated only when a
comparison needs its fields.  One consistent snapshot (REPEATABLE READ on
PostgreSQL, one read transaction on SQLite), server-side cursors, one batch
of rows in memory at a time.

The canonical sort key and the tables come from the legacy adapter
(``LegacyErp._domain``), so this reader sorts exactly as ``LegacyErp.stream``.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine, select

from coexistence.reconcile.digest import ROW_NATURAL_KEYS, digest_columns, natural_key_hash
from coexistence.reconcile.digest import values_digest as _digest
from coexistence.reconcile.engine import Item
from coexistence.reconcile.tolerances import normalise
from workers.legacy_erp.adapter import CANONICAL_KEY_PARTS, LegacyErp

#: Rows fetched per round trip.
LEGACY_BATCH_ROWS = 2000


class LegacyReader:
    """The legacy side of a reconciliation."""

    system = "legacy"

    def __init__(self, erp: LegacyErp) -> None:
        """``erp`` is the legacy adapter the composition root built (its engine is read)."""
        self.erp = erp
        self.engine: Engine = erp.engine

    def items(self, domain: str, after: str | None = None, *,
              normalised: bool = True) -> Iterator[Item]:
        """Every record of ``domain`` as an ``Item``, sorted by canonical key (only those
        with a key above ``after``, when given: a resumed backfill).  ``normalised=False``:
        an item's ``record`` is the legacy ERP's record as ``LegacyErp.get`` reads it (what
        a backfill writes), not its comparison form (the digests are the same)."""
        d = self.erp._domain(domain)  # tables and the canonical sort key of the adapter
        dialect = self.engine.dialect.name
        head_cols, child_cols = digest_columns(domain)
        # Digest columns first, so a row's digest values are a slice of it.
        h_cols = [d.header.c[c] for c in head_cols] + [
            c for c in d.header.c if c.name not in head_cols]
        h_names = [c.name for c in h_cols]
        nd = len(head_cols)
        nk_spec = ROW_NATURAL_KEYS.get(domain)
        if nk_spec is not None:
            nk_h = [h_names_of(head_cols, d.header, c) for c in nk_spec[0]]
            nk_c = [child_cols.index(c) for c in nk_spec[1]]
            nk_fn = nk_spec[2]
        translate = d.t.to_canonical
        number_keys = [c for c, kind in CANONICAL_KEY_PARTS[domain] if kind == "number"]
        conn = self.engine.connect()
        try:
            if dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            # One transaction: both cursors read one snapshot.
            conn.begin()
            hexpr = d.sort_key(d.header, dialect)
            hkey = hexpr.label("XSORTKEY")
            hquery = select(*h_cols, hkey).order_by(hkey)
            if after is not None:
                hquery = hquery.where(hexpr > after)
            headers = _rows(conn, hquery, "xrec_headers")
            c_names: list[str] = []
            lines = iter(())
            if d.child is not None:
                c_names = list(child_cols)
                cexpr = d.sort_key(d.child, dialect)
                ckey = cexpr.label("XSORTKEY")
                cquery = select(*(d.child.c[c] for c in child_cols), ckey).order_by(
                    ckey, *d.child_order)
                if after is not None:
                    cquery = cquery.where(cexpr > after)
                lines = _rows(conn, cquery, "xrec_lines")
            pending = next(lines, None)
            n_h = len(h_names)
            n_c = len(c_names)
            for header in headers:
                key = header[n_h]
                children = []
                # Lines sort with their header; lines of no header are not a record.
                while pending is not None and pending[n_c] <= key:
                    if pending[n_c] == key:
                        children.append(pending[:n_c])
                    pending = next(lines, None)
                digest = _digest(header[:nd], tuple(children))
                nk = None
                if nk_spec is not None:
                    nk = natural_key_hash(nk_fn([header[i] for i in nk_h],
                                                [[row[i] for i in nk_c] for row in children]))
                yield Item(key, digest, nk, _loader(translate, h_names, header, c_names,
                                                    children, number_keys, normalised))
        finally:
            conn.close()

    def items_of(self, domain: str, keys: list[str]) -> dict[str, Item]:
        """The records of ``keys`` that exist now, as ``Item``s digested from their rows as
        ``items`` digests them (no translation: a record is translated only when a
        comparison loads it), by the adapter's key lookups (``IN`` lists of
        ``GET_MANY_CHUNK`` keys: a warm run's live verification).  A key the legacy ERP
        cannot hold (``legacy_key`` refuses it) is an item carrying the error, as
        ``LegacyErp.get`` would have raised it."""
        from coexistence.errors import CoexistError
        from workers.legacy_erp.adapter import GET_MANY_CHUNK

        d = self.erp._domain(domain)
        head_cols, child_cols = digest_columns(domain)
        h_names = [c.name for c in d.header.c]
        h_idx = [h_names.index(c) for c in head_cols]
        c_names = [c.name for c in d.child.c] if d.child is not None else []
        c_idx = [c_names.index(c) for c in child_cols]
        k_idx = [h_names.index(k) for k in d.keys]
        ck_idx = [c_names.index(k) for k in d.keys] if d.child is not None else []
        nk_spec = ROW_NATURAL_KEYS.get(domain)
        if nk_spec is not None:
            nk_h = [h_names.index(c) for c in nk_spec[0]]
            nk_c = [c_names.index(c) for c in nk_spec[1]]
            nk_fn = nk_spec[2]
        translate = d.t.to_canonical
        number_keys = [c for c, kind in CANONICAL_KEY_PARTS[domain] if kind == "number"]
        out: dict[str, Item] = {}
        wanted: dict[tuple[str, ...], list[str]] = {}
        for key in dict.fromkeys(keys):
            try:
                values = d.t.key_columns(d.t.legacy_key(key))
            except CoexistError as exc:
                out[key] = Item(key, 0, None, error=str(exc))
                continue
            wanted.setdefault(d.ident(values), []).append(key)
        idents = list(wanted)
        with self.engine.connect() as conn:
            for start in range(0, len(idents), GET_MANY_CHUNK):
                chunk = idents[start:start + GET_MANY_CHUNK]
                headers = {}
                for row in conn.execute(
                        d.read_headers, {"keys": [d.in_value(d.header, i) for i in chunk]}):
                    headers[tuple(str(row[i]).rstrip() for i in k_idx)] = tuple(row)
                if not headers:
                    continue
                lines: dict[tuple[str, ...], list[tuple]] = {}
                if d.read_lines is not None:
                    for row in conn.execute(d.read_lines, {"keys": [
                            d.in_value(d.child, i) for i in headers]}):
                        lines.setdefault(tuple(str(row[i]).rstrip() for i in ck_idx),
                                         []).append(tuple(row))
                for ident, header in headers.items():
                    children = lines.get(ident, [])
                    digest = _digest(tuple(header[i] for i in h_idx),
                                     tuple(tuple(r[i] for i in c_idx) for r in children))
                    nk = None
                    if nk_spec is not None:
                        nk = natural_key_hash(nk_fn([header[i] for i in nk_h],
                                                    [[r[i] for i in nk_c] for r in children]))
                    load = _loader(translate, h_names, header, c_names, children, number_keys)
                    for key in wanted[ident]:
                        out[key] = Item(key, digest, nk, load)
        return out

    def get(self, domain: str, key: str):
        """The record as the legacy ERP holds it now (for repairs), or ``None``."""
        return self.erp.get(domain, key)


def _rows(conn, query, name: str) -> Iterator[tuple]:
    """Plain tuples from a DB-API cursor: SQLAlchemy's per-row wrapping costs more
    than everything else this reader does per row.  A server-side (named) cursor on
    PostgreSQL, so memory holds one batch."""
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    raw = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        cursor = raw.cursor(name=name)
        cursor.itersize = LEGACY_BATCH_ROWS
    else:
        cursor = raw.cursor()
    cursor.execute(sql)
    while True:
        batch = cursor.fetchmany(LEGACY_BATCH_ROWS)
        if not batch:
            return
        yield from batch


def h_names_of(head_cols, table, column: str) -> int:
    """Position of ``column`` in a header row selected digest columns first."""
    names = list(head_cols) + [c.name for c in table.c if c.name not in head_cols]
    return names.index(column)


def _unpadded(row: dict, keys) -> dict:
    # A key typed without zero padding ("42") is space-padded by PostgreSQL's CHAR and
    # kept as typed by SQLite: read it as typed on both, as the sort key does.
    for k in keys:
        value = row.get(k)
        if isinstance(value, str):
            row[k] = value.rstrip(" ")
    return row


def _loader(translate, h_names, header, c_names, children, keys=(), normalised=True):
    # Normalised like the cloud side: a value typed into the legacy ERP by hand (mixed
    # case, say) that the legacy ERP's own writes would have normalised is the same
    # record within the declared tolerances, not a mismatch.
    def load():
        record = translate(
            _unpadded(dict(zip(h_names, header, strict=False)), keys),
            [_unpadded(dict(zip(c_names, row, strict=False)), keys) for row in children])
        return normalise(record) if normalised else record
    return load
