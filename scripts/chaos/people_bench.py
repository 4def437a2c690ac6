"""How fast the chaos run's people edit the legacy ERP, one edit per transaction against
batches (``People.edit_batch``), in the same run on the same database.

    .venv/bin/python scripts/chaos/people_bench.py [--customers 20000] [--seconds 20]
        [--threads 4] [--batches 1,25]

A database of its own (dropped at the end) seeded with the run's estate and the change-log
triggers; no coexist process runs, so it measures the load generator alone (what the
ERP's transactions cost it), alternating the batch sizes twice. Strays and deletes are off
(they need the cloud simulator). Prints one JSON line: edits/s per batch size and round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as chaos  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--batches", default="1,25")
    args = p.parse_args()
    from coexistence.sample import SampleSpec
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.legacy_erp.seed import seed_legacy

    db = f"coexist_chaos_people_{uuid.uuid4().hex[:8]}_legacy"
    admin = create_engine(chaos.PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    estate = chaos.Estate("bench", Path("/tmp"), legacy_db=db, sim_port=1)
    out: dict = {"customers": args.customers, "threads": args.threads,
                 "load_average_start": os.getloadavg(), "rounds": []}
    try:
        engine = create_legacy_engine(estate.legacy_url)
        create_legacy_schema(engine)
        seed_legacy(engine, SampleSpec(customers=args.customers, products=20),
                    domains=("customer",))
        with engine.connect() as conn:
            keys = [str(int(k)) for (k,) in conn.execute(text('SELECT "CUSTNO" FROM "CUSTMAST"'))]
        engine.dispose()
        chaos.STRAY_SHARE = 0.0
        people = chaos.People(estate, keys, 7, delete_share=0.0)
        shares = [keys[n::args.threads] for n in range(args.threads)]
        for _round in range(2):
            for size in [int(b) for b in args.batches.split(",")]:
                before, stop = people.seq, time.monotonic() + args.seconds
                cpu = time.process_time()

                def work(mine: list[str], size: int = size, stop: float = stop) -> None:
                    while time.monotonic() < stop:
                        people.edit_batch(mine, size)

                began = time.monotonic()
                pool = [threading.Thread(target=work, args=(s,)) for s in shares]
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                wall = time.monotonic() - began
                n = people.seq - before
                out["rounds"].append({"batch": size, "edits": n,
                                      "edits_per_s": round(n / wall, 1),
                                      "cpu_ms_per_edit": round(
                                          (time.process_time() - cpu) * 1000 / max(n, 1), 3),
                                      "load_average": os.getloadavg()[0]})
        people.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
