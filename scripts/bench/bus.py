"""Bus throughput and latency, end to end, against raw pika in the same run.

    .venv/bin/python scripts/bench/bus.py [--messages 10000] [--workers 2] [--threads 12]

Prints one JSON line per figure: ``name``, ``records_per_s``, ``baseline_per_s``,
``ratio``, ``p50_ms``, ``p99_ms`` (plus the baseline's latencies).

* ours: a producer commits envelopes to the outbox (PostgreSQL, 100 per
  transaction) -> ``OutboxRelay`` with ``RabbitmqBatchPublisher`` (confirmed
  batches) -> RabbitMQ -> dramatiq worker processes with our middleware
  (``bus.brokers.setup``) -> actor validates the envelope, claims the inbox and
  inserts the effect in one PostgreSQL transaction.  Latency: outbox commit to
  effect commit.
* baseline: raw pika, the same message bytes, a durable queue, publisher
  confirms per batch of the same size, a consumer process with manual acks.
  Latency: publish to ack.

Both are bursts: the producer offers everything at once, so latencies include
queueing behind the backlog.  PostgreSQL gets a private database (created and
dropped); RabbitMQ gets private queue names in the default vhost (deleted).
Bounded: each phase gives up after ``--timeout-s``.
Environment: ``COEXIST_BENCH_PG_URL`` (admin URL), ``COEXIST_BENCH_AMQP_URL``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

# Python puts this script's folder first on sys.path, where this very file would
# shadow the ``bus`` package; put the project root there instead.
_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
import pika  # noqa: E402
from sqlalchemy import (  # noqa: E402  # noqa: E402
    Column,
    Float,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    text,
)

from bus import inbox  # noqa: E402
from bus.brokers import make_broker, setup  # noqa: E402
from bus.db import create_state_engine  # noqa: E402
from bus.envelope import from_dict, new_envelope, to_message_arg  # noqa: E402
from bus.exception_store import ExceptionStore  # noqa: E402
from bus.outbox import OutboxRelay, add_all_to_outbox  # noqa: E402
from bus.publish import RabbitmqBatchPublisher  # noqa: E402
from workers.migrate import upgrade as upgrade_schema  # noqa: E402

PG_ADMIN_URL = os.environ.get("COEXIST_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("COEXIST_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: Envelopes per producer transaction, and messages per confirmed publish batch.
PRODUCER_TX_SIZE = 100
PUBLISH_BATCH = 500

METADATA = MetaData()
EFFECTS = Table(
    "bench_effects", METADATA,
    Column("message_id", String(128), nullable=False),
    Column("t0", Float, nullable=False),
    Column("t1", Float, nullable=False),
)


def _envelope(n: int, t0: float):
    return new_envelope(domain="bench", kind="tick", key=f"k{n % 211}",
                        payload={"n": n, "t0": t0, "sku": f"SKU-{n:06d}", "qty": n % 17},
                        source_system="bench", source_version=n)


def _percentiles(latencies_s: list[float]) -> tuple[float, float]:
    if not latencies_s:
        return float("nan"), float("nan")
    q = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return round(q[49] * 1000, 1), round(q[98] * 1000, 1)


# -- ours -------------------------------------------------------------------------------


def run_worker(state_url: str, queue: str, threads: int) -> None:
    """A worker process: our broker, our middleware, one actor with inbox + effect."""
    engine = create_state_engine(state_url, pool_size=threads + 2, pool_pre_ping=False)
    broker = make_broker(AMQP_URL)
    setup(broker, store=ExceptionStore(engine))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=queue, actor_name="bench_apply")
    def bench_apply(env: dict) -> None:
        envelope = from_dict(env)
        with engine.begin() as conn:
            if inbox.claim(conn, "bench", envelope.message_id):
                conn.execute(insert(EFFECTS).values(
                    message_id=envelope.message_id, t0=envelope.payload["t0"], t1=time.time()))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop(timeout=5000)
    broker.close()


def bench_ours(admin, n: int, workers: int, threads: int, timeout_s: float) -> dict:
    name = f"coexist_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    state_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    queue = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_state_engine(state_url, pool_pre_ping=False)
    procs: list[subprocess.Popen] = []
    broker = make_broker(AMQP_URL)
    try:
        upgrade_schema(engine)
        METADATA.create_all(engine)
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", state_url, queue, str(threads)],
                stdout=subprocess.PIPE, text=True, cwd=ROOT))
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("bench worker did not start")
        stop = threading.Event()
        relay = OutboxRelay(engine, RabbitmqBatchPublisher(broker), idle_poll_s=0.01)
        relay_thread = threading.Thread(target=relay.run_forever, args=(stop, PUBLISH_BATCH),
                                        daemon=True)
        start = time.time()
        relay_thread.start()
        for i in range(0, n, PRODUCER_TX_SIZE):
            t0 = time.time()
            envs = [_envelope(k, t0) for k in range(i, min(n, i + PRODUCER_TX_SIZE))]
            with engine.begin() as conn:
                add_all_to_outbox(conn, envs, actor_name="bench_apply", queue_name=queue)
            relay.wake()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with engine.connect() as conn:
                done = conn.execute(select(func.count()).select_from(EFFECTS)).scalar_one()
            if done >= n:
                break
            time.sleep(0.2)
        stop.set()
        relay_thread.join(timeout=10)
        with engine.connect() as conn:
            rows = conn.execute(select(EFFECTS.c.t0, EFFECTS.c.t1)).all()
        if len(rows) < n:
            raise RuntimeError(f"ours: only {len(rows)} of {n} effects within {timeout_s} s")
        end = max(t1 for _, t1 in rows)
        p50, p99 = _percentiles([t1 - t0 for t0, t1 in rows])
        return {"per_s": n / (end - start), "p50_ms": p50, "p99_ms": p99,
                "seconds": round(end - start, 2)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for q in broker.queue_names(queue):
            with contextlib.suppress(Exception):  # cleanup is best effort
                broker.channel.queue_delete(q)
        broker.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- baseline: raw pika -----------------------------------------------------------------


def run_baseline_consumer(queue: str, n: int) -> None:
    """Consume ``n`` messages with manual acks; print latencies as JSON."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=200)
    latencies: list[float] = []
    print("ready", flush=True)
    for method, _props, body in channel.consume(queue, auto_ack=False):
        message = json.loads(body)  # the same decoding work a dramatiq consumer does
        channel.basic_ack(method.delivery_tag)
        latencies.append(time.time() - message["args"][0]["payload"]["t0"])
        if len(latencies) >= n:
            break
    print(json.dumps({"end": time.time(), "latencies": latencies}), flush=True)
    conn.close()


def bench_baseline(n: int, timeout_s: float) -> dict:
    queue = f"bench_raw_{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    blocking = conn.channel()
    blocking.queue_declare(queue, durable=True)
    consumer = subprocess.Popen([sys.executable, __file__, "--baseline-consumer", queue, str(n)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError("baseline consumer did not start")
        channel = blocking._impl  # batched confirms, as RabbitmqBatchPublisher does
        pending: set[int] = set()
        selected = threading.Event()

        def on_confirm(frame):
            tag, multiple = frame.method.delivery_tag, frame.method.multiple
            pending.difference_update({t for t in pending if t <= tag} if multiple else {tag})
            if not pending:
                conn.add_callback_threadsafe(lambda: None)

        def on_selected(_frame):
            selected.set()
            conn.add_callback_threadsafe(lambda: None)

        channel.confirm_delivery(ack_nack_callback=on_confirm, callback=on_selected)
        while not selected.is_set():
            conn.process_data_events(time_limit=0.1)
        # The same message dicts as ours, built beforehand: the baseline measures
        # the transport, and only stamps t0 and encodes while timed.
        messages = [dramatiq.Message(queue_name=queue, actor_name="bench_apply",
                                     args=(to_message_arg(_envelope(k, 0.0)),), kwargs={},
                                     options={}) for k in range(n)]
        start = time.time()
        tag = 0
        for i in range(0, n, PUBLISH_BATCH):
            t0 = time.time()
            for message in messages[i : i + PUBLISH_BATCH]:
                message.args[0]["payload"]["t0"] = t0
                channel.basic_publish("", queue, message.encode(),
                                      pika.BasicProperties(delivery_mode=2), mandatory=True)
                tag += 1
                pending.add(tag)
            while pending:
                conn.process_data_events(time_limit=1.0)
        out, _ = consumer.communicate(timeout=timeout_s)
        result = json.loads(out.strip().splitlines()[-1])
        p50, p99 = _percentiles(result["latencies"])
        seconds = result["end"] - start
        return {"per_s": n / seconds, "p50_ms": p50, "p99_ms": p99, "seconds": round(seconds, 2)}
    finally:
        if consumer.poll() is None:
            consumer.kill()
        blocking.queue_delete(queue)
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (ours)")
    parser.add_argument("--threads", type=int, default=12, help="threads per worker (ours)")
    parser.add_argument("--timeout-s", type=float, default=90.0)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-consumer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return 0
    if args.baseline_consumer:
        run_baseline_consumer(args.baseline_consumer[0], int(args.baseline_consumer[1]))
        return 0

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    baseline = bench_baseline(args.messages, args.timeout_s)
    ours = bench_ours(admin, args.messages, args.workers, args.threads, args.timeout_s)
    admin.dispose()
    print(json.dumps({
        "name": "bus_end_to_end",
        "records_per_s": round(ours["per_s"], 1),
        "baseline_per_s": round(baseline["per_s"], 1),
        "ratio": round(ours["per_s"] / baseline["per_s"], 3),
        "p50_ms": ours["p50_ms"],
        "p99_ms": ours["p99_ms"],
        "baseline_p50_ms": baseline["p50_ms"],
        "baseline_p99_ms": baseline["p99_ms"],
        "messages": args.messages,
        "seconds": ours["seconds"],
        "baseline_seconds": baseline["seconds"],
        "workers": args.workers,
        "threads": args.threads,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
