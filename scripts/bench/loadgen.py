"""A cheap HTTP/1.1 load generator on raw asyncio sockets, run as its own process(es).

    LOADGEN_AUTHORIZATION="Bearer ..." python scripts/bench/loadgen.py \
        --concurrency 200 --duration-s 10 [--processes 2] [--rate 500] URL [URL ...]

``--concurrency`` keep-alive connections, split over ``--processes`` generator processes,
each connection with one request in flight, cycling over the URLs (all on one host).
Requests are pre-encoded bytes and responses are parsed by hand (status line,
``content-length`` or chunked), so a request costs the generator a few tens of
microseconds of CPU instead of the ~0.5-1 ms of an httpx client: the figure is the
server's, not the generator's.  Each run reports the generator's own CPU per request
(``generator_cpu_us_per_request``) so that can be checked rather than assumed.

* closed loop (default): each connection sends its next request when the answer came;
* ``--rate R``: open loop at ``R`` requests/s in total, each connection on a fixed
  schedule; a latency counts from the request's scheduled time, so a slow answer that
  delays the next send is charged to the server (no coordinated omission).

Prints one JSON line: requests, requests/s, p50/p90/p99/max latency in ms, statuses,
generator CPU.  ``Authorization`` comes from ``LOADGEN_AUTHORIZATION`` (never the command
line).  ``--post-body JSON`` POSTs that body instead, each request with its own
``Idempotency-Key`` (a new UUID: every request is a new order).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from array import array
from collections import Counter
from urllib.parse import urlsplit


def _requests(urls: list[str], auth: str | None, body: bytes | None):
    parts = [urlsplit(u) for u in urls]
    host, port = parts[0].hostname, parts[0].port or 80
    head = f"Host: {host}:{port}\r\n" + (f"Authorization: {auth}\r\n" if auth else "")
    if body is None:
        reqs = [f"GET {p.path or '/'}{'?' + p.query if p.query else ''} HTTP/1.1\r\n{head}\r\n"
                .encode() for p in parts]
        return host, port, lambda i: reqs[i % len(reqs)]
    paths = [p.path or "/" for p in parts]

    def post(i: int) -> bytes:
        return (f"POST {paths[i % len(paths)]} HTTP/1.1\r\n{head}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Idempotency-Key: \"{uuid.uuid4()}\"\r\n\r\n").encode() + body
    return host, port, post


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        n = int(lower[at + 17:end])
        if n:
            await reader.readexactly(n)
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(host, port, request, offset, start_at, stop_at, interval_s,
                      latencies, statuses, warm_until):
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    loop = time.monotonic
    next_at = start_at
    try:
        while True:
            now = loop()
            if interval_s:
                if next_at >= stop_at:
                    break
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                sent_at = next_at  # latency from the schedule (no coordinated omission)
                next_at += interval_s
            else:
                if now >= stop_at:
                    break
                sent_at = now
            writer.write(request(i))
            i += 1
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                statuses[type(exc).__name__] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            done = loop()
            if sent_at >= warm_until:
                latencies.append(done - sent_at)
                statuses[status] += 1
    finally:
        writer.close()


def _worker(args, urls, auth, body, connections, offset, start_at, conn):
    host, port, request = _requests(urls, auth, body)
    latencies: array = array("d")
    statuses: Counter = Counter()
    warm_until = start_at + args.warmup_s
    stop_at = warm_until + args.duration_s
    interval = args.concurrency / args.rate if args.rate else 0.0

    async def run():
        tasks = []
        for n in range(connections):
            # Spread the scheduled sends of the connections over one interval.
            first = start_at + (interval * (offset + n) / args.concurrency if interval else 0)
            tasks.append(_connection(host, port, request, offset + n, first, stop_at,
                                     interval, latencies, statuses, warm_until))
        await asyncio.gather(*tasks)

    c0 = time.process_time()
    asyncio.run(run())
    cpu = time.process_time() - c0
    conn.send((latencies.tobytes(), dict(statuses), cpu))
    conn.close()


def run(args, urls, auth, body) -> dict:
    procs = max(1, min(args.processes, args.concurrency))
    start_at = time.monotonic() + 0.5  # every process starts its clock together
    ctx = multiprocessing.get_context("fork")
    children, pipes, offset = [], [], 0
    for p in range(procs):
        n = args.concurrency // procs + (1 if p < args.concurrency % procs else 0)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(args, urls, auth, body, n, offset, start_at,
                                                 child))
        proc.start()
        child.close()
        children.append(proc)
        pipes.append(parent)
        offset += n
    latencies: array = array("d")
    statuses: Counter = Counter()
    cpu = 0.0
    for pipe in pipes:
        raw, st, c = pipe.recv()
        latencies.frombytes(raw)
        statuses.update(st)
        cpu += c
    for proc in children:
        proc.join()
    ordered = sorted(latencies)

    def pct(p):
        return round(ordered[min(int(len(ordered) * p), len(ordered) - 1)] * 1000, 2) \
            if ordered else None

    n = len(ordered)
    return {"requests": n, "requests_per_s": round(n / args.duration_s, 1),
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "statuses": {str(k): v for k, v in statuses.items()},
            "concurrency": args.concurrency, "rate": args.rate, "processes": procs,
            "duration_s": args.duration_s, "warmup_s": args.warmup_s,
            # Includes the warm-up's requests, which are not counted in ``requests``.
            "generator_cpu_s": round(cpu, 3),
            "generator_cpu_us_per_request": round(
                cpu / max(n * (1 + args.warmup_s / args.duration_s), 1) * 1e6, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("urls", nargs="+")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--rate", type=float, default=0.0,
                   help="Open loop: this many requests/s in total (0: closed loop).")
    p.add_argument("--post-body", help="POST this JSON body (a new Idempotency-Key each).")
    a = p.parse_args()
    auth = os.environ.get("LOADGEN_AUTHORIZATION")
    body = a.post_body.encode() if a.post_body else None
    print(json.dumps(run(a, a.urls, auth, body)))


if __name__ == "__main__":
    main()
