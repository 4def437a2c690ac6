"""The governed API and portal webhooks: inquiry requests/s and webhook deliveries/s.

    .venv/bin/python scripts/bench/api.py [--customers 200] [--concurrency 200]
        [--duration-s 10] [--deliveries 2000] [--endpoints 20]

Prints one JSON line per figure, each with its baseline from the same run:

* ``api_inquiry_warm`` / ``api_inquiry_cold``: ``GET /v1/customers/{key}/credit``
  (customer + the customer's orders + invoices, from the legacy reference ERP on
  SQLite) served by ``coexist api serve`` as its own process, with the cache warm
  (TTL 60 s, every key asked once before measuring) and cold (TTL 0: every request
  reads the SoR).  Baseline: a bare ASGI app returning a constant, under the same
  uvicorn, same flags.  Load: ``wrk`` (Debian's ``wrk`` package; ``loadgen.py``, httpx +
  asyncio, when it is missing) in a separate process, ``--concurrency`` connections
  cycling over ``--keys`` customers.
* ``portal_webhook_deliveries``: ``--deliveries`` queued webhook messages over
  ``--endpoints`` endpoints delivered by the dispatcher (signing, lanes, attempt log in
  SQLite state) to a receiver process (a bare ASGI app under uvicorn answering 200).
  Baseline: the same bodies POSTed by a plain httpx thread pool of the same size.

Targets (issue 15): warm p99 < 50 ms at 200 concurrent requests; warm >= 0.5x the bare
endpoint's requests/s.  Bounded: every phase has a duration or a timeout.

Profiles (py-spy, this machine at load average 5-12, so figures swing): a warm credit answer
spends ~17 % in coexist's handler (cache lookups, exposure sums, JSON) and the rest in the
FastAPI/Starlette middleware stack, uvicorn's h11 parser and socket writes (~20 %); a
webhook delivery's time outside HTTP is mostly waiting for SQLite's write lock (``BEGIN
IMMEDIATE``: one commit per attempt from 16 threads); PostgreSQL state or batching attempt
records is the lever there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, lifespan="off")
"""


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


def load(urls: list[str], auth: str | None, concurrency: int, duration_s: float) -> dict:
    """wrk (Debian's) when installed, else ``loadgen.py``; either runs as its own process."""
    if shutil.which("wrk"):
        return _wrk(urls, auth, concurrency, duration_s)
    return _loadgen(urls, auth, concurrency, duration_s)


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


def _loadgen(urls, auth, concurrency, duration_s) -> dict:
    env = {**os.environ}
    if auth:
        env["LOADGEN_AUTHORIZATION"] = auth
    out = subprocess.run(
        [sys.executable, str(_HERE / "loadgen.py"), "--concurrency", str(concurrency),
         "--duration-s", str(duration_s), *urls],
        env=env, capture_output=True, text=True, timeout=duration_s + 120, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["load_generator"] = "scripts/bench/loadgen.py (httpx asyncio)"
    return figures


def bare_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)])
    url = f"http://127.0.0.1:{port}/"
    wait_http(url)
    return proc, url


def inquiry(args, home: Path) -> None:
    from workers.api.auth import new_token, token_hash

    env = {**os.environ, "COEXIST_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for name in ("COEXIST_BROKER_URL", "COEXIST_STATE_URL", "COEXIST_CLOUD_URL",
                 "COEXIST_REDIS_URL", "COEXIST_LEGACY_URL", "COEXIST_ENV_FILE"):
        env.pop(name, None)
    subprocess.run([str(BIN / "coexist"), "legacy", "seed", "--customers", str(args.customers)],
                   env=env, check=True, capture_output=True, timeout=600)
    token = new_token()
    consumers = home / "consumers.json"
    consumers.write_text(json.dumps({"consumers": [
        {"name": "bench-desk", "role": "inquiry", "token_sha256": token_hash(token)}]}))
    env["COEXIST_API_CONSUMERS"] = str(consumers)
    keys = [str(10_000 + i) for i in range(min(args.keys, args.customers))]
    bare, bare_url = bare_server()
    try:
        baseline = load([bare_url], None, args.concurrency, args.duration_s)
    finally:
        stop(bare)
    for name, ttl in (("api_inquiry_warm", "60"), ("api_inquiry_cold", "0")):
        port = free_port()
        proc = subprocess.Popen(
            [str(BIN / "coexist"), "api", "serve", "--port", str(port), "--log-level",
             "warning"], env={**env, "COEXIST_API_CACHE_TTL_S": ttl})
        base = f"http://127.0.0.1:{port}"
        urls = [f"{base}/v1/customers/{k}/credit" for k in keys]
        try:
            wait_http(f"{base}/v1/openapi.json")
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
                statuses = {http.get(u).status_code for u in urls}  # warms the cache
            figure = load(urls, f"Bearer {token}", args.concurrency, args.duration_s)
        finally:
            stop(proc)
        print(json.dumps({
            "name": name, "requests_per_s": figure["requests_per_s"],
            "baseline_per_s": baseline["requests_per_s"],
            "ratio": round(figure["requests_per_s"] / baseline["requests_per_s"], 3),
            "p50_ms": figure["p50_ms"], "p99_ms": figure["p99_ms"],
            "baseline_p99_ms": baseline["p99_ms"], "concurrency": args.concurrency,
            "non_2xx": figure.get("non_2xx", 0), "warmup_statuses": sorted(statuses),
            "keys": len(keys), "load_generator": figure["load_generator"],
            "loadavg": os.getloadavg()}), flush=True)


def webhooks(args, home: Path) -> None:
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
        dispatcher = Dispatcher(engine, registry, ExceptionStore(engine), threads=16)
        started = time.perf_counter()
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline:
            dispatcher.run_once(now)
            with engine.connect() as conn:
                left = conn.execute(select(func.count()).select_from(DELIVERY).where(
                    DELIVERY.c.status != "delivered")).scalar_one()
            if not left:
                break
            time.sleep(0.005)
        dispatcher.wait(30)
        elapsed = time.perf_counter() - started
        dispatcher.close()
        with httpx.Client(limits=httpx.Limits(max_connections=32)) as http:
            b0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda b: http.post(f"{url}hook/{b[1]}", content=b[0].encode(),
                                                  headers={"Content-Type": "application/json"}),
                              bodies))
            b_elapsed = time.perf_counter() - b0
        rate = args.deliveries / elapsed
        base = len(bodies) / b_elapsed
        print(json.dumps({
            "name": "portal_webhook_deliveries", "records_per_s": round(rate, 1),
            "baseline_per_s": round(base, 1), "ratio": round(rate / base, 3),
            "deliveries": args.deliveries, "undelivered": left, "endpoints": args.endpoints,
            "threads": 16, "baseline": "httpx thread pool, same bodies, no signing or state",
            "loadavg": os.getloadavg()}), flush=True)
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
    p.add_argument("--only", choices=["inquiry", "webhooks"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="coexist-bench-api-") as tmp:
        if args.only in (None, "inquiry"):
            inquiry(args, Path(tmp))
        if args.only in (None, "webhooks"):
            webhooks(args, Path(tmp))


if __name__ == "__main__":
    main()
