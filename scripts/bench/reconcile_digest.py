"""CPU per record of the cloud side's digest: the fast path vs the canonical oracle.

    python scripts/bench/reconcile_digest.py --customers 20000 --rounds 3

Both paths digest the same export documents (``coexistence.sample`` customers as the
cloud simulator stores them) in the same process, alternating, best of ``--rounds``;
prints JSON (process CPU per record, the ratio, and whether every item agreed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Run as a script, scripts/bench/ (which holds a bus.py) must not shadow the packages.
sys.path[0] = str(Path(__file__).resolve().parents[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    from coexistence.sample import iter_customers
    from coexistence.translate.cloud import from_canonical, to_json_bytes
    from workers.reconcile.cloud import item_of_json, item_of_slow

    lines = [
        to_json_bytes(from_canonical(r, source_version=1), body=True)
        for r in iter_customers(args.customers, args.seed)
    ]

    def run(fn) -> tuple[float, list]:
        t0 = time.process_time()
        out = [fn("customer", line) for line in lines]
        return (time.process_time() - t0) / len(lines) * 1e6, out

    best = {"fast": float("inf"), "oracle": float("inf")}
    agree = True
    for _ in range(args.rounds):
        for name, fn in (("oracle", item_of_slow), ("fast", item_of_json)):
            us, items = run(fn)
            best[name] = min(best[name], us)
            if name == "oracle":
                ref = [(i.key, i.digest, i.nk) for i in items]
            else:
                agree = agree and ref == [(i.key, i.digest, i.nk) for i in items]
    print(
        json.dumps(
            {
                "records": len(lines),
                "rounds": args.rounds,
                "oracle_cpu_us_per_record": round(best["oracle"], 1),
                "fast_cpu_us_per_record": round(best["fast"], 1),
                "speedup": round(best["oracle"] / best["fast"], 2),
                "same_items": agree,
                "loadavg": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
