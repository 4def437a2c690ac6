"""Legacy change capture: reading throughput and concurrent writers, each figure with its
baseline in the same run.

Prints one JSON line per figure (name, records_per_s, baseline_per_s, ratio):

* ``legacy_changelog_read``: ``LegacyErp.read`` (the ``ChangeFeed``: SQL page,
  key decoding through the translator, coalescing, ``Change`` objects) against a
  bare ``SELECT`` of the same rows with the same paging through the ``sqlite3``
  module.  Target >= 50,000 changes/s.
* ``legacy_capture``: the router's production capture (``CaptureLoop.drain``, what
  ``coexist router`` runs): the same feed, each change's record read from the legacy
  ERP, decided (legacy mode: no shadow write, one channel event per change into the
  outbox) and committed with the durable checkpoint per batch in a state database,
  over the first ``--capture-changes`` changes, against the same bare ``SELECT`` (of
  every change: a rate against a rate).

The change log is filled by the triggers: people's inserts of inventory
balances (composite keys, the most expensive to decode), one change per row,
so changes and rows count alike.  Rounds of adapter and baseline alternate so
that load from other processes hits both alike; the best round of each counts.

On PostgreSQL (skipped with ``--no-pg``; a private schema, dropped after):

* ``legacy_pg_changelog_read``: ``LegacyErp.read`` from cursor 0 over rows that
  have no position yet (so numbering them is part of the figure) against a bare
  paged ``SELECT`` by ``SEQ`` through psycopg.
* ``legacy_pg_writers``: ``--writers`` processes each running ``--txns``
  writer transactions (a person's new inventory balance and its allocation: two
  captured rows) at once, against one process writing alone; ``ratio`` is their
  combined throughput over the lone writer's.  ``serialized_per_s`` is the same
  concurrent run with the per-schema advisory lock the capture triggers took
  before positions existed.  Printed twice: with no work inside a transaction
  (``hold_ms`` 0: bound by CPU, two cores here, so concurrency can hardly gain)
  and with ``--hold-ms`` of the application's own work between the two
  statements (what a lock serializes: an ERP client's think time, network round
  trips, a batch job's computation).  ``loadavg`` is the load when it ended.

Usage: ``python scripts/bench/erps_legacy.py [--changes 200000] [--batch 1000]
[--capture-batch 500] [--capture-changes 20000]
[--rounds 3] [--pg-url URL | --no-pg] [--writers 4] [--txns 200]
[--hold-ms 5] [--pg-changes 100000]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.db import create_state_engine  # noqa: E402
from coexistence.flags import FlagSource  # noqa: E402
from coexistence.router import LEGACY  # noqa: E402
from workers.legacy_erp.adapter import LegacyErp  # noqa: E402
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema  # noqa: E402
from workers.migrate import upgrade as upgrade_schema  # noqa: E402
from workers.router.capture import CaptureLoop  # noqa: E402
from workers.router.queues import Subscription  # noqa: E402


def fill(engine, changes: int) -> None:
    """``changes`` rows in INVBAL, inserted by a person, so the triggers log as many."""
    rows = ((f"W{i % 50:02d}".ljust(10), f"SKU-{i:07d}".ljust(20), i % 500, 0, "JSMITH".ljust(10),
             20260301, 120000) for i in range(changes))
    sql = ('INSERT INTO "INVBAL" ("WHSE", "ITEMNO", "ONHAND", "ALLOC", "LCHGUSER", '
           '"LCHGDATE", "LCHGTIME") VALUES (?, ?, ?, ?, ?, ?, ?)')
    with engine.begin() as conn:
        conn.exec_driver_sql(sql, list(rows))


def read_adapter(erp: LegacyErp, batch: int) -> tuple[int, float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    after, n = 0, 0
    while page := erp.read(after, batch):
        n += len(page)
        after = page[-1].cursor
    return n, time.perf_counter() - started, time.process_time() - cpu


def read_capture(
    erp: LegacyErp, state_url: str, batch: int, changes: int, round_no: int
) -> tuple[int, float, float]:
    """The production capture loop over the first ``changes`` changes of the log (a whole
    number of batches), from its own checkpoint."""
    state = create_state_engine(state_url)
    upgrade_schema(state)
    loop = CaptureLoop(LEGACY, erp, {LEGACY: erp}, FlagSource(), state,
                       subscriptions=[Subscription("bench", frozenset({"inventory"}))],
                       feed_name=f"bench-{round_no}", batch_size=batch)
    started, cpu = time.perf_counter(), time.process_time()
    stats = loop.drain(max_batches=max(1, changes // batch))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    state.dispose()
    if stats.events != stats.read:
        sys.exit(f"capture routed {stats.events} events for {stats.read} changes")
    return stats.read, elapsed, cpu


def read_bare(path: Path, batch: int) -> tuple[int, float, float]:
    """The least any reader must do: the same paged SELECT, rows as tuples."""
    conn = sqlite3.connect(path)
    sql = ('SELECT "SEQ", "TABNAME", "CHGKEY", "OP", "CHGTS", "LCHGUSER" FROM "CHGLOG" '
           'WHERE "SEQ" > ? ORDER BY "SEQ" LIMIT ?')
    started, cpu = time.perf_counter(), time.process_time()
    after, n = 0, 0
    while rows := conn.execute(sql, (after, batch)).fetchall():
        n += len(rows)
        after = rows[-1][0]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return n, elapsed, cpu


# ------------------------------------------------------------------ PostgreSQL

#: Lock the capture triggers took per statement before positions existed (baseline only).
_SERIALIZE_DDL = (
    'CREATE OR REPLACE FUNCTION "XBENCH_LOCK"() RETURNS trigger LANGUAGE plpgsql AS $fn$ '
    "BEGIN PERFORM pg_advisory_xact_lock(4841020); RETURN NULL; END $fn$"
)


def _serialize(engine, on: bool) -> None:
    from workers.legacy_erp.schema import captured_tables

    with engine.begin() as conn:
        if on:
            conn.exec_driver_sql(_SERIALIZE_DDL)
        for spec in captured_tables():
            conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS "XBENCH_S" ON "{spec.table}"')
            if on:
                conn.exec_driver_sql(
                    f'CREATE TRIGGER "XBENCH_S" BEFORE INSERT OR UPDATE OR DELETE ON '
                    f'"{spec.table}" FOR EACH STATEMENT EXECUTE FUNCTION "XBENCH_LOCK"()')


_WRITE_SQL = (
    'INSERT INTO "INVBAL" ("WHSE", "ITEMNO", "ONHAND", "ALLOC", "LCHGUSER", "LCHGDATE", '
    '"LCHGTIME") VALUES (%s, %s, 1, 0, %s, 20260301, 120000)',
    'UPDATE "INVBAL" SET "ALLOC" = 1 WHERE "WHSE" = %s AND "ITEMNO" = %s',
)


def _writer(url: str, whse: str, txns: int, hold_s: float, start, out) -> None:
    """One legacy writer process: ``txns`` transactions, each a person's new balance and its
    allocation (two captured rows), with ``hold_s`` of the application's own work between."""
    engine = create_legacy_engine(url)
    with engine.connect() as conn:  # connect before the clock starts
        conn.exec_driver_sql("SELECT 1")
    start.wait()
    began = time.perf_counter()
    for i in range(txns):
        sku = f"SKU-{i:07d}"
        with engine.begin() as conn:
            conn.exec_driver_sql(_WRITE_SQL[0], (whse, sku, "JSMITH"))
            if hold_s:
                time.sleep(hold_s)
            conn.exec_driver_sql(_WRITE_SQL[1], (whse, sku))
    out.put((txns, began, time.perf_counter()))
    engine.dispose()


def pg_writers(url: str, writers: int, txns: int, hold_s: float, tag: str) -> tuple[int, float]:
    """``writers`` processes writing at once; (transactions, wall seconds of the whole)."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, f"{tag}{w:02d}", txns, hold_s, start, out))
             for w in range(writers)]
    for p in procs:
        p.start()
    start.wait()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            sys.exit(f"a writer process exited with {p.exitcode}")
    n = sum(r[0] for r in results)
    return n, max(r[2] for r in results) - min(r[1] for r in results)


def _unnumber(engine) -> None:
    """Make every change-log row unnumbered again, as if just committed."""
    with engine.begin() as conn:
        conn.exec_driver_sql('UPDATE "CHGLOG" SET "POS" = NULL')
        conn.exec_driver_sql('UPDATE "XCOEXPOS" SET "LASTPOS" = 0')
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql('VACUUM ANALYZE "CHGLOG"')


def read_pg_bare(engine, batch: int) -> tuple[int, float, float]:
    raw = engine.raw_connection()
    cur = raw.cursor()
    sql = ('SELECT "SEQ", "TABNAME", "CHGKEY", "OP", "CHGTS", "LCHGUSER" FROM "CHGLOG" '
           'WHERE "SEQ" > %s ORDER BY "SEQ" LIMIT %s')
    started, cpu = time.perf_counter(), time.process_time()
    after, n = 0, 0
    while True:
        cur.execute(sql, (after, batch))
        rows = cur.fetchall()
        if not rows:
            break
        n += len(rows)
        after = rows[-1][0]
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    raw.close()
    return n, elapsed, cpu


def fill_pg(engine, changes: int) -> None:
    rows = [(f"W{i % 50:02d}", f"SKU-{i:07d}", i % 500, 0, "JSMITH", 20260301, 120000)
            for i in range(changes)]
    sql = ('INSERT INTO "INVBAL" ("WHSE", "ITEMNO", "ONHAND", "ALLOC", "LCHGUSER", '
           '"LCHGDATE", "LCHGTIME") VALUES (%s, %s, %s, %s, %s, %s, %s)')
    raw = engine.raw_connection()
    raw.cursor().executemany(sql, rows)
    raw.commit()
    raw.close()


def run_pg(args) -> list[dict]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
    engine = create_legacy_engine(url)
    out = []
    try:
        create_legacy_schema(engine)
        tag = iter(range(10_000))
        for hold_ms in (0.0, args.hold_ms):
            one, many, serialized = [], [], []
            for _ in range(args.rounds):
                for runs, writers, lock in ((one, 1, False), (many, args.writers, False),
                                            (serialized, args.writers, True)):
                    _serialize(engine, lock)
                    runs.append(pg_writers(url, writers, args.txns, hold_ms / 1000,
                                           f"R{next(tag):03d}"))
            _serialize(engine, False)
            best = {name: max(n / wall for n, wall in runs)
                    for name, runs in (("one", one), ("many", many), ("serialized", serialized))}
            out.append({"name": "legacy_pg_writers", "writers": args.writers,
                        "txns_per_writer": args.txns, "hold_ms": hold_ms,
                        "records_per_s": round(best["many"]),
                        "baseline_per_s": round(best["one"]),
                        "ratio": round(best["many"] / best["one"], 3),
                        "serialized_per_s": round(best["serialized"]),
                        "ratio_vs_serialized": round(best["many"] / best["serialized"], 3),
                        "loadavg": [round(x, 2) for x in os.getloadavg()]})

        with engine.begin() as conn:
            conn.exec_driver_sql('TRUNCATE "CHGLOG"')
        fill_pg(engine, args.pg_changes)
        erp = LegacyErp(engine)
        adapter, numbered, bare = [], [], []
        for _ in range(args.rounds):
            _unnumber(engine)
            adapter.append(read_adapter(erp, args.batch))
            numbered.append(read_adapter(erp, args.batch))
            bare.append(read_pg_bare(engine, args.batch))
        for label, runs in (("adapter", adapter), ("bare", bare)):
            if any(r[0] != args.pg_changes for r in runs):
                sys.exit(f"pg {label} read {[r[0] for r in runs]} changes, not {args.pg_changes}")
        line = figure("legacy_pg_changelog_read", adapter, bare)
        # The same read again, every row numbered already: what numbering costs.
        line["numbered_read_per_s"] = round(max(n / wall for n, wall, _ in numbered))
        line["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        out.append(line)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    return out


def figure(name: str, runs: list, baseline: list) -> dict:
    """Best wall-clock round of each side; CPU-time rates too, as the machine is shared."""
    n, wall, _ = min(runs, key=lambda r: r[1])
    base_n, base_wall, _ = min(baseline, key=lambda r: r[1])
    cpu = min(r[2] for r in runs)
    base_cpu = min(r[2] for r in baseline)
    rate, base = n / wall, base_n / base_wall
    return {"name": name, "records_per_s": round(rate), "baseline_per_s": round(base),
            "ratio": round(rate / base, 3), "changes": n,
            "cpu_records_per_s": round(n / cpu) if cpu else None,
            "cpu_baseline_per_s": round(base_n / base_cpu) if base_cpu else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--capture-batch", type=int, default=500,
                        help="changes per capture batch (the router's CAPTURE_BATCH)")
    parser.add_argument("--capture-changes", type=int, default=20_000,
                        help="changes the capture figure routes (rounded to whole batches)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get(
        "COEXIST_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--no-pg", action="store_true", help="SQLite figures only")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--txns", type=int, default=200, help="transactions per writer")
    parser.add_argument("--hold-ms", type=float, default=5.0,
                        help="the application's work inside each writer transaction")
    parser.add_argument("--pg-changes", type=int, default=100_000)
    args = parser.parse_args()

    capture_changes = min(args.changes, args.capture_changes) // args.capture_batch \
        * args.capture_batch
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.db"
        engine = create_legacy_engine(f"sqlite:///{path}")
        create_legacy_schema(engine)
        fill(engine, args.changes)
        erp = LegacyErp(engine)
        erp.read(0, 10)  # warm the translators and statement caches
        adapter, capture, bare = [], [], []
        for r in range(args.rounds):
            adapter.append(read_adapter(erp, args.batch))
            capture.append(read_capture(erp, f"sqlite:///{Path(tmp) / f'state{r}.db'}",
                                        args.capture_batch, capture_changes, r))
            bare.append(read_bare(path, args.batch))
        for label, runs, want in (("adapter", adapter, args.changes),
                                  ("capture", capture, capture_changes),
                                  ("bare", bare, args.changes)):
            if any(r[0] != want for r in runs):
                sys.exit(f"{label} read {[r[0] for r in runs]} changes, not {want}")
        print(json.dumps(figure("legacy_changelog_read", adapter, bare)))
        print(json.dumps(figure("legacy_capture", capture, bare)))
        engine.dispose()
    if not args.no_pg:
        for line in run_pg(args):
            print(json.dumps(line))


if __name__ == "__main__":
    main()
