"""The SQL flag store (embedded default) and the per-process cache, on a SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from coexistence.flags import FULL, FlagError, FlagState, Mode, Rollout
from workers.bootstrap import App
from workers.config import ConfigError, Settings
from workers.db import create_state_engine
from workers.flags import FlagCache, FlagConflict, SqlFlagStore
from workers.migrate import upgrade as upgrade_schema

WATCHER = """
import json, sys
from workers.db import create_state_engine
from workers.flags import FlagCache, SqlFlagStore
cache = FlagCache(SqlFlagStore(create_state_engine(sys.argv[1]), poll_s=0.05))
cache.on_change(lambda old, new: print(json.dumps(
    {"domain": new.domain, "version": new.version}), flush=True))
cache.start()
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
cache.stop()
"""
#: Longest wait for the watcher process to report the change (a broken poll never does).
WATCH_LIMIT_S = 30.0


@pytest.fixture
def state_url(tmp_path):
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(state_url):
    engine = create_state_engine(state_url)
    upgrade_schema(engine)
    yield SqlFlagStore(engine, poll_s=0.05)
    engine.dispose()


def nxt(before: FlagState, mode: Mode, rollout: Rollout = FULL) -> FlagState:
    base = mode if rollout.is_full else before.mode
    return FlagState(before.domain, mode, base, rollout, before.version + 1)


def commit(store, before, after, reason="test", actor="alice", **kw):
    return store.commit(before, after, actor=actor, reason=reason, action="set", **kw)


def test_the_flags_are_rebuilt_from_the_audit(store):
    c0 = store.load()["customer"]
    c1 = commit(store, c0, nxt(c0, Mode.SHADOW))
    c2 = commit(store, c1, nxt(c1, Mode.CLOUD, Rollout(1000, {"region": frozenset({"WEST"})})))
    flags = store.load()
    assert flags["customer"] == c2
    assert flags["customer"].changed_at is not None
    assert flags["product"] == FlagState.initial("product")


def test_two_writers_planning_from_the_same_version_cannot_both_win(store):
    c0 = store.load()["customer"]
    commit(store, c0, nxt(c0, Mode.SHADOW))
    with pytest.raises(FlagConflict, match="changed meanwhile"):
        commit(store, c0, nxt(c0, Mode.SHADOW))
    assert [e.version for e in store.history("customer")] == [1]


def test_every_change_needs_an_actor_and_a_reason(store):
    c0 = store.load()["customer"]
    with pytest.raises(FlagError, match="reason"):
        commit(store, c0, nxt(c0, Mode.SHADOW), reason=" ")
    with pytest.raises(FlagError, match="actor"):
        commit(store, c0, nxt(c0, Mode.SHADOW), actor="")
    assert store.history() == []


def test_history_is_newest_first_and_keeps_what_was_forced(store):
    c0, p0 = store.load()["customer"], store.load()["product"]
    commit(store, c0, nxt(c0, Mode.SHADOW))
    commit(store, p0, nxt(p0, Mode.CLOUD), forced=True, overridden=("one step: skips",))
    entries = store.history()
    assert [(e.domain, e.forced) for e in entries] == [("product", True), ("customer", False)]
    assert entries[0].overridden == ("one step: skips",)
    assert entries[0].before.mode == Mode.LEGACY and entries[0].after.mode == Mode.CLOUD
    assert [e.domain for e in store.history("customer")] == ["customer"]


def test_a_cache_in_this_process_follows_changes_and_never_goes_back(store):
    cache = FlagCache(store).start()
    try:
        c0 = cache.state("customer")
        c1 = commit(store, c0, nxt(c0, Mode.SHADOW))
        assert cache.wait_for("customer", 1, 10.0)  # a bound for a failure
        assert cache.route_for("customer", "10042").shadow is not None
        cache.apply([c0])
        assert cache.state("customer") == c1
    finally:
        cache.stop()


@pytest.mark.timeout(30)  # a wait_for that ignored its timeout would hang here
def test_wait_for_gives_up_after_the_timeout(store):
    cache = FlagCache(store)
    assert cache.wait_for("customer", 5, 0.1) is False


def test_a_change_reaches_another_process_through_the_version_poll(store, state_url):
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, state_url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = iter(proc.stdout.readline, "")
        while "ready" not in json.loads(next(lines)):
            pass
        c0 = store.load()["customer"]
        commit(store, c0, nxt(c0, Mode.SHADOW))
        seen = {}
        reader = threading.Thread(target=lambda: seen.update(json.loads(next(lines))))
        reader.start()
        # A bound for a broken poll, not a latency claim: the line comes when it comes.
        reader.join(WATCH_LIMIT_S)
        assert seen == {"domain": "customer", "version": 1}
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(10)


def test_guard_settings_come_from_the_configuration_with_clear_errors():
    app = App(Settings.from_env({"COEXIST_MAX_DRIFT_PCT": "0.5", "COEXIST_HOME": "/nowhere",
                                 "COEXIST_FREEZE": "2026-11-28T00:00Z/2026-12-02T00:00Z"}))
    policy = app.policy
    assert policy.max_drift_pct == 0.5 and len(policy.freeze_windows) == 1
    with pytest.raises(ConfigError, match="COEXIST_CUTOVER_MAX_BACKLOG='many'"):
        Settings.from_env({"COEXIST_CUTOVER_MAX_BACKLOG": "many"})


def test_the_actor_is_explicit_else_from_the_configuration():
    def app(**env):
        return App(Settings.from_env(env))

    assert app(COEXIST_ACTOR="alice").actor("bob") == "bob"
    assert app(COEXIST_ACTOR="alice", USER="root").actor(None) == "alice"
    assert app(USER="root").actor(None) == "root"
    with pytest.raises(ConfigError, match="--actor"):
        app().actor(None)
