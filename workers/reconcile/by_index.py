"""Reconciliation from the digest indexes (``workers.reconcile.index``), against any cloud.

Warm run (``index`` mode, both indexes built):

1. the two sides' bucket figures are compared (count, digest sum, unknown digests),
   a few hundred thousand small rows at most, read from coexist's own state;
2. in the buckets that differ, the index entries of both sides are compared key by
   key; a key whose digests differ, that one side lacks or whose digest is unknown is
   a *suspect*;
3. a sample of keys (``sample`` per side, from random buckets) joins the suspects, so
   that every run also checks the index itself against the live systems;
4. suspects are read from the live systems through their ordinary read APIs (the
   legacy adapter's ``get_many``, the cloud adapter's ``get`` per record: no checksum
   endpoint) and compared field by field as in a full run;
5. what was read is written back into the index (so an echo or a corrected record is
   known from then on), and the legacy ERP's record count is compared with the index.

Duplicates (natural-key hashes) and orphan xref entries come from SQL over the index
and the xref table.  What this mode cannot see: a write that bypassed capture (a
TRUNCATE, a trigger disabled, a cloud change without a feed entry) in a record the
sample does not pick, except that a legacy record count that differs from the index
is reported.  ``--deep`` streams both ERPs in full and rebuilds the indexes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from coexistence.errors import CoexistError
from coexistence.reconcile.engine import Item, Reconciler
from coexistence.reconcile.findings import Finding, Kind, Report
from coexistence.reconcile.tolerances import tolerances_for
from coexistence.xref import XrefEntry
from workers.reconcile import index
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader
from workers.reconcile.runner import ReconcileTimeout

#: Keys per side verified live on every run beyond the suspects.
SAMPLE_RECORDS = 200
#: Keys per legacy get_many.
LEGACY_READ_CHUNK = 500
#: Keys verified live together (their records of both sides held at once).
VERIFY_CHUNK = 1000


@dataclass
class IndexStats:
    buckets_differing: int = 0
    suspects: int = 0
    sampled: int = 0
    sample_stale: int = 0
    legacy_live_count: int | None = None
    legacy_index_count: int = 0
    #: Stage -> (wall seconds, this process's CPU seconds, seconds this thread waited
    #: runnable for a CPU), in run order: where a run's time goes.  The wall beyond CPU and
    #: run-queue wait is time blocked: waiting on the ERPs or the disk.  The run-queue wait
    #: is ``None`` where the kernel does not say (``/proc/thread-self/schedstat``).
    stages: dict[str, tuple[float, float, float | None]] = field(default_factory=dict)

    def lap(self, stage: str) -> None:
        """Close ``stage``: the time since the previous lap (or the start) is added to it."""
        wall, cpu, queued = time.perf_counter(), time.process_time(), run_queue_s()
        last = getattr(self, "_last", None)
        if last is not None:
            # A stage run several times (chunk by chunk) adds up.
            w0, c0, q0 = self.stages.get(stage, (0.0, 0.0, 0.0))
            q = None if queued is None or last[2] is None or q0 is None else (
                round(q0 + queued - last[2], 3))
            self.stages[stage] = (round(w0 + wall - last[0], 3), round(c0 + cpu - last[1], 3), q)
        self._last = (wall, cpu, queued)


def run_queue_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux's
    schedstat), or ``None``: on a loaded machine, the part of a wall that is neither this
    process's CPU nor waiting on I/O."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def reconcile_by_index(domain: str, legacy: LegacyReader, cloud: CloudReader, state, *,
                       on_finding: Callable[[Finding], None] = lambda f: None,
                       sample: int = SAMPLE_RECORDS, seed: int | None = None,
                       deadline: float | None = None,
                       timeout_exc: Callable[[], Exception] = ReconcileTimeout,
                       ) -> tuple[Report, IndexStats]:
    """Compare ``domain`` through both indexes, verifying only suspects live."""
    stats = IndexStats()
    stats.lap("start")  # the clock starts; no stage of its own
    report = Report(domain, tolerances=tolerances_for(domain), mode="index")
    seed = time.time_ns() if seed is None else seed

    def check_clock() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise timeout_exc()

    with state.connect() as conn:
        sides = {side: index.buckets(conn, domain, side) for side in index.SIDES}
        differing = sorted(b for b in sides["legacy"].keys() | sides["cloud"].keys()
                           if sides["legacy"].get(b) != sides["cloud"].get(b)
                           or sides["legacy"][b][2] or sides["cloud"][b][2])
        stats.buckets_differing = len(differing)
        entries = {side: index.entries_in(conn, domain, side, differing) for side in index.SIDES}
        suspects = {k for k in entries["legacy"].keys() | entries["cloud"].keys()
                    if entries["legacy"].get(k, (None,))[0] is None
                    or entries["legacy"].get(k) != entries["cloud"].get(k)}
        stats.suspects = len(suspects)
        sampled: set[str] = set()
        for i, side in enumerate(index.SIDES):
            sampled.update(index.sample_keys(conn, domain, side, sample, seed + i,
                                             sides[side]))
        sampled -= suspects
        stats.sampled = len(sampled)
        totals = {side: sum(c for c, _, _ in sides[side].values()) for side in index.SIDES}
        dup_groups = {side: index.duplicate_groups(conn, domain, side) for side in index.SIDES}
        orphans = index.orphan_xref(conn, domain)
        check = sorted(suspects | sampled)
        with_xref = index.xref_keys(conn, domain, check)
    stats.lap("index")
    check_clock()
    stats.legacy_index_count = totals["legacy"]

    # Suspects and sample verified live a chunk at a time, in key order: only one chunk's
    # records are held (at 1 % drift of 1M records, ~20,000 records read live).
    held = _held(state, domain, sampled)
    indexed = {side: {k for k in check if k in entries[side] or k in held[side]}
               for side in index.SIDES}
    rec = Reconciler(domain, xref=(XrefEntry(domain, k) for k in sorted(with_xref)),
                     on_finding=on_finding)
    back: dict[str, dict[str, tuple[int | None, int | None] | None]] = {
        side: {} for side in index.SIDES}
    live_legacy = 0
    for start in range(0, len(check), VERIFY_CHUNK):
        chunk = check[start:start + VERIFY_CHUNK]
        live_l = _legacy_items(legacy, domain, chunk, check_clock)
        stats.lap("legacy_live")
        live_c = _cloud_items(cloud, domain, chunk, check_clock)
        stats.lap("cloud_live")
        report.cloud_records_fetched += len(live_c)
        live_legacy += len(live_l)
        for key in chunk:
            # A sampled key whose live digest is not what the index holds: the index
            # missed a write (one that bypassed capture, or an echo not yet verified).
            if key in sampled:
                for side, live in (("legacy", live_l), ("cloud", live_c)):
                    item = live.get(key)
                    if item is None:
                        stale = key in held[side]
                    else:
                        stale = held[side].get(key, (None,))[0] != (
                            None if item.error else item.digest)
                    stats.sample_stale += stale
            a, b = live_l.get(key), live_c.get(key)
            if a is not None or b is not None:
                rec.pair(a, b)
            # (Gone from both since the index knew it: an xref entry of it is an orphan.)
            for side, live in (("legacy", live_l), ("cloud", live_c)):
                item = live.get(key)
                back[side][key] = (index.REMOVED if item is None
                                   else (None if item.error else item.digest, item.nk))
        stats.lap("match")
    for side, groups in dup_groups.items():
        rec.side_duplicates(side, groups)
    counts = rec.finish()
    for canonical_key, legacy_key, cloud_id in orphans:
        counts.orphans += 1
        counts.findings += 1
        on_finding(Finding(Kind.ORPHAN_XREF, domain, canonical_key, legacy=legacy_key,
                           cloud=cloud_id, detail="xref entry matches no record in either ERP"))
    # Every key not checked is in both indexes with equal, known digests.
    counts.rows_legacy += totals["legacy"] - len(indexed["legacy"])
    counts.rows_cloud += totals["cloud"] - len(indexed["cloud"])
    counts.unchanged += totals["legacy"] - len(indexed["legacy"])
    report.counts = counts
    report.segments = len(sides["legacy"].keys() | sides["cloud"].keys())
    report.segments_differing = stats.buckets_differing

    stats.lap("match")
    # What was read goes back into the index.
    with state.begin() as conn:
        for side in index.SIDES:
            index.apply(conn, domain, side, back[side])
    stats.lap("write_back")
    stats.legacy_live_count = _legacy_count(legacy, domain)
    stats.lap("legacy_count")
    now_indexed = totals["legacy"] - len(indexed["legacy"]) + live_legacy
    if stats.legacy_live_count != now_indexed:
        report.tolerances += (
            f"the legacy ERP holds {stats.legacy_live_count} {domain} records, the index "
            f"{now_indexed}: writes bypassed capture; run --deep",)
    if stats.sample_stale:
        report.tolerances += (
            f"{stats.sample_stale} of {2 * stats.sampled} sampled index entries differed from "
            "the live systems (writes that bypassed capture?); run --deep",)
    return report, stats


def _held(state, domain: str, keys: Iterable[str]) -> dict[str, dict]:
    from sqlalchemy import and_

    keys = list(keys)
    out: dict[str, dict] = {side: {} for side in index.SIDES}
    with state.connect() as conn:
        for start in range(0, len(keys), index.IN_CHUNK):
            for side, key, digest, nk in conn.execute(
                    select(index.ENTRY.c.side, index.ENTRY.c.key, index.ENTRY.c.digest,
                           index.ENTRY.c.nk).where(and_(
                               index.ENTRY.c.domain == domain,
                               index.ENTRY.c.key.in_(keys[start:start + index.IN_CHUNK])))):
                out[side][key] = (digest, nk)
    return out


def _legacy_items(legacy: LegacyReader, domain: str, keys: list[str],
                  check_clock: Callable[[], None]) -> dict[str, Item]:
    out: dict[str, Item] = {}
    erp = legacy.erp
    for start in range(0, len(keys), LEGACY_READ_CHUNK):
        check_clock()
        chunk = keys[start:start + LEGACY_READ_CHUNK]
        try:
            out.update(legacy.items_of(domain, chunk))
            continue
        except CoexistError:
            found = {}
            for key in chunk:
                try:
                    record = erp.get(domain, key)
                except CoexistError as exc:
                    out[key] = Item(key, 0, None, error=str(exc))
                    continue
                if record is not None:
                    found[key] = record
        for key, record in found.items():
            out[key] = _item(record)
    return out


def _cloud_items(cloud: CloudReader, domain: str, keys: list[str],
                 check_clock: Callable[[], None]) -> dict[str, Item]:
    out: dict[str, Item] = {}
    step = cloud.BATCH_READS
    for start in range(0, len(keys), step):
        check_clock()
        out.update(cloud.items_of(domain, keys[start:start + step]))
    return out


def _item(record) -> Item:
    from coexistence.reconcile.tolerances import normalise

    record = normalise(record)
    digest, nk = index.digest_of(record, normalised=True)
    return Item(record.key, digest, nk, record=record)


def _legacy_count(legacy: LegacyReader, domain: str) -> int | None:
    d = legacy.erp._domain(domain)
    with legacy.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(d.header)).scalar()
