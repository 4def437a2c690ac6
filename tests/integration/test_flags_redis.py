"""Flags in real Redis: propagation to another process, restore after a flush, ordering."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from coexistence.flags import FULL, FlagState, Mode, Rollout
from workers.db import create_state_engine
from workers.flags import FlagCache, FlagNotPublished, RedisFlagStore
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration

#: The watcher process: follows the flags, prints the wall time each new version arrives.
WATCHER = """
import json, sys, time
from workers.db import create_state_engine
from workers.flags import FlagCache, FlagNotPublished, RedisFlagStore
url, prefix, state_url = sys.argv[1:4]
cache = FlagCache(RedisFlagStore.from_url(url, prefix, create_state_engine(state_url)))
cache.on_change(lambda old, new: print(json.dumps(
    {"domain": new.domain, "version": new.version, "mode": new.mode,
     "at": time.time()}), flush=True))
cache.start()
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
cache.stop()
"""


@pytest.fixture
def state_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_state_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    return url


@pytest.fixture
def store(redis_prefix, state_url):
    url, prefix = redis_prefix
    engine = create_state_engine(state_url)
    store = RedisFlagStore.from_url(url, prefix, engine)
    yield store
    store.client.close()
    engine.dispose()


def change(store, domain: str, mode: Mode, rollout: Rollout = FULL) -> FlagState:
    before = store.load()[domain]
    base = mode if rollout.is_full else before.mode
    after = FlagState(domain, mode, base, rollout, before.version + 1)
    return store.commit(before, after, actor="test", reason="integration", action="set")


def read_json_line(proc, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return json.loads(line)
    raise AssertionError("watcher process said nothing in time")


def test_a_change_reaches_another_process_within_a_second(redis_prefix, state_url, store):
    url, prefix = redis_prefix
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, url, prefix, state_url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # Initial states (version 0) are announced first; wait for "ready".
        while "ready" not in read_json_line(proc, 30):
            pass
        delays = []
        for mode in (Mode.SHADOW, Mode.CLOUD):
            sent = time.time()
            changed = change(store, "customer", mode)
            seen = read_json_line(proc, 5)
            assert (seen["domain"], seen["version"], seen["mode"]) == (
                "customer", changed.version, mode.value)
            delays.append(seen["at"] - sent)
        assert max(delays) < 1.0, f"propagation delays {delays}"
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(10)


def test_flags_come_back_from_the_sql_audit_after_redis_is_flushed(store):
    change(store, "customer", Mode.SHADOW)
    change(store, "product", Mode.SHADOW, Rollout(2500, {"warehouse": frozenset({"W01"})}))
    before = store.load()
    store.client.delete(store.key)  # flush: every flag key of this test's prefix
    assert store.read() == {}
    after = store.load()
    assert after == before
    assert after["product"].rollout.percent == 25.0
    assert store.read()["customer"].mode == Mode.SHADOW  # Redis holds them again


def test_a_running_cache_heals_after_a_flush_without_losing_a_version(store):
    cache = FlagCache(store).start()
    try:
        v1 = change(store, "customer", Mode.SHADOW)
        assert cache.wait_for("customer", v1.version, 10.0)  # a bound for a failure
        store.client.delete(store.key)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "customer" not in store.read():
            time.sleep(0.1)
        assert store.read()["customer"].version == v1.version
        assert cache.state("customer").mode == Mode.SHADOW
    finally:
        cache.stop()


def test_an_older_state_never_overwrites_a_newer_one_in_redis(store):
    v1 = change(store, "customer", Mode.SHADOW)
    v2 = change(store, "customer", Mode.CLOUD)
    assert store.publish(v1) is False
    assert store.read()["customer"] == v2
    cache = FlagCache(store)
    cache.apply([v2, v1])
    assert cache.state("customer").version == v2.version



def test_a_change_redis_missed_is_republished_from_the_audit(store):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    store.load()  # Redis filled with the initial states
    down = RedisFlagStore(redis.Redis(
        port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)), "unused:",
                          store.audit.engine)
    c0 = store.load()["customer"]
    with pytest.raises(FlagNotPublished, match="customer v1 is audited"):
        down.commit(c0, FlagState("customer", Mode.SHADOW, Mode.SHADOW, FULL, 1),
                    actor="test", reason="redis down", action="set")
    down.client.close()
    assert store.read()["customer"].version == 0  # Redis missed it
    cache = FlagCache(store).start()
    try:
        assert cache.wait_for("customer", 1, 5.0)
        assert store.read()["customer"].mode == Mode.SHADOW
    finally:
        cache.stop()


def test_the_cli_writes_through_redis_when_it_is_configured(
    store, redis_prefix, state_url, monkeypatch
):
    from click.testing import CliRunner

    from workers.cli import cli

    monkeypatch.setenv("COEXIST_STATE_URL", state_url)
    monkeypatch.setenv("COEXIST_REDIS_URL", redis_prefix[0])
    monkeypatch.setenv("COEXIST_REDIS_PREFIX", redis_prefix[1])
    monkeypatch.setenv("COEXIST_ACTOR", "alice")
    result = CliRunner().invoke(cli, ["cutover", "set", "customer", "shadow", "--force",
                                      "--reason", "through redis", "--no-wait"])
    assert result.exit_code == 0, result.output
    assert store.read()["customer"].mode == Mode.SHADOW
    status = CliRunner().invoke(cli, ["cutover", "status", "--format", "json"])
    assert json.loads(status.output)["store"] == "redis"

