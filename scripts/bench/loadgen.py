"""A small HTTP load generator (httpx + asyncio), run as its own process by the benchmarks.

    LOADGEN_AUTHORIZATION="Bearer ..." python scripts/bench/loadgen.py \
        --concurrency 200 --duration-s 10 URL [URL ...]

``concurrency`` clients each send one request at a time, cycling over the URLs,
for ``duration-s`` seconds after a short warm-up.  Prints one JSON line:
requests, requests/s, p50/p90/p99/max latency in ms, errors by status.  The
``Authorization`` header comes from ``LOADGEN_AUTHORIZATION`` (never the command line).
``--post-body JSON`` POSTs that body instead of GETting, each request with its own
``Idempotency-Key`` (a new UUID: every request is a new order).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import Counter

import httpx


async def _client(http, urls, offset, stop_at, latencies, statuses, body=None):
    i = offset
    while time.monotonic() < stop_at:
        url = urls[i % len(urls)]
        i += 1
        started = time.perf_counter()
        try:
            if body is None:
                response = await http.get(url)
            else:
                response = await http.post(url, content=body, headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": f'"{uuid.uuid4()}"'})
            statuses[response.status_code] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)


async def run(urls, headers, concurrency, duration_s, warmup_s, body=None):
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
        warm_stop = time.monotonic() + warmup_s
        warm: list[float] = []
        await asyncio.gather(*(_client(http, urls, n, warm_stop, warm, Counter(), body)
                               for n in range(concurrency)))
        latencies: list[float] = []
        statuses: Counter = Counter()
        started = time.monotonic()
        stop_at = started + duration_s
        await asyncio.gather(*(_client(http, urls, n, stop_at, latencies, statuses, body)
                               for n in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p):
        return round(latencies[min(int(len(latencies) * p), len(latencies) - 1)] * 1000, 2) \
            if latencies else None

    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": pct(1.0), "statuses": {str(k): v for k, v in statuses.items()},
            "warmup_requests": len(warm)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("urls", nargs="+")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--post-body", help="POST this JSON body (a new Idempotency-Key each).")
    a = p.parse_args()
    auth = os.environ.get("LOADGEN_AUTHORIZATION")
    headers = {"Authorization": auth} if auth else {}
    body = a.post_body.encode() if a.post_body else None
    print(json.dumps(asyncio.run(run(a.urls, headers, a.concurrency, a.duration_s,
                                     a.warmup_s, body))))


if __name__ == "__main__":
    main()
