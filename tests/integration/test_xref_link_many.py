"""``workers.xref_sql.link_many_in`` (a batch's links in one read and one insert) ends as
the same links made one after the other would: checked against ``MemoryXref`` (the
contract's fake) on random batches over a few keys and ids, so that batches fill
columns, repeat links, and conflict with stored rows and with each other."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import event

from coexistence.xref import XrefConflict
from tests.support.state import state_engine  # noqa: F401 - fixture
from workers.xref_memory import MemoryXref
from workers.xref_sql import Link, SqlXref, link_many_in


@pytest.fixture
def engine(state_engine):  # noqa: F811 - the shared fixture, under this module's name
    return state_engine


def _maybe(rng: random.Random, values: list[str]) -> str | None:
    return rng.choice(values) if rng.random() < 0.6 else None


def _random_links(rng: random.Random, n: int) -> list[Link]:
    keys = [f"{100 + i}" for i in range(6)]
    legacy = [f"L{i}" for i in range(6)]
    cloud = [f"c-{i}" for i in range(6)]
    return [Link(rng.choice(keys), _maybe(rng, legacy), _maybe(rng, cloud)) for _ in range(n)]


def _entries(xref, domain: str):
    return list(xref.entries(domain))


def test_a_batch_of_links_ends_as_the_same_links_one_by_one(engine):
    sql = SqlXref(engine)
    outcomes = {"linked": 0, "conflict": 0}
    for seed in range(120):
        domain = f"d{seed}"
        rng = random.Random(seed)
        memory = MemoryXref()
        for link in _random_links(rng, rng.randint(0, 3)):  # what earlier batches stored
            try:
                memory.link(domain, link.canonical_key, legacy_key=link.legacy_key,
                            cloud_id=link.cloud_id)
            except XrefConflict:
                continue
            sql.link(domain, link.canonical_key, legacy_key=link.legacy_key,
                     cloud_id=link.cloud_id)
        batch = _random_links(rng, rng.randint(1, 6))
        expected = []
        try:
            for link in batch:
                expected.append(memory.link(domain, link.canonical_key,
                                            legacy_key=link.legacy_key, cloud_id=link.cloud_id))
        except XrefConflict:
            expected = None
        before = _entries(sql, domain)
        if expected is None:
            with pytest.raises(XrefConflict), engine.begin() as conn:
                link_many_in(conn, domain, batch)
            assert _entries(sql, domain) == before
            outcomes["conflict"] += 1
        else:
            with engine.begin() as conn:
                assert link_many_in(conn, domain, batch) == expected
            assert _entries(sql, domain) == _entries(memory, domain)
            outcomes["linked"] += 1
    # Both paths were exercised, not only one of them.
    assert outcomes["linked"] >= 5 and outcomes["conflict"] >= 5, outcomes


def test_two_links_of_one_batch_to_the_same_id_conflict_and_nothing_is_written(engine):
    batch = [Link("100", cloud_id="c-1"), Link("101", legacy_key="L1"),
             Link("102", legacy_key="L2", cloud_id="c-1")]
    with pytest.raises(XrefConflict) as caught, engine.begin() as conn:
        link_many_in(conn, "customer", batch)
    assert caught.value.owner == "100" and caught.value.key == "102"
    assert _entries(SqlXref(engine), "customer") == []


def test_a_batch_of_new_links_is_one_read_per_id_column_and_one_insert(engine):
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    batch = [Link(f"{1000 + i}", legacy_key=f"{1000 + i:010d}", cloud_id=f"c-{i}")
             for i in range(300)]
    event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.begin() as conn:
            link_many_in(conn, "customer", batch)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements.count("SELECT") == 3 and statements.count("INSERT") == 1
    assert len(_entries(SqlXref(engine), "customer")) == 300
