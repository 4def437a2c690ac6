"""The streaming backfill behind ``coexist reconcile --repair --yes`` (and the initial load).

Both ERPs are read as streams sorted by canonical key (the legacy rows through
``LegacyReader.items``, the cloud through its NDJSON export, resumable by key)
and merge-joined; records whose digests agree are skipped without translation.
For each record that differs, the system of record comes from the cutover flags
(``FlagState.sor_for`` with the record's rollout segments) and:

* a record **missing in the target** is written directly, in batches: into the
  cloud through ``CloudErp.upsert_many`` (one ``$batch`` read of the current
  versions and one ``$batch`` of writes, up to 200 records) or, into a cloud known
  empty (``IntoEmpty``), ``CloudErp.create_many`` (the writes alone, each create
  conditioned on its number being unused); into the legacy ERP through
  ``LegacyErp.upsert_many`` (one transaction per batch);
* a **mismatch** (both hold the record, they differ) and a record the SoR does
  not hold (a delete) are few: they go through the outbox as today's repairs do
  (``workers.router.repair.enqueue_repairs``), whose writer decides a person's
  edit in the target by the switch-safety table;
* records the reconciliation reported under a kind no repair fixes (a key
  mismatch, a duplicate: ``skip_keys``) and records that do not translate are
  left alone and counted.

Versions: each write carries the record's last routed version
(``record_route.last_version``, 0 for a record never routed), read when its
batch is written; a record whose route moved after the stream began (capture
routed a person's edit meanwhile) is read again from the SoR first, so an old
state never goes out under a newer version.  Targets refuse an older version
(the cloud also an equal one when it holds the record: a record someone created
there meanwhile is left as it is and counted stale; the legacy ERP re-applies
an equal version, as repairs do).  After each batch, in one state transaction:
the writes' observations (``observed_revision``, as a writer records them), the
xref links of the created records, the pins of open documents, the batch's
outbox repairs and the checkpoint (``workers.reconcile.checkpoint``).  A rerun
after an interruption starts behind the checkpoint; what was written but not
checkpointed is found equal and linked, never written twice.

Three stages, each on its own thread, joined by bounded queues (``WRITES_IN_FLIGHT``
batches each): the caller's thread reads both streams and builds batches; the
*writer* reads the batch's routes (a read that takes no write lock) and writes it
into the target; the *committer* commits each written batch's state, in order, on
its own connection while the writer writes the next one.  So a checkpoint moves to
a batch's last key only after that batch's target write and the state commits of
every earlier batch; the writes of the batches one transaction commits are observed,
linked and indexed together.  Before a batch is written, the checkpoint's ``pending_hi``
must durably cover its last key: each commit sets it to the last key of every batch
already handed to the writer, so the writer only commits it itself when it got
ahead of that (the first batch).  Every state write of the run's threads is taken
under one lock, so the two never wait on each other's database lock.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bus.errors import TechnicalError
from coexistence.canonical import DOCUMENT_DOMAINS, CanonicalRecord
from coexistence.errors import CoexistError, TranslationError
from coexistence.ports import COEXIST_WRITER, Applied, Changed, Stale
from coexistence.reconcile.engine import Item, merge
from coexistence.router import is_closed, segment_attrs, split_version
from workers.reconcile import checkpoint

#: Records per target write (the cloud's ``$batch`` limit).
BATCH_RECORDS = 200
#: Repairs (mismatches, deletes) per outbox transaction.
REPAIR_BATCH = 500
#: Batches read ahead of those being written (the writer threads' queue).
WRITES_IN_FLIGHT = 2
#: Writer threads: batches written into the target at the same time, each on its own
#: connection, so one batch's request is prepared (and the state of earlier ones
#: committed) while the target answers another; the state still commits in batch order.
WRITERS = 3
#: Written batches whose state commits in one transaction, at most (only those already
#: written when the committer gets to them: it never waits to fill a group).
COMMIT_GROUP = 4
#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_EVERY_S = 5.0
#: Errors kept (with their key) for the report.
ERRORS_KEPT = 20

SYSTEMS = ("legacy", "cloud")


@dataclass
class BackfillReport:
    domain: str
    resumed_after: str | None = None
    scanned: int = 0
    equal: int = 0
    written: dict[str, int] = field(default_factory=lambda: {"legacy": 0, "cloud": 0})
    stale: int = 0
    changed: int = 0
    enqueued: int = 0
    linked_on_resume: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    seconds: float = 0.0
    #: CPU time of this process (all its threads) during the run.
    cpu_s: float = 0.0

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(text)

    @property
    def rate(self) -> float:
        return sum(self.written.values()) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"domain": self.domain, "resumed_after": self.resumed_after,
                "scanned": self.scanned, "equal": self.equal, "written": dict(self.written),
                "stale": self.stale, "changed": self.changed, "enqueued": self.enqueued,
                "linked_on_resume": self.linked_on_resume, "skipped": self.skipped,
                "errors": self.error_count, "first_errors": list(self.errors),
                "seconds": round(self.seconds, 3), "cpu_s": round(self.cpu_s, 3),
                "records_per_s": round(self.rate, 1)}

    def describe(self) -> str:
        w = self.written
        resumed = f", resumed after {self.resumed_after!r}" if self.resumed_after else ""
        return (f"{self.domain}: backfill wrote {w['cloud']:,} into cloud and "
                f"{w['legacy']:,} into legacy, {self.enqueued:,} repairs enqueued in the "
                f"outbox, {self.stale:,} stale, {self.changed:,} changed meanwhile, "
                f"{self.skipped:,} skipped, {self.error_count:,} errors; "
                f"{self.scanned:,} records in {self.seconds:.1f} s "
                f"({self.rate:,.0f} written/s){resumed}")


class BackfillTimeout(Exception):
    """The run's deadline (``--timeout``) passed: the batches already written are
    committed, the checkpoint stays, a rerun resumes behind it."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain}: backfill deadline passed")
        self.domain = domain


class _Direction:
    """What one run writes into one target ERP, and how far it is committed."""

    def __init__(self, target: str, mark: checkpoint.Mark | None) -> None:
        self.target = target
        # "" is the mark of a first batch that never committed: nothing is done yet.
        self.after = (mark.last_key or None) if mark is not None else None
        #: Keys up to this one may hold an interrupted run's writes without their state.
        self.resume_hi = mark.pending_hi if mark is not None else None
        self.written = mark.written if mark is not None else 0
        #: (key, record, its digest and natural-key hash, as the target's index keeps them)
        self.creates: list[tuple[str, CanonicalRecord, int, int | None]] = []
        self.repairs: list[tuple[str, CanonicalRecord | None]] = []
        self.links: list[str] = []  # equal on resume, possibly written without state
        #: The last key of the last batch with writes handed to the writer thread.
        self.announced: str | None = None
        #: The ``pending_hi`` committed in the checkpoint (keys a write may be pending to).
        self.durable_pending = mark.pending_hi if mark is not None else None

    def done(self, key: str) -> bool:
        return self.after is not None and key <= self.after

    def full(self) -> bool:
        return len(self.creates) >= BATCH_RECORDS or len(self.repairs) >= REPAIR_BATCH


class _Slot:
    """One batch handed to the writers: its arguments, then what ``_execute`` returned
    (``None``: not written), and an event set once a writer is done with it."""

    __slots__ = ("args", "result", "done")

    def __init__(self, args: tuple) -> None:
        self.args = args
        self.result: tuple | None = None
        self.done = threading.Event()

    def finish(self, result: tuple | None) -> None:
        self.result = result
        self.done.set()


class Backfill:
    """One domain's backfill run.  ``legacy``/``cloud`` are the reconciliation readers
    (``LegacyReader``, ``CloudReader``); their ``erp`` attributes write."""

    def __init__(self, domain: str, legacy, cloud, state, flags, *, run_id: str,
                 skip_keys: Iterable[str] = (),
                 progress: Callable[[int, int, int | None], None] | None = None,
                 total: int | None = None, deadline: float | None = None) -> None:
        self.domain, self.legacy, self.cloud, self.state = domain, legacy, cloud, state
        self.erps = {"legacy": legacy.erp, "cloud": cloud.erp}
        self.flag = flags.state(domain)
        self._sor = None if self.flag.is_partial else str(self.flag.sor_for(""))
        self.run_id = run_id
        self.skip_keys = frozenset(skip_keys)
        self.progress = progress
        self.total = total
        self.report = BackfillReport(domain)
        #: ``time.monotonic()`` by which the run stops (``--timeout``); None: never.
        self.deadline = deadline
        self._stopped = False  # the deadline passed: no more batches are handed out
        self.dirs: dict[str, _Direction] = {}
        #: Batches for the writer threads (bounded: memory, and what a stop finishes).
        self._jobs: queue.Queue = queue.Queue(maxsize=WRITES_IN_FLIGHT)
        #: The same batches in the order handed out, for the committer (bounded too).
        self._order: queue.Queue = queue.Queue(maxsize=WRITES_IN_FLIGHT + WRITERS)
        #: Held around every state write transaction of the run's threads.
        self._state_lock = threading.Lock()
        #: Held while the writers count results into the report.
        self._tally = threading.Lock()
        #: Held around a write into the legacy ERP.
        self._legacy_writes = threading.Lock()
        self._reads = None  # the engine the writer reads routes through
        self._failed: BaseException | None = None
        self.started_at = datetime.now(UTC)
        #: The target known to hold none of the records this run creates (``IntoEmpty``):
        #: its creates are written without reading the target first.
        self.absent: str | None = None

    # ------------------------------------------------------------------ the run

    def run(self) -> BackfillReport:
        t0, cpu0 = time.monotonic(), time.process_time()
        with self.state.connect() as conn:
            marks = checkpoint.load(conn, self.domain)
        dirs = self.dirs = {t: _Direction(t, marks.get(t)) for t in SYSTEMS}
        afters = [d.after for d in dirs.values()]
        # Resume behind the lowest committed key (None: some target has committed nothing).
        start = None if any(a is None for a in afters) else min(a for a in afters if a)
        self.report.resumed_after = start
        done0 = self._count_upto(start) if start is not None else 0
        # The stream's snapshot starts after this instant: a route updated later was
        # routed after the record was read.
        self.started_at = datetime.now(UTC)
        left, right = self._streams(start, fresh=not marks)
        n = 0
        if self.progress is not None:
            self.progress(done0, 0, self.total)
        self._reads = _read_engine(self.state)
        writers = [threading.Thread(target=self._writer, name=f"backfill-writer-{i}",
                                    daemon=True) for i in range(WRITERS)]
        committer = threading.Thread(target=self._committer, name="backfill-committer",
                                     daemon=True)
        committer.start()
        for writer in writers:
            writer.start()
        try:
            for a, b in merge(left, right):
                if self.deadline is not None and n % BATCH_RECORDS == 0 \
                        and time.monotonic() >= self.deadline:
                    self._stopped = True
                    break
                key = (a or b).key  # type: ignore[union-attr]
                self._pair(key, a, b, dirs)
                self._seen(a, b)
                n += 1
                for d in dirs.values():
                    if d.full():
                        self._flush(d, key)
                if self.progress is not None and n % 1000 == 0:
                    self.progress(done0 + n, self.written_count(), self.total)
            self.report.scanned = n
            if not self._stopped:
                for d in dirs.values():
                    self._flush(d, None)
        finally:
            # Batches already handed out are written and committed (a stop, Ctrl-C), or
            # dropped (a failure); then every stage ends.
            for _ in writers:
                self._put(self._jobs, None, check=False)
            self._put(self._order, None, check=False)
            for writer in writers:
                writer.join()
            committer.join()
            if self._reads is not self.state:
                self._reads.dispose()
        if self._failed is not None:
            raise self._failed
        if self._stopped:
            self.report.seconds = time.monotonic() - t0
            self.report.cpu_s = time.process_time() - cpu0
            raise BackfillTimeout(self.domain)
        self._streams_done()
        with self.state.begin() as conn:
            checkpoint.clear(conn, self.domain)
        if self.progress is not None:
            self.progress(done0 + n, self.written_count(), self.total)
        self.report.seconds = time.monotonic() - t0
        self.report.cpu_s = time.process_time() - cpu0
        return self.report

    def _streams(self, start: str | None, fresh: bool) -> tuple[Iterable[Item], Iterable[Item]]:
        """Both ERPs' records after ``start``, sorted by key (``fresh``: no checkpoint)."""
        # Records as the legacy ERP holds them (what the router writes too); the digests
        # compare in the common normal form either way.
        return (self.legacy.items(self.domain, after=start, normalised=False),
                self.cloud.stream(self.domain, after=start or ""))

    def _seen(self, a: Item | None, b: Item | None) -> None:
        """Each pair of the merge, once decided (``IntoEmpty`` reconciles it)."""

    def _streams_done(self) -> None:
        """Both streams ran to their end and every batch is committed."""

    def _pair(self, key: str, a: Item | None, b: Item | None,
              dirs: dict[str, _Direction]) -> None:
        if a is not None and b is not None and a.digest == b.digest and not a.error:
            self.report.equal += 1
            for d in dirs.values():
                if d.resume_hi is not None and not d.done(key) and key <= d.resume_hi:
                    d.links.append(key)
            return
        if key in self.skip_keys or (a is not None and a.error) or (b is not None and b.error):
            self.report.skipped += 1
            return
        try:
            record = (a or b).record  # type: ignore[union-attr]
        except CoexistError as exc:
            self.report.skipped += 1
            self.report.error(f"{self.domain} {key}: {exc}")
            return
        # A uniform flag (no rollout by segment or percentage) needs no segment values.
        sor = self._sor if self._sor is not None else str(
            self.flag.sor_for(key, segment_attrs(record)))
        target = "cloud" if sor == "legacy" else "legacy"
        d = dirs[target]
        if d.done(key):
            return
        held = a if sor == "legacy" else b
        other = b if sor == "legacy" else a
        if held is None:
            d.repairs.append((key, None))  # the SoR does not hold it: delete (outbox)
        elif other is None:
            d.creates.append((key, held.record, held.digest, held.nk))
        else:
            d.repairs.append((key, held.record))

    # ------------------------------------------------------------------ a batch

    def _flush(self, d: _Direction, upto: str | None) -> None:
        """Hand ``d``'s batch to the writer thread; ``upto`` is the merge's position
        (every key <= it is decided), ``None`` at the end of the streams."""
        if not (d.creates or d.repairs or d.links):
            return
        last = upto if upto is not None else max(
            [c[0] for c in d.creates] + [k for k, _ in d.repairs] + d.links)
        # A target with nothing pending is done up to here too (its earlier batches are
        # ahead of this one in the writer's queue).
        others = [o for o in self.dirs.values()
                  if o is not d and not (o.creates or o.repairs or o.links)]
        job = _Slot((d, last, d.creates, d.repairs, d.links, others))
        if d.creates:
            # Announced before a writer can take it: the next commit's pending_hi covers it.
            d.announced = last
        d.creates, d.repairs, d.links = [], [], []
        self._put(self._order, job)
        try:
            self._put(self._jobs, job)
        except BaseException:
            job.finish(None)  # never written: the committer must not wait for it
            raise

    def _put(self, q: queue.Queue, item, check: bool = True) -> None:
        """Put ``item`` into the bounded queue ``q``, giving up when the run fails (a
        failed stage drains its queue, so the end marker ``None`` always gets in)."""
        while True:
            if check and self._failed is not None:
                raise self._failed
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _writer(self) -> None:
        """A writer thread: takes the next batch handed out and writes it into its
        target; the reading thread prepares the next batches meanwhile, and the state
        of the batches already written commits in their order (``_committer``)."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            result = None
            try:
                if self._failed is None:  # else drain: the run is failing
                    result = self._execute(*job.args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the run's thread
                if self._failed is None:
                    self._failed = exc
            finally:
                job.finish(result)

    def _committer(self) -> None:
        """The committer thread: the state of the written batches, in the order they
        were handed out (so a checkpoint only moves forward, over batches all written),
        those already written when it gets to them in one transaction."""
        held: collections.deque = collections.deque()
        end = False
        broken = False  # a batch was not written (or a commit failed): none after commits
        while not (end and not held):
            if not held:
                job = self._order.get()
                if job is None:
                    return
                held.append(job)
            while not end and len(held) < COMMIT_GROUP:
                try:
                    job = self._order.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    end = True
                else:
                    held.append(job)
            held[0].done.wait()
            group = []
            while held and held[0].done.is_set() and len(group) < COMMIT_GROUP:
                group.append(held.popleft())
            # The run is failing: what was written before the first batch that was not is
            # still committed; nothing after it (drained).
            written = []
            for job in group:
                broken = broken or job.result is None
                if not broken:
                    written.append(job.result)
            if not written:
                continue
            try:
                self._commit(written)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the run's thread
                broken = True
                if self._failed is None:
                    self._failed = exc

    def written_count(self) -> int:
        return sum(self.report.written.values())

    def _execute(self, d: _Direction, last: str, creates: list, repairs: list, links: list,
                 others: list) -> tuple:
        """Write one batch into its target (the writer thread); returns what
        ``_commit`` needs."""
        with self._reads.connect() as conn:
            routes = _routes(conn, self.domain, [c[0] for c in creates])
        if creates:
            self._ensure_pending(d, last)
        items, moved, digests = [], [], {}
        for key, record, digest, nk in creates:
            version, updated_at = routes.get(key, (0, None))
            if updated_at is not None and _utc(updated_at) >= self.started_at:
                moved.append(key)
            items.append([record, version, f"backfill:{self.domain}:{key}:{version}"])
            digests[key] = (digest, nk)
        if moved:
            self._reread(d.target, items, set(moved), digests)
        items = [i for i in items if i[0] is not None]
        results = self._write(d.target, [tuple(i) for i in items])
        applied: list[tuple[Applied, int]] = []
        stale, changed, errors = 0, 0, []
        for (record, version, _), result in zip(items, results, strict=True):
            if isinstance(result, Applied):
                applied.append((result, version))
            elif isinstance(result, Stale):
                stale += 1
            elif isinstance(result, Changed):
                changed += 1
            else:
                errors.append(f"{self.domain} {record.key} into {d.target}: {result}")
        if stale or changed or errors:
            with self._tally:
                self.report.stale += stale
                self.report.changed += changed
                for text in errors:
                    self.report.error(text)
        return (d, last, applied, repairs, links, {i[0].key: i[0] for i in items}, digests,
                others)

    def _ensure_pending(self, d: _Direction, last: str) -> None:
        """Make the checkpoint's ``pending_hi`` cover ``last`` before its batch is written
        (a kill after the write and before the state commit: the rerun links what it
        finds equal up to there).  Usually an earlier commit already did."""
        if d.durable_pending is not None and d.durable_pending >= last:
            return
        with self._state_lock:
            hi = max(k for k in (last, d.announced, d.resume_hi) if k)
            with self.state.begin() as conn:
                checkpoint.put(conn, self.domain, d.target, last_key=d.after or "",
                               pending_hi=hi, written=d.written, run_id=self.run_id)
            d.durable_pending = hi

    def _reread(self, target: str, items: list[list], keys: set[str], digests: dict) -> None:
        """Records whose route moved after the stream began: read from the SoR now (after
        the route was read), so the version they go out under is never newer than them."""
        from workers.reconcile import index

        sor = "legacy" if target == "cloud" else "cloud"
        for item in items:
            key = item[0].key
            if key in keys:
                record = self.erps[sor].get(self.domain, key)
                item[0] = record
                if record is not None:
                    digests[key] = index.digest_of(record)

    def _write(self, target: str, items: list[tuple]) -> list:
        if not items:
            return []
        erp = self.erps[target]
        if target == "cloud" and self.absent == "cloud":
            # Known empty (``IntoEmpty``): no read first; each create is conditioned on
            # the number being unused, so one made meanwhile answers Changed.
            return erp.create_many(items)
        if target == "cloud":
            return erp.upsert_many(items)
        # Legacy: one transaction; an equal version re-applies, as a repair's does.  One
        # writer at a time (a SQLite legacy database takes one; its batches are local).
        with self._legacy_writes:
            return erp.upsert_many(items, repair=True)

    def _commit(self, batches: list[tuple]) -> None:
        """The state of written ``batches`` (``_execute``'s results, in order) in one
        transaction: each batch's outbox repairs, observations, xref links, routes,
        index entries and checkpoint; the in-memory positions move once it commits."""
        with self._state_lock, Session(self.state) as session:
            conn = session.connection()
            # Per target: (last_key, pending_hi, written) as this transaction leaves them.
            marks: dict[str, tuple[str, str | None, int]] = {}
            # The group's writes, per target: observed, linked and indexed once for all.
            staged: dict[str, _Staged] = {}
            for batch in batches:
                self._stage(session, conn, marks, staged, *batch)
            for target, group in staged.items():
                self._stage_writes(conn, target, group)
            session.commit()
            for target, (last, pending, written) in marks.items():
                o = self.dirs[target]
                o.after, o.durable_pending, o.written = last, pending, written
        for d, _, applied, repairs, *_ in batches:
            self.report.enqueued += len(repairs)
            self.report.written[d.target] += len(applied)

    def _stage_writes(self, conn, target: str, group: _Staged) -> None:
        """The writes of a commit group into ``target``: their observations, xref links,
        routes and digest index entries, one statement set for the whole group."""
        from workers.reconcile import index

        if group.applied:
            _observe(conn, target, self.domain, group.applied)
        _link_many(conn, self.domain, group.links, self.report)
        if group.routes:
            from workers.router.state import put_routes

            put_routes(conn, group.routes)
        # The target now holds what the source held: its digest index (if built)
        # says so, and the next warm reconciliation need not verify these records.
        index.apply(conn, self.domain, target, group.digests)

    def _stage(self, session, conn, marks: dict, staged: dict, d: _Direction, last: str,
               applied: list[tuple[Applied, int]], repairs: list, links: list[str],
               records: dict[str, CanonicalRecord], digests: dict[str, tuple[int, int | None]],
               others: list) -> None:
        """One batch's part of ``_commit``'s transaction (its writes' state is gathered
        in ``staged`` for ``_stage_writes``)."""
        from bus.outbox import add_to_outbox
        from workers.router import queues
        from workers.router.repair import repair_envelope

        # The repairs commit with the checkpoint: a resumed run never sends them twice.
        sor = "legacy" if d.target == "cloud" else "cloud"
        for key, record in repairs:
            env = repair_envelope(conn, record, domain=self.domain, key=key, sor=sor,
                                  reason="reconciliation repair", run_id=self.run_id)
            add_to_outbox(session, env, actor_name=queues.WRITE_ACTOR[d.target],
                          queue_name=queues.WRITE_QUEUE[d.target])
        group = staged.get(d.target)
        if group is None:
            group = staged[d.target] = _Staged()
        group.applied += applied
        group.links += [(r.key, r.target_id if d.target == "cloud" else None)
                        for r, _ in applied] + [(k, None) for k in links]
        self.report.linked_on_resume += len(links)
        if self.domain in DOCUMENT_DOMAINS:
            group.routes += [(self.domain, r.key, sor, v) for r, v in applied
                             if not is_closed(records.get(r.key))]
        group.digests.update((r.key, digests[r.key]) for r, _ in applied if r.key in digests)

        def put(o: _Direction, written: int) -> None:
            pending = _still_pending(o, last)
            checkpoint.put(conn, self.domain, o.target, last_key=last, pending_hi=pending,
                           written=written, run_id=self.run_id)
            marks[o.target] = (last, pending, written)

        def position(o: _Direction) -> tuple[str | None, int]:
            mark = marks.get(o.target)
            return (mark[0], mark[2]) if mark is not None else (o.after, o.written)

        put(d, position(d)[1] + len(applied))
        for o in others:
            after, written = position(o)
            if after is None or after < last:
                put(o, written)

    def _count_upto(self, key: str) -> int:
        """Legacy records at or before ``key`` (what an earlier run already went past)."""
        t = self.legacy.erp.tables(self.domain)
        dialect = self.legacy.engine.dialect.name
        with self.legacy.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.header).where(
                t.sort_key(t.header, dialect) <= key)).scalar() or 0)


@dataclass
class _Staged:
    """The writes into one target of a commit group, staged by ``_stage``."""

    applied: list = field(default_factory=list)
    links: list = field(default_factory=list)
    routes: list = field(default_factory=list)
    digests: dict = field(default_factory=dict)


def _still_pending(d: _Direction, last: str) -> str | None:
    """The checkpoint's ``pending_hi`` once ``last`` is committed: the last key of the
    batches handed to the writer after it (one may be being written now) or an
    interrupted run's range not yet passed, whichever is higher."""
    ahead = [k for k in (d.announced, d.resume_hi) if k is not None and k > last]
    return max(ahead) if ahead else None


def _read_engine(state):
    """An engine for the writer's reads of the state database that takes no write lock:
    the state engine begins SQLite transactions IMMEDIATE (the writer would wait for
    the committer's transaction); a plain connection reads the WAL's last commit."""
    if state.dialect.name != "sqlite" or state.url.database in (None, "", ":memory:"):
        return state
    from sqlalchemy import create_engine

    return create_engine(state.url, connect_args={"check_same_thread": False,
                                                  "timeout": 30})


def _routes(conn, domain: str, keys: list[str]) -> dict[str, tuple[int, datetime]]:
    """(last routed version, when the route last changed) of ``keys``, in one query each
    500 keys."""
    from workers.router.state import RecordRoute

    t = RecordRoute.__table__  # type: ignore[attr-defined]
    out: dict[str, tuple[int, datetime]] = {}
    for i in range(0, len(keys), 500):
        for row in conn.execute(select(t.c.key, t.c.last_version, t.c.updated_at).where(
                t.c.domain == domain, t.c.key.in_(keys[i:i + 500]))):
            out[row.key] = (int(row.last_version), row.updated_at)
    return out


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _observe(conn, target: str, domain: str, applied: list[tuple[Applied, int]]) -> None:
    """The writes' observations, as ``observed.record_write`` keeps them for a writer."""
    from workers.router.observed import COEXIST, _row, _upsert

    _upsert(conn, [_row(target, domain, r.key, r.revision, COEXIST_WRITER, COEXIST,
                        split_version(v)[0], None, r.version) for r, v in applied])


def _link_many(conn, domain: str, created: list[tuple[str, str | None]],
               report: BackfillReport) -> None:
    """Link the created records' ids (legacy key, cloud id when known) in the xref: new
    rows in one statement; existing rows get a missing id; a link that conflicts with
    another record's is reported, not forced."""
    from coexistence.translate.legacy import LEGACY_TRANSLATORS
    from workers.bulk_sql import executemany
    from workers.xref_sql import _INSERT_XREF, link_in
    from workers.xref_sql import _T as XREF

    if not created:
        return
    translator = LEGACY_TRANSLATORS.get(domain)
    wanted: dict[str, tuple[str | None, str | None]] = {}
    for key, cloud_id in created:
        try:
            legacy_key = translator.legacy_key(key) if translator is not None else None
        except TranslationError:
            legacy_key = None
        wanted[key] = (legacy_key, cloud_id)
    existing: dict[str, tuple[str | None, str | None]] = {}
    keys = list(wanted)
    for i in range(0, len(keys), 500):
        for row in conn.execute(select(XREF.c.canonical_key, XREF.c.legacy_key,
                                       XREF.c.cloud_id).where(
                XREF.c.domain == domain, XREF.c.canonical_key.in_(keys[i:i + 500]))):
            existing[row.canonical_key] = (row.legacy_key, row.cloud_id)
    now = datetime.now(UTC)
    new = [{"domain": domain, "canonical_key": k, "legacy_key": lk, "cloud_id": cid,
            "created_at": now, "updated_at": now}
           for k, (lk, cid) in wanted.items() if k not in existing and (lk or cid)]
    try:
        with conn.begin_nested():
            if new:
                executemany(conn, _INSERT_XREF, new)
    except IntegrityError:
        # Another record holds one of these ids: link one by one, reporting the conflicts.
        for row in new:
            _link_one(conn, link_in, domain, row["canonical_key"], row["legacy_key"],
                      row["cloud_id"], report)
    for k, (lk, cid) in wanted.items():
        held = existing.get(k)
        if held is None:
            continue
        if (lk and held[0] != lk) or (cid and held[1] != cid):
            _link_one(conn, link_in, domain, k, lk, cid, report)


def _link_one(conn, link_in, domain, key, legacy_key, cloud_id, report) -> None:
    try:
        link_in(conn, domain, key, legacy_key=legacy_key, cloud_id=cloud_id)
    except (CoexistError, TechnicalError) as exc:
        report.error(f"{domain} {key}: xref not linked: {exc}")


class ProgressLines:
    """Plain progress lines on stderr every ``PROGRESS_EVERY_S`` (stderr not a terminal)."""

    def __init__(self, domain: str, stream=None, every_s: float = PROGRESS_EVERY_S) -> None:
        self.domain, self.stream, self.every_s = domain, stream or sys.stderr, every_s
        self.t0 = time.monotonic()
        self.first: int | None = None
        self.last_print = 0.0

    def __call__(self, done: int, written: int, total: int | None) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = done
        if now - self.last_print < self.every_s and done != total:
            return
        self.last_print = now
        rate = (done - self.first) / max(now - self.t0, 1e-9)
        of = f"/{total:,}" if total else ""
        eta = ""
        if total and rate > 0 and done < total:
            eta = f", ETA {_duration((total - done) / rate)}"
        print(f"backfill {self.domain}: {done:,}{of} records, {rate:,.0f}/s, "
              f"{written:,} written{eta}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
