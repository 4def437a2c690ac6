"""Running one domain's reconciliation: checksum first, bisect, or stream in full.

``reconcile_domain`` feeds a ``coexistence.reconcile.Reconciler`` every key of
the union of both ERPs, in key order:

* **checksum** (the cloud answers ``/reconcile`` checksums): the cloud's
  checksums of runs of ``segment_records`` records come in one request; the
  legacy rows stream past (digested, never translated unless compared) and
  each run is checked against its cloud checksum.  A run that agrees is
  counted unchanged without a cloud record crossing the network; runs that
  differ are bisected (``bisect_parts`` pieces per level) down to
  ``bisect_min_records``, a window of ``window_segments`` runs at a time so
  that each level and the fetch of the differing pieces is one request per
  window, and only those pieces are fetched and compared.  When more than
  ``fallback_share`` of the records seen so far had to be fetched, the rest of
  the domain is compared in one stream instead.
* **full**: both sides stream in full (any cloud ERP, through its export).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from coexistence.reconcile.engine import Item, Reconciler, merge
from coexistence.reconcile.findings import Finding, Report
from coexistence.reconcile.segments import bisect_window, same
from coexistence.reconcile.tolerances import tolerances_for
from coexistence.xref import XrefEntry
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader

#: Records per checksum segment the cloud is asked for first.
CHECKSUM_SEGMENT_RECORDS = 128
#: Pieces a differing segment is split into per level, and the size at which a
#: piece is fetched rather than split again.
BISECT_PARTS = 8
BISECT_MIN_RECORDS = 16
#: Segments bisected together: each bisection level and the fetch of the differing
#: pieces cost one request per window (memory: the window's legacy records).
WINDOW_SEGMENTS = 64
#: Share of the records seen so far that had to be fetched from the cloud above which
#: the rest is streamed in full, judged after at least this many segments.
FALLBACK_FETCHED_SHARE = 0.5
FALLBACK_MIN_SEGMENTS = 64
#: Legacy records beyond the cloud's count that a segment may buffer before it is
#: compared record by record as it streams (bounds memory when the cloud lacks a range).
OVERFLOW_SLACK_RECORDS = 1024
#: Items between two looks at the clock and two progress updates.
TICK_RECORDS = 1000

MODES = ("auto", "index", "checksum", "full")


class ReconcileTimeout(Exception):
    """The run passed its ``--timeout``."""


class ChecksumsUnavailable(Exception):
    """``--mode checksum`` against a cloud ERP that offers no checksums."""


@dataclass
class Tuning:
    segment_records: int = CHECKSUM_SEGMENT_RECORDS
    bisect_parts: int = BISECT_PARTS
    bisect_min_records: int = BISECT_MIN_RECORDS
    fallback_share: float = FALLBACK_FETCHED_SHARE
    fallback_min_segments: int = FALLBACK_MIN_SEGMENTS
    window_segments: int = WINDOW_SEGMENTS
    overflow_slack: int = OVERFLOW_SLACK_RECORDS


class _Peek:
    """A legacy item iterator with one item of look-ahead, a clock and a progress tick."""

    def __init__(self, items: Iterable[Item], rec: Reconciler, deadline: float | None,
                 progress: Callable[[int], None] | None) -> None:
        self._it = iter(items)
        self._rec = rec
        self._deadline = deadline
        self._progress = progress
        self._n = 0
        self.head = self._next()

    def _next(self) -> Item | None:
        item = next(self._it, None)
        if item is not None:
            self._rec.observe("legacy", item)
            self._n += 1
            if self._n % TICK_RECORDS == 0:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    raise ReconcileTimeout
                if self._progress is not None:
                    self._progress(TICK_RECORDS)
        return item

    def take(self) -> Item:
        item, self.head = self.head, self._next()
        return item  # type: ignore[return-value]

    def below(self, hi: str | None) -> Iterator[Item]:
        """Items with key < ``hi`` (all when ``hi`` is None)."""
        while self.head is not None and (hi is None or self.head.key < hi):
            yield self.take()

    def done(self) -> None:
        if self._progress is not None:
            self._progress(self._n % TICK_RECORDS)
            self._n -= self._n % TICK_RECORDS


def reconcile_domain(
    domain: str,
    legacy: LegacyReader,
    cloud: CloudReader,
    *,
    xref: Iterable[XrefEntry] = (),
    mode: str = "auto",
    on_finding: Callable[[Finding], None] = lambda f: None,
    progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
    tuning: Tuning | None = None,
    rebuild_index=None,
) -> Report:
    """Compare ``domain`` in both ERPs; findings go to ``on_finding`` as found.

    ``rebuild_index`` (a state engine; full mode only): the streams also rebuild both
    sides' digest indexes (``workers.reconcile.index``), committed when the run ends."""
    tuning = tuning or Tuning()
    if rebuild_index is None:
        return _reconcile_domain(domain, legacy, cloud, xref=xref, mode=mode,
                                 on_finding=on_finding, progress=progress, deadline=deadline,
                                 tuning=tuning, tees=None)
    from workers.reconcile.index import IndexTee, finish_all

    tees = {side: IndexTee(rebuild_index, domain, side) for side in ("legacy", "cloud")}
    report = _reconcile_domain(domain, legacy, cloud, xref=xref, mode="full",
                               on_finding=on_finding, progress=progress,
                               deadline=deadline, tuning=tuning, tees=tees)
    finish_all([tee.rebuild for tee in tees.values()])  # both sides in one transaction
    report.mode = "full+index"
    return report


def _reconcile_domain(domain, legacy, cloud, *, xref, mode, on_finding, progress, deadline,
                      tuning, tees) -> Report:
    if deadline is not None and time.monotonic() > deadline:
        raise ReconcileTimeout
    rec = Reconciler(domain, xref=xref, on_finding=on_finding)
    report = Report(domain, tolerances=tolerances_for(domain))
    cloud.records_fetched = cloud.requests = 0  # per domain: the fallback judges by them
    legacy_items = legacy.items(domain)
    if tees is not None:
        legacy_items = tees["legacy"].wrap(legacy_items)
    items = _Peek(legacy_items, rec, deadline, progress)
    checks = cloud.segments(domain, tuning.segment_records) if mode != "full" else None
    if checks is None and mode == "checksum":
        raise ChecksumsUnavailable(f"the cloud ERP offers no checksums for {domain}; "
                                   "use --mode full or auto")
    if checks is None:
        report.mode = "full"
        cloud_stream = cloud.stream(domain)
        if tees is not None:
            cloud_stream = tees["cloud"].wrap(cloud_stream)
        cloud_items = _observed(cloud_stream, rec, deadline)
        for pair in merge(items.below(None), cloud_items):
            rec.pair(*pair)
    else:
        report.mode = "checksum"
        segments, duplicates = checks
        rec.cloud_duplicates(duplicates)
        _by_checksum(domain, segments, items, cloud, rec, report, tuning, deadline)
    items.done()
    report.counts = rec.finish()
    report.cloud_records_fetched = cloud.records_fetched
    if rec.pairing_truncated:
        report.tolerances += ("natural-key pairing stopped after "
                              f"{rec.pending_max} one-sided records per side",)
    return report


def _observed(items: Iterator[Item], rec: Reconciler, deadline: float | None) -> Iterator[Item]:
    for n, item in enumerate(items, 1):
        rec.observe("cloud", item)
        if n % TICK_RECORDS == 0 and deadline is not None and time.monotonic() > deadline:
            raise ReconcileTimeout
        yield item


def _by_checksum(domain, segments, items: _Peek, cloud: CloudReader, rec: Reconciler,
                 report: Report, tuning: Tuning, deadline: float | None) -> None:
    def split_many(ranges, parts):
        if deadline is not None and time.monotonic() > deadline:
            raise ReconcileTimeout
        return cloud.split_many(domain, ranges, parts)

    window: list = []
    seen = [0]

    def flush() -> None:
        results = bisect_window(window, split_many, parts=tuning.bisect_parts,
                                min_records=tuning.bisect_min_records)
        window.clear()
        ranges = [(sub.lo, sub.hi) for sub, _, differs in results if differs]
        fetched = _Ahead(cloud.records_many(domain, ranges) if ranges else iter(()))
        for sub, sub_items, differs in results:
            if differs:
                for pair in merge(sub_items, fetched.below(sub.hi)):
                    rec.pair(*pair)
            else:
                rec.equal(sub_items)

    differing = 0
    for n, seg in enumerate(segments, 1):
        if deadline is not None and time.monotonic() > deadline:
            raise ReconcileTimeout
        report.segments += 1
        buf: list[Item] = []
        limit = seg.count + tuning.overflow_slack
        for item in items.below(seg.hi):
            buf.append(item)
            if len(buf) > limit:
                break
        seen[0] += len(buf)
        if len(buf) > limit:
            # Far more legacy records than the cloud has here: compare as they stream.
            flush()
            differing += 1
            rest = _chain(buf, items.below(seg.hi))
            for pair in merge(rest, cloud.records(domain, seg.lo, seg.hi)):
                rec.pair(*pair)
        else:
            if not same(seg, buf):
                differing += 1
            window.append((seg, buf))
            if len(window) >= tuning.window_segments:
                flush()
        report.segments_differing = differing
        if (seg.hi is not None and n >= tuning.fallback_min_segments
                and cloud.records_fetched > tuning.fallback_share * max(seen[0], 1)):
            # Bisection is fetching most records anyway: one stream is cheaper.
            flush()
            report.fell_back = True
            for pair in merge(items.below(None), cloud.records(domain, seg.hi, None)):
                rec.pair(*pair)
            return
    flush()


class _Ahead:
    """Cloud items of many ranges from one stream, handed out range by range."""

    def __init__(self, stream: Iterator[Item]) -> None:
        self._it = stream
        self.head = next(stream, None)

    def below(self, hi: str | None) -> Iterator[Item]:
        while self.head is not None and (hi is None or self.head.key < hi):
            item, self.head = self.head, next(self._it, None)
            yield item


def _chain(first: list[Item], rest: Iterator[Item]) -> Iterator[Item]:
    yield from first
    yield from rest
