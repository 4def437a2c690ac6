"""The bus end to end on the embedded default: state change + outbox -> relay -> SQLite
broker -> actor with correlation, the inbox middleware and a version check -> effect, every
message delivered twice, one of them undecodable."""

from __future__ import annotations

import io
import json
import logging
import time

import dramatiq
import pytest
from sqlalchemy import text, update
from sqlmodel import Session

from bus import inbox
from bus.brokers import make_broker, setup
from bus.context import JsonLogFormatter
from bus.db import create_state_engine
from bus.envelope import from_dict, new_envelope
from bus.exception_store import ExceptionStore
from bus.inbox import DUPLICATES
from bus.outbox import OutboxRecord, OutboxRelay, add_to_outbox, backlog
from bus.publish import make_publisher
from workers.migrate import upgrade as upgrade_schema

KEYS = 8
VERSIONS = 6


@pytest.fixture
def flow(tmp_path):
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    with state.begin() as conn:
        conn.execute(text("CREATE TABLE account (id TEXT PRIMARY KEY, version INT)"))
        conn.execute(text("CREATE TABLE applied (message_id TEXT NOT NULL)"))
    broker = make_broker(None, sqlite_path=tmp_path / "bus.db", poll_interval_ms=5,
                         middleware=[])
    setup(broker, store=ExceptionStore(state), retry_options={"max_retries": 0})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("coexist.test.flow")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    failures_stream = io.StringIO()
    failures_handler = logging.StreamHandler(failures_stream)
    failures_handler.setFormatter(JsonLogFormatter())
    failure_logger = logging.getLogger("bus.retry")
    failure_logger.addHandler(failures_handler)

    @dramatiq.actor(broker=broker, queue_name="crm", actor_name="apply_account", inbox="crm")
    def apply_account(envelope_dict):
        env = from_dict(envelope_dict)
        conn = inbox.current()  # commits with the inbox claim; a duplicate never gets here
        logger.info("applying %s v%s", env.key, env.source_version)
        conn.execute(text("INSERT INTO applied VALUES (:m)"), {"m": env.message_id})
        # The version check: a late older version never overwrites a newer one.
        conn.execute(text("INSERT INTO account VALUES (:k, :v) ON CONFLICT (id) DO UPDATE "
                          "SET version = excluded.version WHERE excluded.version > version"),
                     {"k": env.key, "v": env.source_version})

    yield state, broker, stream, failures_stream
    logger.removeHandler(handler)
    failure_logger.removeHandler(failures_handler)
    broker.close()
    state.dispose()


def test_every_message_is_applied_once_in_the_end_state_and_bad_input_is_recorded(flow):
    state, broker, stream, failures_stream = flow
    produced = []
    for version in range(1, VERSIONS + 1):
        for k in range(KEYS):
            env = new_envelope(domain="customer", kind="upserted", key=f"C{k}",
                               payload={"v": version}, source_system="legacy",
                               source_version=version, correlation_id=f"corr-C{k}")
            with Session(state) as session:  # the state change and its message, together
                session.execute(text("INSERT INTO account VALUES (:k, 0) "
                                     "ON CONFLICT (id) DO NOTHING"), {"k": f"C{k}"})
                add_to_outbox(session, env, actor_name="apply_account", queue_name="crm")
                session.commit()
            produced.append(env)
    relay = OutboxRelay(state, make_publisher(broker))
    assert relay.run_once() == len(produced)
    t = OutboxRecord.__table__
    with state.begin() as conn:  # as if the relay crashed before marking: publish all again
        conn.execute(update(t).values(sent_at=None))
    assert relay.run_once() == len(produced)
    assert backlog(state) == 0
    broker.enqueue(dramatiq.Message(queue_name="crm", actor_name="apply_account",
                                    args=({"message_id": "bad", "key": 7},), kwargs={},
                                    options={}))
    duplicates_before = DUPLICATES.labels(consumer="crm")._value.get()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        broker.join("crm", timeout=20_000)
        deadline = time.monotonic() + 5
        store = ExceptionStore(state)
        while store.open_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    with state.connect() as conn:
        applied = [r[0] for r in conn.execute(text("SELECT message_id FROM applied"))]
        accounts = dict(conn.execute(text("SELECT id, version FROM account")).all())
    assert sorted(applied) == sorted(e.message_id for e in produced)
    assert accounts == {f"C{k}": VERSIONS for k in range(KEYS)}
    assert DUPLICATES.labels(consumer="crm")._value.get() - duplicates_before == len(produced)
    (bad,) = ExceptionStore(state).list()
    assert bad.failure_class == "undecodable"
    assert "field key=7" in bad.error_message
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == len(produced)
    assert all(line["correlation_id"] == f"corr-{line['message'].split()[1]}" for line in lines)
    # The failure middleware logs under the failed message's correlation too.
    failure_lines = [json.loads(line) for line in failures_stream.getvalue().splitlines()]
    assert failure_lines and all(line["correlation_id"] == "bad" for line in failure_lines)
