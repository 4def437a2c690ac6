"""The outbox on real PostgreSQL: atomic with the state change; parallel relays publish
every row exactly once and keep per-key order while writers keep adding rows."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bus import outbox
from bus.db import create_state_engine
from bus.envelope import new_envelope
from bus.outbox import OutboxRelay, add_all_to_outbox, add_to_outbox, backlog, lag_seconds
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration

RELAYS = 4
KEYS = 25
ROWS = 1200
WRITE_BATCH = 20


@pytest.fixture
def engine(pg_url):
    engine = create_state_engine(pg_url, pool_size=RELAYS + 2)
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE account (id TEXT PRIMARY KEY, name TEXT NOT NULL)"))
    yield engine
    engine.dispose()


def env(key: str, seq: int):
    return new_envelope(domain="customer", kind="upserted", key=key, payload={"seq": seq},
                        source_system="legacy", source_version=seq)


class RecordingBroker:
    """Publishes batches in the order relays hand them over; fails some at random."""

    def __init__(self, failure_rate: float, seed: int) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, int, str]] = []  # (key, seq, message_id), broker order
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.failures = 0

    def __call__(self, rows) -> None:
        with self.lock:
            fail = self.rng.random() < self.failure_rate
        time.sleep(self.rng.random() * 0.004)  # let relays' batches overlap in time
        if fail:
            with self.lock:
                self.failures += 1
            raise ConnectionError("confirm timeout")
        with self.lock:
            self.log.extend((r.partition_key, r.envelope_dict()["payload"]["seq"], r.message_id)
                            for r in rows)


def test_the_message_rolls_back_with_the_state_change(engine):
    with Session(engine) as session:
        session.execute(text("INSERT INTO account VALUES ('C1', 'Acme')"))
        add_to_outbox(session, env("C1", 1), actor_name="sync_crm", queue_name="crm")
        session.rollback()
    with Session(engine) as session:
        session.execute(text("INSERT INTO account VALUES ('C1', 'Acme')"))
        session.commit()
    with Session(engine) as session, pytest.raises(IntegrityError):
        add_to_outbox(session, env("C1", 2), actor_name="sync_crm", queue_name="crm")
        session.execute(text("INSERT INTO account VALUES ('C1', 'duplicate')"))
        session.commit()
    assert backlog(engine) == 0
    with Session(engine) as session:
        session.execute(text("INSERT INTO account VALUES ('C2', 'Beta')"))
        add_to_outbox(session, env("C2", 1), actor_name="sync_crm", queue_name="crm")
        session.commit()
    assert backlog(engine) == 1
    assert 0.0 < lag_seconds(engine) < 60
    assert lag_seconds(engine, domain="order") == 0.0


def test_parallel_relays_publish_every_row_exactly_once_in_per_key_order(engine, monkeypatch):
    # Random failures make some rows look refused (quarantined); keep that short here.
    monkeypatch.setattr(outbox, "RELAY_QUARANTINE_S", 0.05)
    broker = RecordingBroker(failure_rate=0.1, seed=7)
    stop = threading.Event()
    relays = [OutboxRelay(engine, broker, name=f"relay-{i}", idle_poll_s=0.005,
                          backoff_min_s=0.005, backoff_max_s=0.02) for i in range(RELAYS)]
    threads = [threading.Thread(target=r.run_forever, args=(stop,), kwargs={"batch_size": 37})
               for r in relays]
    for t in threads:
        t.start()
    written: dict[str, list[int]] = defaultdict(list)
    rng = random.Random(3)
    try:
        # One writer adds rows while the relays run, so claims race with new rows.
        for start in range(0, ROWS, WRITE_BATCH):
            batch = []
            for seq in range(start, start + WRITE_BATCH):
                key = f"K{rng.randrange(KEYS):02d}"
                written[key].append(seq)
                batch.append(env(key, seq))
            with Session(engine) as session:
                add_all_to_outbox(session, batch, actor_name="sync_crm", queue_name="crm")
                session.commit()
        deadline = time.monotonic() + 60
        while backlog(engine) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert backlog(engine) == 0
    counts = Counter(mid for _, _, mid in broker.log)
    assert len(counts) == ROWS
    assert max(counts.values()) == 1, "a row was published twice"
    published: dict[str, list[int]] = defaultdict(list)
    for key, seq, _ in broker.log:
        published[key].append(seq)
    assert published == written, "per-key order was not kept"
    assert broker.failures > 0, "the failure path was not exercised"


def test_the_relay_commits_its_bookkeeping_without_waiting_for_the_wal_and_writers_wait(engine):
    """A lost sent mark only publishes its rows again (consumers absorb that), a lost
    attempt count is counted again: the relay's session commits asynchronously.  The
    writer's outbox rows commit as every other transaction does."""
    from sqlalchemy import event

    seen: list[str] = []

    def on_commit(conn):
        seen.append(conn.exec_driver_sql("SHOW synchronous_commit").scalar_one())

    with engine.begin() as conn:
        add_all_to_outbox(conn, [env("C1", 1), env("C2", 2)], actor_name="a", queue_name="q")
    relay = OutboxRelay(engine, lambda rows: None)
    failing = OutboxRelay(engine, lambda rows: (_ for _ in ()).throw(ConnectionError("down")))
    event.listen(engine, "commit", on_commit)
    try:
        with pytest.raises(outbox.OutboxPublishError):
            failing.run_once()
        assert relay.run_once() == 2
        with engine.begin() as conn:
            add_to_outbox(conn, env("C3", 3), actor_name="a", queue_name="q")
    finally:
        event.remove(engine, "commit", on_commit)
        relay.close()
        failing.close()
    # the relays' commits (each one's session setting, the failed attempt's count, the
    # sent mark), then the writer's
    assert seen[-1] == "on" and set(seen[:-1]) == {"off"} and len(seen) >= 3
    assert backlog(engine) == 1


def test_an_idle_relay_takes_no_connection_from_the_pool_per_round(engine):
    """Each round of an idle relay (every ``idle_poll_s``) used to check a connection out
    of the pool, which pings PostgreSQL first: a round trip the relay thread of a busy
    router waits for.  It keeps its own connection now, and opens another after an error."""
    from sqlalchemy import event

    checkouts = []
    event.listen(engine, "checkout", lambda *a: checkouts.append(1))
    relay = OutboxRelay(engine, lambda rows: None)
    try:
        for _ in range(5):
            assert relay.run_once() == 0
        assert len(checkouts) == 1
        with engine.begin() as conn:
            add_to_outbox(conn, env("C1", 1), actor_name="a", queue_name="q")
        checkouts.clear()
        assert relay.run_once() == 1
        assert checkouts == []
        relay._conn.invalidate()  # the server closed it, say
        assert relay.run_once() == 0  # a new one, no error
        assert len(checkouts) == 1
    finally:
        relay.close()


def test_a_published_batch_costs_two_statements_its_claim_and_its_mark(engine):
    """The claim reads the rows and, in the same statement, whether an earlier row of
    each key is held elsewhere (it was a second query per batch)."""
    from sqlalchemy import event

    statements: list[str] = []
    with engine.begin() as conn:
        add_all_to_outbox(conn, [env(f"C{n % 7}", n) for n in range(40)], actor_name="a",
                          queue_name="q")
    relay = OutboxRelay(engine, lambda rows: None)
    relay.run_once()  # opens the relay's connection
    with engine.begin() as conn:
        add_all_to_outbox(conn, [env(f"C{n % 7}", n) for n in range(40, 80)], actor_name="a",
                          queue_name="q")
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: statements.append(statement))
    try:
        assert relay.run_once() == 40
    finally:
        relay.close()
    assert len(statements) == 2, statements


def test_on_postgresql_a_quarantined_row_holds_back_only_its_key(engine):
    """The claim's per-key check in one statement (PostgreSQL's path) still keeps a key's
    later row behind its quarantined earlier one, while other keys go."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    published: list[tuple[str, int]] = []
    refused = {"P"}

    def publish(rows):
        if any(r.partition_key in refused for r in rows):
            raise ValueError("queue refuses P")
        published.extend((r.partition_key, r.envelope_dict()["source_version"]) for r in rows)

    with engine.begin() as conn:
        add_all_to_outbox(conn, [env("P", 1), env("X", 2), env("P", 3), env("Y", 4)],
                          actor_name="a", queue_name="q")
    relay = OutboxRelay(engine, publish)
    try:
        with pytest.raises(outbox.OutboxPublishError):
            relay.run_once()  # the whole batch fails
        assert relay.run_once() == 1  # P alone fails, X goes, P fails again: quarantined
        assert relay.run_once() == 1  # Y; P's second row waits behind the first
        assert relay.run_once() == 0
        assert published == [("X", 2), ("Y", 4)]
        refused.clear()
        with engine.begin() as conn:
            conn.execute(update(outbox.OutboxRecord.__table__).values(
                quarantined_until=datetime.now(UTC) - timedelta(seconds=1)))
        assert relay.run_once() == 2
    finally:
        relay.close()
    assert published == [("X", 2), ("Y", 4), ("P", 1), ("P", 3)]


def test_the_sent_mark_writes_no_column_an_index_is_keyed_on(engine):
    """PostgreSQL cannot update a row in place when the sent mark changes ``sent_at``
    (the unsent indexes' predicate names it), so the new row version gets an entry in
    every index it qualifies for; an index keyed on a column the mark writes was one more
    (``ix_outbox_sent_at``, until revision 0020).  ``scripts/bench/bus_sent_mark.py``
    counts the entries from the WAL."""
    from sqlalchemy import inspect

    written = {"sent_at", "attempts", "last_error"}
    keyed = {ix["name"]: set(ix["column_names"]) for ix in inspect(engine).get_indexes("outbox")}
    assert "ix_outbox_created_at" in keyed
    assert {name: cols & written for name, cols in keyed.items() if cols & written} == {}


def test_purge_finds_its_rows_through_the_created_at_index(engine):
    """``purge_sent`` bounds ``created_at`` (a row is created before it is sent), which
    the BRIN index serves; without the bound it could only scan the whole table."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    with engine.begin() as conn:
        add_all_to_outbox(conn, [env(f"C{n}", n) for n in range(10)], actor_name="a",
                          queue_name="q")
        old = datetime.now(UTC) - timedelta(days=9)
        t = outbox.OutboxRecord.__table__
        conn.execute(update(t).where(t.c.partition_key.in_(["C1", "C2"]))
                     .values(created_at=old, sent_at=old, settled_at=old))
    plans: list[str] = []
    from sqlalchemy import event

    def explain(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT OUTBOX.ID"):
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            plans.append("\n".join(r[0] for r in cursor.fetchall()))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        assert outbox.purge_sent(engine, timedelta(days=7)) == 2
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    assert plans and "ix_outbox_created_at" in plans[0], plans
