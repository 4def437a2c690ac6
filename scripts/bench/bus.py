"""Bus throughput and latency, end to end, against plain dramatiq and raw pika in one run.

    .venv/bin/python scripts/bench/bus.py [--messages 10000] [--workers 2] [--threads 12]
        [--only batch,one,dramatiq,pika,pika_multi]

Prints one JSON line per figure (``name``, ``records_per_s``, ``p50_ms``, ``p99_ms``,
``seconds``), then a summary line ``bus_end_to_end`` with the ratios the issue names:
``ratio_to_dramatiq`` (>= 1.0 wanted) and ``ratio_to_pika_multi_ack``, plus the load
average before and after.

* ``batch`` (ours, the channel consumers' path): a producer commits envelopes to the
  outbox (PostgreSQL, 100 per transaction) -> ``OutboxRelay`` with
  ``RabbitmqBatchPublisher`` (confirmed batches) -> RabbitMQ -> worker processes with
  our middleware (``bus.brokers.setup``) and the batch consumer (``bus.batch``): up to
  200 deliveries, the envelopes validated, every inbox claim and effect row in one
  PostgreSQL transaction, one ``basic_ack(multiple=True)``.  Exactly once in effect:
  the run fails unless every message has exactly one effect row and one inbox row.
* ``one`` (ours, the ERP writers' path): the same, consumed one message per
  transaction by dramatiq's worker threads with ``bus.inbox.InboxMiddleware``.
* ``dramatiq``: plain dramatiq, the same broker (``CoexistRabbitmqBroker``, which
  only adds confirms and TTL-free dead letters to dramatiq's; dramatiq's default
  middleware, not ours), the same messages published by the same publisher, a trivial actor
  (it counts), the same worker processes and threads.  No effect, no inbox.
* ``pika`` / ``pika_multi``: raw pika, the same message bytes, a durable queue,
  publisher confirms per batch, a consumer process with manual acks: one ack per
  message, or one multiple ack per 50 deliveries.

All are bursts: the producer offers everything at once, so latencies include
queueing behind the backlog.  Latency: outbox commit (ours) or publish (baselines)
to effect commit (ours) or consumption.  PostgreSQL gets a private database (created and
dropped); RabbitMQ gets private queue names in the default vhost (deleted).
Bounded: each phase gives up after ``--timeout-s``.
Environment: ``COEXIST_BENCH_PG_URL`` (admin URL), ``COEXIST_BENCH_AMQP_URL``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
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
from sqlalchemy import (  # noqa: E402
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
from bus.outbox import OutboxRelay, add_all_to_outbox, backlog  # noqa: E402
from bus.publish import RabbitmqBatchPublisher, make_publisher  # noqa: E402
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


#: Where ``--profile`` writes py-spy profiles of our workers (``None``: no profiling).
PROFILE_DIR: Path | None = None
PROFILE_SECONDS = 4
#: ``--profile-mode``: "gil" (only samples holding the GIL: CPU) or "idle" (every thread's
#: stack, waiting included: where the wall goes), each thread apart (``--threads``).
PROFILE_MODE = "gil"


def _cpu_s(pids) -> float:
    """User + system CPU seconds the processes ``pids`` used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _server_cpu_s(comm: str) -> float:
    """CPU seconds so far of every process of this host whose name starts with ``comm``
    (``postgres``, ``beam.smp``: RabbitMQ); includes other users' work, so it is an upper
    bound on the bench's share."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip().startswith(comm):
                    pids.append(int(entry.name))
    return _cpu_s(pids)


def _postgres_cpu_s() -> float:
    return _server_cpu_s("postgres")


def _rabbitmq_cpu_s() -> float:
    return _server_cpu_s("beam.smp")


def _profile(pids, name: str) -> list[subprocess.Popen]:
    """py-spy (``PROFILE_MODE``) on each of ``pids`` for ``PROFILE_SECONDS``."""
    if PROFILE_DIR is None:
        return []
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
         f"--{PROFILE_MODE}", "--threads", "-d", str(PROFILE_SECONDS), "-r", "250", "-f",
         "raw", "-o", str(PROFILE_DIR / f"{name}-{PROFILE_MODE}-{pid}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]


def _percentiles(latencies_s: list[float]) -> tuple[float, float]:
    if not latencies_s:
        return float("nan"), float("nan")
    q = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return round(q[49] * 1000, 1), round(q[98] * 1000, 1)


# -- ours -------------------------------------------------------------------------------


def run_worker(state_url: str, queue: str, threads: int, mode: str = "one") -> None:
    """A worker process: our broker, our middleware, one actor whose effect commits with
    its inbox claim; ``mode="batch"``: consumed by the batch consumer."""
    engine = create_state_engine(state_url, pool_size=threads + 2, pool_pre_ping=False)
    broker = make_broker(AMQP_URL)
    setup(broker, store=ExceptionStore(engine))
    dramatiq.set_broker(broker)

    def apply_many(envs: list[dict]) -> None:
        envelopes = [from_dict(env) for env in envs]
        t1 = time.time()
        inbox.current().execute(insert(EFFECTS), [
            {"message_id": e.message_id, "t0": e.payload["t0"], "t1": t1} for e in envelopes])

    options = {"batch": apply_many} if mode == "batch" else {}

    @dramatiq.actor(queue_name=queue, actor_name="bench_apply", inbox="bench", **options)
    def bench_apply(env: dict) -> None:
        envelope = from_dict(env)
        inbox.current().execute(insert(EFFECTS).values(
            message_id=envelope.message_id, t0=envelope.payload["t0"], t1=time.time()))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    print("ready", flush=True)
    stop.wait()
    worker.stop(timeout=5000)
    broker.close()


def bench_ours(admin, n: int, workers: int, threads: int, timeout_s: float,
               mode: str = "one", drain: bool = False) -> dict:
    """``drain``: fill the queue through outbox and relay first, then start the workers
    and time only their consumption (first to last effect)."""
    name = f"coexist_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    state_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    queue = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_state_engine(state_url, pool_pre_ping=False)
    procs: list[subprocess.Popen] = []
    spies: list[subprocess.Popen] = []
    cpu0: list[float] = []
    broker = make_broker(AMQP_URL)
    try:
        upgrade_schema(engine)
        METADATA.create_all(engine)
        broker.declare_queue(queue)

        def start_workers() -> None:
            for _ in range(workers):
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", state_url, queue, str(threads), mode],
                    stdout=subprocess.PIPE, text=True, cwd=ROOT))
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("bench worker did not start")
            cpu0.append(_cpu_s(p.pid for p in procs))
            spies.extend(_profile([p.pid for p in procs], f"{mode}{'-drain' if drain else ''}"))

        if not drain:
            start_workers()
        process_cpu, pg_cpu, mq_cpu = time.process_time(), _postgres_cpu_s(), _rabbitmq_cpu_s()
        stop = threading.Event()
        relay = OutboxRelay(engine, RabbitmqBatchPublisher(broker), idle_poll_s=0.01)
        relay_cpu: list[float] = []

        def relay_run() -> None:  # the relay thread's own CPU (time.thread_time)
            cpu_start = time.thread_time()
            try:
                relay.run_forever(stop, PUBLISH_BATCH)
            finally:
                relay_cpu.append(time.thread_time() - cpu_start)

        relay_thread = threading.Thread(target=relay_run, daemon=True)
        # Built beforehand, as the baselines' messages are: the application's cost of making
        # an envelope is not the bus's; committing it to the outbox is, and is timed.
        envelopes = [_envelope(k, 0.0) for k in range(n)]
        own_spies = _profile([os.getpid()], f"{mode}{'-drain' if drain else ''}-producer")
        start = time.time()
        relay_thread.start()
        producer_cpu = time.thread_time()
        for i in range(0, n, PRODUCER_TX_SIZE):
            t0 = time.time()
            envs = envelopes[i : i + PRODUCER_TX_SIZE]
            for env in envs:
                env.payload["t0"] = t0
            with engine.begin() as conn:
                add_all_to_outbox(conn, envs, actor_name="bench_apply", queue_name=queue)
            relay.wake()
        produced = time.time()
        producer_cpu = time.thread_time() - producer_cpu
        relayed = None
        if drain:
            while backlog(engine):
                time.sleep(0.05)
            relayed = time.time()
            start_workers()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if relayed is None and backlog(engine) == 0:
                relayed = time.time()
            with engine.connect() as conn:
                done = conn.execute(select(func.count()).select_from(EFFECTS)).scalar_one()
            if done >= n:
                break
            time.sleep(0.05)
        stop.set()
        relay_thread.join(timeout=10)
        with engine.connect() as conn:
            rows = conn.execute(select(EFFECTS.c.t0, EFFECTS.c.t1)).all()
        if len(rows) < n:
            raise RuntimeError(f"ours: only {len(rows)} of {n} effects within {timeout_s} s")
        cpu = _cpu_s(p.pid for p in procs) - cpu0[0]
        for spy in spies + own_spies:
            spy.wait(timeout=60)
        for p in procs:  # settle: nothing held unacked may be applied after the count
            p.terminate()
            p.wait(timeout=30)
        with engine.connect() as conn:
            effects, distinct = conn.execute(select(
                func.count(), func.count(EFFECTS.c.message_id.distinct()))).one()
            claims = conn.execute(select(func.count()).select_from(
                inbox.InboxRecord.__table__)).scalar_one()
        if not effects == distinct == claims == n:
            raise RuntimeError(f"ours: not exactly once: {effects} effects of {distinct} "
                               f"messages, {claims} inbox rows, {n} sent")
        end = max(t1 for _, t1 in rows)
        p50, p99 = _percentiles([t1 - t0 for t0, t1 in rows])
        if drain:
            start, p50, p99 = min(t1 for _, t1 in rows), None, None
        return {"per_s": n / (end - start), "p50_ms": p50, "p99_ms": p99,
                "seconds": round(end - start, 2), "exactly_once": True,
                "worker_cpu_ms_per_msg": round(cpu * 1000 / n, 3),
                # When the producer had committed everything, and the relay published it.
                "produced_s": round(produced - start, 2),
                "relayed_s": round((relayed or end) - start, 2),
                # The bench process: its producer loop (outbox commits, main thread) and
                # the relay thread, CPU per message, and the PostgreSQL server's CPU.
                "producer_cpu_ms_per_msg": round(producer_cpu * 1000 / n, 3),
                "relay_cpu_ms_per_msg": round(relay_cpu[0] * 1000 / n, 3) if relay_cpu
                else None,
                "bench_process_cpu_ms_per_msg": round(
                    (time.process_time() - process_cpu) * 1000 / n, 3),
                "postgres_cpu_ms_per_msg": round(
                    (_postgres_cpu_s() - pg_cpu) * 1000 / n, 3),
                "rabbitmq_cpu_ms_per_msg": round(
                    (_rabbitmq_cpu_s() - mq_cpu) * 1000 / n, 3)}
    finally:
        for p in procs:
            if p.poll() is None:
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


# -- a burst beside a busy capture thread (the router's shape) ----------------------------

#: Rows per burst chunk (the router's capture batch) and the CPU the "capture" spends on
#: each chunk before committing it, holding the GIL as translation and routing do.
BURST_CHUNK = 500
BURST_CAPTURE_CPU_S = 0.4


def _burn(seconds: float) -> None:
    """Pure-Python CPU work (holds the GIL but for the interpreter's switches)."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(2000):
            x += i * i


def bench_burst(admin, chunks: int, timeout_s: float) -> dict:
    """The router's shape: one thread captures (CPU-bound, ``BURST_CAPTURE_CPU_S`` per
    chunk) and commits ``BURST_CHUNK`` outbox rows at a time, waking the relay, which runs
    beside it in the same process with its defaults (``OutboxRelay``, as ``coexist
    router`` runs it) and publishes to RabbitMQ with confirms.  Per chunk: seconds from
    its commit until its last row was marked sent, and the relay's batches."""
    name = f"coexist_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    state_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    queue = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_state_engine(state_url)
    broker = make_broker(AMQP_URL)
    try:
        upgrade_schema(engine)
        broker.declare_queue(queue)
        publisher = RabbitmqBatchPublisher(broker)
        sizes: list[int] = []

        def publish(rows) -> None:
            sizes.append(len(rows))
            publisher(rows)

        relay = OutboxRelay(engine, publish)
        stop = threading.Event()
        relay_cpu: list[float] = []

        def relay_run() -> None:
            cpu_start = time.thread_time()
            try:
                relay.run_forever(stop)
            finally:
                relay_cpu.append(time.thread_time() - cpu_start)

        thread = threading.Thread(target=relay_run, daemon=True)
        thread.start()
        commits: list[tuple[int, float]] = []  # (last id of the chunk, commit time)
        n = 0
        start = time.time()
        for _ in range(chunks):
            _burn(BURST_CAPTURE_CPU_S)
            envs = [_envelope(n + k, time.time()) for k in range(BURST_CHUNK)]
            n += BURST_CHUNK
            with engine.begin() as conn:
                add_all_to_outbox(conn, envs, actor_name="bench_apply", queue_name=queue)
            commits.append((n, time.time()))
            relay.wake()
        deadline = time.time() + timeout_s
        while backlog(engine) and time.time() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(timeout=10)
        if backlog(engine):
            raise RuntimeError(f"burst: {backlog(engine)} rows unsent after {timeout_s} s")
        with engine.connect() as conn:
            sent = [r[0].timestamp() for r in conn.execute(text(
                "SELECT sent_at FROM outbox ORDER BY id"))]
        lags = [max(sent[last - BURST_CHUNK:last]) - at for last, at in commits]
        return {"per_s": n / (max(sent) - start), "p50_ms": None, "p99_ms": None,
                "seconds": round(max(sent) - start, 2), "messages": n,
                "chunk_published_after_commit_s": [round(x, 3) for x in lags],
                "relay_batches": len(sizes), "relay_cpu_ms_per_msg":
                    round(relay_cpu[0] * 1000 / n, 3) if relay_cpu else None}
    finally:
        for q in broker.queue_names(queue):
            with contextlib.suppress(Exception):  # cleanup is best effort
                broker.channel.queue_delete(q)
        broker.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- baseline: raw pika -----------------------------------------------------------------


#: Deliveries per multiple ack of the ``pika_multi`` baseline.
MULTI_ACK_EVERY = 50


def run_baseline_consumer(queue: str, n: int, multi: bool = False) -> None:
    """Consume ``n`` messages with manual acks (one per message, or one multiple ack per
    ``MULTI_ACK_EVERY``); print latencies as JSON."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=200)
    latencies: list[float] = []
    print("ready", flush=True)
    for method, _props, body in channel.consume(queue, auto_ack=False):
        message = json.loads(body)  # the same decoding work a dramatiq consumer does
        latencies.append(time.time() - message["args"][0]["payload"]["t0"])
        if not multi:
            channel.basic_ack(method.delivery_tag)
        elif len(latencies) % MULTI_ACK_EVERY == 0 or len(latencies) >= n:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if len(latencies) >= n:
            break
    print(json.dumps({"end": time.time(), "latencies": latencies}), flush=True)
    conn.close()


def bench_baseline(n: int, timeout_s: float, multi: bool = False) -> dict:
    queue = f"bench_raw_{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    blocking = conn.channel()
    blocking.queue_declare(queue, durable=True)
    consumer = subprocess.Popen([sys.executable, __file__, "--baseline-consumer", queue, str(n),
                                 "multi" if multi else "one"],
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


# -- baseline: plain dramatiq -----------------------------------------------------------


def run_plain_worker(queue: str, threads: int, counter, first, last) -> None:
    """A plain dramatiq worker process (spawned): the same broker class, dramatiq's default
    middleware (not ours: no ``setup``), a trivial actor that counts."""
    broker = make_broker(AMQP_URL)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=queue, actor_name="bench_apply")
    def bench_apply(env: dict) -> None:
        with counter.get_lock():
            counter.value += 1
            if not first.value:
                first.value = time.time()
        last.value = time.time()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    stop.wait()
    worker.stop(timeout=5000)
    broker.close()


def bench_plain_dramatiq(n: int, workers: int, threads: int, timeout_s: float,
                         drain: bool = False) -> dict:
    """``drain``: publish everything first, then start the workers and time only their
    consumption (first to last message handled)."""
    queue = f"bench_plain_{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    counter, first, last = ctx.Value("l", 0), ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=run_plain_worker, args=(queue, threads, counter, first, last))
             for _ in range(workers)]
    broker = make_broker(AMQP_URL)  # ours only to publish: the same confirmed publisher
    try:
        broker.declare_queue(queue)
        if not drain:
            for p in procs:
                p.start()
            time.sleep(3)  # the workers connect and start consuming
        messages = [dramatiq.Message(queue_name=queue, actor_name="bench_apply",
                                     args=(to_message_arg(_envelope(k, 0.0)),), kwargs={},
                                     options={}) for k in range(n)]
        publish = make_publisher(broker)
        mq_cpu = _rabbitmq_cpu_s()
        start = time.time()
        publisher_cpu = time.thread_time()
        for i in range(0, n, PUBLISH_BATCH):
            publish(messages[i : i + PUBLISH_BATCH])
        publisher_cpu = time.thread_time() - publisher_cpu
        if drain:
            for p in procs:
                p.start()
        deadline = time.time() + timeout_s
        while not first.value and time.time() < deadline:
            time.sleep(0.01)
        cpu0 = _cpu_s(p.pid for p in procs)
        while counter.value < n and time.time() < deadline:
            time.sleep(0.05)
        if counter.value < n:
            raise RuntimeError(f"dramatiq: only {counter.value} of {n} within {timeout_s} s")
        cpu = _cpu_s(p.pid for p in procs) - cpu0
        seconds = last.value - (first.value if drain else start)
        return {"per_s": n / seconds, "p50_ms": None, "p99_ms": None,
                "seconds": round(seconds, 2),
                "worker_cpu_ms_per_msg": round(cpu * 1000 / n, 3),
                "relay_cpu_ms_per_msg": round(publisher_cpu * 1000 / n, 3),
                "rabbitmq_cpu_ms_per_msg": round((_rabbitmq_cpu_s() - mq_cpu) * 1000 / n, 3)}
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(timeout=15)
        for q in broker.queue_names(queue):
            with contextlib.suppress(Exception):  # cleanup is best effort
                broker.channel.queue_delete(q)
        broker.close()


FIGURES = ("pika", "pika_multi", "dramatiq", "one", "batch",
           "drain_dramatiq", "drain_one", "drain_batch", "burst")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (ours)")
    parser.add_argument("--threads", type=int, default=12, help="threads per worker (ours)")
    parser.add_argument("--timeout-s", type=float, default=90.0)
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated figures to run, of {', '.join(FIGURES)}")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy profiles (raw format) of our workers and the bench "
                        "process (producer and relay threads) into DIR")
    parser.add_argument("--profile-mode", choices=("gil", "idle"), default="gil",
                        help="gil: samples holding the GIL (CPU); idle: every thread, "
                        "waiting included (wall)")
    parser.add_argument("--profile-seconds", type=int, default=4)
    parser.add_argument("--burst-chunks", type=int, default=6,
                        help=f"burst: chunks of {BURST_CHUNK} rows")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-consumer", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker[0], args.worker[1], int(args.worker[2]), args.worker[3])
        return 0
    if args.baseline_consumer:
        run_baseline_consumer(args.baseline_consumer[0], int(args.baseline_consumer[1]),
                              args.baseline_consumer[2] == "multi")
        return 0

    global PROFILE_DIR, PROFILE_MODE, PROFILE_SECONDS
    PROFILE_DIR, PROFILE_MODE = args.profile, args.profile_mode
    PROFILE_SECONDS = args.profile_seconds
    wanted = [f for f in args.only.split(",") if f]
    unknown = sorted(set(wanted) - set(FIGURES))
    if unknown:
        parser.error(f"--only: unknown figure(s) {', '.join(unknown)}; known: "
                     f"{', '.join(FIGURES)}")
    load_before = os.getloadavg()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    n, w, t, timeout = args.messages, args.workers, args.threads, args.timeout_s
    runs = {
        "pika": lambda: bench_baseline(n, timeout),
        "pika_multi": lambda: bench_baseline(n, timeout, multi=True),
        "dramatiq": lambda: bench_plain_dramatiq(n, w, t, timeout),
        "one": lambda: bench_ours(admin, n, w, t, timeout, "one"),
        "batch": lambda: bench_ours(admin, n, w, t, timeout, "batch"),
        "drain_dramatiq": lambda: bench_plain_dramatiq(n, w, t, timeout, drain=True),
        "drain_one": lambda: bench_ours(admin, n, w, t, timeout, "one", drain=True),
        "drain_batch": lambda: bench_ours(admin, n, w, t, timeout, "batch", drain=True),
        "burst": lambda: bench_burst(admin, args.burst_chunks, timeout),
    }
    results: dict[str, dict] = {}
    for name in FIGURES:
        if name not in wanted:
            continue
        r = results[name] = runs[name]()
        print(json.dumps({"name": f"bus_{name}", "records_per_s": round(r["per_s"], 1),
                          "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                          "seconds": r["seconds"], "messages": r.get("messages", n),
                          **{k: r[k] for k in ("produced_s", "relayed_s",
                                               "worker_cpu_ms_per_msg",
                                               "producer_cpu_ms_per_msg",
                                               "relay_cpu_ms_per_msg",
                                               "bench_process_cpu_ms_per_msg",
                                               "postgres_cpu_ms_per_msg",
                                               "rabbitmq_cpu_ms_per_msg",
                                               "chunk_published_after_commit_s",
                                               "relay_batches") if k in r},
                          "loadavg": [round(x, 2) for x in os.getloadavg()],
                          **({"exactly_once": True} if r.get("exactly_once") else {})}),
              flush=True)
    admin.dispose()

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[a]["per_s"] / results[b]["per_s"], 3)
        return None

    print(json.dumps({
        "name": "bus_end_to_end",
        "records_per_s": round(results["batch"]["per_s"], 1) if "batch" in results else None,
        "target_per_s": 2500,
        "ratio_to_dramatiq": ratio("batch", "dramatiq"),
        "ratio_to_pika_multi_ack": ratio("batch", "pika_multi"),
        "ratio_to_pika": ratio("batch", "pika"),
        "one_ratio_to_dramatiq": ratio("one", "dramatiq"),
        "batch_over_one": ratio("batch", "one"),
        # Consumption alone (queue filled first): the worker side against plain dramatiq.
        "drain_batch_per_s": (round(results["drain_batch"]["per_s"], 1)
                              if "drain_batch" in results else None),
        "drain_ratio_to_dramatiq": ratio("drain_batch", "drain_dramatiq"),
        "drain_one_ratio_to_dramatiq": ratio("drain_one", "drain_dramatiq"),
        "messages": n, "workers": w, "threads": t,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
