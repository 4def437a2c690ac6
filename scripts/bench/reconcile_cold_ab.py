"""A cold ``reconcile`` (both ERPs streamed, indexes rebuilt) of this code vs another
checkout's, on one data set, alternating, in the same run.

    python scripts/bench/reconcile_cold_ab.py --dir /tmp/recon-100k --customers 100000 \
        --baseline-src /work/main --rounds 2

Builds the data set in ``--dir`` once (``reconcile.py``'s ``build``; kept for reuse),
starts the cloud simulator, then runs ``reconcile.py --worker index_cold`` as its own
process with ``PYTHONPATH`` set to this checkout and to ``--baseline-src`` in turn.
Prints one JSON line per run (wall, process CPU, CPU per record, peak RSS, findings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--diff-pct", type=float, default=0.1)
    ap.add_argument("--baseline-src", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE.parent))
    import reconcile as bench

    from workers.cloud_sim import start_simulator

    dir_ = Path(a.dir)
    if not (dir_ / "cloud.db").exists():
        dir_.mkdir(parents=True, exist_ok=True)
        seeded = bench.build(dir_, a.customers, a.diff_pct, 1)
        print(json.dumps({"built": str(dir_), "seeded": seeded}), flush=True)
    legacy_url = f"sqlite:///{dir_ / 'legacy.db'}"
    with start_simulator(dir_ / "cloud.db") as sim:
        for _ in range(a.rounds):
            for name, src in (("baseline", a.baseline_src), ("this", str(ROOT))):
                state = dir_ / f"state-{name}.db"
                state.unlink(missing_ok=True)
                state_url = bench.fresh_state(f"sqlite:///{state}")  # migrated schema
                env = {**os.environ, "PYTHONPATH": src}
                out = subprocess.run(
                    [
                        sys.executable,
                        str(Path(src) / "scripts/bench/reconcile.py"),
                        "--worker",
                        "index_cold",
                        legacy_url,
                        sim.url,
                        state_url,
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                if out.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    json.dumps(
                        {
                            "name": f"reconcile_index_cold_{name}",
                            "src": src,
                            "rows": r["rows"],
                            "seconds": round(r["seconds"], 2),
                            "cpu_s": round(r["cpu_s"], 2),
                            "cpu_helper_s": round(r.get("cpu_helper_s", 0.0), 2),
                            "cpu_us_per_record": round(
                                (r["cpu_s"] + r.get("cpu_helper_s", 0.0)) / r["rows"] * 1e6, 1),
                            "peak_rss_helper_mb": r.get("peak_rss_helper_mb"),
                            "peak_rss_mb": r["peak_rss_mb"],
                            "findings": r["findings"],
                            "mismatched": r["mismatched"],
                            "loadavg": os.getloadavg(),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
