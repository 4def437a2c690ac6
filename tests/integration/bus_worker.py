"""A worker program for the bus failure tests: run as a subprocess, killed at will.

    python -m tests.integration.bus_worker --state-url URL (--broker AMQP_URL | --sqlite PATH)
        [--queue-type classic|quorum] [--threads 8] [--min-backoff-ms 50] [--max-retries 3]

Its actors use the production middleware (``bus.brokers.setup``) the way coexist's
consumers do, minus the ERP: ``apply_effect`` declares ``inbox=``, so
``bus.inbox.InboxMiddleware`` claims the message and the actor writes its effect
through ``bus.inbox.current()`` in the same transaction; ``apply_batch`` (queue
``<queue>_batch``) is consumed by the batch consumer (``bus.batch``), one transaction
of claims and effects per batch.  ``effects`` has no unique constraint on purpose, so
a message applied twice shows up as two rows.  It prints ``ready`` once consuming
and stops cleanly on SIGTERM (kill -9 is the point of the tests, though).  With
``--hold-batch-s S`` the batch handler prints ``holding N`` after writing the effects
of a batch of N > 1 and sleeps S seconds before its commit: the moment a crash test
kills it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import dramatiq
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from bus import inbox
from bus.brokers import make_broker, setup
from bus.db import create_state_engine
from bus.dlq_drain import make_drain
from bus.envelope import from_dict, new_envelope, to_message_arg
from bus.errors import BusinessError, TechnicalError
from bus.exception_store import ExceptionStore
from workers.migrate import upgrade as upgrade_schema

QUEUE = "bus_test"
CONSUMER = "bus_worker"
BATCH_CONSUMER = "bus_worker_batch"


#: Set once "ready" is printed.
READY = threading.Event()
PRINT_LOCK = threading.Lock()


def batch_queue(queue: str = QUEUE) -> str:
    return f"{queue}_batch"

METADATA = MetaData()
EFFECTS = Table(
    "bus_test_effects", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False),  # NOT unique: duplicates must show
    Column("n", Integer, nullable=False),
)
ATTEMPTS = Table(
    "bus_test_attempts", METADATA,
    Column("message_id", String(128), primary_key=True),
    Column("attempts", Integer, nullable=False),
)


def prepare_state(engine: Engine) -> None:
    """Create the bus tables and this program's tables (run by the test, before any worker)."""
    upgrade_schema(engine)
    METADATA.create_all(engine)


def message_for(actor_name: str, n: int, queue: str = QUEUE, **payload) -> dramatiq.Message:
    """A dramatiq message carrying a valid envelope, as the outbox relay would publish it."""
    env = new_envelope(domain="test", kind="tick", key=f"k{n % 97}", payload={"n": n, **payload},
                       source_system="test", source_version=n)
    return dramatiq.Message(queue_name=queue, actor_name=actor_name,
                            args=(to_message_arg(env),), kwargs={}, options={},
                            message_id=env.message_id)


def effect_counts(engine: Engine) -> tuple[int, int]:
    """(effect rows, distinct messages with an effect)."""
    with engine.connect() as conn:
        rows, distinct = conn.execute(
            select(func.count(), func.count(EFFECTS.c.message_id.distinct()))
        ).one()
    return int(rows), int(distinct)


def declare_actors(engine: Engine, queue: str = QUEUE, hold_batch_s: float = 0.0) -> None:
    def apply(env: dict) -> None:
        envelope = from_dict(env)
        inbox.current().execute(insert(EFFECTS).values(message_id=envelope.message_id,
                                                       n=envelope.payload["n"]))

    def count_attempt(message_id: str) -> int:
        with engine.begin() as conn:
            stmt = postgresql.insert(ATTEMPTS).values(message_id=message_id, attempts=1)
            if engine.dialect.name == "postgresql":
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["message_id"], set_={"attempts": ATTEMPTS.c.attempts + 1}))
            else:
                done = conn.execute(update(ATTEMPTS).where(ATTEMPTS.c.message_id == message_id)
                                    .values(attempts=ATTEMPTS.c.attempts + 1)).rowcount
                if not done:
                    conn.execute(insert(ATTEMPTS).values(message_id=message_id, attempts=1))
            return conn.execute(select(ATTEMPTS.c.attempts)
                                .where(ATTEMPTS.c.message_id == message_id)).scalar_one()

    def apply_many(envs: list[dict]) -> None:
        envelopes = [from_dict(env) for env in envs]
        for envelope in envelopes:
            if envelope.payload.get("poison"):
                raise BusinessError(f"poisoned message {envelope.key}")
            fail_times = envelope.payload.get("fail_times", 0)
            if fail_times and count_attempt(envelope.message_id) <= fail_times:
                raise TechnicalError("cloud ERP answered 503")
        inbox.current().execute(insert(EFFECTS), [
            {"message_id": e.message_id, "n": e.payload["n"]} for e in envelopes])
        if hold_batch_s and len(envelopes) > 1:  # a batch, not a lone delivery
            READY.wait()  # "ready" is the first line the test reads
            with PRINT_LOCK:  # two batch consumer threads may hold at once: whole lines
                sys.stdout.write(f"holding {len(envelopes)}\n")
                sys.stdout.flush()
            time.sleep(hold_batch_s)

    @dramatiq.actor(queue_name=batch_queue(queue), actor_name="apply_batch",
                    inbox=BATCH_CONSUMER, batch=apply_many)
    def apply_batch(env: dict) -> None:
        apply_many([env])

    @dramatiq.actor(queue_name=queue, actor_name="apply_effect", inbox=CONSUMER)
    def apply_effect(env: dict) -> None:
        apply(env)

    @dramatiq.actor(queue_name=queue, actor_name="fails_then_succeeds", inbox=CONSUMER)
    def fails_then_succeeds(env: dict) -> None:
        envelope = from_dict(env)
        if count_attempt(envelope.message_id) <= envelope.payload["fail_times"]:
            raise TechnicalError("cloud ERP answered 503")
        apply(env)

    @dramatiq.actor(queue_name=queue, actor_name="business_failure")
    def business_failure(env: dict) -> None:
        envelope = from_dict(env)
        count_attempt(envelope.message_id)
        raise BusinessError(f"unknown customer {envelope.key}")

    @dramatiq.actor(queue_name=queue, actor_name="always_fails")
    def always_fails(env: dict) -> None:
        envelope = from_dict(env)
        count_attempt(envelope.message_id)
        raise TechnicalError("cloud ERP unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-url", required=True)
    parser.add_argument("--broker")
    parser.add_argument("--sqlite")
    parser.add_argument("--queue", default=QUEUE)
    parser.add_argument("--queue-type", default="classic")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--min-backoff-ms", type=int, default=50)
    parser.add_argument("--max-backoff-ms", type=int, default=200)
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--lease-ms", type=int, default=2000)
    parser.add_argument("--hold-batch-s", type=float, default=0.0)
    args = parser.parse_args(argv)

    # No pre-ping: a round trip per message; a dropped connection fails the message, which
    # the failure middleware retries.
    engine = create_state_engine(args.state_url, pool_size=args.threads + 2, pool_pre_ping=False)
    options = {"lease_ms": args.lease_ms, "poll_interval_ms": 10} if not args.broker else {}
    broker = make_broker(args.broker, sqlite_path=args.sqlite, queue_type=args.queue_type,
                         **options)
    store = ExceptionStore(engine)
    setup(broker, store=store, retry_options={
        "min_backoff_ms": args.min_backoff_ms, "max_backoff_ms": args.max_backoff_ms,
        "max_retries": args.max_retries, "redelivery_pause_ms": 50,
    })
    dramatiq.set_broker(broker)
    declare_actors(engine, args.queue, args.hold_batch_s)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=args.threads, worker_timeout=100)
    worker.start()
    drain = make_drain(broker, store, [args.queue] if args.broker else None)
    drainer = threading.Thread(target=drain.run_forever, args=(stop, 0.3), daemon=True)
    drainer.start()
    print("ready", flush=True)
    READY.set()
    stop.wait()
    worker.stop(timeout=10_000)
    broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
