"""What an outbox row costs PostgreSQL to write and to mark sent, per index, from the WAL.

    .venv/bin/python scripts/bench/bus_sent_mark.py [--rows 5000] [--revisions 0019,head]

For each state revision (built in a private database, created and dropped): ``--rows``
envelopes committed through ``add_all_to_outbox`` (100 per transaction, as the bus bench's
producer does), then relayed by ``OutboxRelay`` with a publisher that confirms at once, so
only the relay's claim and sent mark write.  Per phase it prints, per row: the WAL records
that touched each outbox relation (``pg_walinspect``, filtered to this database's relation
files, so other databases' traffic on the same server does not count; b-tree leaf inserts
are index entries written), WAL bytes, and ``pg_stat_user_tables``' updates and HOT updates.
Needs the ``pg_walinspect`` extension (PostgreSQL 15 contrib) and a superuser URL.
Environment: ``COEXIST_BENCH_PG_URL`` (admin URL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from bus.db import create_state_engine  # noqa: E402
from bus.envelope import new_envelope  # noqa: E402
from bus.outbox import OutboxRelay, add_all_to_outbox  # noqa: E402
from workers import migrate  # noqa: E402

PG_ADMIN_URL = os.environ.get("COEXIST_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TX_SIZE = 100


def _relations(conn) -> dict[int, str]:
    """relfilenode -> name, for the outbox table and its indexes."""
    rows = conn.execute(text(
        "SELECT c.relfilenode, c.relname FROM pg_class c WHERE c.oid = 'outbox'::regclass "
        "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'outbox'::regclass)"))
    return {int(r[0]): r[1] for r in rows}


def _stats(conn) -> dict[str, int]:
    r = conn.execute(text("SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                          "WHERE relname = 'outbox'")).one()
    return {"ins": r[0], "upd": r[1], "hot_upd": r[2]}


def _wal(admin, db_oid: int, rels: dict[int, str], start: str, end: str, rows: int) -> dict:
    """Per relation: WAL records by type, per row; and WAL bytes of this database."""
    records = admin.execute(text(
        "SELECT resource_manager, record_type, record_length, block_ref "
        "FROM pg_get_wal_records_info(CAST(:s AS pg_lsn), CAST(:e AS pg_lsn))"),
        {"s": start, "e": end}).all()
    per_rel: dict[str, Counter] = {name: Counter() for name in rels.values()}
    total_bytes = 0
    for rm, rtype, length, block_ref in records:
        if not block_ref or f"/{db_oid}/" not in block_ref:
            continue
        total_bytes += length
        for node, name in rels.items():
            if f"/{db_oid}/{node} " in block_ref + " ":
                per_rel[name][f"{rm}/{rtype}"] += 1
    return {
        "wal_bytes_per_row": round(total_bytes / rows, 1),
        "records_per_row": {name: {k: round(v / rows, 2) for k, v in sorted(c.items())}
                            for name, c in sorted(per_rel.items()) if c},
    }


def _flush_stats(conn) -> None:
    # Stats are flushed by a backend at transaction end at most once a second (PG 15).
    time.sleep(1.2)
    conn.execute(text("SELECT pg_stat_force_next_flush()"))
    conn.commit()


def run(revision: str, rows: int) -> dict:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"bench_sentmark_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = create_state_engine(url)
    try:
        migrate.upgrade(engine, to=revision)
        with admin.connect() as a:
            a.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            db_oid = a.execute(text("SELECT oid FROM pg_database WHERE datname = :n"),
                               {"n": name}).scalar_one()
        with engine.connect() as conn:
            rels = _relations(conn)
            indexes = sorted(r[0] for r in conn.execute(text(
                "SELECT indexname || ': ' || indexdef FROM pg_indexes WHERE tablename='outbox'")))
        lsn = "SELECT pg_current_wal_insert_lsn()::text"
        with admin.connect() as a:
            l0 = a.execute(text(lsn)).scalar_one()
        t0 = time.perf_counter()
        for start in range(0, rows, TX_SIZE):
            envs = [new_envelope(domain="bench", kind="tick", key=f"k{n % 211}",
                                 payload={"n": n, "sku": f"SKU-{n:06d}", "qty": n % 17},
                                 source_system="bench", source_version=n)
                    for n in range(start, min(rows, start + TX_SIZE))]
            with engine.begin() as conn:
                add_all_to_outbox(conn, envs, actor_name="bench_actor", queue_name="bench")
        insert_s = time.perf_counter() - t0
        with admin.connect() as a:
            l1 = a.execute(text(lsn)).scalar_one()
        with engine.connect() as conn:
            _flush_stats(conn)
            s1 = _stats(conn)
        relay = OutboxRelay(engine, lambda batch: None)
        t0 = time.perf_counter()
        sent = 0
        while (n := relay.run_once(500)):
            sent += n
        relay.close()
        relay_s = time.perf_counter() - t0
        with admin.connect() as a:
            l2 = a.execute(text(lsn)).scalar_one()
        with engine.connect() as conn:
            _flush_stats(conn)
            s2 = _stats(conn)
        with admin.connect() as a:
            # The relay commits without waiting for the flush; read only flushed WAL.
            while a.execute(text("SELECT pg_current_wal_flush_lsn() < CAST(:e AS pg_lsn)"),
                            {"e": l2}).scalar_one():
                time.sleep(0.1)
            insert_wal = _wal(a, db_oid, rels, l0, l1, rows)
            mark_wal = _wal(a, db_oid, rels, l1, l2, rows)
        assert sent == rows, (sent, rows)
        return {
            "name": "outbox_sent_mark", "revision": migrate.head() if revision == "head"
            else revision, "rows": rows, "indexes": indexes,
            "insert": {**insert_wal, "ms_per_row": round(insert_s * 1000 / rows, 3)},
            "sent_mark": {**mark_wal, "ms_per_row": round(relay_s * 1000 / rows, 3),
                          "updates": s2["upd"] - s1["upd"],
                          "hot_updates": s2["hot_upd"] - s1["hot_upd"]},
        }
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--revisions", default="0019,head")
    args = parser.parse_args()
    for revision in args.revisions.split(","):
        print(json.dumps(run(revision, args.rows)), flush=True)


if __name__ == "__main__":
    main()
