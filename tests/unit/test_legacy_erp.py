"""The legacy adapter beyond the shared contract: ordering, lines, echoes, idempotency, seeding.

SQLite files in a temporary directory (the schema is created once and copied).
"""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from coexistence.errors import TranslationError
from coexistence.legacy.models import CUSTMAST, ORDLIN
from coexistence.ports import COEXIST_WRITER, Applied, Stale
from coexistence.sample import SampleSpec
from tests.contracts.erp_contract import read_all
from tests.contracts.test_legacy_contract import legacy_sample
from workers.cli import cli
from workers.legacy_erp.adapter import LegacyErp, LegacyIdempotencyConflict
from workers.legacy_erp.capture import CHGLOG, XCOEXTXN
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema, translator
from workers.legacy_erp.seed import SEED_USER, NotEmpty, seed_legacy


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("legacy") / "template.db"
    engine = create_legacy_engine(f"sqlite:///{path}")
    create_legacy_schema(engine)
    engine.dispose()
    return path


@pytest.fixture
def engine(tmp_path, template):
    path = tmp_path / "legacy.db"
    shutil.copyfile(template, path)
    engine = create_legacy_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture
def erp(engine):
    return LegacyErp(engine)


def customer(number: int, variant: int = 0):
    record = legacy_sample("customer", 0, variant)
    return type(record).model_validate({**record.model_dump(), "key": str(number)})


def test_stream_sorts_by_canonical_key_even_where_padded_numbers_sort_otherwise(erp):
    for i, number in enumerate((9, 100, 10, 1000000)):
        erp.upsert(customer(number), source_version=i + 1, idempotency_key=f"k{i}")
    assert [r.key for r in erp.stream("customer")] == ["10", "100", "1000000", "9"]


def test_stream_sorts_composite_keys_as_joined_strings_not_as_column_tuples(erp):
    base = legacy_sample("inventory", 0)
    for i, (wh, sku) in enumerate((("W1", "B"), ("W10", "A"), ("W1", "A"))):
        record = type(base).model_validate(
            {**base.model_dump(), "key": f"{wh}:{sku}", "warehouse": wh, "sku": sku})
        erp.upsert(record, source_version=1, idempotency_key=f"i{i}")
    assert [r.key for r in erp.stream("inventory")] == ["W10:A", "W1:A", "W1:B"]


def test_stream_gives_each_order_exactly_its_own_lines(erp, engine):
    orders = [legacy_sample("order", n) for n in (3, 1, 2)]
    for i, order in enumerate(orders):
        lines = [{"line_no": k, "sku": f"SKU-{k}", "quantity": k + i, "unit_price": "1.50"}
                 for k in range(1, i + 2)]
        record = type(order).model_validate({**order.model_dump(), "lines": lines})
        erp.upsert(record, source_version=1, idempotency_key=f"o{i}")
    with engine.begin() as conn:  # a line whose order does not exist is not a record
        conn.execute(ORDLIN.__table__.insert().values(
            ORDNO="0000500002".replace("2", "9"), LINENO=1, ITEMNO="X".ljust(20), ORDQTY=1,
            UNITPRC=1))
    streamed = list(erp.stream("order"))
    assert [r.key for r in streamed] == ["500001", "500002", "500003"]
    assert [len(r.lines) for r in streamed] == [2, 3, 1]
    assert [r.lines[0].quantity for r in streamed] == [2, 3, 1]
    assert streamed == [erp.get("order", r.key) for r in streamed]


def test_coexists_writes_are_stamped_and_logged_as_coexist_and_a_persons_as_theirs(erp, engine):
    erp.upsert(customer(42), source_version=1, idempotency_key="a")
    with engine.connect() as conn:
        assert conn.execute(select(CUSTMAST.__table__.c.LCHGUSER)).scalar().rstrip() == "COEXIST"
    erp.person_upsert(customer(42, 1), "JSMITH")
    erp.person_delete("customer", "42", "MJONES")
    assert [(c.op, c.writer) for c in read_all(erp)] == [
        ("upsert", COEXIST_WRITER), ("upsert", "JSMITH"), ("delete", "MJONES"),
    ]


def test_an_order_rewrite_of_header_and_lines_is_one_change(erp, engine):
    erp.upsert(legacy_sample("order", 5), source_version=1, idempotency_key="a")
    erp.upsert(legacy_sample("order", 6), source_version=1, idempotency_key="b")
    erp.upsert(legacy_sample("order", 5, 1), source_version=2, idempotency_key="c")
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(CHGLOG)).scalar()
    changes = read_all(erp)
    assert rows == 2 + 2 + 3 and len(changes) == 3  # a rewrite: header U, line D, line I
    assert [c.key for c in changes] == ["500005", "500006", "500005"]
    assert changes[2].version > changes[0].version


def test_a_stale_write_changes_nothing_not_even_the_change_log(erp):
    erp.upsert(customer(7), source_version=5, idempotency_key="a")
    before = read_all(erp)
    assert erp.upsert(customer(7, 1), source_version=4, idempotency_key="b") == \
        Stale("customer", "7", 4, 5)
    assert read_all(erp) == before


def test_an_idempotency_key_reused_for_another_write_is_refused_and_changes_nothing(erp):
    assert erp.upsert(customer(8), source_version=1, idempotency_key="k") == \
        Applied("customer", "8", 1)
    with pytest.raises(LegacyIdempotencyConflict, match="'k' was already used"):
        erp.upsert(customer(8, 1), source_version=2, idempotency_key="k")
    assert erp.applied_version("customer", "8") == 1
    assert erp.get("customer", "8").name == customer(8).name


def test_a_writer_the_change_user_column_cannot_hold_is_refused_before_writing(erp):
    with pytest.raises(ValueError, match="writer 'COEXIST-CRM'"):
        erp.upsert(customer(3), source_version=1, idempotency_key="a", writer="COEXIST-CRM")
    assert erp.get("customer", "3") is None and read_all(erp) == []


def test_a_key_the_legacy_erp_cannot_hold_is_a_translation_error_naming_it(erp):
    with pytest.raises(TranslationError, match="customer ABC: field key='ABC'"):
        erp.get("customer", "ABC")


def test_a_record_the_legacy_erp_cannot_hold_is_refused_before_anything_is_written(erp):
    bad = legacy_sample("price", 1)
    too_many = [{"min_quantity": q, "unit_price": "1.00"} for q in range(1, 8)]
    bad = type(bad).model_validate({**bad.model_dump(), "breaks": too_many})
    with pytest.raises(TranslationError, match="breaks"):
        erp.upsert(bad, source_version=1, idempotency_key="x")
    assert erp.applied_version("price", bad.key) == 0 and read_all(erp) == []


def test_a_write_failing_midway_rolls_back_record_version_log_and_coexist_marker(
    erp, engine, monkeypatch
):
    original = LegacyErp._replace

    def replace_then_fail(self, conn, d, header, children):
        original(self, conn, d, header, children)  # header and lines are written...
        raise RuntimeError("connection lost")  # ...then the transaction dies

    monkeypatch.setattr(LegacyErp, "_replace", replace_then_fail)
    with pytest.raises(RuntimeError):
        erp.upsert(legacy_sample("order", 1), source_version=3, idempotency_key="x")
    monkeypatch.undo()
    assert erp.get("order", "500001") is None
    assert erp.applied_version("order", "500001") == 0
    assert read_all(erp) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(XCOEXTXN)).scalar() == 0
    erp.person_upsert(customer(1), "JSMITH")
    assert [c.writer for c in read_all(erp)] == ["JSMITH"]
    assert erp.upsert(legacy_sample("order", 1), source_version=3, idempotency_key="x") == \
        Applied("order", "500001", 3)


def test_a_hand_typed_key_no_canonical_key_maps_to_is_passed_on_and_fails_on_read(erp, engine):
    header, _ = translator("customer").from_canonical(customer(1), changed_by="JSMITH")
    with engine.begin() as conn:
        conn.execute(CUSTMAST.__table__.insert().values({**header, "CUSTNO": "12AB".ljust(10)}))
    erp.person_upsert(customer(2), "JSMITH")
    changes = read_all(erp)
    assert [c.key for c in changes] == ["12AB", "2"]
    with pytest.raises(TranslationError, match="customer 12AB: field key='12AB'"):
        erp.get("customer", changes[0].key)


def test_pruning_the_change_log_never_lets_a_cursor_be_reused(erp):
    erp.person_upsert(customer(1), "JSMITH")
    erp.person_upsert(customer(2), "JSMITH")
    last = read_all(erp)[-1].cursor
    assert erp.feed.prune(last) == 4 and read_all(erp) == []
    erp.person_upsert(customer(3), "JSMITH")
    assert [c.cursor for c in read_all(erp)] == [last + 2]


def test_forgotten_idempotency_keys_fall_back_on_the_version_check(erp):
    erp.upsert(customer(5), source_version=2, idempotency_key="k")
    assert erp.forget_idempotency_keys(older_than_s=3600) == 0
    assert erp.forget_idempotency_keys(older_than_s=-1) == 1
    assert erp.upsert(customer(5), source_version=2, idempotency_key="k") == \
        Stale("customer", "5", 2, 2)


def test_stream_holds_one_batch_of_records_in_memory_not_the_domain(engine, monkeypatch):
    import tracemalloc

    import workers.legacy_erp.adapter as adapter

    seed_legacy(engine, SampleSpec(customers=500, products=2), domains=["customer"])
    erp = LegacyErp(engine)
    monkeypatch.setattr(adapter, "STREAM_BATCH_ROWS", 20)
    tracemalloc.start()
    try:
        held = list(erp.stream("customer"))
        _, all_peak = tracemalloc.get_traced_memory()
        del held
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        count = sum(1 for _ in erp.stream("customer"))
        _, stream_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 500
    assert stream_peak - base < all_peak / 5, (stream_peak - base, all_peak)


# ------------------------------------------------------------------ seeding


def test_seeding_loads_every_domain_of_the_sample_as_pre_existing_data(engine):
    spec = SampleSpec(customers=6, products=5)
    report = seed_legacy(engine, spec, batch_records=4)
    assert report.records == {d: spec.count(d) for d in report.records}
    assert len(report.records) == 7 and report.rows > sum(report.records.values())
    erp = LegacyErp(engine)
    assert [r.key for r in erp.stream("customer")] == sorted(r.key for r in spec.iter("customer"))
    assert erp.get("order", spec.record("order", 4).key) is not None
    assert {c.writer for c in read_all(erp)} == {SEED_USER}
    with pytest.raises(NotEmpty, match="CUSTMAST already holds 6 rows"):
        seed_legacy(engine, spec)


def test_the_init_command_is_idempotent_and_a_bad_url_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.delenv("COEXIST_LEGACY_URL", raising=False)
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(cli, ["legacy", "init"])
        assert result.exit_code == 0 and "legacy schema ready" in result.output
    bad = runner.invoke(cli, ["legacy", "init", "--url", "mysql://u:secret@db/erp"])
    assert bad.exit_code == 2 and "runs on SQLite or PostgreSQL, not mysql" in bad.output
    assert "secret" not in bad.output


def test_the_seed_command_reports_counts_and_refuses_a_second_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.delenv("COEXIST_LEGACY_URL", raising=False)
    runner = CliRunner()
    first = runner.invoke(cli, ["legacy", "seed", "--customers", "3", "--products", "4"])
    assert first.exit_code == 0, first.output
    assert "customer           3 records" in first.output and "rows/s" in first.output
    again = runner.invoke(cli, ["legacy", "seed", "--customers", "3", "--products", "4"])
    assert again.exit_code == 2 and "already holds 3 rows" in again.output
    assert "Traceback" not in again.output
    changes = runner.invoke(cli, ["legacy", "changes", "--limit", "2"])
    assert changes.exit_code == 0 and changes.output.count(SEED_USER) == 2
