"""Change capture on PostgreSQL: triggers, and commit order under concurrent writers.

The classic pitfall: transaction A takes sequence value 1, transaction B takes 2
and commits first; a reader checkpoints 2, then A commits 1 behind the
checkpoint and the change is skipped for good.  The writer lock taken by the
statement triggers makes sequence order equal commit order; the unlocked
variant is tested too, to show the test catches the skip.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import text

from bus.db import create_state_engine
from tests.unit.test_cdc import DECODERS, META, SPECS
from workers.legacy_erp.capture import install_capture
from workers.legacy_erp.cdc import LegacyChangeFeed

pytestmark = pytest.mark.integration


def make_legacy(url: str, *, serialize_writers: bool = True):
    engine = create_state_engine(url, pool_size=8)
    META.create_all(engine)
    install_capture(engine, SPECS, serialize_writers=serialize_writers)
    return engine


def insert_balance(conn, sku: str, user: str = "JSMITH") -> None:
    conn.execute(text("INSERT INTO \"BAL\" VALUES ('WH1', :s, 1, :u)"), {"s": sku, "u": user})


def test_on_postgresql_inserts_updates_and_deletes_are_logged_with_header_keys(pg_url):
    engine = make_legacy(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO \"HDR\" VALUES ('00000042', 'A', 'JSMITH')")
            conn.exec_driver_sql("INSERT INTO \"LIN\" VALUES ('00000042', 1, 3)")
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE \"BAL\" SET \"QTY\" = 2")  # no rows: nothing logged
            conn.exec_driver_sql("DELETE FROM \"LIN\"")
            conn.exec_driver_sql("DELETE FROM \"HDR\"")
        changes = LegacyChangeFeed(engine, SPECS, DECODERS).read(0, 10)
        assert [(c.key, c.op, c.writer, c.cursor) for c in changes] == [
            ("42", "delete", "JSMITH", 4),  # 4 rows by one writer coalesce into the last
        ]
        with engine.connect() as conn:
            ops = conn.exec_driver_sql('SELECT "TABNAME", "OP" FROM "CHGLOG" ORDER BY "SEQ"')
            assert [tuple(r) for r in ops] == [("HDR", "I"), ("LIN", "I"), ("LIN", "D"),
                                               ("HDR", "D")]
    finally:
        engine.dispose()


def _race(engine) -> tuple[list[int], list[int], bool]:
    """A takes a sequence value, B writes and commits while A is open, a reader reads,
    then A commits.  Returns (first read, read after its checkpoint, B blocked?)."""
    feed = LegacyChangeFeed(engine, SPECS, DECODERS)
    b_done = threading.Event()

    def writer_b():
        with engine.begin() as conn:
            insert_balance(conn, "B")
        b_done.set()

    with engine.connect() as a:
        a.begin()
        insert_balance(a, "A")
        b = threading.Thread(target=writer_b)
        b.start()
        b_blocked = not b_done.wait(0.5)
        first = [c.cursor for c in feed.read(0, 10)]
        a.commit()
    b.join(10)
    checkpoint = first[-1] if first else 0
    return first, [c.cursor for c in feed.read(checkpoint, 10)], b_blocked


def test_without_the_writer_lock_a_reader_skips_a_change_committed_behind_its_checkpoint(
    pg_url,
):
    engine = make_legacy(pg_url, serialize_writers=False)
    try:
        first, second, b_blocked = _race(engine)
        assert not b_blocked
        assert first == [2] and second == []  # change 1 is lost: the pitfall is real
    finally:
        engine.dispose()


def test_with_the_writer_lock_a_later_writer_waits_and_the_reader_skips_nothing(pg_url):
    engine = make_legacy(pg_url)
    try:
        first, second, b_blocked = _race(engine)
        assert b_blocked
        assert first == [] and second == [1, 2]
    finally:
        engine.dispose()


def test_concurrent_writers_never_make_a_polling_reader_skip_or_repeat_a_change(pg_url):
    engine = make_legacy(pg_url)
    feed = LegacyChangeFeed(engine, SPECS, DECODERS)
    writers, per_writer = 4, 20
    seen: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        rnd = random.Random(w)
        try:
            for i in range(per_writer):
                with engine.begin() as conn:
                    insert_balance(conn, f"W{w}-{i}")
                    time.sleep(rnd.uniform(0, 0.004))  # hold the transaction open a little
                    conn.execute(text('UPDATE "BAL" SET "QTY" = 2 WHERE "SKU" = :s'),
                                 {"s": f"W{w}-{i}"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        after = 0
        while True:
            finished = done.is_set()
            batch = feed.read(after, 7)
            for change in batch:
                seen.append(change.cursor)
            after = batch[-1].cursor if batch else after
            if finished and not batch:
                return

    try:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        reader = threading.Thread(target=read)
        reader.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        done.set()
        reader.join(30)
        assert not errors
        with engine.connect() as conn:
            logged = [r[0] for r in conn.exec_driver_sql('SELECT "SEQ" FROM "CHGLOG" ORDER BY 1')]
        # Insert and update of one row by one writer coalesce into one change.
        assert len(logged) == 2 * writers * per_writer
        assert seen == sorted(set(seen)), "never repeated, always in order"
        expected = [seq for seq in logged if seq % 2 == 0]
        assert seen == expected, "never skipped"
    finally:
        engine.dispose()


def test_two_consumers_creating_the_first_postgresql_checkpoint_commit_only_one(pg_url):
    from sqlalchemy.orm import Session

    from workers import checkpoints
    from workers.db import create_state_schema

    state = create_state_engine(pg_url)
    create_state_schema(state)
    outcome: list[str] = []

    def second() -> None:
        with Session(state) as s:
            try:
                checkpoints.advance(s, "legacy", 7, expected=0)  # waits for the first
                s.commit()
                outcome.append("committed")
            except checkpoints.CheckpointConflict:
                outcome.append("conflict")

    try:
        with Session(state) as first:
            checkpoints.advance(first, "legacy", 7, expected=0)
            t = threading.Thread(target=second)
            t.start()
            time.sleep(0.3)
            first.commit()
        t.join(10)
        assert outcome == ["conflict"]
        assert checkpoints.get(state, "legacy") == 7
    finally:
        state.dispose()
