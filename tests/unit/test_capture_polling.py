"""The router's polling of its captures (``LeasedCaptures.run_due``) and a capture's look
at an empty feed (no state-database transaction), plus the stage trace (``bus.stages``).

Light-load latency was dominated by the idle poll (0.2 s: a change waited ~100 ms on
average for the next look, see scripts/bench/router.py --stages); a feed that had changes
recently now looks again after its fast interval, an idle one after ``poll_s``.  Each
capture runs in its own thread (``LeasedCaptures.run_forever``), so one waiting on its feed
never holds back the other; a failing one backs off."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from bus import stages
from bus.db import create_state_engine
from bus.errors import TechnicalError
from coexistence.flags import FlagSource
from coexistence.router import CLOUD, LEGACY
from tests.support.records import ACME as CUSTOMER
from workers import checkpoints
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema
from workers.router import lease as lease_module
from workers.router.capture import CaptureLoop, checkpoint_name
from workers.router.lease import ACTIVE_WINDOW_S, LeasedCaptures
from workers.router.queues import Subscription


@pytest.fixture
def state():
    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


class Loop:
    def __init__(self, system, reads):
        self.system, self.fence, self.reads, self.runs = system, None, list(reads), 0

    def run_once(self):
        self.runs += 1
        return type("Stats", (), {"read": self.reads.pop(0) if self.reads else 0})()


class Clock:
    """``workers.router.lease``'s monotonic clock, moved by hand (no measured durations)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(lease_module, "time", fake)
    return fake


def held(state, loops, **kw) -> LeasedCaptures:
    captures = LeasedCaptures(state, loops, holder="me", **kw)
    for lease in captures.leases.values():
        lease.try_acquire()
    return captures


def test_a_capture_that_read_changes_is_due_at_once_then_polls_fast_while_active(state, clock):
    legacy = Loop(LEGACY, [5, 0, 0])
    captures = held(state, [legacy], fast_poll_s={LEGACY: 0.02})
    assert captures.run_due(LEGACY, 0.2) == (5, 0.0)  # a backlog drains without a pause
    assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.02)), "people are typing"
    clock.now += 0.01
    assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.01))
    assert legacy.runs == 2, "not due yet: not run"
    clock.now += 0.01
    assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.02)) and legacy.runs == 3
    captures.close()


def test_an_idle_capture_and_one_without_a_fast_interval_poll_at_the_idle_interval(state, clock):
    legacy, cloud = Loop(LEGACY, [0, 0]), Loop(CLOUD, [3, 0])
    captures = held(state, [legacy, cloud], fast_poll_s={LEGACY: 0.02})
    assert captures.run_due(CLOUD, 0.2) == (3, 0.0)  # the cloud is due again at once
    assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.2)), (
        "legacy had no change in its window")
    assert captures.run_due(CLOUD, 0.2) == (0, pytest.approx(0.2)), (
        "the cloud (an HTTP API) never polls fast")
    # Legacy active, but longer ago than the window: idle again.
    legacy.reads = [4, 0]
    clock.now += 0.2
    assert captures.run_due(LEGACY, 0.2)[0] == 4
    clock.now += ACTIVE_WINDOW_S + 1
    assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.2))
    captures.close()


def test_a_standby_looks_again_at_the_idle_interval(state):
    other = LeasedCaptures(state, [Loop(LEGACY, [])], holder="other")
    for lease in other.leases.values():
        lease.try_acquire()
    standby = LeasedCaptures(state, [Loop(LEGACY, [1])], holder="me")
    assert standby.run_due(LEGACY, 0.2) == (0, 0.2) and standby.loops[0].runs == 0
    other.close()


class BlockedFeed(Loop):
    """A capture whose feed read does not return until released (the cloud's HTTP API
    behind a server busy with a batch of writes, a large batch of echoes)."""

    def __init__(self, system):
        super().__init__(system, [])
        self.entered, self.release = threading.Event(), threading.Event()

    def run_once(self):
        self.entered.set()
        assert self.release.wait(10), "never released"
        return super().run_once()


class Looking(Loop):
    """A capture whose feed is empty; ``looked`` is set once it has looked three times."""

    def __init__(self, system):
        super().__init__(system, [])
        self.looked = threading.Event()

    def run_once(self):
        stats = super().run_once()
        if self.runs >= 3:
            self.looked.set()
        return stats


def test_a_capture_waiting_on_its_feed_never_holds_back_the_other_erps_capture(state):
    cloud, legacy = BlockedFeed(CLOUD), Looking(LEGACY)
    captures = held(state, [cloud, legacy], fast_poll_s={LEGACY: 0.001})
    stop = threading.Event()
    runner = threading.Thread(target=captures.run_forever, args=(stop, 0.001), daemon=True)
    runner.start()
    try:
        assert cloud.entered.wait(5), "the cloud's capture started"
        assert legacy.looked.wait(5), (
            "the legacy capture looked at its feed again and again while the cloud's "
            "capture was still waiting on its own")
        assert not cloud.release.is_set() and cloud.runs == 0
    finally:
        cloud.release.set()
        stop.set()
        runner.join(5)
    assert not runner.is_alive(), "every capture thread ends once stopped"
    captures.close()


class Failing(Loop):
    def __init__(self, system, outcomes):
        super().__init__(system, [])
        self.outcomes = list(outcomes)

    def run_once(self):
        self.runs += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return type("Stats", (), {"read": outcome})()


def test_a_capture_that_keeps_failing_backs_off_and_logs_once_per_state_change(
        state, clock, caplog):
    away = TechnicalError("legacy ERP unreachable")
    legacy = Failing(LEGACY, [3, away, away, away, away, away, away, away, 0, away])
    captures = held(state, [legacy], fast_poll_s={LEGACY: 0.02})
    assert captures.run_due(LEGACY, 0.2) == (3, 0.0)  # active: would poll every 20 ms
    waits = []
    with caplog.at_level(logging.INFO, logger=lease_module.__name__):
        for _ in range(7):
            read, wait_s = captures.run_due(LEGACY, 0.2)
            assert read == 0
            waits.append(round(wait_s, 3))
            assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(wait_s)), (
                "not tried again before its backoff is over")
            clock.now += wait_s
        assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0], "doubling, capped"
        assert legacy.runs == 8
        assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.2)), (
            "working again: back to its own pace (idle: its last change was 22.6 s ago)")
        clock.now += 0.2
        assert captures.run_due(LEGACY, 0.2) == (0, pytest.approx(0.2)), (
            "a new failure backs off from the start again")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.getMessage().startswith("capture from")]
    failed = ("WARNING", "capture from legacy failed; retrying with backoff: "
                         "TechnicalError: legacy ERP unreachable")
    assert lines == [failed, ("INFO", "capture from legacy works again"), failed], (
        "one line when it starts failing, one when it works again")
    captures.close()


def test_a_capture_failing_differently_logs_the_new_failure(state, clock, caplog):
    legacy = Failing(LEGACY, [TechnicalError("timeout"), TechnicalError("timeout"),
                              TechnicalError("connection refused")])
    captures = held(state, [legacy])
    with caplog.at_level(logging.WARNING, logger=lease_module.__name__):
        for _ in range(3):
            clock.now += captures.run_due(LEGACY, 0.2)[1]
    assert [r.getMessage().rpartition(": ")[2] for r in caplog.records
            if r.getMessage().startswith("capture from")] == [
        "timeout", "connection refused"]
    captures.close()


def count_transactions(engine) -> list[str]:
    begun: list[str] = []
    event.listen(engine, "begin", lambda conn: begun.append("begin"))
    return begun


def test_an_empty_look_at_the_feed_opens_no_state_transaction_and_a_batch_reads_the_stored_one(
        state):
    legacy = InMemoryErp(LEGACY)
    loop = CaptureLoop(LEGACY, legacy, {LEGACY: legacy, CLOUD: InMemoryErp(CLOUD)},
                       FlagSource(), state,
                       subscriptions=[Subscription("probe", frozenset({"customer"}))])
    assert loop.run_once().read == 0  # the first look reads the checkpoint
    begun = count_transactions(state)
    for _ in range(5):
        assert loop.run_once().read == 0
    assert begun == [], "an empty feed is looked at without the state database"
    legacy.person_upsert(CUSTOMER, "JSMITH")
    assert loop.run_once().routed == 1 and begun, "a batch commits as before"
    assert checkpoints.get(state, checkpoint_name(LEGACY)) == 1


def test_a_capture_whose_checkpoint_another_loop_moved_reads_from_the_stored_one(state):
    legacy = InMemoryErp(LEGACY)
    erps = {LEGACY: legacy, CLOUD: InMemoryErp(CLOUD)}
    subs = [Subscription("probe", frozenset({"customer"}))]
    a = CaptureLoop(LEGACY, legacy, erps, FlagSource(), state, subscriptions=subs)
    b = CaptureLoop(LEGACY, legacy, erps, FlagSource(), state, subscriptions=subs)
    assert a.run_once().read == 0  # a knows checkpoint 0
    legacy.person_upsert(CUSTOMER, "JSMITH")
    assert b.run_once().routed == 1  # another holder (a takeover) routed it
    legacy.person_upsert(CUSTOMER.model_copy(update={"credit_hold": True}), "JSMITH")
    stats = a.run_once()
    assert (stats.read, stats.routed) == (1, 1), "only the change after the stored checkpoint"
    assert checkpoints.get(state, checkpoint_name(LEGACY)) == 2


def test_the_stage_trace_writes_one_line_per_batch_and_nothing_when_off(tmp_path):
    path = tmp_path / "stages.jsonl"
    stages.mark("capture_read", ["customer:1"])  # off: nothing
    stages.enable(str(path))
    try:
        stages.mark("capture_read", ["customer:1", "customer:2"], at=10.0)
        stages.mark_each("received", [(11.0, "customer:1"), (12.0, "customer:2")])
        stages.mark("acked", [])  # no keys: no line
    finally:
        stages.enable(None)
    stages.mark("written", ["customer:1"])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["s"], x.get("t"), x.get("k"), x.get("tk")) for x in lines] == [
        ("capture_read", 10.0, ["customer:1", "customer:2"], None),
        ("received", None, None, [[11.0, "customer:1"], [12.0, "customer:2"]]),
    ]
