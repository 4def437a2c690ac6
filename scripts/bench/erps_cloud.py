"""Cloud adapter throughput against the simulator, each figure with its baseline in the same run.

Prints one JSON line per figure (name, records_per_s, baseline_per_s, ratio):

* ``cloud_single_upsert``: ``CloudErp.upsert`` of existing customers (read with
  ETag, version check, PATCH with If-Match and Idempotency-Key) against raw httpx
  doing the same two requests with ready-made cloud documents.  Target ratio >= 0.8.
* ``cloud_sim_requests``: trivial requests per second answered by the simulator's
  bare asyncio server against uvicorn (h11) + starlette serving the same JSON,
  both driven by a raw keep-alive socket (why the simulator has its own server).
* ``cloud_batch_upsert``: ``CloudErp.upsert_many`` through ``$batch`` (200 per
  request: a read batch, then a write batch) against raw httpx posting the same
  two batches built from ready-made documents.  Target >= 5,000 records/s.

Rounds of adapter and baseline alternate so that load from other processes on
the machine hits both alike.  Usage: ``python scripts/bench/erps_cloud.py
[--single 300] [--rounds 3] [--batch 10000]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coexistence.sample import iter_customers, iter_products  # noqa: E402
from coexistence.translate.cloud import RESOURCES, from_canonical, to_json_dict  # noqa: E402
from workers.cloud_erp import CloudErp  # noqa: E402
from workers.cloud_sim import start_simulator  # noqa: E402

_SELECT = {"includeDeleted": "true", "$select": "id,coexistSourceVersion"}
_SELECT_QS = "includeDeleted=true&$select=id,coexistSourceVersion"


def _raw_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-Client-Id": "COEXIST"},
                        transport=httpx.HTTPTransport(verify=False))


def single_round_adapter(erp: CloudErp, records, version: int) -> float:
    started = time.perf_counter()
    for record in records:
        erp.upsert(record, source_version=version, idempotency_key=uuid.uuid4().hex)
    return time.perf_counter() - started


def single_round_raw(http: httpx.Client, docs: list[dict], version: int) -> float:
    """The least any client must do: the same GET (ETag, version) and PATCH (If-Match,
    Idempotency-Key) as the adapter, from ready-made cloud documents."""
    entity_set = RESOURCES["customer"]
    started = time.perf_counter()
    for doc in docs:
        current = http.get(f"/{entity_set}(number='{doc['number']}')", params=_SELECT).json()
        body = dict(doc, coexistSourceVersion=version)
        response = http.patch(
            f"/{entity_set}({current['id']})",
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers={"If-Match": current["@odata.etag"], "Idempotency-Key": uuid.uuid4().hex,
                     "Content-Type": "application/json", "Prefer": "return=minimal"},
        )
        if response.status_code != 204:
            raise RuntimeError(f"baseline PATCH answered {response.status_code}")
    return time.perf_counter() - started


def bench_single(url: str, n: int, rounds: int) -> dict:
    records = list(iter_customers(n, seed=3))
    docs = [to_json_dict(from_canonical(r), body=True) for r in records]
    with CloudErp(url) as erp, _raw_client(url) as http:
        for record in records:  # the records exist: both sides update
            erp.upsert(record, source_version=1, idempotency_key=uuid.uuid4().hex)
        adapter_s = raw_s = 0.0
        version = 1
        for _ in range(rounds):
            version += 1
            raw_s += single_round_raw(http, docs, version)
            version += 1
            adapter_s += single_round_adapter(erp, records, version)
    return _figure("cloud_single_upsert", n * rounds, adapter_s, raw_s)


def bench_batch(url: str, n: int) -> dict:
    products = list(iter_products(2 * n, seed=3))
    adapter_records, raw_records = products[:n], products[n:]
    entity_set = RESOURCES["product"]
    raw_docs = [to_json_dict(from_canonical(r, source_version=1), body=True) for r in raw_records]
    with CloudErp(url, timeout_s=60) as erp, _raw_client(url) as http:
        raw_s = adapter_s = 0.0
        # Chunks alternate between baseline and adapter so load drift hits both alike.
        for i in range(0, n, 200):
            started = time.perf_counter()
            chunk = raw_docs[i:i + 200]
            reads = [{"id": str(j), "method": "GET",
                      "url": f"{entity_set}(number='{doc['number']}')?{_SELECT_QS}"}
                     for j, doc in enumerate(chunk)]
            answers = _post_batch(http, reads)
            ops = [
                {"id": str(j), "method": "POST", "url": entity_set, "body": doc,
                 "headers": {"Idempotency-Key": uuid.uuid4().hex, "Prefer": "return=minimal"}}
                for j, doc in enumerate(chunk) if answers[j]["status"] == 404
            ]
            if any(a["status"] != 204 for a in _post_batch(http, ops)):
                raise RuntimeError("baseline batch had failures")
            raw_s += time.perf_counter() - started
            started = time.perf_counter()
            items = [(r, 1, uuid.uuid4().hex) for r in adapter_records[i:i + 200]]
            results = erp.upsert_many(items)
            adapter_s += time.perf_counter() - started
            if any(type(r).__name__ != "Applied" for r in results):
                raise RuntimeError(f"adapter batch had failures: {results[:3]}")
    return _figure("cloud_batch_upsert", n, adapter_s, raw_s)


_STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def health(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/health", health)])
"""


def _socket_rate(port: int, n: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
        started = time.perf_counter()
        for _ in range(n):
            sock.sendall(request)
            if not sock.recv(65536):
                raise RuntimeError("server closed the connection")
        return n / (time.perf_counter() - started)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_stack(sim_url: str, tmp: str, n: int = 500, rounds: int = 3) -> dict:
    Path(tmp, "bench_starlette_app.py").write_text(_STARLETTE_APP)
    port = _free_port()
    uvicorn = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench_starlette_app:app", "--port", str(port),
         "--http", "h11", "--log-level", "warning"], cwd=tmp)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        sim_port = int(sim_url.rsplit(":", 1)[1])
        ours = theirs = 0.0
        for _ in range(rounds):
            theirs += _socket_rate(port, n)
            ours += _socket_rate(sim_port, n)
    finally:
        uvicorn.terminate()
        uvicorn.wait()
    rate, base = ours / rounds, theirs / rounds
    return {"name": "cloud_sim_requests", "records": n * rounds, "records_per_s": round(rate, 1),
            "baseline_per_s": round(base, 1), "ratio": round(rate / base, 3)}


def _post_batch(http: httpx.Client, ops: list[dict]) -> list[dict]:
    response = http.post("/$batch", content=json.dumps({"requests": ops}).encode(),
                         headers={"Content-Type": "application/json"}, timeout=60)
    return response.json()["responses"]


def _figure(name: str, records: int, adapter_s: float, raw_s: float) -> dict:
    rate, base = records / adapter_s, records / raw_s
    return {"name": name, "records": records, "records_per_s": round(rate, 1),
            "baseline_per_s": round(base, 1), "ratio": round(rate / base, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=300, help="records per single round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--batch", type=int, default=10000, help="records for the batch figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_simulator(Path(tmp) / "cloud.db") as sim:
        print(json.dumps(bench_single(sim.url, args.single, args.rounds)), flush=True)
        print(json.dumps(bench_batch(sim.url, args.batch)), flush=True)
        print(json.dumps(bench_stack(sim.url, tmp)), flush=True)


if __name__ == "__main__":
    main()
