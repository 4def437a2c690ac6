"""CPU per warm inquiry of the API through uvicorn's own HTTP protocol, without sockets.

    .venv/bin/python scripts/bench/api_stack.py [--requests 2000] [--rounds 40]
        [--src OTHER_CHECKOUT] [--freeze]

``scripts/bench/api.py``'s server figure (CPU microseconds per request of ``coexist api
serve``) mixes the Python work of a request with the kernel's socket work and, on a loaded
machine, with cache misses from the other processes.  This drives uvicorn's
``HttpToolsProtocol`` (the one ``coexist api serve`` runs) with a transport that only keeps
what is written: the same request bytes as ``loadgen.py`` sends are fed to the parser, the
app answers through uvicorn's ``send`` (header checks, status line, body), and the CPU time
of the loop is divided by the requests.  The bare ASGI app of ``api.py`` is driven the same
way in the same process, alternating with the API ``--rounds`` times, so the result is a
ratio that the machine's load moves little.

``--src DIR`` imports ``workers`` from another checkout (e.g. ``/work/main``) instead of
this one, to compare two revisions with the same harness.  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


class _Transport(asyncio.Transport):
    """What uvicorn's protocol needs of a socket transport; writes are counted and dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.last = bytearray()
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def write(self, data) -> None:
        self.written += 1
        self.last += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol) -> None:
        pass


BARE_BODY = b'{"schema_version":1,"data":{"ok":true}}'
BARE_LENGTH = str(len(BARE_BODY)).encode()


async def bare(scope, receive, send):
    """``api.py``'s bare endpoint."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", BARE_LENGTH),
                            (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BARE_BODY})


class Stack:
    """One keep-alive connection of uvicorn's httptools protocol around ``app``."""

    def __init__(self, app) -> None:
        from uvicorn.config import Config
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        from uvicorn.server import ServerState

        config = Config(app, http="httptools", lifespan="off", access_log=False,
                        proxy_headers=False, log_level="warning")
        config.load()
        state = ServerState()
        state.default_headers = [(b"date", b"Thu, 03 Dec 2026 08:00:00 GMT"),
                                 *config.encoded_headers]
        self.protocol = HttpToolsProtocol(config, state, {}, _loop=asyncio.get_running_loop())
        self.transport = _Transport()
        self.protocol.connection_made(self.transport)

    async def request(self, raw: bytes) -> bytes:
        self.transport.last = bytearray()
        self.protocol.data_received(raw)
        for task in list(self.protocol.tasks):
            await task
        return bytes(self.transport.last)


def requests_for(paths: list[str], auth: str | None) -> list[bytes]:
    """The bytes ``loadgen.py`` sends for ``paths`` (same header order)."""
    head = "Host: 127.0.0.1:8080\r\n" + (f"Authorization: {auth}\r\n" if auth else "")
    return [f"GET {p} HTTP/1.1\r\n{head}\r\n".encode() for p in paths]


async def per_request_us(stack: Stack, raws: list[bytes], n: int) -> tuple[float, dict]:
    gens = [s["collections"] for s in gc.get_stats()]
    c0 = time.process_time()
    for i in range(n):
        await stack.request(raws[i % len(raws)])
    cpu = time.process_time() - c0
    after = [s["collections"] for s in gc.get_stats()]
    return round(cpu / n * 1e6, 2), {f"gen{g}": after[g] - gens[g] for g in range(3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--keys", type=int, default=50)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=40,
                   help="Bare and API alternate this many times, --requests each.")
    p.add_argument("--src", help="Import workers from this checkout instead of this one.")
    p.add_argument("--freeze", action="store_true",
                   help="gc.freeze() after the warm-up (as a server would after start-up).")
    p.add_argument("--show", action="store_true", help="Print one API response and exit.")
    p.add_argument("--api-only", action="store_true",
                   help="Drive only the API, --requests times (for py-spy).")
    args = p.parse_args()
    src = Path(args.src).resolve() if args.src else _HERE.parents[1]
    sys.path.insert(0, str(src))

    from workers.api.app import create_app
    from workers.api.auth import Consumers, new_token, token_hash
    from workers.api.deps import ApiDeps, ApiSettings
    from workers.bootstrap import App, start
    from workers.config import Settings

    with tempfile.TemporaryDirectory(prefix="coexist-bench-api-stack-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "COEXIST_HOME": str(home), "PYTHONPATH": str(src)}
        for name in ("COEXIST_BROKER_URL", "COEXIST_STATE_URL", "COEXIST_CLOUD_URL",
                     "COEXIST_REDIS_URL", "COEXIST_LEGACY_URL", "COEXIST_ENV_FILE",
                     "COEXIST_CONFIG"):
            env.pop(name, None)
        coexist = Path(sys.executable).parent / "coexist"
        for cmd in (["legacy", "seed", "--customers", str(args.customers)], ["db", "upgrade"]):
            subprocess.run([str(coexist), *cmd], env=env, check=True, capture_output=True,
                           timeout=600)
        token = new_token()
        consumers = Consumers.from_json({"consumers": [
            {"name": "bench-desk", "role": "inquiry", "token_sha256": token_hash(token),
             "rate_per_s": 1e6, "burst": 10**6}]})
        settings = Settings(home=home)
        root = App(settings)
        app = start(App(settings, erps={"legacy": root.legacy}), register=False)
        asgi = create_app(ApiDeps.from_app(app, ApiSettings(cache_ttl_s=600),
                                           consumers=consumers))
        keys = [str(10_000 + i) for i in range(min(args.keys, args.customers))]
        api_raws = requests_for([f"/v1/customers/{k}/credit" for k in keys],
                                f"Bearer {token}")
        bare_raws = requests_for(["/"], None)

        async def run() -> dict:
            api, base = Stack(asgi), Stack(bare)
            for raw in api_raws:  # warms the caches (the full path keeps each answer)
                out = await api.request(raw)
                assert out.startswith(b"HTTP/1.1 200"), out[:200]
            if args.show:
                print((await api.request(api_raws[0])).decode())
                return {}
            if args.api_only:
                us, g = await per_request_us(api, api_raws, args.requests)
                return {"name": "api_stack_api_only", "api_cpu_us_per_request": us,
                        "api_gc_collections": g}
            if args.freeze:
                gc.collect()
                gc.freeze()
            await per_request_us(api, api_raws, 2000)
            await per_request_us(base, bare_raws, 2000)
            api_us, bare_us, gcs = [], [], []
            for _ in range(args.rounds):
                us, g = await per_request_us(base, bare_raws, args.requests)
                bare_us.append(us)
                us, g = await per_request_us(api, api_raws, args.requests)
                api_us.append(us)
                gcs.append(g)
            ratios = sorted(b / a for a, b in zip(api_us, bare_us, strict=True))
            shown = len(api_us) <= 5
            return {"name": "api_stack_warm_inquiry", "src": str(src),
                    "api_cpu_us_per_request": api_us if shown else statistics.median(api_us),
                    "bare_cpu_us_per_request": bare_us if shown else statistics.median(bare_us),
                    # Each round's ratio (bare / API, next to each other in time), median:
                    # what the machine's load does to one round it does to both figures.
                    "cpu_ratio": round(statistics.median(ratios), 3),
                    "cpu_ratio_quartiles": [round(ratios[len(ratios) // 4], 3),
                                            round(ratios[3 * len(ratios) // 4], 3)],
                    "api_gc_collections": {f"gen{g}": sum(c[f"gen{g}"] for c in gcs)
                                           for g in range(3)},
                    "requests": args.requests, "rounds": args.rounds,
                    "freeze": args.freeze, "loadavg": os.getloadavg()}

        try:
            result = asyncio.run(run())
            if result:
                print(json.dumps(result), flush=True)
        finally:
            asgi.inquiry_trace.close()
            app.close()
            root.close()


if __name__ == "__main__":
    main()
