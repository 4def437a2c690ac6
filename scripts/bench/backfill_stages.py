"""Where the streaming backfill's time goes: ``coexist reconcile customer --repair --yes``
run in this process on ``--customers`` sample customers (legacy SQLite -> an empty cloud
simulator, SQLite state, as ``backfill.py`` builds them), with the writer thread's stages
timed, wall and the thread's own CPU (``time.thread_time``), summed over the batches:

* ``_execute``: one batch in the writer thread (routes read, ``pending_hi`` checkpoint
  when needed, the target write);
* ``_write``: the target write (``CloudErp.upsert_many``: ``$batch`` JSON and HTTP);
* ``_commit``: the batch's state transaction (observations, xref links, digest-index
  entries, checkpoint), on the committer thread (on main before the third stage: inside
  ``_execute``, in the writer thread);
* ``run``: the reading thread (both streams merged, records paired and batched).

``run``'s wall is the backfill phase (records per second = customers / it); the cold
reconciliation before it is in ``wall_s`` and ``process_cpu_s``.  Prints one JSON line.
Usage: ``python scripts/bench/backfill_stages.py [--customers 50000]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=50_000)
    a = parser.parse_args()
    from backfill import build_legacy, fresh_state

    from workers.cloud_sim import start_simulator
    from workers.reconcile import backfill as bf

    spent = collections.defaultdict(lambda: [0.0, 0.0, 0])

    def timed(name, fn):
        def wrap(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                t = spent[name]
                t[0] += time.perf_counter() - wall
                t[1] += time.thread_time() - cpu
                t[2] += 1
        return wrap

    for name in ("run", "_execute", "_write", "_commit"):
        setattr(bf.Backfill, name, timed(name, getattr(bf.Backfill, name)))
    with tempfile.TemporaryDirectory(prefix="bench-backfill-stages-") as tmp:
        dir_ = Path(tmp)
        legacy_url = build_legacy(dir_, a.customers, 1)
        state_url = fresh_state(f"sqlite:///{dir_ / 'state.db'}")
        with start_simulator(dir_ / "cloud.db") as sim:
            for key in [k for k in os.environ if k.startswith("COEXIST_")]:
                del os.environ[key]
            os.environ.update(COEXIST_HOME=str(dir_), COEXIST_LEGACY_URL=legacy_url,
                              COEXIST_CLOUD_URL=sim.url, COEXIST_STATE_URL=state_url,
                              COEXIST_REDIS_URL="", COEXIST_BROKER_URL="")
            from workers.cli import cli

            wall, cpu = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                cli.main(args=["reconcile", "customer", "--repair", "--yes", "--format",
                               "json", "--no-progress"], prog_name="coexist")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    run_wall = spent["run"][0]
    print(json.dumps({
        "name": "backfill_stages", "customers": a.customers,
        "backfill_records_per_s": round(a.customers / run_wall) if run_wall else None,
        "wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
        **{k: {"wall_s": round(v[0], 2), "thread_cpu_s": round(v[1], 2), "calls": v[2]}
           for k, v in spent.items()},
        "loadavg": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
