"""The backfill into an ERP that holds nothing yet (the initial load; a rollback's
backfill of an emptied legacy ERP), with no cold reconciliation before it.

An empty side has no record to compare with, so what a reconciliation would find is
known as the other side streams: ``coexist reconcile --repair --yes`` runs one pass.
The backfill's own merge (the empty side's stream is empty, or holds what an
interrupted run of this backfill wrote) also feeds a ``Reconciler`` with every pair,
so the run's report (counts; findings: missing records, records that do not
translate, duplicates by natural key, orphan xref entries) is the one the cold
reconciliation would have given.  Natural-key pairing is not done: it pairs records
found on one side only on *both* sides, and the empty side has none.  So the memory
of a cold run (up to ``PENDING_MAX_RECORDS`` records held for pairing, both streams'
duplicate trackers) is not needed: a few tens of bytes per record are.

Indexes: on a fresh run (no checkpoint) the empty side's digest index is built
empty at once, and each batch's commit adds what it wrote (as for any backfill);
the source side's is rebuilt from its stream when the stream has ended.  A resumed
run builds neither: the next reconciliation is then cold and builds both.

Which side is empty is decided by one read of each ERP (``empty_side``): the cloud's
export after the checkpoint's highest key (one request against any cloud), the
legacy ERP's first row after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from sqlalchemy import literal, select

from coexistence.errors import CoexistError
from coexistence.reconcile.engine import Item, Reconciler
from coexistence.reconcile.findings import Finding, Report
from coexistence.reconcile.tolerances import tolerances_for
from coexistence.xref import XrefEntry
from workers.reconcile import checkpoint
from workers.reconcile.backfill import Backfill, _read_engine

#: Report mode of a run that found one side empty and reconciled while it backfilled.
MODE = "one-sided"
#: Xref rows per keyset page read for the orphan check.
XREF_PAGE_ROWS = 5000


def empty_side(legacy, cloud, state, domain: str) -> str | None:
    """``"cloud"`` or ``"legacy"``: the side that holds no record of ``domain`` after
    the highest key of the domain's backfill checkpoint (none: no record at all), so a
    backfill into it needs no reconciliation first; ``None`` when both hold records."""
    with state.connect() as conn:
        marks = checkpoint.load(conn, domain)
    after = max((k for m in marks.values() for k in (m.last_key, m.pending_hi) if k),
                default=None)
    if not _cloud_holds(cloud, domain, after):
        return "cloud"
    if not _legacy_holds(legacy, domain, after):
        return "legacy"
    return None


def _cloud_holds(cloud, domain: str, after: str | None) -> bool:
    stream = cloud.stream(domain, after=after or "")
    try:
        return next(stream, None) is not None
    finally:
        stream.close()


def _legacy_holds(legacy, domain: str, after: str | None) -> bool:
    t = legacy.erp.tables(domain)
    query = select(literal(1)).select_from(t.header)
    if after is not None:
        query = query.where(t.sort_key(t.header, legacy.engine.dialect.name) > after)
    with legacy.engine.connect() as conn:
        return conn.execute(query.limit(1)).first() is not None


class IntoEmpty(Backfill):
    """A backfill run (``Backfill``) that also reconciles what it streams, for a domain
    whose ``empty`` side (``empty_side``) holds nothing beyond its checkpoint.
    ``on_finding`` receives each finding as found; ``report`` (a ``Report``) is set
    when the run ends."""

    def __init__(self, domain: str, legacy, cloud, state, flags, *, empty: str,
                 on_finding: Callable[[Finding], None] = lambda f: None, **kwargs) -> None:
        super().__init__(domain, legacy, cloud, state, flags, **kwargs)
        if empty not in ("legacy", "cloud"):
            raise ValueError(f"empty side must be legacy or cloud, not {empty!r}")
        self.empty = self.absent = empty
        self.source = "legacy" if empty == "cloud" else "cloud"
        self.on_finding = on_finding
        self.reconciled: Report | None = None
        self._rec: Reconciler | None = None
        self._tee = None
        self._start: str | None = None

    def _streams(self, start: str | None, fresh: bool) -> tuple[Iterable[Item], Iterable[Item]]:
        from workers.reconcile.index import IndexTee, Rebuild

        left, right = super()._streams(start, fresh)
        self._start = start
        # Xref entries made meanwhile (this run's links, the router's) are of records
        # that exist: only those older than the run can be orphans.
        xref = _xref_entries(self.state, self.domain, after=start, before=self.started_at)
        self._rec = Reconciler(self.domain, xref=xref, on_finding=self.on_finding,
                               pending_max=0)
        if fresh:
            # The empty side's index is empty now; each batch's commit adds its writes.
            Rebuild(self.state, self.domain, self.empty).finish()
            self._tee = IndexTee(self.state, self.domain, self.source)
            if self.source == "legacy":
                left = self._tee.wrap(left)
            else:
                right = self._tee.wrap(right)
        return left, right

    def _seen(self, a: Item | None, b: Item | None) -> None:
        rec = self._rec
        assert rec is not None
        for side, item in (("legacy", a), ("cloud", b)):
            if item is None:
                continue
            rec.observe(side, item)
            if item.error is None and (a is None or b is None):
                # One-sided: the reconciler does not load it (no pairing), the backfill
                # did (cached); one that does not translate is its own finding.
                try:
                    item.record  # noqa: B018 - loads (or fails to)
                except CoexistError as exc:
                    item.error = str(exc)
        rec.pair(a, b)

    def _streams_done(self) -> None:
        rec = self._rec
        assert rec is not None
        counts = rec.finish()
        if self._tee is not None:
            self._tee.rebuild.finish()
        report = Report(self.domain, counts=counts, tolerances=tolerances_for(self.domain),
                        mode=MODE)
        if self._start is not None:
            report.tolerances += (f"resumed backfill: records after {self._start!r} "
                                  "counted, those before were written by an earlier run",)
        self.reconciled = report


def _xref_entries(state, domain: str, *, after: str | None,
                  before: datetime) -> Iterator[XrefEntry]:
    """The domain's xref entries created before ``before`` with a key after ``after``,
    sorted by key, in keyset pages (no transaction held between them) through a
    connection that takes no write lock (the committer writes meanwhile)."""
    from workers.xref_sql import _T as XREF

    engine = _read_engine(state)
    try:
        while True:
            query = select(XREF.c.canonical_key, XREF.c.legacy_key, XREF.c.cloud_id).where(
                XREF.c.domain == domain, XREF.c.created_at < before)
            if after is not None:
                query = query.where(XREF.c.canonical_key > after)
            query = query.order_by(XREF.c.canonical_key).limit(XREF_PAGE_ROWS)
            with engine.connect() as conn:
                rows = conn.execute(query).all()
            for key, legacy_key, cloud_id in rows:
                yield XrefEntry(domain, key, legacy_key, cloud_id)
            if len(rows) < XREF_PAGE_ROWS:
                return
            after = rows[-1][0]
    finally:
        if engine is not state:
            engine.dispose()


def source_rows(legacy, domain: str, empty: str) -> int | None:
    """Records the backfill will stream (its progress total): the legacy ERP's count
    when it is the source; ``None`` for the cloud (an API counts nothing cheaply)."""
    if empty != "cloud":
        return None
    from sqlalchemy import func

    t = legacy.erp.tables(domain)
    with legacy.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.header)).scalar() or 0)
