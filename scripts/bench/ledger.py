"""What the settle ledger costs: one mark per consumed message, one count per drain poll.

Prints one JSON line per figure, each with a baseline measured in the same run:

* ``settle_mark``: ``bus.ledger.mark_settled`` per message, each in its own transaction
  (as the middleware marks it), in marks/s; baseline: ``bus.inbox.claim`` per message in
  its own transaction (the per-message bookkeeping an inbox consumer already pays).
* ``unsettled_count``: ``bus.ledger.unsettled`` for one domain (what ``cutover set`` polls
  and ``cutover status`` shows) with ``--history`` settled rows and ``--pending`` unsettled
  ones, in ms per call; baseline: ``bus.outbox.backlog`` (the unsent-row count the guard
  used before the ledger).

    .venv/bin/python scripts/bench/ledger.py [--url postgresql+psycopg://...] \\
        [--messages 2000] [--history 100000] [--pending 1000]

Without ``--url`` it uses PostgreSQL on loopback (``COEXIST_TEST_PG_URL``'s server, a
throw-away schema) when it answers, else a SQLite file in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

# This folder holds bus.py (the bus benchmark), which would shadow the ``bus`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parents[1]))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from bus import inbox, ledger  # noqa: E402
from bus.db import create_state_engine  # noqa: E402
from bus.outbox import OutboxRecord, backlog  # noqa: E402
from workers.migrate import upgrade  # noqa: E402

PG_URL = os.environ.get("COEXIST_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
QUEUE = "coexist.write.cloud"


def _pg_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _rows(n: int, *, settled: bool, domain: str = "customer") -> list[dict]:
    now = datetime.now(UTC)
    return [{"message_id": str(uuid.uuid4()), "queue_name": QUEUE, "actor_name": "write_cloud",
             "domain": domain, "partition_key": f"K{i}", "payload": "{}", "created_at": now,
             "sent_at": now, "attempts": 1, "flag_version": 1 + i % 3,
             "settled_at": now if settled else None, "outcome": "handled" if settled else None}
            for i in range(n)]


def _fill(engine, rows: list[dict]) -> None:
    table = OutboxRecord.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(table), rows[start:start + 5000])


def bench(engine, backend: str, messages: int, history: int, pending: int) -> list[dict]:
    _fill(engine, _rows(history, settled=True))
    _fill(engine, _rows(history // 7, settled=True, domain="order"))
    to_mark = _rows(messages, settled=False)
    _fill(engine, to_mark)
    _fill(engine, _rows(pending, settled=False))
    load = os.getloadavg()[0]

    start = time.perf_counter()
    for row in to_mark:
        ledger.mark_settled(engine, row["message_id"], ledger.HANDLED)
    marks = messages / (time.perf_counter() - start)
    start = time.perf_counter()
    for row in to_mark:
        with engine.begin() as conn:
            inbox.claim(conn, "bench", row["message_id"])
    claims = messages / (time.perf_counter() - start)

    def per_call_ms(fn, calls: int = 50) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) * 1000 / calls

    count_ms = per_call_ms(lambda: ledger.unsettled(engine, domain="customer", queues=[QUEUE]))
    base_ms = per_call_ms(lambda: backlog(engine, "customer"))
    found = ledger.unsettled(engine, domain="customer", queues=[QUEUE]).unsent + \
        ledger.unsettled(engine, domain="customer", queues=[QUEUE]).in_broker
    assert found == pending, (found, pending)
    return [
        {"figure": "settle_mark", "backend": backend, "messages": messages,
         "marks_per_s": round(marks), "baseline_inbox_claims_per_s": round(claims),
         "ratio": round(marks / claims, 2), "load_average": round(load, 1)},
        {"figure": "unsettled_count", "backend": backend, "history_rows": history + history // 7,
         "pending": pending, "ms_per_call": round(count_ms, 2),
         "baseline_unsent_backlog_ms": round(base_ms, 2), "ratio": round(count_ms / base_ms, 2),
         "load_average": round(load, 1)},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a state database URL (its tables are created)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=1000)
    args = parser.parse_args()
    if args.url:
        engine = create_state_engine(args.url)
        upgrade(engine)
        results = bench(engine, engine.dialect.name, args.messages, args.history, args.pending)
        engine.dispose()
    elif _pg_answers():
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            engine = create_state_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
            upgrade(engine)
            results = bench(engine, "postgresql", args.messages, args.history, args.pending)
            engine.dispose()
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()
    else:
        with tempfile.TemporaryDirectory() as folder:
            engine = create_state_engine(f"sqlite:///{folder}/state.db")
            upgrade(engine)
            results = bench(engine, "sqlite", args.messages, args.history, args.pending)
            engine.dispose()
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
