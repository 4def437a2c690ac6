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
  queueing of a burst.  Baselines in the same run: raw pika (durable queue, batched
  confirms, manual acks) moving the same number of messages, from ``scripts/bench/bus.py``;
  and the same end-to-end run with the writers one message at a time
  (``COEXIST_WRITE_BATCH_SIZE=1``, ``one_by_one_per_s``).  After the burst, ``--light``
  single changes typed ``--light-gap-s`` apart give the light-load latency
  (``light_load_p99_ms``: legacy change time to coexist's cloud write time).  The worker
  processes' CPU per customer is read from /proc; the router (capture) runs in this
  process, whose CPU per customer (``router_process_cpu_ms_per_customer``: the router
  thread plus this script's polls of the simulator's feed) is read too.

RabbitMQ gets a private vhost (``rabbitmqctl``, removed after); files go to a temp folder.
Bounded: the end-to-end phase gives up after ``--timeout-s``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
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


def bench_shadow(changes: int, timeout_s: float, worker_procs: int, threads: int,
                 write_batch_size: int = 200, light: int = 0, light_gap_s: float = 0.2,
                 py_spy: str | None = None, stage_trace: bool = False,
                 py_spy_mode: str = "gil", light_settle: bool = False) -> dict:
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
            # As in production (supervisord): worker processes beside the router process.
            env = {**os.environ, "COEXIST_HOME": str(home), "COEXIST_STATE_URL":
                   settings.state_url, "COEXIST_LEGACY_URL": settings.legacy_url,
                   "COEXIST_BROKER_URL": settings.broker_url, "COEXIST_CLOUD_URL": sim.url,
                   "COEXIST_WRITE_BATCH_SIZE": str(write_batch_size)}
            trace = home / "stages.jsonl" if stage_trace and light else None
            if trace is not None:  # the workers trace from their start (one line a batch)
                from bus import stages
                env[stages.ENV] = str(trace)
            procs = [subprocess.Popen(
                [sys.executable, "-c", "from workers.cli import main; main()", "worker",
                 "--threads", str(threads), "--log-level", "WARNING"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL) for _ in range(worker_procs)]
            worker = dramatiq.Worker(app.broker, worker_threads=threads) if not procs else None
            # The workers are up (consuming) before the clock starts: their start-up (imports,
            # connections) is neither in the rate nor in the CPU per customer.
            _wait_for_consumers(settings.broker_url, "coexist.write.cloud", len(procs),
                                timeout_s)
            cpu_before = _children_cpu(procs)
            sim_cpu_before = _children_cpu([sim.process])
            # People's inserts: the changes to route (they sit in the change log).
            spec = SampleSpec(customers=changes, products=2, prices_per_customer=1)
            seed_legacy(legacy_engine, spec, domains=["customer"])
            entries = len(app.erps[LEGACY].read(0, changes * 10))
            stop = threading.Event()
            router = threading.Thread(target=run_router, args=(app, stop), daemon=True)
            spies = _py_spy(py_spy, {"worker": procs[0].pid if procs else os.getpid(),
                                     "router": os.getpid(), "cloud_sim": sim.process.pid},
                            py_spy_mode)
            start = time.time()
            own_cpu_before = time.process_time()
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
            cpu = _children_cpu(procs) - cpu_before
            sim_cpu = _children_cpu([sim.process]) - sim_cpu_before
            own_cpu = time.process_time() - own_cpu_before
            for spy in spies:
                spy.send_signal(2)  # SIGINT: py-spy writes what it sampled
            for spy in spies:
                spy.wait(30)
            settle_s = None
            if light_settle and done == changes:
                settle_s, after = _settle(app, admin, after, timeout_s)
            gc_cb = None
            if trace is not None:
                stages.enable(str(trace))  # the router (capture, relay) runs in this process
                gc_cb = _trace_gc()
            light_lat, breakdown = _light_load(app, admin, light, light_gap_s, after, timeout_s,
                                               trace) \
                if light and done == changes else ([], None)
            if trace is not None:
                stages.enable(None)
                if gc_cb is not None:
                    gc.callbacks.remove(gc_cb)
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
    light_p50, light_p99 = _pct(light_lat)
    return {"per_s": done / elapsed, "p50_ms": p50, "p99_ms": p99, "done": done,
            "cloud_rows": cloud_rows, "seconds": round(elapsed, 2), "change_log_entries": entries,
            "worker_cpu_ms_per_customer": round(cpu * 1000 / max(1, done), 3),
            "router_process_cpu_ms_per_customer": round(own_cpu * 1000 / max(1, done), 3),
            "cloud_sim_cpu_ms_per_customer": round(sim_cpu * 1000 / max(1, done), 3),
            "light_changes": len(light_lat), "light_p50_ms": light_p50,
            "light_p99_ms": light_p99, "light_stages": breakdown, "settle_s": settle_s}


def _settle(app, admin, after: int, timeout_s: float) -> tuple[float, int]:
    """Wait until the router's cloud capture has read the cloud's feed up to its head (the
    echoes of the burst's writes): the seconds that took, and the feed's head cursor."""
    from coexistence.router import CLOUD
    from workers import checkpoints
    from workers.router.capture import checkpoint_name

    start = time.time()
    while page := admin.changes(after, 1000):
        after = page[-1]["cursor"]
    deadline = start + timeout_s
    while (checkpoints.get(app.state, checkpoint_name(CLOUD)) or 0) < after \
            and time.time() < deadline:
        time.sleep(0.02)
    return round(time.time() - start, 2), after


def _trace_gc(min_s: float = 0.002):
    """A garbage collection of this process taking ``min_s`` or more: a ``gc`` span."""
    from bus import stages

    started = [0.0]
    span = getattr(stages, "span", None)  # None: an older commit run as the baseline
    if span is None:
        return None

    def callback(phase: str, info: dict) -> None:
        now = time.time()
        if phase == "start":
            started[0] = now
        elif now - started[0] >= min_s:
            span("gc", started[0], now, n=info.get("generation"))

    gc.callbacks.append(callback)
    return callback


def _py_spy(folder: str | None, pids: dict[str, int],
            mode: str = "gil") -> list[subprocess.Popen]:
    """``py-spy record`` (raw collapsed stacks) of each process for the burst: ``mode``
    ``gil`` (threads holding the GIL), ``cpu`` (threads on a CPU: py-spy's default) or
    ``idle`` (every thread, waiting included)."""
    if not folder:
        return []
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    flags = {"gil": ["--gil"], "cpu": [], "idle": ["--idle"]}[mode]
    return [subprocess.Popen([str(spy), "record", *flags, "--nonblocking", "--format", "raw",
                              "--pid", str(pid), "-o", str(out / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


def _wait_for_consumers(url: str, queue: str, wanted: int, timeout_s: float) -> None:
    import pika

    deadline = time.time() + timeout_s
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        while time.time() < deadline:
            try:
                found = channel.queue_declare(queue, passive=True).method.consumer_count
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet
                channel, found = connection.channel(), 0
            if found >= wanted:
                return
            time.sleep(0.1)
    finally:
        connection.close()
    raise TimeoutError(f"{wanted} consumers on {queue}: not within {timeout_s:g} s")


def _children_cpu(procs) -> float:
    """User + system CPU seconds the processes (workers, the simulator) used so far
    (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in procs:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


#: legacy change -> ... -> the cloud's own write time (inside the request) -> the writer
#: got the answer -> the batch's commit and ack.
STAGES = ("legacy_change", "legacy_committed", "capture_read", "outbox_commit", "published",
          "received", "batch_start", "cloud_write", "written", "acked")


def _stage_breakdown(path: Path, first_at: dict[str, datetime],
                     cloud_at: dict[str, datetime], committed_at: dict[str, float],
                     worst: int = 3) -> dict:
    """Per-stage latencies (p50/p99 ms) of the light-load changes from the stage trace
    (``bus.stages``) of every process: legacy change -> its commit (as the typist saw it
    return) -> each stage -> the cloud's own write time -> the batch's ack.  Each stage is
    the first time the key passed it.  For the ``worst`` changes, each stage's time and
    what this process did while the change waited for its capture read (``spans``: the
    capture runs and garbage collections between its commit and that read)."""
    seen: dict[str, dict[str, float]] = {}
    spans: list[dict] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:  # a line cut by a process killed mid-write
                continue
            if "t0" in item:
                spans.append(item)
                continue
            pairs = item.get("tk") or [(item["t"], k) for k in item.get("k", ())]
            for t, k in pairs:
                key = k.partition(":")[2]
                if key in first_at:
                    stage = seen.setdefault(key, {})
                    stage[item["s"]] = min(t, stage.get(item["s"], t))
    steps: dict[str, list[float]] = {f"{a}->{b}": [] for a, b in itertools.pairwise(STAGES)}
    total: list[float] = []
    complete = 0
    every: dict[str, dict[str, float]] = {}
    for key, at in first_at.items():
        times = dict(seen.get(key, {}), legacy_change=at.timestamp())
        if key in committed_at:
            times["legacy_committed"] = committed_at[key]
        if key in cloud_at:
            times["cloud_write"] = cloud_at[key].timestamp()
        every[key] = times
        if all(s in times for s in STAGES):
            complete += 1
            total.append(times["cloud_write"] - times["legacy_change"])
        for a, b in itertools.pairwise(STAGES):
            if a in times and b in times:
                steps[f"{a}->{b}"].append(times[b] - times[a])
    out = {}
    for name, values in steps.items():
        p50, p99 = _pct(values)
        out[name] = {"n": len(values), "p50_ms": p50, "p99_ms": p99,
                     "max_ms": round(max(values) * 1000, 1) if values else None}
    p50, p99 = _pct(total)
    ranked = sorted((k for k, t in every.items() if "cloud_write" in t),
                    key=lambda k: every[k]["cloud_write"] - every[k]["legacy_change"],
                    reverse=True)
    slowest = []
    for key in ranked[:worst]:
        times = every[key]
        t0 = times.get("legacy_committed", times["legacy_change"])
        t1 = times.get("capture_read", t0)
        slowest.append({
            "key": key,
            "ms_after_change": {s: round((times[s] - times["legacy_change"]) * 1000, 1)
                                for s in STAGES if s in times},
            "spans": [{"s": x["s"], "sys": x.get("sys"), "n": x.get("n"),
                       "from_ms": round((x["t0"] - t0) * 1000, 1),
                       "ms": round((x["t1"] - x["t0"]) * 1000, 1)}
                      for x in spans if x["t1"] >= t0 - 0.05 and x["t0"] <= t1]})
    return {"complete": complete, "of": len(first_at), "stages": out,
            "legacy_change->cloud_write": {"p50_ms": p50, "p99_ms": p99},
            "slowest": slowest}


def _light_load(app, admin, n: int, gap_s: float, after: int, timeout_s: float,
                trace: Path | None = None) -> tuple[list[float], dict | None]:
    """``n`` single customers typed one at a time, ``gap_s`` apart, after the burst: each
    one's latency from its legacy change to coexist's write in the cloud (both ERPs' own
    change times); with ``trace`` (the stage trace file) also their per-stage breakdown."""
    from coexistence.router import LEGACY

    legacy = app.erps[LEGACY]
    typed: dict[str, float] = {}  # key -> when the typist's commit returned
    for i, record in enumerate(iter_customers(n, seed=11)):
        record = record.model_copy(update={"key": str(8_000_000 + i)})
        legacy.person_upsert(record, "JSMITH")
        typed[record.key] = time.time()
        time.sleep(gap_s)
    seen: dict[str, datetime] = {}
    deadline = time.time() + timeout_s
    while len(seen) < n and time.time() < deadline:
        page = admin.changes(after, 1000)
        for entry in page:
            if entry["clientId"] == "COEXIST" and entry["number"] in typed:
                seen.setdefault(entry["number"], datetime.fromisoformat(entry["at"]))
        if page:
            after = page[-1]["cursor"]
        else:
            time.sleep(0.05)
    first_at: dict[str, datetime] = {}
    for change in legacy.read(0, 10**7):
        if change.key in typed:
            first_at.setdefault(change.key, change.at)
    latencies = [(seen[k] - first_at[k]).total_seconds() for k in seen if k in first_at]
    breakdown = _stage_breakdown(trace, first_at, seen, typed) if trace is not None else None
    return latencies, breakdown


def bench_http_clients(requests: int, ops: int = 200) -> dict:
    """The client's CPU per ``$batch`` request of ``ops`` reads (the writers' request shape)
    against the simulator: httpx as ``CloudErp`` uses it, and stdlib ``http.client`` on
    one keep-alive connection, same body, same run.  The simulator is another process, so
    this process's CPU time is the client's alone."""
    import http.client
    from urllib.parse import urlsplit

    from workers.cloud_erp import CloudErp
    from workers.cloud_sim import start_simulator

    with tempfile.TemporaryDirectory() as tmp, \
            start_simulator(Path(tmp) / "cloud.db") as sim:
        erp = CloudErp(sim.url)
        records = list(iter_customers(ops, seed=5))
        erp.upsert_many([(r, 1, f"seed-{r.key}") for r in records])
        reads = [{"id": str(i), "method": "GET",
                  "url": f"customers(number='{r.key}')?includeDeleted=true"}
                 for i, r in enumerate(records)]
        body = json.dumps({"requests": reads}, separators=(",", ":")).encode()

        def timed(fn) -> tuple[float, float]:
            fn()  # warm: connection open, code paths loaded
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(requests):
                fn()
            return ((time.process_time() - cpu) * 1000 / requests,
                    (time.perf_counter() - wall) * 1000 / requests)

        def with_httpx():
            erp._batch(reads)

        split = urlsplit(sim.url)
        conn = http.client.HTTPConnection(split.hostname, split.port)

        def with_stdlib():
            conn.request("POST", "/$batch", body=body, headers={
                "Content-Type": "application/json", "X-Client-Id": "COEXIST",
                "Accept": "application/json"})
            answer = conn.getresponse()
            data = json.loads(answer.read())["responses"]
            assert len(data) == ops

        httpx_cpu, httpx_wall = timed(with_httpx)
        std_cpu, std_wall = timed(with_stdlib)
        conn.close()
        erp.close()
    return {"name": "http_client_per_batch_request", "ops_per_request": ops,
            "requests": requests, "httpx_client_cpu_ms": round(httpx_cpu, 3),
            "httpx_wall_ms": round(httpx_wall, 3), "stdlib_client_cpu_ms": round(std_cpu, 3),
            "stdlib_wall_ms": round(std_wall, 3),
            "httpx_client_cpu_us_per_op": round(httpx_cpu * 1000 / ops, 2),
            "stdlib_client_cpu_us_per_op": round(std_cpu * 1000 / ops, 2),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


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
    parser.add_argument("--light", type=int, default=40,
                        help="single changes typed one at a time for the light-load latency")
    parser.add_argument("--light-gap-s", type=float, default=0.2)
    parser.add_argument("--py-spy", metavar="DIR",
                        help="py-spy record of a worker, the router and the cloud simulator "
                             "during the burst")
    parser.add_argument("--py-spy-mode", choices=("gil", "cpu", "idle"), default="gil",
                        help="what py-spy samples: GIL holders, threads on a CPU, or all")
    parser.add_argument("--http-requests", type=int, default=50,
                        help="$batch requests per HTTP client in the client comparison (0: skip)")
    parser.add_argument("--stages", action="store_true",
                        help="trace the light-load changes' stages (bus.stages) and print "
                             "their per-stage latencies (router_light_load_stages)")
    parser.add_argument("--light-settle", action="store_true",
                        help="type the light-load changes only once the router's cloud "
                             "capture has read the burst's echoes (no backlog left)")
    parser.add_argument("--skip-one-by-one", action="store_true",
                        help="skip the baseline with COEXIST_WRITE_BATCH_SIZE=1")
    args = parser.parse_args()
    print(json.dumps(bench_decisions(args.decisions)), flush=True)
    if args.http_requests:
        print(json.dumps(bench_http_clients(args.http_requests)), flush=True)
    if args.skip_end_to_end:
        return 0
    load_before = os.getloadavg()
    baseline = _bus_bench().bench_baseline(args.changes, args.timeout_s)
    single = None if args.skip_one_by_one else bench_shadow(
        args.changes, args.timeout_s, args.worker_procs, args.threads, write_batch_size=1)
    ours = bench_shadow(args.changes, args.timeout_s, args.worker_procs, args.threads,
                        light=args.light, light_gap_s=args.light_gap_s, py_spy=args.py_spy,
                        stage_trace=args.stages, py_spy_mode=args.py_spy_mode,
                        light_settle=args.light_settle)
    print(json.dumps({
        "name": "router_shadow_end_to_end",
        "records_per_s": round(ours["per_s"], 1),
        "baseline_per_s": round(baseline["per_s"], 1),
        "ratio": round(ours["per_s"] / baseline["per_s"], 4),
        "one_by_one_per_s": round(single["per_s"], 1) if single else None,
        "ratio_to_one_by_one": round(ours["per_s"] / single["per_s"], 2) if single else None,
        "p50_ms": ours["p50_ms"], "p99_ms": ours["p99_ms"],
        "light_load_p50_ms": ours["light_p50_ms"], "light_load_p99_ms": ours["light_p99_ms"],
        "light_changes": ours["light_changes"], "light_gap_s": args.light_gap_s,
        "light_settle_s": ours["settle_s"],
        "worker_cpu_ms_per_customer": ours["worker_cpu_ms_per_customer"],
        "router_process_cpu_ms_per_customer": ours["router_process_cpu_ms_per_customer"],
        "cloud_sim_cpu_ms_per_customer": ours["cloud_sim_cpu_ms_per_customer"],
        "one_by_one_worker_cpu_ms_per_customer":
            single["worker_cpu_ms_per_customer"] if single else None,
        "one_by_one_p99_ms": single["p99_ms"] if single else None,
        "baseline_p50_ms": baseline["p50_ms"], "baseline_p99_ms": baseline["p99_ms"],
        "changes": args.changes, "change_log_entries": ours["change_log_entries"],
        "applied": ours["done"], "cloud_rows": ours["cloud_rows"],
        "one_by_one_applied": single["done"] if single else None,
        "seconds": ours["seconds"], "worker_procs": args.worker_procs,
        "threads": args.threads, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }), flush=True)
    if ours["light_stages"] is not None:
        print(json.dumps({"name": "router_light_load_stages", **ours["light_stages"],
                          "loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    return 0 if ours["done"] == args.changes else 1


if __name__ == "__main__":
    raise SystemExit(main())
