"""A consumer process killed (SIGKILL) between reading changes and committing its checkpoint.

The killed process had written the effects of its batch in the state database
but not committed them with the checkpoint; after the kill, a new consumer reads
the same changes again and every change has its effect exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from bus.db import create_state_engine
from tests.contracts.test_legacy_contract import legacy_sample
from workers import checkpoints
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.cdc import consume_batch
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sqlalchemy import text
    from bus.db import create_state_engine
    from workers.legacy_erp.adapter import LegacyErp
    from workers.legacy_erp.cdc import consume_batch
    from workers.legacy_erp.schema import create_legacy_engine

    legacy_url, state_url, marker = sys.argv[1:4]
    feed = LegacyErp(create_legacy_engine(legacy_url))
    state = create_state_engine(state_url)
    batches = 0

    def handle(session, changes):
        global batches
        batches += 1
        for c in changes:
            session.connection().execute(
                text("INSERT INTO effects (cursor, key) VALUES (:c, :k)"),
                {"c": c.cursor, "k": c.key})
        if batches == 2:  # effects written, checkpoint not yet: die here
            session.flush()
            Path(marker).write_text("ready")
            time.sleep(60)

    while consume_batch(feed, state, "legacy", handle, limit=3):
        pass
""")


def record_effects(session: Session, changes) -> None:
    from sqlalchemy import text

    for c in changes:
        session.connection().execute(
            text("INSERT INTO effects (cursor, key) VALUES (:c, :k)"), {"c": c.cursor, "k": c.key}
        )


def test_a_consumer_killed_before_its_commit_loses_and_duplicates_nothing(tmp_path):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    legacy = create_legacy_engine(legacy_url)
    create_legacy_schema(legacy)
    erp = LegacyErp(legacy)
    for n in range(1, 11):
        erp.person_upsert(legacy_sample("customer", n), "JSMITH")
    state = create_state_engine(state_url)
    upgrade_schema(state)
    with state.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE effects (cursor INTEGER PRIMARY KEY, key TEXT)")

    marker = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, legacy_url, state_url, str(marker)], env=env, cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert child.poll() is None, "the consumer died before reaching the crash point"
            assert time.monotonic() < deadline, "the consumer never reached the crash point"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:  # pragma: no cover - only if an assertion fired
            child.kill()
            child.wait(10)

    first_batch = [c.cursor for c in erp.read(0, 3)]
    assert checkpoints.get(state, "legacy") == first_batch[-1]
    while consume_batch(erp, state, "legacy", record_effects, limit=3):
        pass
    with state.connect() as conn:
        cursors = [r[0] for r in conn.exec_driver_sql("SELECT cursor FROM effects ORDER BY 1")]
    everything = [c.cursor for c in erp.read(0, 100)]
    assert len(everything) == 10
    assert cursors == everything, "each change has its effect exactly once"
    assert checkpoints.get(state, "legacy") == everything[-1]
    legacy.dispose()
    state.dispose()
