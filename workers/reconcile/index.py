"""Per-record digest indexes of both ERPs in coexist's state, with bucket sums kept
incrementally, so that ``coexist reconcile`` compares two indexes before it reads either ERP.

Tables (state revision 0008):

* ``reconcile_index``: one row per (domain, side, key): the record's digest
  (``coexistence.reconcile.digest``: the legacy row form of its legacy-normalised
  canonical record) and its natural-key hash.  ``digest`` NULL means "not known":
  a record coexist itself wrote (capture does not read its own echoes back) or one
  that does not translate; such a record is verified against the live systems on the
  next run, which then writes what it read back into the index.
* ``reconcile_bucket``: per (domain, side, bucket) the number of records, the sum
  modulo 2**64 of their digests and the number of unknown digests.  A key's bucket is
  a hash of the key (``BUCKETS`` of them), so buckets stay balanced and fixed as
  records come and go: each change moves one bucket's figures by its own delta.
* ``reconcile_index_side``: per (domain, side) when the index was (re)built from a
  full stream; no row: never built (the next run is "cold").  Its row is also the
  lock every writer of that side's index takes (capture and a run's write-back), so
  the read-modify-write of the bucket sums never interleaves.

Fed by the router's capture (``update``, one call per batch inside the batch's state
transaction, from the records capture already read: no ERP read there), rebuilt from
full streams (``Rebuild``), corrected by each run's verification (``apply``).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, and_, delete, insert, select
from sqlalchemy.engine import Connection
from sqlmodel import Field

from coexistence.ports import COEXIST_WRITER
from coexistence.reconcile.digest import natural_key, natural_key_hash, record_digest
from coexistence.reconcile.tolerances import normalise
from workers.bulk_sql import executemany
from workers.db import StateTable

#: Buckets per (domain, side): 65,536 keeps ~15 records a bucket at 1M records, so a
#: differing bucket costs few index rows to compare.
BUCKETS = 1 << 16
_MASK = (1 << 64) - 1
_SIGN = 1 << 63
#: Rows per INSERT while rebuilding.
REBUILD_CHUNK_ROWS = 5000
#: Keys per SELECT ... IN.
IN_CHUNK = 500
SIDES = ("legacy", "cloud")
#: The writer name of coexist's own writes in both change feeds.
COEXIST_WRITERS = frozenset({COEXIST_WRITER})


class ReconcileIndexEntry(StateTable, table=True):
    """One record's digest as the index last knew it."""

    __tablename__ = "reconcile_index"
    __table_args__ = (
        # A differing bucket's entries; duplicates by natural key; orphan xref entries.
        Index("ix_reconcile_index_bucket", "domain", "side", "bucket"),
        Index("ix_reconcile_index_nk", "domain", "side", "nk"),
        Index("ix_reconcile_index_key", "domain", "key"),
    )

    domain: str = Field(primary_key=True, sa_type=String(20))
    side: str = Field(primary_key=True, sa_type=String(8))
    key: str = Field(primary_key=True, sa_type=String(80))
    bucket: int = Field(sa_type=Integer)
    digest: int | None = Field(default=None, sa_type=BigInteger)
    nk: int | None = Field(default=None, sa_type=BigInteger)


class ReconcileBucket(StateTable, table=True):
    """Count, digest sum (mod 2**64, stored signed) and unknown digests of one bucket."""

    __tablename__ = "reconcile_bucket"

    domain: str = Field(primary_key=True, sa_type=String(20))
    side: str = Field(primary_key=True, sa_type=String(8))
    bucket: int = Field(primary_key=True, sa_type=Integer)
    count: int = Field(default=0, sa_type=BigInteger)
    total: int = Field(default=0, sa_type=BigInteger)
    unknown: int = Field(default=0, sa_type=BigInteger)


class ReconcileIndexSide(StateTable, table=True):
    """When one side's index was last rebuilt from a full stream (and its writers' lock)."""

    __tablename__ = "reconcile_index_side"

    domain: str = Field(primary_key=True, sa_type=String(20))
    side: str = Field(primary_key=True, sa_type=String(8))
    built_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


ENTRY = ReconcileIndexEntry.__table__  # type: ignore[attr-defined]
BUCKET = ReconcileBucket.__table__  # type: ignore[attr-defined]
SIDE = ReconcileIndexSide.__table__  # type: ignore[attr-defined]
#: The bulk inserts of :func:`apply` (driver-level executemany: ``workers.bulk_sql``).
_INSERT_ENTRY = insert(ENTRY)
_INSERT_BUCKET = insert(BUCKET)


def bucket_of(key: str) -> int:
    return int.from_bytes(blake2b(key.encode(), digest_size=4).digest(), "big") & (BUCKETS - 1)


def _signed(n: int) -> int:
    n &= _MASK
    return n - (1 << 64) if n & _SIGN else n


def digest_of(record, *, normalised: bool = False) -> tuple[int, int | None]:
    """(digest, natural-key hash) of a canonical record, as the readers compute them.
    ``normalised``: the record already is in legacy normal form (one the legacy ERP
    returned: ``normalise`` is idempotent there and costs more than the digest)."""
    if not normalised:
        record = normalise(record)
    return record_digest(record, normalised=True), natural_key_hash(natural_key(record))


#: ``apply``'s value for "the record is gone".
REMOVED = None


def _lock(conn: Connection, domain: str, side: str) -> bool:
    """Take the side's writer lock; False when its index was never built (nothing to keep)."""
    row = conn.execute(select(SIDE.c.built_at).where(
        and_(SIDE.c.domain == domain, SIDE.c.side == side)).with_for_update()).first()
    return row is not None


def apply(conn: Connection, domain: str, side: str,
          entries: Mapping[str, tuple[int | None, int | None] | None], *,
          lock: bool = True) -> int:
    """Set index entries (key -> (digest or None, nk), or ``REMOVED``) and move their
    buckets' figures by the difference.  Returns how many entries changed.  Does nothing
    when the side's index was never built."""
    if not entries or (lock and not _lock(conn, domain, side)):
        return 0
    keys = list(entries)
    old: dict[str, tuple[int | None, int | None]] = {}
    for start in range(0, len(keys), IN_CHUNK):
        chunk = keys[start:start + IN_CHUNK]
        for key, digest, nk in conn.execute(select(ENTRY.c.key, ENTRY.c.digest, ENTRY.c.nk).where(
                and_(ENTRY.c.domain == domain, ENTRY.c.side == side, ENTRY.c.key.in_(chunk)))):
            old[key] = (digest, nk)
    moves: dict[int, list[int]] = {}  # bucket -> [count, total, unknown] deltas
    gone, put = [], []
    for key, new in entries.items():
        before = old.get(key, REMOVED)
        if before == new:
            continue
        b = bucket_of(key)
        delta = moves.setdefault(b, [0, 0, 0])
        if before is not None:
            delta[0] -= 1
            if before[0] is None:
                delta[2] -= 1
            else:
                delta[1] -= before[0]
            gone.append(key)
        if new is not None:
            delta[0] += 1
            if new[0] is None:
                delta[2] += 1
            else:
                delta[1] += new[0]
            put.append({"domain": domain, "side": side, "key": key, "bucket": b,
                        "digest": new[0], "nk": new[1]})
    for start in range(0, len(gone), IN_CHUNK):
        conn.execute(delete(ENTRY).where(and_(ENTRY.c.domain == domain, ENTRY.c.side == side,
                                              ENTRY.c.key.in_(gone[start:start + IN_CHUNK]))))
    if put:
        executemany(conn, _INSERT_ENTRY, put)
    if moves:
        _move_buckets(conn, domain, side, moves)
    return len(gone) + len(put) - len(set(gone) & {p["key"] for p in put})


def _move_buckets(conn: Connection, domain: str, side: str,
                  moves: Mapping[int, list[int]]) -> None:
    buckets = list(moves)
    current: dict[int, tuple[int, int, int]] = {}
    for start in range(0, len(buckets), IN_CHUNK):
        chunk = buckets[start:start + IN_CHUNK]
        for b, count, total, unknown in conn.execute(
                select(BUCKET.c.bucket, BUCKET.c.count, BUCKET.c.total, BUCKET.c.unknown).where(
                    and_(BUCKET.c.domain == domain, BUCKET.c.side == side,
                         BUCKET.c.bucket.in_(chunk)))):
            current[b] = (count, total, unknown)
    rows = []
    for b, (dc, dt, du) in moves.items():
        count, total, unknown = current.get(b, (0, 0, 0))
        if count + dc == 0:
            continue  # an empty bucket has no row (as after a rebuild)
        rows.append({"domain": domain, "side": side, "bucket": b, "count": count + dc,
                     "total": _signed(total + dt), "unknown": unknown + du})
    for start in range(0, len(buckets), IN_CHUNK):
        chunk = buckets[start:start + IN_CHUNK]
        conn.execute(delete(BUCKET).where(and_(
            BUCKET.c.domain == domain, BUCKET.c.side == side, BUCKET.c.bucket.in_(chunk))))
    if rows:
        executemany(conn, _INSERT_BUCKET, rows)


def update(session_or_conn: Any, system: str, changes: Iterable[Any],
           records: Mapping[tuple[str, str], Any]) -> None:
    """The router's capture, once per batch inside the batch's state transaction: keep
    ``system``'s index in step with the changes it routes, from the records capture
    already read (``records``: (domain, key) -> canonical record, absent when gone).

    A change coexist wrote itself (an echo, which capture does not read back) makes the
    entry unknown: the next run verifies that record live and records what it read.
    """
    conn = session_or_conn if isinstance(session_or_conn, Connection) else (
        session_or_conn.connection())
    by_domain: dict[str, dict[str, tuple[int | None, int | None] | None]] = {}
    for change in changes:
        entries = by_domain.setdefault(change.domain, {})
        if change.op == "delete":
            entries[change.key] = REMOVED
        elif change.writer in COEXIST_WRITERS:
            entries[change.key] = (None, None)
        else:
            record = records.get((change.domain, change.key))
            if record is None:
                entries[change.key] = REMOVED  # gone by the time capture read it
                continue
            try:
                entries[change.key] = digest_of(record, normalised=system == "legacy")
            except Exception:  # noqa: BLE001 - a record that does not fit: unknown, verified
                entries[change.key] = (None, None)
    for domain, entries in by_domain.items():
        apply(conn, domain, system, entries)


# --------------------------------------------------------------------------- rebuild


class Rebuild:
    """One side's index written afresh from a full stream: ``add`` per item (held in
    compact arrays, ~25 bytes a record, while the stream runs: the state database may
    take one writer only, SQLite's BEGIN IMMEDIATE), then ``finish`` replaces the side's
    index in one transaction, the old one visible until it commits."""

    def __init__(self, engine, domain: str, side: str) -> None:
        self.engine, self.domain, self.side = engine, domain, side
        self.keys = bytearray()
        self.ends = array("Q")
        self.digests = array("q")
        self.nks = array("q")
        self.flags = bytearray()  # bit 0: digest unknown, bit 1: no natural key
        self.records = 0

    def add(self, key: str, digest: int | None, nk: int | None) -> None:
        self.keys += key.encode()
        self.ends.append(len(self.keys))
        self.digests.append(0 if digest is None else digest)
        self.nks.append(0 if nk is None else nk)
        self.flags.append((digest is None) | (nk is None) << 1)
        self.records += 1

    def _rows(self):
        """(key, bucket, digest, nk) per record, in the order added."""
        start = 0
        keys, ends, digests, nks, flags = self.keys, self.ends, self.digests, self.nks, self.flags
        for i in range(self.records):
            key = keys[start:ends[i]].decode()
            start = ends[i]
            f = flags[i]
            yield (key, bucket_of(key), None if f & 1 else digests[i], None if f & 2 else nks[i])

    def _write(self, conn: Connection) -> None:
        """This side's rows and bucket figures into the (emptied) tables."""
        count = [0] * BUCKETS
        total = [0] * BUCKETS
        unknown = [0] * BUCKETS
        domain, side = self.domain, self.side

        def rows():
            for key, b, digest, nk in self._rows():
                count[b] += 1
                if digest is None:
                    unknown[b] += 1
                else:
                    total[b] += digest
                yield (domain, side, key, b, digest, nk)

        _bulk_insert(conn, "reconcile_index",
                     ("domain", "side", "key", "bucket", "digest", "nk"), rows())
        _bulk_insert(conn, "reconcile_bucket",
                     ("domain", "side", "bucket", "count", "total", "unknown"),
                     ((domain, side, b, c, _signed(total[b]), unknown[b])
                      for b, c in enumerate(count) if c))

    def finish(self) -> None:
        """Replace this side's index (see :func:`finish_all`)."""
        finish_all([self])


def finish_all(rebuilds: list[Rebuild]) -> None:
    """Replace the indexes of every side in ``rebuilds`` (one state engine) in one
    transaction, the old ones visible until it commits (a cold run: both sides at once).

    On SQLite, when the rows written are at least as many as the rows the table keeps
    (other domains, sides not rebuilt), the table's secondary indexes are dropped first and
    created again from their own DDL once the rows are in (inside the same transaction):
    CREATE INDEX sorts, where inserting into three B-trees keyed by bucket, natural key
    and key scatters writes over every page of them (measured, 1M synthetic records a
    side, load ~3: 85 s CPU for the two sides' ``finish`` with the indexes kept, 33 s
    with this)."""
    if not rebuilds:
        return
    engine = rebuilds[0].engine
    with engine.begin() as conn:
        for rb in rebuilds:
            if not _lock(conn, rb.domain, rb.side):
                conn.execute(insert(SIDE).values(domain=rb.domain, side=rb.side, built_at=None))
        saved = _drop_indexes(conn, sum(rb.records for rb in rebuilds),
                              [(rb.domain, rb.side) for rb in rebuilds])
        # In primary-key order (domain, side, then key: each stream is sorted by key), so
        # every insert appends at the right edge of the key's B-tree ("cloud" before
        # "legacy") instead of splitting pages in front of the other side's rows.
        for rb in sorted(rebuilds, key=lambda rb: (rb.domain, rb.side)):
            conn.execute(delete(ENTRY).where(and_(ENTRY.c.domain == rb.domain,
                                                  ENTRY.c.side == rb.side)))
            conn.execute(delete(BUCKET).where(and_(BUCKET.c.domain == rb.domain,
                                                   BUCKET.c.side == rb.side)))
            rb._write(conn)
        for sql in saved:
            conn.exec_driver_sql(sql)
        for rb in rebuilds:
            conn.execute(SIDE.update().where(and_(SIDE.c.domain == rb.domain,
                                                  SIDE.c.side == rb.side)).values(
                built_at=datetime.now(UTC)))


def _drop_indexes(conn: Connection, writing: int, replaced: list[tuple[str, str]]) -> list[str]:
    """Drop ``reconcile_index``'s secondary indexes when ``writing`` rows are at least the
    rows kept (SQLite only); returns their DDL to create them again."""
    if conn.dialect.name != "sqlite":
        return []
    raw = conn.connection.driver_connection
    cur = raw.cursor()
    total = cur.execute('SELECT count(*) FROM "reconcile_index"').fetchone()[0]
    for domain, side in replaced:
        total -= cur.execute('SELECT count(*) FROM "reconcile_index" WHERE "domain" = ? '
                             'AND "side" = ?', (domain, side)).fetchone()[0]
    if writing < max(total, 1):
        return []
    saved = cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                        "tbl_name = 'reconcile_index' AND sql IS NOT NULL").fetchall()
    for name, _ in saved:
        cur.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in saved]


def _bulk_insert(conn: Connection, table: str, columns: tuple[str, ...], rows) -> None:
    """Rows (tuples) into ``table`` through the driver: COPY on PostgreSQL, executemany
    on SQLite (SQLAlchemy's per-row parameter handling costs more than the writing)."""
    raw = conn.connection.driver_connection
    cols = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cur, cur.copy(f'COPY "{table}" ({cols}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
        return
    cur = raw.cursor()
    sql = f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * len(columns))})'
    chunk: list[tuple] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= REBUILD_CHUNK_ROWS:
            cur.executemany(sql, chunk)
            chunk = []
    if chunk:
        cur.executemany(sql, chunk)


class IndexTee:
    """A side's full stream that also rebuilds that side's index (a cold run, ``--deep``)."""

    def __init__(self, engine, domain: str, side: str) -> None:
        self.rebuild = Rebuild(engine, domain, side)

    def wrap(self, items):
        add = self.rebuild.add
        for item in items:
            add(item.key, None if item.error else item.digest, item.nk)
            yield item


# --------------------------------------------------------------------------- reading


def built(engine, domain: str) -> bool:
    """Were both sides' indexes of ``domain`` built?"""
    with engine.connect() as conn:
        n = conn.execute(select(SIDE.c.side).where(and_(
            SIDE.c.domain == domain, SIDE.c.built_at.is_not(None)))).all()
    return {s for (s,) in n} >= set(SIDES)


def buckets(conn: Connection, domain: str, side: str) -> dict[int, tuple[int, int, int]]:
    """bucket -> (count, digest sum, unknown digests) of one side (read through the
    driver: up to 65,536 small rows, where SQLAlchemy's row handling would dominate)."""
    raw = conn.connection.driver_connection
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    cur = raw.cursor()
    cur.execute('SELECT "bucket", "count", "total", "unknown" FROM "reconcile_bucket" '
                f'WHERE "domain" = {mark} AND "side" = {mark}', (domain, side))
    return {b: (c, t, u) for b, c, t, u in cur.fetchall()}


def entries_in(conn: Connection, domain: str, side: str, bucket_ids: list[int],
               ) -> dict[str, tuple[int | None, int | None]]:
    out: dict[str, tuple[int | None, int | None]] = {}
    for start in range(0, len(bucket_ids), IN_CHUNK):
        chunk = bucket_ids[start:start + IN_CHUNK]
        for key, digest, nk in conn.execute(select(ENTRY.c.key, ENTRY.c.digest, ENTRY.c.nk).where(
                and_(ENTRY.c.domain == domain, ENTRY.c.side == side,
                     ENTRY.c.bucket.in_(chunk)))):
            out[key] = (digest, nk)
    return out


def sample_keys(conn: Connection, domain: str, side: str, n: int, seed: int,
                side_buckets: Mapping[int, tuple[int, int, int]] | None = None) -> list[str]:
    """About ``n`` keys of one side's index, from buckets picked by ``seed``
    (``side_buckets``: that side's ``buckets``, if already read)."""
    if n <= 0:
        return []
    import random

    if side_buckets is None:
        side_buckets = buckets(conn, domain, side)
    if not side_buckets:
        return []
    rng = random.Random(seed)
    picked: set[int] = set()
    total, tries = 0, 0
    while total < n and len(picked) < len(side_buckets) and tries < 4 * BUCKETS:
        tries += 1
        b = rng.randrange(BUCKETS)
        if b in side_buckets and b not in picked:
            picked.add(b)
            total += side_buckets[b][0]
    return sorted(entries_in(conn, domain, side, sorted(picked)))


def duplicate_groups(conn: Connection, domain: str, side: str) -> list[list[str]]:
    """Keys of one side sharing a natural-key hash, from the index.

    Two statements: the repeated hashes (one pass over the side's ``(domain, side, nk)``
    index, grouped), then the keys of those few by ``nk IN (...)`` literal lists.  Not one
    ``nk IN (... GROUP BY nk HAVING count(*) > 1)``: on a PostgreSQL whose statistics of
    a freshly filled index are missing (autovacuum off, no ANALYZE yet) the planner ran
    that semi-join as a nested loop re-aggregating the side for every entry, minutes at
    20,000 customers (the full chaos run).  And not a window count over the side
    (``count() OVER (PARTITION BY nk)``): SQLite buffers every row of the side through
    its window machinery (16.5 s CPU for two 1M-record sides against 1.0 s for this form,
    synthetic state; a warm 1M run's index stage went from 15.9 to 8.2 s CPU; the IN
    lookup below then took duplicate_groups from 7.9 to 1.5 s, measured alone)."""
    base = and_(ENTRY.c.domain == domain, ENTRY.c.side == side, ENTRY.c.nk.is_not(None))
    repeated = [nk for (nk,) in conn.execute(
        select(ENTRY.c.nk).where(base).group_by(ENTRY.c.nk).having(_count() > 1))]
    groups: dict[int, list[str]] = {}
    # No ``nk IS NOT NULL`` here (IN excludes NULL anyway): with it SQLite searched the
    # index by the range ``nk > NULL``, the whole side, once per chunk (0.27 s CPU a chunk
    # of 500 at 1M, 5 s in all) instead of one lookup per value.
    same_side = and_(ENTRY.c.domain == domain, ENTRY.c.side == side)
    for start in range(0, len(repeated), IN_CHUNK):
        for key, nk in conn.execute(select(ENTRY.c.key, ENTRY.c.nk).where(
                and_(same_side, ENTRY.c.nk.in_(repeated[start:start + IN_CHUNK])))):
            groups.setdefault(nk, []).append(key)
    return sorted(sorted(g) for g in groups.values())


def _count():
    from sqlalchemy import func
    return func.count()


def orphan_xref(conn: Connection, domain: str):
    """xref entries of ``domain`` whose key is in neither index."""
    from workers.xref_sql import XrefRow

    x = XrefRow.__table__  # type: ignore[attr-defined]
    known = select(ENTRY.c.key).where(and_(ENTRY.c.domain == domain,
                                           ENTRY.c.key == x.c.canonical_key))
    return conn.execute(select(x.c.canonical_key, x.c.legacy_key, x.c.cloud_id).where(and_(
        x.c.domain == domain, ~known.exists())).order_by(x.c.canonical_key)).all()


def xref_keys(conn: Connection, domain: str, keys: list[str]) -> set[str]:
    from workers.xref_sql import XrefRow

    x = XrefRow.__table__  # type: ignore[attr-defined]
    out: set[str] = set()
    for start in range(0, len(keys), IN_CHUNK):
        out.update(k for (k,) in conn.execute(select(x.c.canonical_key).where(and_(
            x.c.domain == domain, x.c.canonical_key.in_(keys[start:start + IN_CHUNK])))))
    return out


__all__ = ["BUCKETS", "Rebuild", "apply", "bucket_of", "built", "buckets", "digest_of",
           "duplicate_groups", "entries_in", "finish_all", "orphan_xref", "sample_keys", "update",
           "xref_keys"]
