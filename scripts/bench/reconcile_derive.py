"""A higher-drift copy of a ``reconcile.py`` data set, derived in SQL instead of rebuilt.

    python scripts/bench/reconcile_derive.py --from DIR --to DIR2 --customers 1000000 \
        --base-pct 0.1 --pct 1.0

A 1M ``build`` takes 20-40 min on a loaded machine; this copies ``DIR``'s legacy.db and
cloud.db and makes ``pct - base_pct`` percent more of the customers differ, chosen
(seeded) among those ``build`` left equal, with ``build``'s mix: 70 % a cloud credit limit
one higher, 15 % deleted from the cloud, 15 % deleted from the legacy ERP.  Writes
``seeded.json`` (the base set's counts plus these), so ``reconcile.py --data-dir`` uses
the copy as it is.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", required=True)
    ap.add_argument("--to", dest="dst", required=True)
    ap.add_argument("--customers", type=int, required=True)
    ap.add_argument("--base-pct", type=float, required=True)
    ap.add_argument("--pct", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    from coexistence.sample.masters import customer_key

    src, dst = Path(a.src), Path(a.dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("legacy.db", "cloud.db"):
        with sqlite3.connect(src / name) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copyfile(src / name, dst / name)
    n = a.customers
    base = set(random.Random(a.seed).sample(range(n), max(1, round(n * a.base_pct / 100))))
    extra = max(0, round(n * a.pct / 100) - len(base))
    rnd = random.Random(a.seed + 1000)
    picked = []
    while len(picked) < extra:
        i = rnd.randrange(n)
        if i not in base and i not in picked:
            picked.append(i)
    counts = json.loads((src / "seeded.json").read_text())
    mismatch, gone_cloud, gone_legacy = [], [], []
    for i in sorted(picked):
        roll = rnd.random()
        (mismatch if roll < 0.70 else gone_cloud if roll < 0.85 else gone_legacy).append(
            customer_key(i))
    cloud = sqlite3.connect(dst / "cloud.db")
    with cloud:
        cloud.executemany(
            "UPDATE entities SET data = json_set(data, '$.creditLimit', printf('%.2f', "
            "CAST(json_extract(data, '$.creditLimit') AS REAL) + 1)) "
            "WHERE entity_set = 'customers' AND number = ?", [(k,) for k in mismatch])
        cloud.executemany("DELETE FROM entities WHERE entity_set = 'customers' AND number = ?",
                          [(k,) for k in gone_cloud])
    cloud.close()
    legacy = sqlite3.connect(dst / "legacy.db")
    with legacy:
        for table in ("CUSTSITE", "CUSTMAST"):
            legacy.executemany(f'DELETE FROM "{table}" WHERE "CUSTNO" = ?',
                               [(k.zfill(10),) for k in gone_legacy])
    legacy.close()
    counts = {"mismatch": counts["mismatch"] + len(mismatch),
              "missing_in_cloud": counts["missing_in_cloud"] + len(gone_cloud),
              "missing_in_legacy": counts["missing_in_legacy"] + len(gone_legacy),
              "derived_from": str(src)}
    (dst / "seeded.json").write_text(json.dumps(counts))
    print(json.dumps({"derived": str(dst), "seeded": counts}))


if __name__ == "__main__":
    main()
