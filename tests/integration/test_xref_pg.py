"""The id cross-reference under parallel writer PROCESSES, on PostgreSQL and SQLite.

Each process opens its own engine (as separate workers do) and links the same
keys in its own shuffled order, some links carrying only one of the two ids,
so writers race on inserts, on filling columns and on stealing ids.
"""

from __future__ import annotations

import multiprocessing
import random

import pytest

from coexistence.xref import XrefConflict, XrefEntry
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema
from workers.xref_sql import SqlXref

pytestmark = pytest.mark.integration

PROCESSES = 4
KEYS = 40


def _agreeing_writer(url: str, seed: int) -> int:
    """Link every key to its one true mapping, column by column, in a shuffled order."""
    engine = create_state_engine(url)
    xref = SqlXref(engine)
    rng = random.Random(seed)
    links = [(k, col) for k in range(KEYS) for col in ("legacy_key", "cloud_id", "both")]
    rng.shuffle(links)
    for k, col in links:
        ids = {"legacy_key": f"L{k:05d}", "cloud_id": f"cloud-{k}"}
        if col != "both":
            ids = {col: ids[col]}
        xref.link("customer", str(10_000 + k), **ids)
    engine.dispose()
    return len(links)


def _competing_writer(url: str, writer: int) -> dict[int, str]:
    """Claim every key for this writer's own legacy key; return {key: 'won' | 'conflict'}."""
    engine = create_state_engine(url)
    xref = SqlXref(engine)
    keys = list(range(KEYS))
    random.Random(writer).shuffle(keys)
    outcome = {}
    for k in keys:
        try:
            xref.link("order", str(100_000 + k), legacy_key=f"W{writer}-{k}")
            outcome[k] = "won"
        except XrefConflict as exc:
            assert exc.column == "legacy_key" and exc.existing is not None
            outcome[k] = "conflict"
    engine.dispose()
    return outcome


@pytest.fixture(params=["postgresql", "sqlite"])
def state_url(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_state_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    return url


def _run(target, args_list):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(args_list)) as pool:
        return pool.starmap(target, args_list, chunksize=1)


def test_processes_linking_the_same_mappings_end_with_one_complete_row_per_key(state_url):
    done = _run(_agreeing_writer, [(state_url, seed) for seed in range(PROCESSES)])
    assert done == [KEYS * 3] * PROCESSES
    engine = create_state_engine(state_url)
    entries = list(SqlXref(engine).entries("customer"))
    engine.dispose()
    assert entries == sorted(
        (XrefEntry("customer", str(10_000 + k), f"L{k:05d}", f"cloud-{k}") for k in range(KEYS)),
        key=lambda e: e.canonical_key,
    )


def test_processes_claiming_the_same_keys_get_one_winner_each_and_conflicts_for_the_rest(
    state_url,
):
    outcomes = _run(_competing_writer, [(state_url, w) for w in range(PROCESSES)])
    engine = create_state_engine(state_url)
    xref = SqlXref(engine)
    for k in range(KEYS):
        winners = [w for w in range(PROCESSES) if outcomes[w][k] == "won"]
        assert len(winners) == 1, f"key {k}: winners {winners}"
        entry = xref.by_canonical("order", str(100_000 + k))
        assert entry.legacy_key == f"W{winners[0]}-{k}"
    assert len(list(xref.entries("order"))) == KEYS
    engine.dispose()


class _Deadlock(Exception):
    sqlstate = "40P01"


def test_a_link_chosen_as_a_deadlock_victim_is_run_again(tmp_path, monkeypatch):
    from sqlalchemy.exc import DBAPIError

    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    xref = SqlXref(engine)
    real = SqlXref._link_once
    victims = []

    def once(conn, *args):
        if not victims:
            victims.append(args)
            raise DBAPIError("INSERT INTO xref ...", {}, _Deadlock())
        return real(conn, *args)

    monkeypatch.setattr(SqlXref, "_link_once", staticmethod(once))
    assert xref.link("customer", "1", legacy_key="L1") == XrefEntry("customer", "1", "L1")
    assert len(victims) == 1

    class _Other(Exception):
        sqlstate = "42P01"

    victims.clear()
    monkeypatch.setattr(
        SqlXref, "_link_once",
        staticmethod(lambda conn, *a: (_ for _ in ()).throw(DBAPIError("SELECT", {}, _Other()))),
    )
    with pytest.raises(DBAPIError):
        xref.link("customer", "2", legacy_key="L2")
    engine.dispose()
