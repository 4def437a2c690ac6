"""The capture batch's checkpoint, on the production path (``CaptureLoop``; these replace
the tests of ``cdc.consume_batch``, which nothing in production used): a batch that fails
before its commit leaves nothing and is routed again once; of two captures that read the
same batch only one commits it."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from coexistence.router import LEGACY
from tests.support.records import customer
from tests.support.router_harness import Harness
from workers import checkpoints
from workers.router import capture as capture_mod
from workers.router.capture import CaptureLoop, correlation_of


@pytest.fixture
def h(tmp_path):
    harness = Harness.on_sqlite(tmp_path / "state.db")
    harness.set_mode("customer", "shadow")
    yield harness
    harness.engine.dispose()


def outbox_per_change(h: Harness) -> dict[str, int]:
    with h.engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT correlation_id, count(*) FROM outbox GROUP BY correlation_id")).all())


def loop_of(h: Harness) -> CaptureLoop:
    return CaptureLoop(LEGACY, h.legacy, h.erps, h.flags, h.engine,
                       subscriptions=[h.subscriber], batch_size=3)


def test_a_batch_that_fails_before_its_commit_leaves_nothing_and_is_routed_again_once(
        h, monkeypatch):
    for n in range(1, 6):
        h.legacy.person_upsert(customer(f"1000{n}"), "JSMITH")
    loop = loop_of(h)
    assert loop.run_once().routed == 3

    def dies(_session, *_a, **_k):
        raise RuntimeError("process died before its commit")

    with monkeypatch.context() as m:
        m.setattr(capture_mod.checkpoints, "advance", dies)
        with pytest.raises(RuntimeError):
            loop.run_once()
    first = [c.cursor for c in h.legacy.read(0, 3)]
    assert checkpoints.get(h.engine, loop.feed_name) == first[-1]
    assert sum(outbox_per_change(h).values()) == 3 * 2  # shadow write + event, 3 changes
    assert loop.drain().routed == 2
    changes = h.legacy.read(0, 100)
    assert outbox_per_change(h) == {correlation_of(LEGACY, c): 2 for c in changes}


def test_of_two_captures_that_read_one_batch_only_one_commits_it(h):
    for n in range(1, 4):
        h.legacy.person_upsert(customer(f"1000{n}"), "JSMITH")
    late, early = loop_of(h), loop_of(h)
    read = h.legacy.read

    class RacedFeed:
        def read(self, after, limit):
            changes = read(after, limit)
            early.run_once()  # commits the same batch while ``late`` holds it
            return changes

    late.feed = RacedFeed()
    # Refused by the outbox (the same message ids, unique) or else by the checkpoint's
    # compare-and-set: either way the late batch's transaction commits nothing.
    with pytest.raises((checkpoints.CheckpointConflict, IntegrityError)):
        late.run_once()
    changes = h.legacy.read(0, 100)
    assert outbox_per_change(h) == {correlation_of(LEGACY, c): 2 for c in changes}
