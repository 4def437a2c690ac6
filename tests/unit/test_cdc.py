"""Change capture on SQLite: triggers fill CHGLOG, the feed reads it after a checkpoint.

Runs on small tables of its own (an order-like header with lines and a
composite-key balance table), so it tests capture independently of the legacy
ERP's real schema.  SQLite files in a temporary directory: milliseconds.
"""

from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, select
from sqlalchemy.orm import Session

from bus.db import create_state_engine
from coexistence.ports import Change
from workers import checkpoints
from workers.legacy_erp.capture import (
    CHGLOG,
    CapturedTable,
    coexist_transaction,
    install_capture,
    register_writer,
)
from workers.legacy_erp.cdc import LegacyChangeFeed, UnknownChangeLogTable
from workers.migrate import upgrade as upgrade_schema

META = MetaData()
Table("HDR", META, Column("ORDNO", String(8), primary_key=True), Column("NAME", String(20)),
      Column("LCHGUSER", String(10)))
Table("LIN", META, Column("ORDNO", String(8), ForeignKey("HDR.ORDNO"), primary_key=True),
      Column("LINNO", Integer, primary_key=True), Column("QTY", Integer))
Table("BAL", META, Column("WHSE", String(4), primary_key=True),
      Column("SKU", String(10), primary_key=True), Column("QTY", Integer),
      Column("LCHGUSER", String(10)))

SPECS = [
    CapturedTable("HDR", "order", ("ORDNO",)),
    CapturedTable("LIN", "order", ("ORDNO",), header="HDR", header_key_columns=("ORDNO",)),
    CapturedTable("BAL", "inventory", ("WHSE", "SKU")),
]
DECODERS = {"order": lambda key: key.lstrip("0"), "inventory": lambda key: key.replace("|", ":")}


@pytest.fixture
def legacy(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    META.create_all(engine)
    install_capture(engine, SPECS)
    yield engine
    engine.dispose()


@pytest.fixture
def state(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def run(engine, *statements: str, coexist: bool = False) -> None:
    with engine.begin() as conn:
        marker = coexist_transaction(conn) if coexist else contextlib.nullcontext()
        with marker:
            for stmt in statements:
                conn.exec_driver_sql(stmt)


def log_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(CHGLOG.c.SEQ, CHGLOG.c.TABNAME, CHGLOG.c.CHGKEY, CHGLOG.c.OP,
                   CHGLOG.c.LCHGUSER).order_by(CHGLOG.c.SEQ))]


def feed(engine) -> LegacyChangeFeed:
    return LegacyChangeFeed(engine, SPECS, DECODERS)


def test_every_insert_update_and_delete_is_appended_to_the_change_log(legacy):
    run(legacy, "INSERT INTO BAL VALUES ('WH1', 'SKU-1', 5, 'JSMITH')")
    run(legacy, "UPDATE BAL SET QTY = 6, LCHGUSER = 'COEXIST' WHERE SKU = 'SKU-1'",
        coexist=True)
    run(legacy, "DELETE FROM BAL", coexist=True)
    assert log_rows(legacy) == [
        (1, "BAL", "WH1|SKU-1", "I", "JSMITH"),
        (2, "BAL", "WH1|SKU-1", "U", "COEXIST"),
        (3, "BAL", "WH1|SKU-1", "D", "COEXIST"),
    ]


def test_a_persons_delete_or_unstamped_update_of_coexists_record_never_passes_for_coexist(legacy):
    run(legacy, "INSERT INTO BAL VALUES ('WH1', 'A', 5, 'COEXIST')",
        "INSERT INTO BAL VALUES ('WH1', 'B', 5, 'COEXIST')", coexist=True)
    run(legacy, "UPDATE BAL SET QTY = 7 WHERE SKU = 'A'")
    run(legacy, "DELETE FROM BAL WHERE SKU = 'B'")
    assert [(r[2], r[3], r[4]) for r in log_rows(legacy)[2:]] == [
        ("WH1|A", "U", "?"), ("WH1|B", "D", "?"),
    ]
    assert not [c for c in feed(legacy).read(2, 10) if c.writer == "COEXIST"]


def test_a_channel_writer_is_logged_by_name_and_a_persons_unstamped_update_never_as_it(legacy):
    with legacy.begin() as conn:
        register_writer(conn, "COEXCRM")
    with legacy.begin() as conn, coexist_transaction(conn, writer="COEXCRM"):
        conn.exec_driver_sql("INSERT INTO BAL VALUES ('WH1', 'A', 5, 'COEXCRM')")
    run(legacy, "UPDATE BAL SET QTY = 7")
    assert [(r[3], r[4]) for r in log_rows(legacy)] == [("I", "COEXCRM"), ("U", "?")]


def test_a_line_change_is_logged_under_its_orders_key_and_last_change_user(legacy):
    run(legacy, "INSERT INTO HDR VALUES ('00000042', 'A', 'JSMITH')",
        "INSERT INTO LIN VALUES ('00000042', 1, 3)")
    run(legacy, "UPDATE HDR SET LCHGUSER = 'COEXIST' WHERE ORDNO = '00000042'",
        "UPDATE LIN SET QTY = 4", coexist=True)
    assert [(r[1], r[2], r[3], r[4]) for r in log_rows(legacy)] == [
        ("HDR", "00000042", "I", "JSMITH"),
        ("LIN", "00000042", "I", "JSMITH"),
        ("HDR", "00000042", "U", "COEXIST"),
        ("LIN", "00000042", "U", "COEXIST"),
    ]


def test_a_key_change_logs_the_old_key_as_deleted_and_the_new_one_as_changed(legacy):
    run(legacy, "INSERT INTO BAL VALUES ('WH1', 'SKU-1', 5, 'JSMITH')")
    run(legacy, "UPDATE BAL SET WHSE = 'WH2', LCHGUSER = 'MJONES'")
    changes = feed(legacy).read(0, 10)
    assert [(c.key, c.op, c.writer) for c in changes] == [
        ("WH1:SKU-1", "upsert", "JSMITH"), ("WH1:SKU-1", "delete", "MJONES"),
        ("WH2:SKU-1", "upsert", "MJONES"),
    ]


def test_a_header_delete_is_a_delete_and_a_line_delete_is_a_change_of_the_order(legacy):
    run(legacy, "INSERT INTO HDR VALUES ('00000007', 'A', 'JSMITH')",
        "INSERT INTO LIN VALUES ('00000007', 1, 3)")
    run(legacy, "UPDATE HDR SET LCHGUSER = 'MJONES'", "DELETE FROM LIN")
    run(legacy, "UPDATE HDR SET LCHGUSER = 'COEXIST'", "DELETE FROM HDR", coexist=True)
    changes = feed(legacy).read(0, 10)
    assert [(c.domain, c.key, c.op, c.writer) for c in changes] == [
        ("order", "7", "upsert", "JSMITH"),
        ("order", "7", "upsert", "MJONES"),
        ("order", "7", "delete", "COEXIST"),
    ]


def test_consecutive_rows_of_one_record_by_one_writer_coalesce_into_its_last_change(legacy):
    run(legacy, "INSERT INTO HDR VALUES ('00000001', 'A', 'COEXIST')",
        *(f"INSERT INTO LIN VALUES ('00000001', {n}, 1)" for n in range(1, 6)), coexist=True)
    [change] = feed(legacy).read(0, 10)
    assert (change.key, change.cursor, change.version) == ("1", 6, 6)


def test_changes_by_different_writers_or_to_different_records_are_never_coalesced(legacy):
    run(legacy, "INSERT INTO BAL VALUES ('WH1', 'A', 1, 'JSMITH')")
    run(legacy, "UPDATE BAL SET QTY = 2, LCHGUSER = 'COEXIST'", coexist=True)
    run(legacy, "INSERT INTO BAL VALUES ('WH1', 'B', 1, 'COEXIST')", coexist=True)
    run(legacy, "UPDATE BAL SET QTY = 3, LCHGUSER = 'COEXIST' WHERE SKU = 'A'", coexist=True)
    changes = feed(legacy).read(0, 10)
    assert [(c.key, c.writer, c.cursor) for c in changes] == [
        ("WH1:A", "JSMITH", 1), ("WH1:A", "COEXIST", 2), ("WH1:B", "COEXIST", 3),
        ("WH1:A", "COEXIST", 4),
    ]


def test_the_feed_reads_in_sequence_order_after_a_cursor_in_batches(legacy):
    for n in range(1, 11):
        run(legacy, f"INSERT INTO BAL VALUES ('WH1', 'S{n:02d}', {n}, 'JSMITH')")
    f = feed(legacy)
    batches = list(f.iter_changes(0, batch_size=4))
    assert [[c.cursor for c in b] for b in batches] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [c.key for c in f.read(8, 5)] == ["WH1:S09", "WH1:S10"]
    assert f.read(10, 5) == [] and f.last_cursor() == 10
    assert all(isinstance(c, Change) and c.at.tzinfo is not None for b in batches for c in b)


def test_a_batch_is_filled_with_whole_changes_even_when_rows_coalesce(legacy):
    for n in range(1, 4):
        run(legacy, f"INSERT INTO HDR VALUES ('0000000{n}', 'A', 'COEXIST')",
            *(f"INSERT INTO LIN VALUES ('0000000{n}', {i}, 1)" for i in range(1, 4)),
            coexist=True)
    f = feed(legacy)
    first = f.read(0, 2)
    assert [(c.key, c.cursor) for c in first] == [("1", 4), ("2", 8)]
    assert [(c.key, c.cursor) for c in f.read(first[-1].cursor, 2)] == [("3", 12)]


def test_an_unknown_table_in_the_log_stops_the_feed_naming_the_table(legacy):
    run(legacy, "INSERT INTO CHGLOG (TABNAME, CHGKEY, OP, CHGTS, LCHGUSER) "
                "VALUES ('ZZTOP', 'X', 'I', 0, 'JSMITH')")
    with pytest.raises(UnknownChangeLogTable, match="cursor 1: table 'ZZTOP'"):
        feed(legacy).read(0, 10)


# ------------------------------------------------------------------ checkpoints


def test_a_checkpoint_starts_at_zero_and_only_moves_forward(state):
    assert checkpoints.get(state, "legacy") == 0
    with Session(state) as s:
        checkpoints.advance(s, "legacy", 5)
        s.commit()
    with Session(state) as s, pytest.raises(checkpoints.CheckpointConflict, match="is 5"):
        checkpoints.advance(s, "legacy", 5)
    assert checkpoints.get(state, "legacy") == 5


def test_a_checkpoint_advanced_in_a_rolled_back_transaction_does_not_move(state):
    with Session(state) as s:
        checkpoints.advance(s, "legacy", 9)
        s.rollback()
    assert checkpoints.get(state, "legacy") == 0
