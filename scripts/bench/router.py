"""Router throughput: in-process routing decisions, and end to end in shadow mode.

    .venv/bin/python scripts/bench/router.py [--decisions 200000] [--changes 2000]

Prints one JSON line per figure (``name``, ``records_per_s``, ``baseline_per_s``, ``ratio``,
``p50_ms``, ``p99_ms``):

* ``router_decisions``: ``coexistence.router.decide_change`` on prebuilt changes, flag
  evaluation included (a 50 % sticky rollout restricted to two regions, the slow path);
  baseline: the flag evaluation alone (``FlagState.mode_for``) on the same keys.
* ``router_shadow_end_to_end``: legacy changes (``--changes`` customers inserted by people)
  -> change capture -> outbox (SQLite state) -> RabbitMQ -> writer actors -> the cloud
  simulator over HTTP, until every record is in the cloud.  Latency: the legacy change's
  time to the cloud write's time, both read from the ERPs' own feeds, so it includes the
  queueing of a burst.  Baseline: raw pika (durable queue, batched confirms, manual acks)
  moving the same number of messages, from ``scripts/bench/bus.py``, in the same run.

RabbitMQ gets a private vhost (``rabbitmqctl``, removed after); files go to a temp folder.
Bounded: the end-to-end phase gives up after ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402

from coexistence.flags import FlagState, Mode, Rollout, parse_segments, percent_to_buckets  # noqa: E402
from coexistence.ports import Change  # noqa: E402
from coexistence.router import decide_change  # noqa: E402
from coexistence.sample import SampleSpec, iter_customers  # noqa: E402

AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _bus_bench():
    spec = importlib.util.spec_from_file_location("bench_bus", _HERE / "bus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pct(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    if not values:
        return 0.0, 0.0
    return (round(values[len(values) // 2] * 1000, 1),
            round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 1))


def bench_decisions(n: int) -> dict:
    customers = list(iter_customers(2000, seed=3))
    state = FlagState("customer", Mode.CLOUD, Mode.SHADOW,
                      Rollout(percent_to_buckets(50), parse_segments(["region=WEST",
                                                                      "region=EAST"])), 7)
    now = datetime.now(UTC)
    changes = [Change(cursor=i, domain="customer", key=c.key, op="upsert", writer="JSMITH",
                      at=now, version=i) for i, c in enumerate(customers, 1)]
    pairs = list(zip(changes, customers, strict=True))
    attrs = [{"region": c.region, "customer_group": c.customer_group} for c in customers]
    keys = [c.key for c in customers]

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return n / best

    rounds = max(1, n // len(pairs))

    def decide():
        for _ in range(rounds):
            for change, record in pairs:
                decide_change(change, "legacy", state, record)

    def evaluate():
        for _ in range(rounds):
            for key, a in zip(keys, attrs, strict=True):
                state.mode_for(key, a)

    ours, base = timed(decide), timed(evaluate)
    return {"name": "router_decisions", "records_per_s": round(ours),
            "baseline_per_s": round(base), "ratio": round(ours / base, 3),
            "decisions": rounds * len(pairs)}


def bench_shadow(changes: int, timeout_s: float, worker_procs: int, threads: int) -> dict:
    from coexistence.router import CLOUD, LEGACY
    from workers.bootstrap import bootstrap, run_router
    from workers.cloud_sim import start_simulator
    from workers.cloud_sim.admin import SimulatorAdmin
    from workers.config import Settings
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.legacy_erp.seed import seed_legacy

    vhost = f"coexist_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*",
                    ".*"], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                start_simulator(Path(tmp) / "cloud.db") as sim:
            home = Path(tmp)
            settings = Settings(
                home=home, state_url=f"sqlite:///{home / 'state.db'}",
                legacy_url=f"sqlite:///{home / 'legacy.db'}", broker_url=AMQP + vhost,
                queue_type="classic", redis_url=None, redis_prefix="coexist:",
                cloud_url=sim.url,
            )
            legacy_engine = create_legacy_engine(settings.legacy_url)
            create_legacy_schema(legacy_engine)
            app = bootstrap(settings, create_state=True)
            state = app.cutover.set("customer", Mode.SHADOW, actor="bench", reason="bench",
                                force=True)
            app.flags.wait_for("customer", state.version, 10)
            # People's inserts: the changes to route (they sit in the change log).
            spec = SampleSpec(customers=changes, products=2, prices_per_customer=1)
            seed_legacy(legacy_engine, spec, domains=["customer"])
            # As in production (supervisord): worker processes beside the router process.
            env = {**os.environ, "COEXIST_HOME": str(home), "COEXIST_STATE_URL":
                   settings.state_url, "COEXIST_LEGACY_URL": settings.legacy_url,
                   "COEXIST_BROKER_URL": settings.broker_url, "COEXIST_CLOUD_URL": sim.url}
            procs = [subprocess.Popen(
                [sys.executable, "-c", "from workers.cli import main; main()", "worker",
                 "--threads", str(threads), "--log-level", "WARNING"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL) for _ in range(worker_procs)]
            worker = dramatiq.Worker(app.broker, worker_threads=threads) if not procs else None
            stop = threading.Event()
            router = threading.Thread(target=run_router, args=(app, stop), daemon=True)
            start = time.time()
            if worker is not None:
                worker.start()
            router.start()
            admin = SimulatorAdmin(sim.url)
            done, deadline, after, cloud_at = 0, start + timeout_s, 0, {}
            while done < changes and time.time() < deadline:
                page = admin.changes(after, 1000)
                for entry in page:
                    if entry["clientId"] == "COEXIST":
                        cloud_at[entry["number"]] = datetime.fromisoformat(entry["at"])
                if page:
                    after = page[-1]["cursor"]
                done = len(cloud_at)
                if done < changes:
                    time.sleep(0.05)
            elapsed = time.time() - start
            stop.set()
            router.join(10)
            if worker is not None:
                worker.stop()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            legacy_at = {c.key: c.at for c in app.erps[LEGACY].read(0, changes * 2)}
            latencies = [(cloud_at[k] - legacy_at[k]).total_seconds()
                         for k in cloud_at if k in legacy_at]
            cloud_rows = sum(1 for _ in app.erps[CLOUD].stream("customer"))
            admin.close()
            app.close()
            legacy_engine.dispose()
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)
    p50, p99 = _pct(latencies)
    return {"per_s": done / elapsed, "p50_ms": p50, "p99_ms": p99, "done": done,
            "cloud_rows": cloud_rows, "seconds": round(elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--worker-procs", type=int, default=2,
                        help="`coexist worker` processes (0: threads in the router's process)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads per process")
    args = parser.parse_args()
    print(json.dumps(bench_decisions(args.decisions)), flush=True)
    if args.skip_end_to_end:
        return 0
    baseline = _bus_bench().bench_baseline(args.changes, args.timeout_s)
    ours = bench_shadow(args.changes, args.timeout_s, args.worker_procs, args.threads)
    print(json.dumps({
        "name": "router_shadow_end_to_end",
        "records_per_s": round(ours["per_s"], 1),
        "baseline_per_s": round(baseline["per_s"], 1),
        "ratio": round(ours["per_s"] / baseline["per_s"], 4),
        "p50_ms": ours["p50_ms"], "p99_ms": ours["p99_ms"],
        "baseline_p50_ms": baseline["p50_ms"], "baseline_p99_ms": baseline["p99_ms"],
        "changes": args.changes, "applied": ours["done"], "cloud_rows": ours["cloud_rows"],
        "seconds": ours["seconds"], "worker_procs": args.worker_procs,
        "threads": args.threads,
    }), flush=True)
    return 0 if ours["done"] == args.changes else 1


if __name__ == "__main__":
    raise SystemExit(main())
