"""How long Python's garbage collector stops the API's process, before and after gc.freeze().

    .venv/bin/python scripts/bench/api_gc.py [--requests 20000]

Builds the API app in process over a seeded legacy reference ERP (as ``api.py``'s in-process
figure does), warms its caches, then prints one JSON line:

* ``full_collect_cpu_ms``: CPU of five ``gc.collect()`` calls (a full, generation-2
  collection: what an automatic one would cost the event loop), with the tracked objects;
* ``automatic``: the automatic collections (per generation: count, longest, total CPU ms)
  during ``--requests`` warm credit answers driven in process;
* the same two after ``gc.freeze()`` (every object made so far moved out of the collector's
  reach).

CPU time (``time.thread_time``), not wall time, so the machine's load does not inflate it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parents[1]))
sys.path.insert(0, str(_HERE))

import api as bench  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--requests", type=int, default=20000)
    args = p.parse_args()
    from workers.api.app import create_app
    from workers.api.auth import Consumers, new_token, token_hash
    from workers.api.deps import ApiDeps, ApiSettings
    from workers.bootstrap import App, start
    from workers.config import Settings

    with tempfile.TemporaryDirectory(prefix="coexist-bench-api-gc-") as tmp:
        home = Path(tmp)
        env = bench._clean_env(home)
        for cmd in (["legacy", "seed", "--customers", str(args.customers)], ["db", "upgrade"]):
            subprocess.run([str(bench.BIN / "coexist"), *cmd], env=env, check=True,
                           capture_output=True, timeout=600)
        token = new_token()
        consumers = Consumers.from_json({"consumers": [
            {"name": "desk", "role": "inquiry", "token_sha256": token_hash(token),
             **bench.UNSPENDABLE}]})
        settings = Settings(home=home)
        root = App(settings)
        app = start(App(settings, erps={"legacy": root.legacy}), register=False)
        asgi = create_app(ApiDeps.from_app(app, ApiSettings(cache_ttl_s=600),
                                           consumers=consumers))
        keys = [str(10_000 + i) for i in range(50)]
        auth = f"Bearer {token}".encode()

        async def call(path: str) -> None:
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "GET", "scheme": "http", "path": path,
                     "raw_path": path.encode(), "query_string": b"", "root_path": "",
                     "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                     "headers": [(b"host", b"bench"), (b"authorization", auth)]}

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                pass

            await asgi(scope, receive, send)

        async def run(n: int) -> None:
            for i in range(n):
                await call(f"/v1/customers/{keys[i % len(keys)]}/credit")

        pauses: list[tuple[int, float]] = []
        started = [0.0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.thread_time()
            else:
                pauses.append((info["generation"], (time.thread_time() - started[0]) * 1000))

        def full() -> dict:
            times = []
            for _ in range(5):
                t = time.thread_time()
                gc.collect()
                times.append(round((time.thread_time() - t) * 1000, 2))
            return {"tracked_objects": len(gc.get_objects()), "full_collect_cpu_ms": times}

        def automatic() -> dict:
            pauses.clear()
            gc.callbacks.append(on_gc)
            try:
                asyncio.run(run(args.requests))
            finally:
                gc.callbacks.remove(on_gc)
            out: dict = {}
            for gen, ms in pauses:
                g = out.setdefault(f"gen{gen}", {"n": 0, "max_ms": 0.0, "sum_ms": 0.0})
                g["n"] += 1
                g["max_ms"] = round(max(g["max_ms"], ms), 2)
                g["sum_ms"] = round(g["sum_ms"] + ms, 2)
            return out

        try:
            asyncio.run(run(200))  # warms the caches
            before = {**full(), "automatic": automatic()}
            gc.freeze()
            after = {**full(), "automatic": automatic()}
            print(json.dumps({"name": "api_gc_pauses", "requests": args.requests,
                              "thresholds": gc.get_threshold(), "before_freeze": before,
                              "after_freeze": after, "loadavg": os.getloadavg()}), flush=True)
        finally:
            asgi.inquiry_trace.close()
            app.close()
            root.close()


if __name__ == "__main__":
    main()
