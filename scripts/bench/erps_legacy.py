"""Legacy change-log reading throughput (SQLite), each figure with its baseline in the same run.

Prints one JSON line per figure (name, records_per_s, baseline_per_s, ratio):

* ``legacy_changelog_read``: ``LegacyErp.read`` (the ``ChangeFeed``: SQL page,
  key decoding through the translator, coalescing, ``Change`` objects) against a
  bare ``SELECT`` of the same rows with the same paging through the ``sqlite3``
  module.  Target >= 50,000 changes/s.
* ``legacy_changelog_consume``: the same reading through ``consume_batch``, which
  also commits a durable checkpoint per batch in a state database, against the
  same bare ``SELECT``.

The change log is filled by the triggers: people's inserts of inventory
balances (composite keys, the most expensive to decode), one change per row,
so changes and rows count alike.  Rounds of adapter and baseline alternate so
that load from other processes hits both alike; the best round of each counts.
Usage: ``python scripts/bench/erps_legacy.py [--changes 200000] [--batch 1000]
[--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.db import create_state_engine  # noqa: E402
from workers.db import create_state_schema  # noqa: E402
from workers.legacy_erp.adapter import LegacyErp  # noqa: E402
from workers.legacy_erp.cdc import consume_batch  # noqa: E402
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema  # noqa: E402


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


def read_consume(
    erp: LegacyErp, state_url: str, batch: int, round_no: int
) -> tuple[int, float, float]:
    state = create_state_engine(state_url)
    create_state_schema(state)
    counted = [0]

    def handle(_session, changes) -> None:
        counted[0] += len(changes)

    started, cpu = time.perf_counter(), time.process_time()
    while consume_batch(erp, state, f"bench-{round_no}", handle, limit=batch):
        pass
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    state.dispose()
    return counted[0], elapsed, cpu


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
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.db"
        engine = create_legacy_engine(f"sqlite:///{path}")
        create_legacy_schema(engine)
        fill(engine, args.changes)
        erp = LegacyErp(engine)
        erp.read(0, 10)  # warm the translators and statement caches
        adapter, consume, bare = [], [], []
        for r in range(args.rounds):
            adapter.append(read_adapter(erp, args.batch))
            consume.append(read_consume(erp, f"sqlite:///{Path(tmp) / 'state.db'}",
                                        args.batch, r))
            bare.append(read_bare(path, args.batch))
        for label, runs in (("adapter", adapter), ("consume", consume), ("bare", bare)):
            if any(r[0] != args.changes for r in runs):
                sys.exit(f"{label} read {[r[0] for r in runs]} changes, not {args.changes}")
        print(json.dumps(figure("legacy_changelog_read", adapter, bare)))
        print(json.dumps(figure("legacy_changelog_consume", consume, bare)))
        engine.dispose()


if __name__ == "__main__":
    main()
