"""The streaming backfill: N customers from the legacy ERP into an empty cloud ERP.

Builds a legacy SQLite database of ``--customers`` sample customers (rows inserted
directly, as ``scripts/bench/reconcile.py`` does), a fresh state database and an
empty cloud simulator, then measures, in the same run:

* ``backfill_cli``: the production path, ``coexist reconcile customer --repair --yes
  --format json`` as its own OS process: the cloud is empty, so the backfill streams
  the legacy ERP straight into batched writes and reconciles as it goes (mode
  ``one-sided``; both digest indexes built); with a cloud that held records it would
  reconcile first (a cold run), then backfill what differs.  Reported: the whole
  command's records/s and the backfill phase's own (from the command's JSON), the
  process's CPU time and peak RSS;
* baseline ``batch_writes_only``: ``CloudErp.upsert_many`` alone for the first
  ``--baseline-records`` of the same records into another empty simulator (the
  cloud's ``$batch`` write rate, no reading, no state): the ceiling the backfill's
  writes can reach;
* baseline ``one_at_a_time``: the old repair path's per-record work on
  ``--old-records`` records: each read by key from both ERPs (as ``plan_repairs``
  did), then written with ``CloudErp.upsert`` (a read of the current state and one
  write, as the writer actor does), no bus.

Prints one JSON line per figure with ``os.getloadavg()``.

Usage: ``python scripts/bench/backfill.py [--customers 100000] [--state-url URL]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def build_legacy(dir_: Path, n: int, seed: int) -> str:
    from sqlalchemy import insert

    from coexistence.sample import iter_customers
    from coexistence.translate.legacy import LEGACY_TRANSLATORS
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

    t = LEGACY_TRANSLATORS["customer"]
    url = f"sqlite:///{dir_ / 'legacy.db'}"
    engine = create_legacy_engine(url)
    create_legacy_schema(engine)
    heads: list[dict] = []
    sites: list[dict] = []

    def flush() -> None:
        with engine.begin() as conn:
            if heads:
                conn.execute(insert(t.TABLE.__table__), heads)
            if sites:
                conn.execute(insert(t.CHILD_TABLE.__table__), sites)
        heads.clear(), sites.clear()

    for record in iter_customers(n, seed):
        h, c = t.from_canonical(record)
        heads.append(h)
        sites.extend(c)
        if len(heads) >= 5000:
            flush()
    flush()
    engine.dispose()
    return url


def legacy_db(dir_: Path, n: int, seed: int, path: str | None) -> str:
    """The legacy ERP's URL: built in ``dir_``, or at ``path`` (kept), reused when it is
    there already with ``n`` customers (a 1M build takes minutes; the run only reads it)."""
    import sqlite3

    if path is None:
        return build_legacy(dir_, n, seed)
    target = Path(path)
    if target.exists():
        with sqlite3.connect(target) as conn:
            held = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'CUSTMAST'"
                                ).fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM CUSTMAST").fetchone()[0] if held else 0
        if rows == n:
            return f"sqlite:///{target}"
        target.unlink()
    build = target.parent / f"build-{os.getpid()}"
    build.mkdir(parents=True, exist_ok=True)
    build_legacy(build, n, seed)
    (build / "legacy.db").rename(target)
    shutil.rmtree(build)
    return f"sqlite:///{target}"


def fresh_state(url: str) -> str:
    from sqlalchemy import text

    from workers import migrate
    from workers.db import create_state_engine

    engine = create_state_engine(url)
    migrate.upgrade(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("reconcile_index", "reconcile_bucket", "reconcile_index_side",
                          "backfill_checkpoint", "xref", "observed_revision", "record_route",
                          "reconcile_finding", "reconcile_run"):
                conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    return url


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cli_run(legacy_url: str, cloud_url: str, state_url: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
    env.update(COEXIST_HOME=str(home), COEXIST_LEGACY_URL=legacy_url,
               COEXIST_CLOUD_URL=cloud_url, COEXIST_STATE_URL=state_url,
               COEXIST_REDIS_URL="", COEXIST_BROKER_URL="", PYTHONPATH=str(ROOT))
    exe = Path(sys.executable).parent / "coexist"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from workers.cli import main; main()"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd + ["reconcile", "customer", "--repair", "--yes", "--format",
                                "json", "--no-progress"],
                         env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        raise SystemExit(f"coexist reconcile failed ({out.returncode}):\n{out.stderr[-3000:]}")
    body = json.loads(out.stdout)
    [run] = body["runs"]
    return {"seconds": seconds, "run": run,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 1)}


def live_customers(db: Path) -> int:
    """Customers the simulator holds, counted in its SQLite file (streaming 1M records
    back through the API would take minutes)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM entities WHERE entity_set = 'customers' "
                            "AND deleted = 0").fetchone()[0]


def batch_writes_only(legacy_url: str, cloud_url: str, n: int) -> dict:
    from workers.cloud_erp import CLOUD_BATCH_MAX, CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine

    engine = create_legacy_engine(legacy_url)
    records = []
    for record in LegacyErp(engine).stream("customer"):
        records.append(record)
        if len(records) >= n:
            break
    engine.dispose()
    erp = CloudErp(cloud_url, timeout_s=600)
    start = time.perf_counter()
    applied = 0
    for i in range(0, len(records), CLOUD_BATCH_MAX):
        chunk = records[i:i + CLOUD_BATCH_MAX]
        results = erp.upsert_many([(r, 0, f"bench:{r.key}") for r in chunk])
        applied += sum(type(r).__name__ == "Applied" for r in results)
    seconds = time.perf_counter() - start
    erp.close()
    return {"seconds": seconds, "records": len(records), "applied": applied}


def one_at_a_time(legacy_url: str, cloud_url: str, n: int) -> dict:
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine

    engine = create_legacy_engine(legacy_url)
    legacy = LegacyErp(engine)
    keys = []
    for record in legacy.stream("customer"):
        keys.append(record.key)
        if len(keys) >= n:
            break
    erp = CloudErp(cloud_url, timeout_s=600)
    start = time.perf_counter()
    for key in keys:
        record = legacy.get("customer", key)
        erp.get("customer", key)
        erp.get_current("customer", key)
        erp.upsert(record, source_version=0, idempotency_key=f"old:{key}", repair=True)
    seconds = time.perf_counter() - start
    erp.close()
    engine.dispose()
    return {"seconds": seconds, "records": len(keys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline-records", type=int, default=20_000)
    parser.add_argument("--old-records", type=int, default=500)
    parser.add_argument("--legacy-db", default=None, metavar="PATH",
                        help="the legacy SQLite database to read, built there first when "
                             "absent (reused as it is when present: only read by the run)")
    parser.add_argument("--build-only", action="store_true",
                        help="build --legacy-db and stop")
    parser.add_argument("--state-url", default=None,
                        help="state database (default: SQLite in the temporary directory; "
                             "a PostgreSQL URL has the backfill's tables emptied first)")
    a = parser.parse_args()
    from workers.cloud_sim import start_simulator

    def load() -> list[float]:
        return [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        dir_ = Path(tmp)
        t0 = time.perf_counter()
        legacy_url = legacy_db(dir_, a.customers, a.seed, a.legacy_db)
        build_s = time.perf_counter() - t0
        if a.build_only:
            print(json.dumps({"name": "build", "url": legacy_url, "seconds": round(build_s, 1),
                              "customers": a.customers}), flush=True)
            return
        state_url = fresh_state(a.state_url or f"sqlite:///{dir_ / 'state.db'}")
        with start_simulator(dir_ / "base.db") as sim:
            base = batch_writes_only(legacy_url, sim.url, a.baseline_records)
        base_per_s = base["records"] / base["seconds"]
        print(json.dumps({"name": "batch_writes_only", "records": base["records"],
                          "applied": base["applied"], "seconds": round(base["seconds"], 2),
                          "records_per_s": round(base_per_s), "loadavg": load()}), flush=True)
        with start_simulator(dir_ / "old.db") as sim:
            old = one_at_a_time(legacy_url, sim.url, a.old_records)
        old_per_s = old["records"] / old["seconds"]
        print(json.dumps({"name": "one_at_a_time", "records": old["records"],
                          "seconds": round(old["seconds"], 2),
                          "records_per_s": round(old_per_s), "loadavg": load()}), flush=True)
        load_start = load()
        with start_simulator(dir_ / "cloud.db") as sim:
            sim_cpu0 = cpu_of(sim.process.pid)
            r = cli_run(legacy_url, sim.url, state_url, dir_)
            sim_cpu_s = cpu_of(sim.process.pid) - sim_cpu0
            in_cloud = live_customers(dir_ / "cloud.db")
        b = r["run"].get("backfill") or {}
        per_s = a.customers / r["seconds"]
        phase_per_s = b.get("records_per_s", 0.0)
        print(json.dumps({
            "name": f"backfill_cli_{a.customers}", "records": a.customers,
            "mode": r["run"].get("mode"),
            "in_cloud_after": in_cloud, "seconds": round(r["seconds"], 2),
            "records_per_s": round(per_s), "backfill_phase_s": b.get("seconds"),
            "backfill_phase_per_s": phase_per_s,
            "reconcile_phase_s": round(r["seconds"] - (b.get("seconds") or 0), 2),
            "written": b.get("written"), "errors": b.get("errors"),
            "skipped": b.get("skipped"), "stale": b.get("stale"),
            "cpu_s": round(r["cpu_s"], 2), "backfill_phase_cpu_s": b.get("cpu_s"),
            "simulator_cpu_s": round(sim_cpu_s, 2),
            "cpu_ms_per_record": round(1000 * (r["cpu_s"] + sim_cpu_s) / a.customers, 3),
            "peak_rss_mb": r["peak_rss_mb"],
            "vs_batch_writes_only": round(phase_per_s / base_per_s, 2),
            "vs_one_at_a_time": round(per_s / old_per_s, 2),
            "build_s": round(build_s, 1), "target_per_s": 2000, "loadavg_start": load_start,
            "loadavg": load()}),
            flush=True)


if __name__ == "__main__":
    main()
