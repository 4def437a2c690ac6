"""Reconciliation throughput and memory against datacompy, on the same two data sets.

Builds a legacy SQLite database and a cloud simulator database holding the
same ``--customers`` sample customers, with ``--diff-pct`` percent of them
made different on the cloud side (70% field changes, 15% missing, 15% extra),
starts the simulator, and measures, each in its own process (so its peak RSS
is its own):

* ``reconcile_checksum_cold``: ``coexist reconcile`` logic in checksum mode
  on a simulator whose digest cache is empty (it digests every record first);
* ``reconcile_checksum_warm``: the same again (the nightly case: the cache
  holds every unchanged record);
* ``reconcile_full``: full-stream mode (every cloud record over HTTP);
* ``reconcile_index_cold``: what a first ``coexist reconcile`` (or ``--deep``) does:
  both ERPs streamed in full, compared, and both digest indexes rebuilt into a fresh
  state database (``--state-url``, default SQLite in the temporary directory);
* ``reconcile_index_warm``: the default run once the indexes exist: the two indexes
  compared in coexist's state, suspects and a sample (200 per side) verified live
  through the legacy adapter's ``get_many`` and the cloud's ``GET`` per record.  It
  reports ``checksum_requests`` (requests to the simulator's ``/reconcile``
  endpoints, always 0: the warm figure is the figure against a cloud without them);
* baseline ``datacompy``: both sides read through the same adapters
  (``LegacyErp.stream``, ``CloudErp.stream`` + the legacy normalisation),
  flattened into pandas DataFrames and compared by ``datacompy.PandasCompare``
  on the key.  Its compare-only time is reported too.

Prints one JSON line per figure: name, records_per_s (customers per second per
side), baseline_per_s, ratio, peak_rss_mb, seconds, findings.  datacompy is a
benchmark-only dependency: ``.venv/bin/pip install datacompy``.

Usage: ``python scripts/bench/reconcile.py [--customers 100000] [--diff-pct 0.1 1.0]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


#: Records per flush of ``build`` (and per step of its progress).
BUILD_FLUSH_RECORDS = 5000


def build(dir_: Path, n: int, diff_pct: float, seed: int) -> dict:
    """Both databases; returns the seeded difference counts.

    Resumable: after each flush (both databases committed) ``build-progress.json`` records
    the next record index, so a build cut short (a lock's timeout: a 1M build can take
    longer than one bench-lock hold on a loaded machine) goes on from there when run
    again, with the same data as one uninterrupted build (the drift draws are replayed)."""
    from sqlalchemy import delete, insert

    from coexistence.sample import iter_customers
    from coexistence.translate.cloud import from_canonical, to_json_bytes
    from coexistence.translate.legacy import LEGACY_TRANSLATORS
    from workers.cloud_sim.store import Store, now_iso
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

    t = LEGACY_TRANSLATORS["customer"]
    progress_file = dir_ / "build-progress.json"
    start = json.loads(progress_file.read_text())["next"] if progress_file.exists() else 0
    if start == 0:
        for f in ("legacy.db", "cloud.db"):
            (dir_ / f).unlink(missing_ok=True)
    engine = create_legacy_engine(f"sqlite:///{dir_ / 'legacy.db'}")
    create_legacy_schema(engine)
    store = Store(dir_ / "cloud.db")
    rnd = random.Random(seed)
    n_diff = max(1, round(n * diff_pct / 100))
    chosen = set(rnd.sample(range(n), n_diff))
    counts = {"mismatch": 0, "missing_in_cloud": 0, "missing_in_legacy": 0}
    heads, sites, docs = [], [], []
    modified = now_iso()
    # A flush cut short may have left part of its rows: the first flush after a resume
    # deletes its keys first.
    resumed = [start > 0]

    def flush(upto: int):
        with engine.begin() as conn:
            if resumed[0]:
                keys = [h["CUSTNO"] for h in heads]
                conn.execute(delete(t.TABLE.__table__).where(
                    t.TABLE.__table__.c.CUSTNO.in_(keys)))
                conn.execute(delete(t.CHILD_TABLE.__table__).where(
                    t.CHILD_TABLE.__table__.c.CUSTNO.in_(keys)))
            if heads:
                conn.execute(insert(t.TABLE.__table__), heads)
            if sites:
                conn.execute(insert(t.CHILD_TABLE.__table__), sites)
        store.db.execute("BEGIN")
        if resumed[0]:
            store.db.executemany("DELETE FROM entities WHERE entity_set = 'customers' AND "
                                 "number = ?", [(d[1],) for d in docs])
            resumed[0] = False
        store.db.executemany(
            "INSERT INTO entities (entity_set, id, number, rev, source_version, data, modified,"
            " deleted) VALUES ('customers', ?, ?, 1, 1, ?, ?, 0)", docs)
        store.db.execute("COMMIT")
        heads.clear(), sites.clear(), docs.clear()
        progress_file.write_text(json.dumps({"next": upto}))

    def roll_of() -> str:
        roll = rnd.random()
        kind = ("mismatch" if roll < 0.70 else "missing_in_cloud" if roll < 0.85
                else "missing_in_legacy")
        counts[kind] += 1
        return kind

    for _ in sorted(c for c in chosen if c < start):
        roll_of()  # the draws the records before ``start`` took
    i = start - 1
    for i, record in enumerate(iter_customers(n, seed, start=start), start):
        cloud_record, in_legacy, in_cloud = record, True, True
        if i in chosen:
            kind = roll_of()
            if kind == "mismatch":
                cloud_record = record.model_copy(update={"credit_limit": record.credit_limit + 1})
            elif kind == "missing_in_cloud":
                in_cloud = False
            else:
                in_legacy = False
        if in_legacy:
            h, c = t.from_canonical(record)
            heads.append(h)
            sites.extend(c)
        if in_cloud:
            body = to_json_bytes(from_canonical(cloud_record, source_version=1), body=True)
            docs.append((str(uuid.uuid4()), cloud_record.key, body.decode(), modified))
        if len(heads) >= BUILD_FLUSH_RECORDS:
            flush(i + 1)
    flush(i + 1)
    engine.dispose()
    store.close()
    return counts


def ours(legacy_url: str, cloud_url: str, mode: str) -> dict:
    from coexistence.reconcile.findings import Finding
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine
    from workers.reconcile.cloud import CloudReader
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.runner import reconcile_domain

    findings: list[Finding] = []
    erp = CloudErp(cloud_url, timeout_s=600)
    engine = create_legacy_engine(legacy_url)
    start = time.perf_counter()
    report = reconcile_domain("customer", LegacyReader(LegacyErp(engine)), CloudReader(erp),
                              mode=mode, on_finding=findings.append)
    seconds = time.perf_counter() - start
    c = report.counts
    return {"seconds": seconds, "rows": max(c.rows_legacy, c.rows_cloud),
            "findings": len(findings), "mismatched": c.mismatched,
            "exclusive_legacy": c.exclusive_legacy, "exclusive_cloud": c.exclusive_cloud,
            "cloud_records_fetched": report.cloud_records_fetched,
            "segments_differing": report.segments_differing, "segments": report.segments,
            "fell_back": report.fell_back}


def index_run(legacy_url: str, cloud_url: str, state_url: str, warm: bool) -> dict:
    import httpx

    from coexistence.reconcile.findings import Finding
    from workers.cloud_erp import CloudErp
    from workers.db import create_state_engine
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine
    from workers.reconcile.by_index import reconcile_by_index
    from workers.reconcile.cloud import CloudReader
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.runner import reconcile_domain

    paths: list[str] = []
    findings: list[Finding] = []
    erp = CloudErp(cloud_url, timeout_s=600)
    erp.http.event_hooks["request"].append(lambda request: paths.append(request.url.path))
    engine = create_legacy_engine(legacy_url)
    state = create_state_engine(state_url)
    legacy, cloud = LegacyReader(LegacyErp(engine)), CloudReader(erp)
    from workers.reconcile.by_index import run_queue_s

    start = time.perf_counter()
    cpu = time.process_time()
    queued = run_queue_s()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    sim_pid = int(os.environ.get("BENCH_SIM_PID", "0"))
    sim_cpu: dict[str, float] = {}
    if warm and sim_pid:
        # Benchmark-only: the simulator's CPU per stage beside the stage's own figures.
        from workers.reconcile.by_index import IndexStats

        real_lap = IndexStats.lap
        mark = [process_cpu_s(sim_pid)]

        def lap(self, stage: str) -> None:
            real_lap(self, stage)
            now = process_cpu_s(sim_pid)
            if stage != "start":
                sim_cpu[stage] = round(sim_cpu.get(stage, 0) + now - mark[0], 3)
            mark[0] = now

        IndexStats.lap = lap
    if warm:
        report, stats = reconcile_by_index("customer", legacy, cloud, state,
                                           on_finding=findings.append, seed=1)
        extra = {"buckets_differing": stats.buckets_differing, "suspects": stats.suspects,
                 "sampled": stats.sampled,
                 "stages": stats.stages, "cloud_sim_cpu_by_stage": sim_cpu}
    else:
        report = reconcile_domain("customer", legacy, cloud, mode="full",
                                  on_finding=findings.append, rebuild_index=state)
        extra = {}
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    end_queued = run_queue_s()
    if queued is not None and end_queued is not None:
        # The main thread's time runnable without a CPU (the machine's load).
        extra["run_queue_s"] = end_queued - queued
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The helper process that digests the cloud export (workers.reconcile.pipeline) has
    # exited by now: its CPU and peak RSS are the children's.
    extra["cpu_helper_s"] = (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    extra["peak_rss_helper_mb"] = round(after.ru_maxrss / 1024, 1)
    extra["helper_records"] = cloud.digester.offloaded if cloud.digester else 0
    del httpx
    c = report.counts
    return {"seconds": seconds, "rows": max(c.rows_legacy, c.rows_cloud),
            "findings": len(findings), "mismatched": c.mismatched,
            "exclusive_legacy": c.exclusive_legacy, "exclusive_cloud": c.exclusive_cloud,
            "cloud_records_fetched": report.cloud_records_fetched,
            "segments_differing": report.segments_differing, "segments": report.segments,
            "fell_back": report.fell_back, "cloud_requests": len(paths),
            "checksum_requests": sum(p.startswith("/reconcile") for p in paths),
            "cpu_s": cpu_s, **extra}


def index_direct(legacy_url: str, cloud_db: str, state_url: str) -> dict:
    """Both indexes built without the cloud's HTTP export: the legacy side as a cold run
    reads it (``LegacyReader.items``), the cloud side from the simulator's own database
    file (the same documents, translated and digested as ``CloudReader`` does).  Only to
    prepare a warm measurement where a cold run over HTTP would take too long here."""
    import sqlite3

    from workers.db import create_state_engine
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine
    from workers.reconcile.cloud import item_of_json
    from workers.reconcile.index import Rebuild, finish_all
    from workers.reconcile.legacy import LegacyReader

    state = create_state_engine(state_url)
    start = time.perf_counter()
    legacy = Rebuild(state, "customer", "legacy")
    for item in LegacyReader(LegacyErp(create_legacy_engine(legacy_url))).items("customer"):
        legacy.add(item.key, item.digest, item.nk)
    rebuild = Rebuild(state, "customer", "cloud")
    db = sqlite3.connect(cloud_db)
    for (data,) in db.execute("SELECT data FROM entities WHERE entity_set = 'customers' "
                              "AND deleted = 0 ORDER BY number"):
        doc = json.loads(data)
        item = item_of_json("customer", doc)
        rebuild.add(item.key, None if item.error else item.digest, item.nk)
    finish_all([legacy, rebuild])  # as a cold run does: both sides in one transaction
    return {"seconds": time.perf_counter() - start, "rows": rebuild.records}


def baseline(legacy_url: str, cloud_url: str) -> dict:
    import datacompy
    import pandas as pd

    from coexistence.reconcile.findings import plain
    from coexistence.reconcile.tolerances import normalise
    from workers.cloud_erp import CloudErp
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine

    def flat(record) -> dict:
        row = {k: plain(v) for k, v in record if k != "sites"}
        row["sites"] = json.dumps(plain(record.sites))
        return row

    start = time.perf_counter()
    legacy = pd.DataFrame([flat(r) for r in
                           LegacyErp(create_legacy_engine(legacy_url)).stream("customer")])
    cloud = pd.DataFrame([flat(normalise(r)) for r in
                          CloudErp(cloud_url, timeout_s=600).stream("customer")])
    loaded = time.perf_counter()
    cmp = datacompy.PandasCompare(legacy, cloud, join_columns="key")
    differing = (len(cmp.df1_unq_rows) + len(cmp.df2_unq_rows)
                 + len(cmp.all_mismatch()))
    end = time.perf_counter()
    return {"seconds": end - start, "compare_s": end - loaded,
            "rows": max(len(legacy), len(cloud)), "differing_records": differing}


def fresh_state(url: str) -> str:
    """A state database at the head revision without digest indexes."""
    from sqlalchemy import text

    from workers import migrate
    from workers.db import create_state_engine

    engine = create_state_engine(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        for table in ("reconcile_index", "reconcile_bucket", "reconcile_index_side"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    return url


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss, which a
    child inherits from the parent it was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def in_subprocess(kind: str, *args: str) -> dict:
    """Run one measurement in a child process; its result plus its peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--worker", kind, *args],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--diff-pct", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--state-url", default=None,
                        help="state database for the digest indexes (default: SQLite in the "
                             "temporary directory; a PostgreSQL URL is emptied of them first)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only these measurements (checksum, full, index)")
    parser.add_argument("--warm-only-dir", default=None, metavar="DIR",
                        help="reuse legacy.db + cloud.db built in DIR (see build()): build "
                             "the indexes from the files (index_build_direct), then measure "
                             "reconcile_index_warm only")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="keep the data sets in DIR/<customers>-<pct>pct and reuse them "
                             "when already built (a 1M build takes minutes)")
    parser.add_argument("--build-only", action="store_true",
                        help="with --data-dir: build the data sets, measure nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        legacy_url, cloud_url, *rest = a.args
        if a.worker == "baseline":
            result = baseline(legacy_url, cloud_url)
        elif a.worker == "index_direct":
            result = index_direct(legacy_url, cloud_url, rest[0])
        elif a.worker in ("index_cold", "index_warm"):
            result = index_run(legacy_url, cloud_url, rest[0], a.worker == "index_warm")
        else:
            result = ours(legacy_url, cloud_url, a.worker)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return
    if not a.no_baseline:
        try:
            import datacompy  # noqa: F401
        except ImportError:
            raise SystemExit("datacompy is not installed (a benchmark-only baseline): run "
                             ".venv/bin/pip install datacompy, or pass --no-baseline") from None
    from workers.cloud_sim import start_simulator

    if a.warm_only_dir:
        dir_ = Path(a.warm_only_dir)
        legacy_url = f"sqlite:///{dir_ / 'legacy.db'}"
        state_url = fresh_state(a.state_url or f"sqlite:///{dir_ / 'state.db'}")
        built = in_subprocess("index_direct", legacy_url, str(dir_ / "cloud.db"), state_url)
        print(json.dumps({"name": "index_build_direct", "seconds": round(built["seconds"], 2),
                          "rows": built["rows"], "peak_rss_mb": built["peak_rss_mb"],
                          "loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
        with start_simulator(dir_ / "cloud.db") as sim:
            for _ in range(2):
                r = in_subprocess("index_warm", legacy_url, sim.url, state_url)
                print(json.dumps({"name": f"reconcile_index_warm_{r['rows']}",
                                  "seconds": round(r["seconds"], 2),
                                  "cpu_s": round(r["cpu_s"], 2),
                                  "records_per_s": round(r["rows"] / r["seconds"]),
                                  **{k: r[k] for k in ("peak_rss_mb", "findings", "mismatched",
                                                       "exclusive_legacy", "exclusive_cloud",
                                                       "cloud_records_fetched", "suspects",
                                                       "sampled", "cloud_requests",
                                                       "checksum_requests", "stages")},
                                  "loadavg": [round(x, 2) for x in os.getloadavg()]}),
                      flush=True)
        return
    for pct in a.diff_pct:
        with contextlib.ExitStack() as stack:
            if a.data_dir:
                dir_ = Path(a.data_dir) / f"{a.customers}-{pct}pct-seed{a.seed}"
                dir_.mkdir(parents=True, exist_ok=True)
            else:
                dir_ = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="bench-reconcile-")))
            built_file = dir_ / "seeded.json"
            t0 = time.perf_counter()
            if built_file.exists():
                seeded = json.loads(built_file.read_text())
            else:
                seeded = build(dir_, a.customers, pct, a.seed)
                built_file.write_text(json.dumps(seeded))
            build_s = time.perf_counter() - t0
            if a.build_only:
                print(json.dumps({"built": str(dir_), "seeded": seeded,
                                  "build_s": round(build_s, 1)}), flush=True)
                continue
            (dir_ / "state.db").unlink(missing_ok=True)
            legacy_url = f"sqlite:///{dir_ / 'legacy.db'}"
            state_url = fresh_state(a.state_url or f"sqlite:///{dir_ / 'state.db'}")
            only = set(a.only or ("checksum", "full", "index"))
            plan = [(name, mode, args) for name, mode, args, group in (
                ("reconcile_checksum_cold", "checksum", (), "checksum"),
                ("reconcile_checksum_warm", "checksum", (), "checksum"),
                ("reconcile_full", "full", (), "full"),
                ("reconcile_index_cold", "index_cold", (state_url,), "index"),
                ("reconcile_index_warm", "index_warm", (state_url,), "index"),
            ) if group in only]
            # The baseline first and each line as soon as its figure exists: a long run
            # cut short (a lock's timeout) keeps what it measured.
            with start_simulator(dir_ / "cloud.db") as sim:
                os.environ["BENCH_SIM_PID"] = str(sim.process.pid)
                base = None
                if not a.no_baseline:
                    load0 = os.getloadavg()
                    base = in_subprocess("baseline", legacy_url, sim.url)
                    print(json.dumps({
                        "name": f"datacompy_{a.customers}_{pct}pct",
                        "records_per_s": round(base["rows"] / base["seconds"]),
                        "seconds": round(base["seconds"], 2),
                        "compare_only_s": round(base["compare_s"], 2),
                        "peak_rss_mb": base["peak_rss_mb"],
                        "differing_records": base["differing_records"], "seeded": seeded,
                        "loadavg_start": [round(x, 2) for x in load0],
                        "loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
                for name, mode, args in plan:
                    load0 = os.getloadavg()
                    before = process_cpu_s(sim.process.pid)
                    r = in_subprocess(mode, legacy_url, sim.url, *args)
                    r["cpu_cloud_sim_s"] = process_cpu_s(sim.process.pid) - before
                    print(json.dumps(_line(f"{name}_{a.customers}_{pct}pct", r, base, seeded,
                                           build_s, load0)), flush=True)


def _line(name: str, r: dict, base: dict | None, seeded: dict, build_s: float,
          load0: tuple) -> dict:
    per_s = r["rows"] / r["seconds"]
    line = {"name": name, "records_per_s": round(per_s),
            "peak_rss_mb": r["peak_rss_mb"], "seconds": round(r["seconds"], 2),
            "seeded": seeded, "build_s": round(build_s, 1),
            **{k: r[k] for k in ("findings", "mismatched", "exclusive_legacy",
                                 "exclusive_cloud", "cloud_records_fetched",
                                 "segments", "segments_differing", "fell_back",
                                 "cloud_requests", "checksum_requests",
                                 "suspects", "sampled", "stages", "cloud_sim_cpu_by_stage",
                                 "helper_records",
                                 "peak_rss_helper_mb") if k in r},
            **({"cpu_s": round(r["cpu_s"], 2)} if "cpu_s" in r else {}),
            **{k: round(r[k], 2) for k in ("cpu_helper_s", "run_queue_s",
                                           "cpu_cloud_sim_s") if k in r},
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if base is not None:
        base_per_s = base["rows"] / base["seconds"]
        line.update(baseline_per_s=round(base_per_s),
                    ratio=round(per_s / base_per_s, 2),
                    baseline_seconds=round(base["seconds"], 2),
                    baseline_compare_only_s=round(base["compare_s"], 2),
                    baseline_peak_rss_mb=base["peak_rss_mb"],
                    baseline_differing_records=base["differing_records"])
    return line

if __name__ == "__main__":
    main()
