"""SQLite's one-relay-at-a-time lease after its holder was killed: a relay restarted on the
same host takes it over at once (the holder's process is gone), instead of publishing
nothing for ``RELAY_LEASE_S``; a live holder keeps it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from sqlalchemy.orm import Session

from bus.envelope import new_envelope
from bus.outbox import OutboxRelay, add_to_outbox
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no such process any more
    return child.pid


def setup(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    with Session(engine) as session:
        env = new_envelope(domain="customer", kind="event", key="1", payload={},
                           source_system="legacy", source_version=1)
        add_to_outbox(session, env, actor_name="a", queue_name="q")
        session.commit()
    return engine


def test_a_relay_takes_over_the_lease_of_a_killed_relay_at_once(tmp_path):
    engine = setup(tmp_path)
    killed = OutboxRelay(engine, lambda rows: None,
                         name=f"{socket.gethostname()}:{dead_pid()}:abc123")
    assert killed._take_lease()  # held for RELAY_LEASE_S, never released: it was killed
    published: list = []
    restarted = OutboxRelay(engine, published.extend)
    assert restarted.run_once() == 1 and len(published) == 1
    engine.dispose()


def test_a_live_relay_keeps_its_lease(tmp_path):
    engine = setup(tmp_path)
    parent = os.getppid()  # alive, and not this process
    alive = OutboxRelay(engine, lambda rows: None,
                        name=f"{socket.gethostname()}:{parent}:abc123")
    assert alive._take_lease()
    other = OutboxRelay(engine, lambda rows: None)
    assert other.run_once() == 0
    engine.dispose()


def test_a_lease_held_in_another_hosts_name_runs_out_as_before(tmp_path):
    engine = setup(tmp_path)
    there = OutboxRelay(engine, lambda rows: None, name=f"not-{socket.gethostname()}:1:x")
    assert there._take_lease()
    other = OutboxRelay(engine, lambda rows: None)
    assert other.run_once() == 0
    engine.dispose()
