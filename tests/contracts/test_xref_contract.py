"""The contract of ``coexistence.xref.Xref``, run against the fake, SQLite and PostgreSQL.

``XrefContract`` holds the tests; each subclass provides an ``xref`` fixture
on an EMPTY cross-reference.  The SQL subclasses use a page of 3 rows for
``entries`` so that paging is exercised by a handful of rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from coexistence.xref import Xref, XrefConflict, XrefEntry
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema
from workers.xref_memory import MemoryXref
from workers.xref_sql import SqlXref

#: Writers started together by the concurrency tests.
PARALLEL_WRITERS = 8


def run_together(calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` in threads released at the same instant; results or raised exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            results[n] = calls[n]()
        except Exception as exc:  # noqa: BLE001 - the test inspects what each writer got
            results[n] = exc

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


class XrefContract:
    @pytest.fixture
    def xref(self) -> Xref:
        raise NotImplementedError

    # ------------------------------------------------------------------ linking

    def test_a_new_link_is_found_by_each_of_its_three_ids(self, xref):
        entry = xref.link("customer", "10042", legacy_key="0010042", cloud_id="c-42")
        assert entry == XrefEntry("customer", "10042", "0010042", "c-42")
        assert xref.by_canonical("customer", "10042") == entry
        assert xref.by_legacy("customer", "0010042") == entry
        assert xref.by_cloud("customer", "c-42") == entry

    def test_linking_the_same_mapping_again_is_a_no_op(self, xref):
        first = xref.link("customer", "10042", legacy_key="0010042", cloud_id="c-42")
        again = xref.link("customer", "10042", legacy_key="0010042", cloud_id="c-42")
        partial = xref.link("customer", "10042", cloud_id="c-42")
        bare = xref.link("customer", "10042")
        assert first == again == partial == bare
        assert list(xref.entries("customer")) == [first]

    def test_a_missing_column_is_filled_by_a_later_link(self, xref):
        xref.link("order", "100001", legacy_key="00100001")
        entry = xref.link("order", "100001", cloud_id="c-1")
        assert entry == XrefEntry("order", "100001", "00100001", "c-1")
        assert xref.by_cloud("order", "c-1") == entry

    def test_a_key_can_be_linked_before_any_id_is_allocated(self, xref):
        assert xref.link("product", "WID-1000") == XrefEntry("product", "WID-1000")
        assert xref.by_canonical("product", "WID-1000") == XrefEntry("product", "WID-1000")

    def test_a_different_value_for_a_filled_column_is_a_conflict_naming_both_values(self, xref):
        xref.link("customer", "10042", legacy_key="0010042")
        with pytest.raises(XrefConflict) as caught:
            xref.link("customer", "10042", legacy_key="0010099")
        conflict = caught.value
        assert (conflict.domain, conflict.key) == ("customer", "10042")
        assert conflict.column == "legacy_key"
        assert (conflict.existing, conflict.new, conflict.owner) == ("0010042", "0010099", None)
        assert "customer 10042" in str(conflict) and "0010099" in str(conflict)
        assert xref.by_legacy("customer", "0010099") is None

    def test_a_legacy_key_of_another_canonical_key_is_a_conflict_naming_its_owner(self, xref):
        xref.link("customer", "10042", legacy_key="0010042")
        with pytest.raises(XrefConflict) as caught:
            xref.link("customer", "10043", legacy_key="0010042")
        assert caught.value.owner == "10042"
        assert caught.value.column == "legacy_key"
        assert xref.by_canonical("customer", "10043") is None

    def test_a_cloud_id_of_another_canonical_key_is_a_conflict_naming_its_owner(self, xref):
        xref.link("customer", "10042", cloud_id="c-42")
        xref.link("customer", "10043", legacy_key="0010043")
        with pytest.raises(XrefConflict) as caught:
            xref.link("customer", "10043", cloud_id="c-42")
        assert (caught.value.column, caught.value.owner, caught.value.key) == (
            "cloud_id", "10042", "10043"
        )
        assert xref.by_canonical("customer", "10043").cloud_id is None

    def test_a_conflicting_link_fills_none_of_its_other_columns(self, xref):
        xref.link("customer", "10042", legacy_key="0010042")
        with pytest.raises(XrefConflict):
            xref.link("customer", "10042", legacy_key="0010099", cloud_id="c-42")
        assert xref.by_canonical("customer", "10042").cloud_id is None
        assert xref.by_cloud("customer", "c-42") is None

    def test_the_same_ids_in_two_domains_never_conflict(self, xref):
        a = xref.link("order", "100001", legacy_key="00100001", cloud_id="u-1")
        b = xref.link("invoice", "100001", legacy_key="00100001", cloud_id="u-1")
        assert xref.by_legacy("order", "00100001") == a
        assert xref.by_legacy("invoice", "00100001") == b
        assert xref.by_cloud("shipment", "u-1") is None

    def test_lookups_of_unknown_ids_find_nothing(self, xref):
        assert xref.by_canonical("customer", "404") is None
        assert xref.by_legacy("customer", "404") is None
        assert xref.by_cloud("customer", "404") is None
        assert list(xref.entries("customer")) == []

    # ------------------------------------------------------------------ entries

    def test_entries_come_sorted_by_canonical_key_in_code_point_order(self, xref):
        keys = ["9", "10", "A-1", "a-1", "B", "100:X", "10042", "Z.9", "0", "WH01:FST-1000"]
        for n, key in enumerate(keys):
            xref.link("inventory", key, legacy_key=f"L{n}")
        xref.link("customer", "5", legacy_key="L5")
        got = [e.canonical_key for e in xref.entries("inventory")]
        assert got == sorted(keys)

    # ------------------------------------------------------------------ concurrency

    def test_parallel_links_of_the_same_mapping_end_in_one_entry_and_no_error(self, xref):
        calls = [
            (lambda: xref.link("customer", "10042", legacy_key="0010042", cloud_id="c-42"))
            for _ in range(PARALLEL_WRITERS)
        ]
        results = run_together(calls)
        assert results == [XrefEntry("customer", "10042", "0010042", "c-42")] * PARALLEL_WRITERS
        assert len(list(xref.entries("customer"))) == 1

    def test_parallel_links_of_one_key_to_different_ids_let_exactly_one_win(self, xref):
        calls = [
            (lambda n=n: xref.link("customer", "10042", legacy_key=f"L{n}"))
            for n in range(PARALLEL_WRITERS)
        ]
        results = run_together(calls)
        winners = [r for r in results if isinstance(r, XrefEntry)]
        conflicts = [r for r in results if isinstance(r, XrefConflict)]
        assert len(winners) == 1 and len(conflicts) == PARALLEL_WRITERS - 1
        assert xref.by_canonical("customer", "10042") == winners[0]
        assert {c.existing for c in conflicts} == {winners[0].legacy_key}

    def test_parallel_links_of_different_keys_to_one_cloud_id_let_exactly_one_win(self, xref):
        calls = [
            (lambda n=n: xref.link("order", f"{100000 + n}", cloud_id="u-shared"))
            for n in range(PARALLEL_WRITERS)
        ]
        results = run_together(calls)
        winners = [r for r in results if isinstance(r, XrefEntry)]
        conflicts = [r for r in results if isinstance(r, XrefConflict)]
        assert len(winners) == 1 and len(conflicts) == PARALLEL_WRITERS - 1
        assert {c.owner for c in conflicts} == {winners[0].canonical_key}
        assert [e.canonical_key for e in xref.entries("order")] == [winners[0].canonical_key]


class TestMemoryXref(XrefContract):
    @pytest.fixture
    def xref(self):
        return MemoryXref()


class TestSqliteXref(XrefContract):
    @pytest.fixture
    def xref(self, tmp_path):
        engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
        upgrade_schema(engine)
        yield SqlXref(engine, page_rows=3)
        engine.dispose()


@pytest.mark.integration
class TestPostgresXref(XrefContract):
    @pytest.fixture
    def xref(self, pg_url):
        engine = create_state_engine(pg_url, pool_size=PARALLEL_WRITERS)
        upgrade_schema(engine)
        yield SqlXref(engine, page_rows=3)
        engine.dispose()
