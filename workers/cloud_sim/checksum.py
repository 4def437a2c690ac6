"""The simulator's reconciliation endpoints: segment checksums and key-range reads.

``GET /reconcile/{set}/segments?size=N``
    brings the digest cache up to date, then answers the checksum of every
    run of ``size`` live records in number order::

        {"records": n, "refreshed": k,
         "segments": [[lo, count, sum], ...],      # range [lo, next lo); the first lo is ""
         "duplicates": [[number, number], ...]}    # live records sharing a natural key

``GET /reconcile/{set}/segments?from=A&to=B&parts=K``
    up to ``K`` segments covering ``[A, B)`` (``to`` omitted: to the end),
    boundaries chosen from the records in the range; no cache refresh.
``GET /reconcile/{set}/records?from=A&to=B``
    the live documents in ``[A, B)`` as NDJSON, sorted by number, like ``/export``.
``POST /reconcile/{set}/segments`` ``{"ranges": [[A, B], ...], "parts": K}``
    the split of many ranges in one round trip: ``{"segments": [[...], ...]}``, one
    list per range (``B`` null: to the end).
``POST /reconcile/{set}/records`` ``{"ranges": [[A, B], ...]}``
    the documents of many sorted, disjoint ranges in one NDJSON stream.

Digests (``coexistence.reconcile.digest.record_digest``: canonical, then the
legacy normalisation, then the legacy row form) cost a translation each, so
they are cached in the table ``reconcile_digest`` of the simulator's own
database, keyed by record id and revision: a nightly run re-digests only the
records written since the last one.  A record changed after the refresh has a
stale revision and drops out of the sums, so its segment differs and is
compared record by record: the cache can cost time, never a wrong answer.
The refresh runs on the server's one thread, so other requests wait for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from coexistence.errors import TranslationError
from coexistence.reconcile.digest import add_digest, natural_key, natural_key_hash, record_digest
from coexistence.reconcile.tolerances import normalise
from coexistence.translate.cloud import canonical_from_json
from workers.cloud_sim.http import Request, Response
from workers.cloud_sim.protocol import (
    ApiError,
    int_param,
    json_response,
    parse_json,
    resource_model,
)
from workers.cloud_sim.store import EXPORT_CHUNK_ROWS, Store, etag_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS reconcile_digest (
    entity_set TEXT NOT NULL,
    id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    digest INTEGER NOT NULL,
    nk INTEGER,
    PRIMARY KEY (entity_set, id)
);
-- Covers the scans below (live records in number order with their revision), so
-- they never read the stored documents.
CREATE INDEX IF NOT EXISTS reconcile_entities_scan
    ON entities (entity_set, number, deleted, id, rev);
CREATE INDEX IF NOT EXISTS reconcile_digest_nk ON reconcile_digest (entity_set, nk);
"""

#: Records digested per write transaction while refreshing the cache.
REFRESH_CHUNK_ROWS = 2000
#: Largest segment size and number of parts a request may ask for.
MAX_SEGMENT_RECORDS = 1_000_000
MAX_PARTS = 1000
#: A digest that can match no legacy record: a document that does not translate.
UNREADABLE_DIGEST = 0

_PATH = re.compile(r"^/reconcile/([A-Za-z]+)/(segments|records)$")
_CURRENT = ("FROM entities e INDEXED BY reconcile_entities_scan JOIN reconcile_digest d "
            "ON d.entity_set = e.entity_set AND d.id = e.id AND d.rev = e.rev "
            "WHERE e.entity_set = ? AND e.deleted = 0")


def handle(store: Store, req: Request, path: str) -> Response:
    """Answer one ``/reconcile/...`` request at ``path`` (see the module docstring)."""
    match = _PATH.match(path)
    if not match or req.method not in ("GET", "POST"):
        raise ApiError(404, "NotFound", f"no reconcile resource {req.method} {path}")
    entity_set, what = match.groups()
    domain = resource_model(entity_set).domain
    _ensure_schema(store)
    if req.method == "POST":
        body = parse_json(req.body)
        ranges = _ranges(body)
        if what == "records":
            return Response(200, stream=_records_many(store, entity_set, ranges),
                            content_type="application/x-ndjson")
        parts = int_param({"parts": str(body.get("parts", 8))}, "parts", 8, MAX_PARTS)
        return json_response(200, {"segments": [_split(store, entity_set, lo, hi, parts)
                                                for lo, hi in ranges]})
    if what == "records":
        return Response(200, stream=_records(store, entity_set, req.query.get("from", ""),
                                             req.query.get("to")),
                        content_type="application/x-ndjson")
    if "size" in req.query:
        size = int_param(req.query, "size", 1000, MAX_SEGMENT_RECORDS)
        refreshed = _refresh(store, entity_set, domain)
        return json_response(200, {**_segments(store, entity_set, size), "refreshed": refreshed,
                                   "duplicates": _duplicates(store, entity_set)})
    parts = int_param(req.query, "parts", 8, MAX_PARTS)
    return json_response(200, {"segments": _split(store, entity_set, req.query.get("from", ""),
                                                  req.query.get("to"), parts)})


def _ranges(body) -> list[tuple[str, str | None]]:
    ranges = body.get("ranges") if isinstance(body, dict) else None
    if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
            and (r[1] is None or isinstance(r[1], str)) for r in ranges):
        raise ApiError(400, "BadRequest", 'body must be {"ranges": [[from, to or null], ...]}',
                       ["ranges"])
    return [(lo, hi) for lo, hi in ranges]


def _records_many(store: Store, entity_set: str,
                  ranges: list[tuple[str, str | None]]) -> Iterator[bytes]:
    for lo, hi in ranges:
        yield from _records(store, entity_set, lo, hi)


def _ensure_schema(store: Store) -> None:
    if not getattr(store, "_reconcile_schema", False):
        store.db.executescript(SCHEMA)
        store._reconcile_schema = True  # type: ignore[attr-defined]


def _refresh(store: Store, entity_set: str, domain: str) -> int:
    """Digest every live record whose revision the cache does not hold; returns how many."""
    db = store.db
    stale = db.execute(
        "SELECT e.id FROM entities e INDEXED BY reconcile_entities_scan "
        "LEFT JOIN reconcile_digest d ON d.entity_set = e.entity_set AND d.id = e.id "
        "WHERE e.entity_set = ? AND e.deleted = 0 AND (d.rev IS NULL OR d.rev != e.rev)",
        (entity_set,),
    ).fetchall()
    for start in range(0, len(stale), REFRESH_CHUNK_ROWS):
        rows = []
        ids = [id_ for (id_,) in stale[start:start + REFRESH_CHUNK_ROWS]]
        docs = db.execute(
            f"SELECT id, rev, data FROM entities WHERE entity_set = ? AND id IN "
            f"({','.join('?' * len(ids))})", (entity_set, *ids)).fetchall()
        for id_, rev, data in docs:
            try:
                record = normalise(canonical_from_json(domain, f'{{"id":"{id_}",{data[1:]}'))
                digest = record_digest(record, normalised=True)
                nk = natural_key_hash(natural_key(record))
            except TranslationError:
                digest, nk = UNREADABLE_DIGEST, None
            rows.append((entity_set, id_, rev, digest, nk))
        store.begin()
        try:
            db.executemany("INSERT OR REPLACE INTO reconcile_digest "
                           "(entity_set, id, rev, digest, nk) VALUES (?,?,?,?,?)", rows)
            store.commit()
        except BaseException:
            store.rollback()
            raise
    return len(stale)


def _segments(store: Store, entity_set: str, size: int) -> dict:
    segments: list[list] = []
    n = 0
    total = count = 0
    lo = ""
    for number, digest in store.db.execute(
            f"SELECT e.number, d.digest {_CURRENT} ORDER BY e.number", (entity_set,)):
        if count == size:
            segments.append([lo, count, total])
            lo, count, total = number, 0, 0
        count += 1
        total = add_digest(total, digest)
        n += 1
    segments.append([lo, count, total])
    return {"records": n, "segments": segments}


def _split(store: Store, entity_set: str, lo: str, hi: str | None, parts: int) -> list[list]:
    sql = f"SELECT e.number, d.digest {_CURRENT} AND e.number >= ?"
    args: list = [entity_set, lo]
    if hi is not None:
        sql += " AND e.number < ?"
        args.append(hi)
    rows = store.db.execute(sql + " ORDER BY e.number", args).fetchall()
    step = max(1, -(-len(rows) // parts))
    out = []
    for start in range(0, max(len(rows), 1), step):
        chunk = rows[start:start + step]
        total = 0
        for _, digest in chunk:
            total = add_digest(total, digest)
        out.append([lo if start == 0 else chunk[0][0], len(chunk), total])
    return out


def _duplicates(store: Store, entity_set: str) -> list[list[str]]:
    # Candidates from the digest table alone (an index scan); a candidate may involve
    # stale or deleted records, so each is checked against the live records.
    candidates = [nk for (nk,) in store.db.execute(
        "SELECT nk FROM reconcile_digest WHERE entity_set = ? AND nk IS NOT NULL "
        "GROUP BY nk HAVING COUNT(*) > 1", (entity_set,))]
    groups: dict[int, list[str]] = {}
    for start in range(0, len(candidates), 500):
        chunk = candidates[start:start + 500]
        for nk, number in store.db.execute(
                f"SELECT d.nk, e.number {_CURRENT} AND d.nk IN ({','.join('?' * len(chunk))}) "
                "ORDER BY e.number", (entity_set, *chunk)):
            groups.setdefault(nk, []).append(number)
    return sorted(g for g in groups.values() if len(g) > 1)


def _records(store: Store, entity_set: str, lo: str, hi: str | None) -> Iterator[bytes]:
    first = True
    while True:
        sql = ("SELECT id, rev, data, modified, number FROM entities WHERE entity_set = ? "
               "AND deleted = 0 AND number " + (">= ?" if first else "> ?"))
        args: list = [entity_set, lo]
        if hi is not None:
            sql += " AND number < ?"
            args.append(hi)
        rows = store.db.execute(sql + " ORDER BY number LIMIT ?",
                                [*args, EXPORT_CHUNK_ROWS]).fetchall()
        if not rows:
            return
        yield "".join(
            f'{{"@odata.etag":{json.dumps(etag_of(rev))},"id":"{id_}",{data[1:-1]},'
            f'"lastModifiedDateTime":"{modified}"}}\n'
            for id_, rev, data, modified, _ in rows).encode()
        lo, first = rows[-1][4], False
