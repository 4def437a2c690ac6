"""The embedded broker's promise: kill -9 with messages in flight loses none.

No server needed: broker and state are SQLite files in tmp_path, shared by two
worker processes, as on a single-machine pilot.
"""

from __future__ import annotations

from bus.brokers.sqlite import SqliteBroker
from bus.db import create_state_engine
from bus.exception_store import ExceptionStore
from bus.publish import make_publisher
from tests.integration import bus_worker
from tests.support.bus_runs import Worker
from tests.support.bus_runs import assert_exactly_once as _assert_exactly_once
from tests.support.bus_runs import wait_for as _wait_for

#: Messages in the run; small enough for seconds on a loaded 2-core machine.
MESSAGES = 1_500
#: Lease of the workers' deliveries: a killed worker's messages reappear after this.
LEASE_MS = 1_000


def test_kill_9_of_one_of_two_workers_loses_nothing_and_applies_nothing_twice(tmp_path):
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_state_engine(state_url)
    bus_worker.prepare_state(engine)
    broker = SqliteBroker(tmp_path / "bus.db")
    args = ("--state-url", state_url, "--sqlite", str(tmp_path / "bus.db"),
            "--lease-ms", str(LEASE_MS), "--threads", "4")
    victim, survivor = Worker(tmp_path, *args), Worker(tmp_path, *args)
    try:
        publish = make_publisher(broker)
        messages = [bus_worker.message_for("apply_effect", n) for n in range(MESSAGES)]
        for i in range(0, MESSAGES, 500):
            publish(messages[i : i + 500])
        def victim_holds() -> int:
            return broker.db.conn.execute(
                "SELECT count(*) FROM bus_queue WHERE lease_owner LIKE ?",
                (f"%:{victim.proc.pid}:%",),
            ).fetchone()[0]

        # Kill it while it holds deliveries: on a loaded machine the survivor can be the
        # only one consuming at the moment the first tenth is done.
        _wait_for(lambda: bus_worker.effect_counts(engine)[0] >= MESSAGES // 10
                  and victim_holds() > 0,
                  "the first tenth of the effects, the victim holding deliveries",
                  [victim, survivor])
        victim.kill9()
        in_flight = victim_holds()
        assert bus_worker.effect_counts(engine)[0] < MESSAGES, "the kill came too late"
        assert in_flight > 0, "the killed worker held no message: nothing was proven"
        restarted = Worker(tmp_path, *args)
        try:
            _wait_for(lambda: bus_worker.effect_counts(engine)[1] >= MESSAGES,
                      "every effect", [survivor, restarted])
            # join returns once the queue holds no row at all: a row leaves only when
            # acked, so no lease is left to expire and nothing can be redelivered later.
            broker.join(bus_worker.QUEUE, timeout=10_000)
        finally:
            restarted.stop()
    finally:
        survivor.stop()
        victim.stop()
    _assert_exactly_once(engine, MESSAGES)
    assert broker.message_counts(bus_worker.QUEUE) == (0, 0)
    assert ExceptionStore(engine).open_count() == 0
