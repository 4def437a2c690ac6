"""The governed API and portal webhooks: inquiry requests/s and webhook deliveries/s.

    .venv/bin/python scripts/bench/api.py [--customers 200] [--concurrency 200]
        [--duration-s 10] [--deliveries 2000] [--endpoints 20]

Prints one JSON line per figure, each with its baseline from the same run:

* ``api_inquiry_warm`` / ``api_inquiry_cold``: ``GET /v1/customers/{key}/credit``
  (customer + the customer's orders + invoices, from the legacy reference ERP on
  SQLite) served by ``coexist api serve`` as its own process, with the cache warm
  (TTL 60 s, every key asked once before measuring) and cold (TTL 0: every request
  reads the SoR).  Baseline: a bare ASGI app returning a constant, under the same
  uvicorn, same flags.  Load: ``loadgen.py`` (raw asyncio sockets, keep-alive, pre-encoded
  requests, ``--gen-processes`` processes; its own CPU per request is reported), or
  Debian's ``wrk`` with ``--generator wrk``; ``--concurrency`` connections cycling over
  ``--keys`` customers.  The bench consumer's rate limit is in the path (a budget it
  cannot spend), and so is the inquiry trace (its defaults).
* ``api_inquiry_warm_paced``: the warm API asked at a fixed rate, ``--paced-fraction``
  (0.5) x the bare endpoint's closed-loop requests/s of this run (the throughput target
  itself), over the same ``--concurrency`` connections, open loop (latency from each
  request's scheduled time); baseline: the bare endpoint at the same rate.  This is the
  p99 target's test: a closed loop's latency is concurrency / throughput (queueing).
* ``api_inquiry_warm_inprocess``: CPU per warm credit answer of the ASGI app driven in
  process (no server, no sockets) with and without the warm path, against a bare ASGI app.
* ``api_portal_orders``: inbound portal orders end to end, ``POST /v1/orders`` with a new
  Idempotency-Key each against ``coexist api serve`` (the order domain in ``legacy``: the
  SoR write in the legacy reference ERP on SQLite); baselines: the bare endpoint answering
  the same POSTs, and the SoR write alone (the adapter's upsert from as many threads).
* ``portal_webhook_deliveries``: ``--deliveries`` queued webhook messages over
  ``--endpoints`` endpoints delivered by the dispatcher (signing, lanes, attempt log in
  SQLite state) to a receiver process (a bare ASGI app under uvicorn answering 200).
  Baseline: the same bodies POSTed by a plain httpx thread pool of the same size.

Targets (issue 15): warm p99 < 50 ms at 200 concurrent requests; warm >= 0.5x the bare
endpoint's requests/s.  Bounded: every phase has a duration or a timeout.

Every HTTP figure also reports the server's CPU microseconds per request (``/proc``), with
the bare endpoint's, and the generator's own CPU per request.  (Until this round the
generator was httpx + asyncio: at ~1 ms of CPU per request it, not the server, set the
figures - 87 req/s against a bare endpoint at 91.)

Profiles (py-spy ``--gil``): a warm credit answer driven in-process spent 65 % of its 147 us
in FastAPI/Starlette (dependency solving, middleware, routing) and 25 % recomputing the
answer from cached reads and encoding it; ``workers.api.edge`` now serves kept answers
before FastAPI (15 us).  The dispatcher spent 47 % of its time re-reading the endpoint
registry on every round and queued for SQLite's write lock with one commit per attempt;
it now re-reads endpoints only on a change and commits successes together.
On uvicorn's h11 the warm path's profile was 60 % h11 (request parsing, header validation
one by one); `coexist api serve` and the bare endpoint now run on httptools (``--http h11``
compares), and a kept answer is encoded once with ``meta.age_s`` spliced in per hit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

BIN = Path(sys.executable).parent
BARE_APP = """
import sys, uvicorn
BODY = b'{"schema_version":1,"data":{"ok":true}}'
LENGTH = str(len(BODY)).encode()  # as the API sends it (no chunked encoding)
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", LENGTH), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
# The same server stack as `coexist api serve` (httptools, no proxy-headers middleware).
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, lifespan="off", http=sys.argv[2], proxy_headers=False)
"""


#: The bench consumers' rate limit: the limiter stays in the request path (every request
#: draws a token, as in production) with a budget the bench cannot spend.
UNSPENDABLE = {"rate_per_s": 1e6, "burst": 10**6}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


WRK_SCRIPT = """
local paths = {}
for p in string.gmatch(os.getenv("WRK_PATHS"), "[^ ]+") do paths[#paths + 1] = p end
local auth = os.getenv("WRK_AUTHORIZATION")
local n = 0
request = function()
  n = n + 1
  local headers = {}
  if auth and auth ~= "" then headers["Authorization"] = auth end
  return wrk.format("GET", paths[(n % #paths) + 1], headers)
end
"""


def _ms(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * units[unit], 2)
    return float(text)


def load(urls: list[str], auth: str | None, concurrency: int, duration_s: float,
         rate: float = 0.0) -> dict:
    """``loadgen.py`` (raw sockets, ``--gen-processes`` processes) by default; Debian's
    ``wrk`` with ``--generator wrk`` (closed loop only)."""
    if GENERATOR["name"] == "wrk" and not rate:
        return _wrk(urls, auth, concurrency, duration_s)
    return _loadgen(urls, auth, concurrency, duration_s, rate=rate)


def _wrk(urls, auth, concurrency, duration_s) -> dict:
    base = urls[0].split("/", 3)
    origin = "/".join(base[:3])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    env = {**os.environ, "WRK_PATHS": " ".join("/" + u.split("/", 3)[3] for u in urls),
           "WRK_AUTHORIZATION": auth or ""}
    out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{int(duration_s)}s", "--latency",
                          "--timeout", "30s", "-s", f.name, origin + "/"],
                         env=env, capture_output=True, text=True, timeout=duration_s + 60,
                         check=True).stdout
    os.unlink(f.name)
    figures = {"load_generator": "wrk -t2"}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["requests_per_s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures[f"p{parts[0][:-1]}_ms"] = _ms(parts[1])
        elif "Non-2xx" in line:
            figures["non_2xx"] = int(parts[-1])
        elif "requests in" in line:
            figures["requests"] = int(parts[0])
    return figures


#: The load generator chosen on the command line (``main``).
GENERATOR = {"name": "loadgen", "processes": 2, "http": "httptools"}


def _loadgen(urls, auth, concurrency, duration_s, body: str | None = None,
             rate: float = 0.0) -> dict:
    env = {**os.environ}
    if auth:
        env["LOADGEN_AUTHORIZATION"] = auth
    post = ["--post-body", body] if body is not None else []
    paced = ["--rate", str(rate)] if rate else []
    out = subprocess.run(
        [sys.executable, str(_HERE / "loadgen.py"), "--concurrency", str(concurrency),
         "--duration-s", str(duration_s), "--processes", str(GENERATOR["processes"]),
         *paced, *post, *urls],
        env=env, capture_output=True, text=True, timeout=duration_s + 120, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["load_generator"] = (f"scripts/bench/loadgen.py (raw asyncio sockets, "
                                 f"{figures['processes']} processes)")
    figures["warmup_requests"] = 0  # loadgen counts only the measured window
    return figures


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux ``/proc``): a per-request cost
    that the machine's load does not inflate, unlike requests/s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads were runnable but waiting for a CPU (Linux
    ``/proc/PID/task/*/schedstat``, field 2): the machine's queueing, not the server's."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def measured(proc: subprocess.Popen, run) -> tuple[dict, float]:
    """``run()``'s figures and the server's CPU microseconds per request during it; the
    figures get the server's run-queue wait per second of the run."""
    c0, q0, t0 = cpu_s(proc.pid), runqueue_wait_s(proc.pid), time.monotonic()
    figure = run()
    figure["server_runqueue_wait_ms_per_s"] = round(
        (runqueue_wait_s(proc.pid) - q0) / (time.monotonic() - t0) * 1000, 1)
    used = cpu_s(proc.pid) - c0
    total = figure.get("requests", 0) + figure.get("warmup_requests", 0)
    if "generator_cpu_s" in figure:
        # loadgen's warm-up also hit the server; its share of requests is known.
        total = figure["requests"] * (1 + figure["warmup_s"] / figure["duration_s"])
    return figure, round(used / max(total, 1) * 1e6, 1)


def bare_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port), GENERATOR["http"]])
    url = f"http://127.0.0.1:{port}/"
    wait_http(url)
    return proc, url


def inquiry(args, home: Path) -> None:
    from workers.api.auth import new_token, token_hash

    env = _clean_env(home)
    subprocess.run([str(BIN / "coexist"), "legacy", "seed", "--customers", str(args.customers)],
                   env=env, check=True, capture_output=True, timeout=600)
    # The API is a process: it needs the state database at the code's revision.
    subprocess.run([str(BIN / "coexist"), "db", "upgrade"], env=env, check=True,
                   capture_output=True, timeout=600)
    token = new_token()
    consumers = home / "consumers.json"
    consumers.write_text(json.dumps({"consumers": [
        {"name": "bench-desk", "role": "inquiry", "token_sha256": token_hash(token),
         **UNSPENDABLE}]}))
    env["COEXIST_API_CONSUMERS"] = str(consumers)
    keys = [str(10_000 + i) for i in range(min(args.keys, args.customers))]
    bare, bare_url = bare_server()
    try:
        baseline, bare_cpu = measured(
            bare, lambda: load([bare_url], None, args.concurrency, args.duration_s))
        # The paced runs ask for a share of the bare endpoint's throughput (0.5: the
        # throughput target itself), of the bare endpoint first.
        rates = [round(baseline["requests_per_s"] * f, 1) for f in args.paced_fraction]
        bare_paced = [measured(bare, lambda rate=rate: load(
            [bare_url], None, args.concurrency, args.duration_s, rate))[0] for rate in rates]
    finally:
        stop(bare)
    for name, ttl in (("api_inquiry_warm", "60"), ("api_inquiry_cold", "0")):
        port = free_port()
        proc = subprocess.Popen(
            [str(BIN / "coexist"), "api", "serve", "--port", str(port), "--log-level",
             "warning", "--http", GENERATOR["http"]], env={**env, "COEXIST_API_CACHE_TTL_S": ttl})
        base = f"http://127.0.0.1:{port}"
        urls = [f"{base}/v1/customers/{k}/credit" for k in keys]
        paced = []
        try:
            wait_http(f"{base}/v1/openapi.json")
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
                statuses = {http.get(u).status_code for u in urls}  # warms the cache
            figure, api_cpu = measured(
                proc, lambda urls=urls: load(urls, f"Bearer {token}", args.concurrency,
                                             args.duration_s))
            for rate in rates if ttl != "0" else ():
                spy = _py_spy(args, proc.pid, f"{name}_paced_{rate:g}")
                paced.append(measured(proc, lambda urls=urls, rate=rate: load(
                    urls, f"Bearer {token}", args.concurrency, args.duration_s, rate)))
                if spy is not None:
                    spy.wait(60)
        finally:
            stop(proc)
        rps = figure["requests_per_s"]
        print(json.dumps({
            "name": name, "requests_per_s": rps,
            "baseline_per_s": baseline["requests_per_s"],
            "ratio": round(rps / baseline["requests_per_s"], 3),
            "p50_ms": figure["p50_ms"], "p99_ms": figure["p99_ms"],
            "baseline_p99_ms": baseline["p99_ms"], "concurrency": args.concurrency,
            # Closed loop: each of the connections waits for its answer, so the mean
            # latency is concurrency / throughput (Little's law) - queueing, not service.
            "closed_loop_mean_ms": round(args.concurrency / rps * 1000, 1) if rps else None,
            "server_cpu_us_per_request": api_cpu, "baseline_cpu_us_per_request": bare_cpu,
            "cpu_ratio": round(bare_cpu / api_cpu, 3) if api_cpu else None,
            "server_runqueue_wait_ms_per_s": figure["server_runqueue_wait_ms_per_s"],
            "statuses": figure.get("statuses"), "warmup_statuses": sorted(statuses),
            "generator_cpu_us_per_request": figure.get("generator_cpu_us_per_request"),
            "keys": len(keys), "http": GENERATOR["http"],
            "load_generator": figure["load_generator"],
            "loadavg": os.getloadavg()}), flush=True)
        for (fig, cpu), bare_fig, fraction, rate in zip(paced, bare_paced,
                                                        args.paced_fraction, rates,
                                                        strict=False):
            print(json.dumps({
                "name": f"{name}_paced", "target_rate_per_s": rate,
                "rate_is": f"{fraction}x the bare endpoint's closed-loop requests/s of "
                           "this run",
                "requests_per_s": fig["requests_per_s"],
                "p50_ms": fig["p50_ms"], "p90_ms": fig["p90_ms"],
                "p99_ms": fig["p99_ms"], "max_ms": fig["max_ms"],
                "baseline_requests_per_s": bare_fig["requests_per_s"],
                "baseline_p50_ms": bare_fig["p50_ms"], "baseline_p90_ms": bare_fig["p90_ms"],
                "baseline_p99_ms": bare_fig["p99_ms"],
                "concurrency": args.concurrency, "server_cpu_us_per_request": cpu,
                "server_runqueue_wait_ms_per_s": fig["server_runqueue_wait_ms_per_s"],
                "baseline_runqueue_wait_ms_per_s": bare_fig["server_runqueue_wait_ms_per_s"],
                "statuses": fig.get("statuses"),
                "generator_cpu_us_per_request": fig.get("generator_cpu_us_per_request"),
                "http": GENERATOR["http"],
                "load_generator": fig["load_generator"] + ", open loop",
                "loadavg": os.getloadavg()}), flush=True)


def _py_spy(args, pid: int, name: str):
    """``py-spy record --gil`` of the server for one measured run (``--py-spy DIR``)."""
    if not args.py_spy:
        return None
    out = Path(args.py_spy) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--gil", "--nonblocking", "--format", "raw",
         "--rate", str(args.py_spy_rate),
         "--duration", str(int(args.duration_s + 2)), "--pid", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def inquiry_inprocess(args, home: Path) -> None:
    """``api_inquiry_warm_inprocess``: CPU per warm credit answer of the ASGI app itself,
    driven in this process without a server or sockets (what py-spy profiled), against a
    bare ASGI app driven the same way; with the warm path (``workers.api.edge``) and
    without it (the same app with its edge cache switched off)."""
    import asyncio

    from workers.api.app import create_app
    from workers.api.auth import Consumers, new_token, token_hash
    from workers.api.deps import ApiDeps, ApiSettings
    from workers.bootstrap import App, start
    from workers.config import Settings

    home = home / "inprocess"
    home.mkdir()
    env = _clean_env(home)
    subprocess.run([str(BIN / "coexist"), "legacy", "seed", "--customers", str(args.customers)],
                   env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([str(BIN / "coexist"), "db", "upgrade"], env=env, check=True,
                   capture_output=True, timeout=600)
    token = new_token()
    consumers = Consumers.from_json({"consumers": [
        {"name": "desk", "role": "inquiry", "token_sha256": token_hash(token),
         **UNSPENDABLE}]})
    settings = Settings(home=home)
    root = App(settings)
    app = start(App(settings, erps={"legacy": root.legacy}), register=False)
    asgi = create_app(ApiDeps.from_app(app, ApiSettings(cache_ttl_s=600), consumers=consumers))
    edge = asgi.edge
    body = b'{"schema_version":1,"data":{"ok":true}}'

    async def bare(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    keys = [str(10_000 + i) for i in range(min(args.keys, args.customers))]

    async def call(target, path: str) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80),
                 "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())]}
        status = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await target(scope, receive, send)
        return status[0]

    async def per_request(target, n: int) -> float:
        c0 = time.process_time()
        for i in range(n):
            assert await call(target, f"/v1/customers/{keys[i % len(keys)]}/credit") == 200
        return round((time.process_time() - c0) / n * 1e6, 1)

    async def run() -> dict:
        for k in keys:  # warm the caches
            assert await call(asgi, f"/v1/customers/{k}/credit") == 200
        n = args.inprocess_requests
        bare_us = await per_request(bare, n)
        warm_us = await per_request(asgi, n)
        asgi.edge = None
        full_us = await per_request(asgi, n)
        asgi.edge = edge
        return {"name": "api_inquiry_warm_inprocess", "cpu_us_per_request": warm_us,
                "without_warm_path_cpu_us": full_us, "baseline_cpu_us": bare_us,
                "requests": n, "loadavg": os.getloadavg()}

    try:
        print(json.dumps(asyncio.run(run())), flush=True)
    finally:
        asgi.inquiry_trace.close()  # its writer thread, before the folder is removed
        app.close()
        root.close()


def _clean_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "COEXIST_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for name in ("COEXIST_BROKER_URL", "COEXIST_STATE_URL", "COEXIST_CLOUD_URL",
                 "COEXIST_REDIS_URL", "COEXIST_LEGACY_URL", "COEXIST_ENV_FILE",
                 "COEXIST_CONFIG"):
        env.pop(name, None)
    return env


def orders(args, home: Path) -> None:
    """``api_portal_orders``; with ``--compare-src DIR`` also the server of another checkout
    (``git archive main | tar -x -C DIR``), alternating with this one, in the same run."""
    sources = [("this", ROOT)]
    if args.compare_src:
        sources = [("compare", Path(args.compare_src).resolve()), ("this", ROOT)] * args.rounds
    for i, (label, src) in enumerate(sources):
        run = home / f"orders-{i}"
        run.mkdir()
        _orders(args, run, src, label)


def _orders(args, home: Path, src: Path, label: str) -> None:
    """Inbound portal orders end to end: ``POST /v1/orders`` (Idempotency-Key claimed in the
    state database, customer, contract prices and products read from the SoR, the order
    written into the SoR through ``route_command``, the answer stored for replays) against
    ``coexist api serve`` as its own process, the order domain in ``legacy`` mode (the
    legacy reference ERP on SQLite, state on SQLite, the embedded broker).  Baselines in
    the same run: the bare endpoint answering the same POSTs, and the SoR write alone (the
    same orders upserted through the legacy adapter by as many threads)."""
    import uuid

    from coexistence.canonical.models import Order
    from workers.api.auth import new_token, token_hash
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.schema import create_legacy_engine

    home = home / "orders"
    home.mkdir()
    env = {**_clean_env(home), "PYTHONPATH": str(src)}
    load0 = os.getloadavg()
    subprocess.run([str(BIN / "coexist"), "legacy", "seed", "--customers", str(args.customers)],
                   env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([str(BIN / "coexist"), "db", "upgrade"], env=env, check=True,
                   capture_output=True, timeout=600)
    legacy_engine = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    legacy = LegacyErp(legacy_engine)
    customer = next(c for c in legacy.stream("customer")
                    if c.status == "active" and not c.credit_hold)
    sku = next(p.key for p in legacy.stream("product")
               if p.status == "active" and p.currency == customer.currency)
    token = new_token()
    (home / "consumers.json").write_text(json.dumps({"consumers": [
        {"name": "bench-portal", "role": "portal", "account": customer.key,
         "token_sha256": token_hash(token), **UNSPENDABLE}]}))
    env["COEXIST_API_CONSUMERS"] = str(home / "consumers.json")
    body = json.dumps({"customer_key": customer.key, "customer_po": "BENCH",
                       "lines": [{"sku": sku, "quantity": 3}]})
    concurrency = args.order_concurrency

    bare, bare_url = bare_server()
    try:
        baseline, bare_cpu = measured(
            bare, lambda: _loadgen([bare_url], None, concurrency, args.duration_s, body))
    finally:
        stop(bare)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "coexist"), "api", "serve", "--port", str(port),
                             "--log-level", "warning", "--http", GENERATOR["http"]], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v1/openapi.json")
        spy = _py_spy(args, proc.pid, "orders")
        figure, api_cpu = measured(proc, lambda: _loadgen(
            [f"{base}/v1/orders"], f"Bearer {token}", concurrency, args.duration_s, body))
        if spy is not None:
            spy.wait(60)
    finally:
        stop(proc)
    accepted = figure["statuses"].get("201", 0)
    written = sum(1 for o in legacy.stream("order") if o.channel == "portal")

    # The SoR write alone: the same kind of order upserted by as many threads.
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    n = max(200, int(accepted / max(args.duration_s, 1) * 2))
    records = [Order.model_validate({
        "key": str(80_000_000 + i), "customer_key": customer.key, "status": "open",
        "channel": "portal", "currency": customer.currency, "ordered_at": now,
        "lines": [{"line_no": 1, "sku": sku, "quantity": 3, "unit_price": "9.50"}]})
        for i in range(n)]
    w0 = time.perf_counter()
    with ThreadPoolExecutor(min(concurrency, 16)) as pool:
        list(pool.map(lambda rec: legacy.upsert(rec, source_version=1,
                                                idempotency_key=str(uuid.uuid4())), records))
    sor_rate = n / (time.perf_counter() - w0)
    legacy_engine.dispose()
    print(json.dumps({
        "name": "api_portal_orders", "server_src": label, "src": str(src),
        "orders_per_s": figure["requests_per_s"],
        "accepted": accepted, "orders_in_sor": written, "statuses": figure["statuses"],
        "p50_ms": figure["p50_ms"], "p99_ms": figure["p99_ms"],
        "baseline_per_s": baseline["requests_per_s"],
        "ratio": round(figure["requests_per_s"] / baseline["requests_per_s"], 3),
        "server_cpu_us_per_order": api_cpu, "baseline_cpu_us_per_request": bare_cpu,
        "sor_write_only_per_s": round(sor_rate, 1),
        "ratio_to_sor_write": round(figure["requests_per_s"] / sor_rate, 3),
        "concurrency": concurrency, "sor": "legacy reference ERP (SQLite)",
        "load_generator": figure["load_generator"], "loadavg_start": load0,
        "loadavg": os.getloadavg()}), flush=True)


def _previous_loop_dispatcher():
    """The dispatcher with the loop it had before the lane-wait fix (kept here only for the
    same-run comparison, ``--compare-previous-loop``): with threads free but nothing
    claimable (a full lane), it slept the whole poll interval instead of waiting for an
    attempt to finish."""
    from workers.portal.delivery import Dispatcher

    class PreviousLoop(Dispatcher):
        def run_forever(self, stop, poll_s: float = 0.2) -> None:
            while not stop.is_set():
                self._freed.clear()
                if self.run_once():
                    continue
                with self._lock:
                    busy = sum(self._in_flight.values()) >= self.threads
                if busy:
                    self._freed.wait(poll_s)
                else:
                    stop.wait(poll_s)
            self.wait(self.timeout_s + 5)

    return PreviousLoop


def webhooks(args, home: Path) -> None:
    """``portal_webhook_deliveries`` (and, with ``--compare-previous-loop``, the same
    deliveries by the previous loop, alternating, in the same run)."""
    loops = [("current", args.webhook_batch)]
    if args.compare_previous_loop:
        loops = [("previous", 1), ("current", args.webhook_batch)] * args.rounds
    elif args.compare_batch:
        loops = [("current", 1), ("current", args.webhook_batch)] * args.rounds
    for i, (loop, batch) in enumerate(loops):
        run = home / f"webhooks-{i}"
        run.mkdir()
        _webhooks(args, run, loop, batch)


def _webhooks(args, home: Path, loop_kind: str, batch: int) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from bus.envelope import new_envelope
    from bus.exception_store import ExceptionStore
    from coexistence.canonical.models import Order
    from workers.db import create_state_engine
    from workers.migrate import upgrade as upgrade_schema
    from workers.portal.delivery import Dispatcher
    from workers.portal.endpoints import EndpointRegistry
    from workers.portal.events import publish
    from workers.portal.store import DELIVERY

    receiver, url = bare_server()
    try:
        engine = create_state_engine(f"sqlite:///{home / 'portal.db'}")
        upgrade_schema(engine)
        registry = EndpointRegistry(engine)
        customers = [str(10_000 + i) for i in range(args.endpoints)]
        for c in customers:
            registry.add(c, f"{url}hook/{c}", actor="bench", reason="bench")
        now = datetime.now(UTC)
        envs = []
        for n in range(args.deliveries):
            customer = customers[n % len(customers)]
            order = Order.model_validate({
                "key": str(300_000 + n), "customer_key": customer, "status": "open",
                "channel": "erp", "currency": "USD", "ordered_at": now,
                "lines": [{"line_no": 1, "sku": "WID-1000", "quantity": 2,
                           "unit_price": "9.50"}]})
            envs.append(new_envelope(domain="order", kind="event", key=order.key,
                                     payload={"record": order.model_dump(mode="json")},
                                     source_system="legacy", source_version=1))
        for i in range(0, len(envs), 200):
            publish(envs[i:i + 200], engine=engine, registry=registry,
                    order_owner=lambda k: None, now=now)
        with engine.connect() as conn:
            bodies = [(r.body, r.endpoint_id) for r in conn.execute(select(DELIVERY))]
        kind = Dispatcher if loop_kind == "current" else _previous_loop_dispatcher()
        dispatcher = kind(engine, registry, ExceptionStore(engine), threads=16, batch=batch)
        load0 = os.getloadavg()
        cpu0 = time.process_time()
        started = time.perf_counter()
        deadline = time.monotonic() + args.timeout_s
        # The dispatcher's own loop (``run_forever``, what ``coexist portal deliver`` runs)
        # in a thread; this one only watches for the end every 50 ms.  (It used to drive
        # ``run_once`` itself with a count query every 5 ms, in the measured CPU.)
        stop_loop = threading.Event()
        loop = threading.Thread(target=dispatcher.run_forever, args=(stop_loop,),
                                name="dispatcher", daemon=True)
        loop.start()
        left = args.deliveries
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                left = conn.execute(select(func.count()).select_from(DELIVERY).where(
                    DELIVERY.c.status != "delivered")).scalar_one()
            if not left:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop_loop.set()
        loop.join(60)
        dispatcher.wait(30)
        cpu = time.process_time() - cpu0
        dispatcher.close()
        with httpx.Client(limits=httpx.Limits(max_connections=32)) as http:
            b0, bcpu0 = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda b: http.post(f"{url}hook/{b[1]}", content=b[0].encode(),
                                                  headers={"Content-Type": "application/json"}),
                              bodies))
            b_elapsed = time.perf_counter() - b0
            b_cpu = time.process_time() - bcpu0
        rate = args.deliveries / elapsed
        base = len(bodies) / b_elapsed
        print(json.dumps({
            "name": "portal_webhook_deliveries", "loop": loop_kind, "slot_batch": batch,
            "records_per_s": round(rate, 1),
            "baseline_per_s": round(base, 1), "ratio": round(rate / base, 3),
            "cpu_us_per_delivery": round(cpu / args.deliveries * 1e6, 1),
            "baseline_cpu_us_per_post": round(b_cpu / max(len(bodies), 1) * 1e6, 1),
            "deliveries": args.deliveries, "undelivered": left, "endpoints": args.endpoints,
            "threads": 16, "baseline": "httpx thread pool, same bodies, no signing or state",
            "loadavg_start": load0, "loadavg": os.getloadavg()}), flush=True)
        engine.dispose()
    finally:
        stop(receiver)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--keys", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--deliveries", type=int, default=2000)
    p.add_argument("--endpoints", type=int, default=20)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--order-concurrency", type=int, default=16)
    p.add_argument("--inprocess-requests", type=int, default=5000)
    p.add_argument("--only", choices=["inquiry", "inprocess", "orders", "webhooks"])
    p.add_argument("--generator", choices=["loadgen", "wrk"], default="loadgen")
    p.add_argument("--gen-processes", type=int, default=2,
                   help="loadgen processes sharing the connections")
    p.add_argument("--http", choices=["httptools", "h11"], default="httptools",
                   help="uvicorn's HTTP implementation, for the API and the bare endpoint "
                        "alike (coexist api serve --http).")
    p.add_argument("--paced-fraction", type=float, nargs="+", default=[0.5],
                   help="The paced warm runs' rates, as fractions of the bare endpoint's.")
    p.add_argument("--compare-previous-loop", action="store_true",
                   help="Webhooks: also run the dispatcher's loop as it was before the "
                        "lane-wait fix, alternating with the current one (--rounds pairs).")
    p.add_argument("--webhook-batch", type=int, default=8,
                   help="Webhooks: messages per lane slot (coexist portal deliver's "
                        "SLOT_BATCH; 1 is the dispatcher as before).")
    p.add_argument("--compare-batch", action="store_true",
                   help="Webhooks: slots of one message alternating with --webhook-batch "
                        "(--rounds pairs).")
    p.add_argument("--compare-src", metavar="DIR",
                   help="Orders: also serve the API from this source tree (another "
                        "checkout), alternating with this one (--rounds pairs).")
    p.add_argument("--rounds", type=int, default=1, help="Pairs for the comparisons.")
    p.add_argument("--py-spy", metavar="DIR",
                   help="Record the server with py-spy --gil during each paced run (raw "
                        "collapsed stacks in DIR).")
    p.add_argument("--py-spy-rate", type=int, default=100,
                   help="py-spy samples per second (--py-spy).")
    args = p.parse_args()
    GENERATOR.update(name=args.generator, processes=args.gen_processes, http=args.http)
    with tempfile.TemporaryDirectory(prefix="coexist-bench-api-") as tmp:
        if args.only in (None, "inquiry"):
            inquiry(args, Path(tmp))
        if args.only in (None, "inprocess"):
            inquiry_inprocess(args, Path(tmp))
        if args.only in (None, "orders"):
            orders(args, Path(tmp))
        if args.only in (None, "webhooks"):
            webhooks(args, Path(tmp))


if __name__ == "__main__":
    main()
