"""Change capture on PostgreSQL: triggers, and commit order under concurrent writers.

The classic pitfall: transaction A takes sequence value 1, transaction B takes 2
and commits first; a reader that checkpoints 2 would never see A's change.  The
feed's cursor is therefore a position numbered by the reader among committed
rows (``workers.legacy_erp.capture``), so legacy writers run concurrently and a
late commit is numbered late.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import text

from bus.db import create_state_engine
from tests.unit.test_cdc import DECODERS, META, SPECS
from workers.legacy_erp.capture import install_capture, pg_trigger_ddl
from workers.legacy_erp.cdc import ChangeLogNotUpgraded, LegacyChangeFeed

pytestmark = pytest.mark.integration

#: Longest wait for a writer thread to reach a point that the test waits on.
WAIT_S = 20.0


def make_legacy(url: str):
    engine = create_state_engine(url, pool_size=8)
    META.create_all(engine)
    install_capture(engine, SPECS)
    return engine


def insert_balance(conn, sku: str, user: str = "JSMITH") -> None:
    conn.execute(text("INSERT INTO \"BAL\" VALUES ('WH1', :s, 1, :u)"), {"s": sku, "u": user})


def positions(engine) -> list[tuple[int, int | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            'SELECT "SEQ", "POS" FROM "CHGLOG" ORDER BY "SEQ"')]


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
            ops = conn.exec_driver_sql('SELECT "TABNAME", "OP" FROM "CHGLOG" ORDER BY "POS"')
            assert [tuple(r) for r in ops] == [("HDR", "I"), ("LIN", "I"), ("LIN", "D"),
                                               ("HDR", "D")]
    finally:
        engine.dispose()


def test_a_transaction_that_commits_late_is_read_after_the_checkpoint_never_skipped(pg_url):
    engine = make_legacy(pg_url)
    feed = LegacyChangeFeed(engine, SPECS, DECODERS)
    try:
        with engine.connect() as a:
            a.begin()
            insert_balance(a, "A")  # takes SEQ 1, stays open
            with engine.begin() as b:  # not blocked: writers are not serialized
                insert_balance(b, "B")  # SEQ 2, commits first
            first = feed.read(0, 10)
            assert [(c.key, c.cursor) for c in first] == [("WH1:B", 1)]
            a.commit()
        second = feed.read(first[-1].cursor, 10)
        assert [(c.key, c.cursor) for c in second] == [("WH1:A", 2)]
        # The later commit has the higher version, whatever its SEQ.
        assert second[0].version > first[0].version
        assert positions(engine) == [(1, 2), (2, 1)]
    finally:
        engine.dispose()


def test_four_legacy_writers_hold_their_transactions_open_at_the_same_time(pg_url):
    """Each writer logs a change and then waits, inside its open transaction, for the
    other three to have logged theirs: under a writer lock the second one would wait
    for the first to commit and the barrier would never fill."""
    engine = make_legacy(pg_url)
    writers = 4
    inside = threading.Barrier(writers, timeout=WAIT_S)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            with engine.begin() as conn:
                insert_balance(conn, f"W{w}")
                conn.execute(text('UPDATE "BAL" SET "QTY" = 2 WHERE "SKU" = :s'), {"s": f"W{w}"})
                inside.wait()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S * 2)
        assert not errors, errors
        changes = LegacyChangeFeed(engine, SPECS, DECODERS).read(0, 100)
        assert sorted(c.key for c in changes) == [f"WH1:W{w}" for w in range(writers)]
        # A transaction's rows are numbered together: its two rows coalesce into one change.
        assert sorted(c.cursor for c in changes) == [2, 4, 6, 8]
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
        logged = sorted(pos for _seq, pos in positions(engine))
        assert logged == list(range(1, 2 * writers * per_writer + 1)), "no gap, no duplicate"
        # Insert and update of one row by one writer coalesce into one change.
        assert seen == sorted(set(seen)), "never repeated, always in order"
        assert seen == [pos for pos in logged if pos % 2 == 0], "never skipped"
    finally:
        engine.dispose()


def test_two_consumers_creating_the_first_postgresql_checkpoint_commit_only_one(pg_url):
    from sqlalchemy.orm import Session

    from workers import checkpoints
    from workers.migrate import upgrade as upgrade_schema

    state = create_state_engine(pg_url)
    upgrade_schema(state)
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


def test_numbering_from_several_readers_at_once_gives_each_committed_row_one_position(pg_url):
    engine = make_legacy(pg_url)
    feed = LegacyChangeFeed(engine, SPECS, DECODERS)
    done = threading.Event()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(25):
                with engine.begin() as conn:
                    insert_balance(conn, f"W{w}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def number() -> None:
        try:
            while not done.is_set():
                feed.assign(7)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        readers = [threading.Thread(target=number) for _ in range(3)]
        for t in writers + readers:
            t.start()
        for t in writers:
            t.join(WAIT_S * 3)
        done.set()
        for t in readers:
            t.join(WAIT_S)
        assert not errors, errors
        feed.last_cursor()  # numbers whatever is left
        assert sorted(pos for _seq, pos in positions(engine)) == list(range(1, 76))
    finally:
        engine.dispose()


def install_serialized_scheme(engine) -> None:
    """The change log as an older coexist installed it: no TXID or POS, and a statement
    trigger on every captured table taking one advisory lock per schema."""
    from workers.legacy_erp.capture import (
        CAPTURE_METADATA,
        CHGLOG,
        _serialized_scheme_lock_key,
        register_writer,
    )

    META.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'CREATE TABLE "CHGLOG" ("SEQ" BIGSERIAL PRIMARY KEY, "TABNAME" VARCHAR(10) NOT '
            'NULL, "CHGKEY" VARCHAR(120) NOT NULL, "OP" VARCHAR(1) NOT NULL, "CHGTS" BIGINT '
            'NOT NULL, "LCHGUSER" VARCHAR(10) NOT NULL)')
        CAPTURE_METADATA.create_all(conn, tables=[t for t in CAPTURE_METADATA.sorted_tables
                                                  if t is not CHGLOG])
        register_writer(conn, "COEXIST")
        key = _serialized_scheme_lock_key(conn)
        conn.exec_driver_sql(
            'CREATE FUNCTION "XCHG_LOCK"() RETURNS trigger LANGUAGE plpgsql '
            f"AS $fn$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $fn$")
        for spec in SPECS:
            for stmt in pg_trigger_ddl(spec):
                conn.exec_driver_sql(stmt)
            conn.exec_driver_sql(
                f'CREATE TRIGGER "XCHG_{spec.table}_S" BEFORE INSERT OR UPDATE OR DELETE ON '
                f'"{spec.table}" FOR EACH STATEMENT EXECUTE FUNCTION "XCHG_LOCK"()')


def test_an_older_serialized_change_log_is_upgraded_in_place_keeping_checkpoints_valid(pg_url):
    engine = create_state_engine(pg_url)
    try:
        install_serialized_scheme(engine)
        for sku in ("A", "B", "C"):
            with engine.begin() as conn:
                insert_balance(conn, sku)
        with engine.connect() as conn:  # a sequence value taken and never committed
            conn.begin()
            insert_balance(conn, "UNDONE")
            conn.rollback()
        feed = LegacyChangeFeed(engine, SPECS, DECODERS)
        with pytest.raises(ChangeLogNotUpgraded, match="coexist legacy init"):
            feed.read(2, 10)
        checkpoint = 2  # a consumer had handled SEQ 1 and 2 under the old scheme

        install_capture(engine, SPECS)
        install_capture(engine, SPECS)  # idempotent
        with engine.begin() as conn:
            insert_balance(conn, "D")
        changes = feed.read(checkpoint, 10)
        assert [(c.key, c.cursor) for c in changes] == [("WH1:C", 3), ("WH1:D", 5)]
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'XCHG_%_S'")).scalar() == 0
            assert conn.execute(text(
                "SELECT to_regprocedure('\"XCHG_LOCK\"()')")).scalar() is None
    finally:
        engine.dispose()
