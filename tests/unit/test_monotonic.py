"""Writes apply only when newer: duplicates and reordering never regress state."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.db import create_state_engine
from bus.monotonic import apply_if_newer, current_version, newer
from workers.migrate import upgrade as upgrade_schema


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = create_state_engine(f"sqlite:///{tmp_path_factory.mktemp('mono') / 'state.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def test_newer_accepts_a_first_version_and_only_strictly_greater_ones():
    assert newer(1, None)
    assert newer(5, 4)
    assert not newer(4, 4)
    assert not newer(3, 4)


def test_a_stale_update_never_overwrites_a_newer_one(engine):
    target = f"t-{uuid.uuid4().hex}"
    with engine.begin() as conn:
        assert apply_if_newer(conn, target, "C001", 5)
        assert not apply_if_newer(conn, target, "C001", 3)
        assert not apply_if_newer(conn, target, "C001", 5)
        assert apply_if_newer(conn, target, "C001", 6)
        assert current_version(conn, target, "C001") == 6
        assert current_version(conn, target, "C002") is None


def test_a_rolled_back_write_does_not_advance_the_version(engine):
    target = f"t-{uuid.uuid4().hex}"
    conn = engine.connect()
    try:
        conn.begin()
        assert apply_if_newer(conn, target, "K", 9)
        conn.rollback()
        assert current_version(conn, target, "K") is None
    finally:
        conn.close()


def test_targets_keep_separate_versions(engine):
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    with engine.begin() as conn:
        assert apply_if_newer(conn, a, "K", 5)
        assert apply_if_newer(conn, b, "K", 2)


deliveries = st.dictionaries(
    keys=st.text("ABCDEFGH", min_size=1, max_size=3),
    values=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None)
@given(versions=deliveries, seed=st.integers(), dup_rate=st.floats(0, 1))
def test_shuffled_and_duplicated_deliveries_end_at_the_max_version_and_never_regress(
    engine, versions, seed, dup_rate
):
    rng = random.Random(seed)
    stream = [(key, v) for key, vs in versions.items() for v in vs]
    stream += [item for item in stream if rng.random() < dup_rate]
    rng.shuffle(stream)
    target = f"t-{uuid.uuid4().hex}"
    state: dict[str, int] = {}  # what a writer guarded by apply_if_newer would hold
    with engine.begin() as conn:
        for key, version in stream:
            if apply_if_newer(conn, target, key, version):
                assert newer(version, state.get(key)), "state would regress"
                state[key] = version
        for key, vs in versions.items():
            assert state[key] == max(vs)
            assert current_version(conn, target, key) == max(vs)
