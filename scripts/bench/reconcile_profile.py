"""One ``index_cold`` and/or ``index_warm`` measurement of ``reconcile.py`` under py-spy.

    python scripts/bench/reconcile_profile.py --dir DIR --out OUT [--cold] [--warm 2]

``DIR`` holds a data set of ``reconcile.py --data-dir`` (legacy.db, cloud.db).  Starts the
cloud simulator on it and runs ``reconcile.py --worker index_cold|index_warm`` as its own
process under ``py-spy record --gil --subprocesses`` (the calling process and the helper
process that digests the cloud export, ``workers.reconcile.pipeline``), with a second
py-spy on the simulator.  Raw profiles go to ``OUT-<kind>-reconcile.txt`` and
``OUT-<kind>-simulator.txt`` (``--rate`` samples per second); each run's JSON (the
worker's figures plus the simulator's CPU and the load averages) is printed and appended
to ``OUT.jsonl``.  A cold run rebuilds the indexes into ``DIR/state.db`` (a fresh one), so
warm runs after it use them; ``--warm`` without ``--cold`` reuses the indexes there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True, help="path prefix of the profiles and results")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--warm", type=int, default=0, help="warm runs after")
    ap.add_argument("--rate", type=int, default=50)
    ap.add_argument("--no-spy", action="store_true", help="the same runs without py-spy")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE.parent))
    import reconcile as bench

    from workers.cloud_sim import start_simulator

    dir_ = Path(a.dir)
    legacy_url = f"sqlite:///{dir_ / 'legacy.db'}"
    state = dir_ / "state.db"
    if a.cold:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        bench.fresh_state(f"sqlite:///{state}")
    state_url = f"sqlite:///{state}"
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = (["index_cold"] if a.cold else []) + ["index_warm"] * a.warm
    with start_simulator(dir_ / "cloud.db") as sim:
        os.environ["BENCH_SIM_PID"] = str(sim.process.pid)
        for n, kind in enumerate(runs):
            tag = f"{kind}{n}" if kind == "index_warm" else kind
            cmd = [sys.executable, str(HERE.parent / "reconcile.py"), "--worker", kind,
                   legacy_url, sim.url, state_url]
            sim_spy = None
            if not a.no_spy:
                cmd = [spy, "record", "--gil", "--subprocesses", "-f", "raw", "-r", str(a.rate),
                       "-o", f"{out}-{tag}-reconcile.txt", "--", *cmd]
                sim_spy = subprocess.Popen(
                    [spy, "record", "--gil", "-f", "raw", "-r", str(a.rate), "-o",
                     f"{out}-{tag}-simulator.txt", "-p", str(sim.process.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load0 = os.getloadavg()
            sim0 = bench.process_cpu_s(sim.process.pid)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            sim_cpu = bench.process_cpu_s(sim.process.pid) - sim0
            if sim_spy is not None:
                sim_spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                sim_spy.wait(30)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"{kind} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = {"name": tag, "wall_with_spy_s": round(wall, 2), **json.loads(lines[-1]),
                      "cpu_cloud_sim_s": round(sim_cpu, 2),
                      "loadavg_start": [round(x, 2) for x in load0],
                      "loadavg": [round(x, 2) for x in os.getloadavg()]}
            print(json.dumps(result), flush=True)
            with open(f"{out}.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
