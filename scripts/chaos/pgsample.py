"""Sample what PostgreSQL is doing for a chaos run (a profiling aid, not part of the run).

    .venv/bin/python scripts/chaos/pgsample.py OUT_DIR [--every-s 1] [--tables-every-s 30]

Every ``--every-s`` it records the active backends of the run's databases
(``coexist_chaos_*``) from ``pg_stat_activity``: database, application, wait event, the
first 100 characters of the query; every ``--tables-every-s`` each run database's
``pg_stat_user_tables`` (live/dead tuples, sequential scans and the tuples they read, index
scans) and lock waits. Writes ``activity.jsonl`` and ``tables.jsonl`` into OUT_DIR; stops on
SIGTERM / Ctrl-C. A summary: ``--summarize OUT_DIR`` prints the wait events and queries by
count and the tables by sequential tuples read between the first and last snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg

ADMIN = os.environ.get("COEXIST_CHAOS_PG_DSN", "host=127.0.0.1 user=postgres dbname=test")

ACTIVITY = """
SELECT datname, application_name, wait_event_type, wait_event, state,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 100)
  FROM pg_stat_activity
 WHERE datname LIKE 'coexist_chaos_%' AND state <> 'idle' AND pid <> pg_backend_pid()
"""
TABLES = """
SELECT relname, n_live_tup, n_dead_tup, seq_scan, seq_tup_read, idx_scan, n_tup_ins,
       n_tup_upd, n_tup_del, pg_relation_size(relid)
  FROM pg_stat_user_tables
"""


def sample(out: Path, every_s: float, tables_every_s: float) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    out.mkdir(parents=True, exist_ok=True)
    admin = psycopg.connect(ADMIN, autocommit=True)
    last_tables = 0.0
    with (out / "activity.jsonl").open("a") as act, (out / "tables.jsonl").open("a") as tab:
        while not stop:
            now = time.time()
            try:
                rows = admin.execute(ACTIVITY).fetchall()
            except psycopg.Error as exc:
                print(f"pgsample: {exc}", file=sys.stderr)
                rows = []
            act.write(json.dumps({"at": now, "rows": rows}) + "\n")
            if now - last_tables >= tables_every_s:
                last_tables = now
                dbs = [d for (d,) in admin.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'coexist_chaos_%'")]
                for db in dbs:
                    try:
                        with psycopg.connect(f"{ADMIN.replace('dbname=test', '')} dbname={db}",
                                             autocommit=True, connect_timeout=5) as c:
                            t = c.execute(TABLES).fetchall()
                    except psycopg.Error:
                        continue
                    tab.write(json.dumps({"at": now, "db": db, "tables": t}) + "\n")
            act.flush()
            tab.flush()
            time.sleep(every_s)


def summarize(out: Path) -> None:
    waits, queries = Counter(), Counter()
    n = 0
    for line in (out / "activity.jsonl").open():
        n += 1
        for db, _app, wtype, wevent, _state, query in json.loads(line)["rows"]:
            side = db.rsplit("_", 1)[-1]
            waits[(side, wtype or "CPU", wevent or "-")] += 1
            queries[(side, wtype or "CPU", wevent or "-", query)] += 1
    print(f"{n} samples; backends by (database, wait event):")
    for k, v in waits.most_common(15):
        print(f"  {v:6d} {k}")
    print("by query:")
    for k, v in queries.most_common(20):
        print(f"  {v:6d} {k}")
    first, last = {}, {}
    for line in (out / "tables.jsonl").open():
        snap = json.loads(line)
        side = snap["db"].rsplit("_", 1)[-1]
        for row in snap["tables"]:
            first.setdefault((side, row[0]), row)
            last[(side, row[0])] = row
    print("tables by sequential tuples read (live, dead, seq scans, seq tuples read, "
          "idx scans, bytes):")
    deltas = sorted((((last[k][4] or 0) - (first[k][4] or 0), k) for k in last), reverse=True)
    for d, k in deltas[:15]:
        r = [x or 0 for x in last[k]]
        print(f"  {k}: seq_tup_read +{d:,} live {r[1]:,} dead {r[2]:,} seq_scan {r[3]:,} "
              f"idx_scan {r[5]:,} size {r[9]:,}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--every-s", type=float, default=1.0)
    p.add_argument("--tables-every-s", type=float, default=30.0)
    p.add_argument("--summarize", action="store_true")
    a = p.parse_args()
    summarize(a.out) if a.summarize else sample(a.out, a.every_s, a.tables_every_s)
