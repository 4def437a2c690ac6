"""Failure classes: retry technical failures, record business ones, never lose a message.

A real dramatiq Worker runs over the embedded broker (a SQLite file in
tmp_path) with a fake exception store, so each test asserts on where a message
ended: the queue, the store, or the dead-letter table.
"""

from __future__ import annotations

from collections import Counter

import dramatiq
import pytest
from dramatiq.errors import ConnectionClosed
from hypothesis import given
from hypothesis import strategies as st

from bus import retry
from bus.brokers.sqlite import SqliteBroker
from bus.errors import BusinessError, TechnicalError
from tests.support.retry_bus import FakeStore, retry_broker, running_worker, wait_for


class FlakyBroker(SqliteBroker):
    """Fails every delayed enqueue (a retry) while ``retries_fail`` is set."""

    retries_fail = False

    def enqueue(self, message, *, delay=None):
        if delay is not None and self.retries_fail:
            raise ConnectionClosed(OSError("broker unreachable"))
        return super().enqueue(message, delay=delay)


@pytest.fixture
def store():
    return FakeStore()


@pytest.fixture
def broker(tmp_path, store):
    with retry_broker(tmp_path / "bus.db", store, broker_cls=FlakyBroker, max_retries=3) as b:
        yield b  # the actors below are declared on the global broker


@pytest.fixture
def worker(broker):
    with running_worker(broker, threads=2) as w:
        yield w


def _wait_for(predicate, within_s: float = 5.0):
    wait_for(predicate, within_s)


def _envelope(n: int = 0) -> dict:
    return {"message_id": f"m{n}", "n": n}


@given(st.integers(min_value=0, max_value=100), st.integers(1, 10_000), st.integers(1, 10**7))
def test_backoff_grows_exponentially_but_never_leaves_its_bounds(retries, min_ms, extra_ms):
    max_ms = min_ms + extra_ms
    delay = retry.backoff_ms(retries, min_ms=min_ms, max_ms=max_ms)
    step = min(max_ms, min_ms * 2**retries)
    assert step / 2 - 1 <= delay <= step


def test_defaults_retry_for_minutes_not_days():
    total_worst_ms = sum(
        min(retry.RETRY_MAX_BACKOFF_MS, retry.RETRY_MIN_BACKOFF_MS * 2**n)
        for n in range(retry.MAX_RETRIES)
    )
    assert 10 * 60_000 <= total_worst_ms <= 2 * 3600_000
    assert retry.RETRY_MAX_BACKOFF_MS < 30 * 60_000  # RabbitMQ's consumer_timeout


def test_setup_replaces_dramatiqs_retries(broker):
    names = [type(m).__name__ for m in broker.middleware]
    assert "Retries" not in names and "FailureClasses" in names


def test_a_business_error_is_recorded_once_and_never_retried(broker, store, worker):
    calls = Counter()

    @dramatiq.actor(queue_name="q")
    def reject(env):
        calls[env["n"]] += 1
        raise BusinessError(f"unknown customer C{env['n']}")

    reject.send(_envelope(1))
    _wait_for(lambda: store.records)
    broker.join("q", timeout=2000)
    (rec,) = store.records
    assert rec["failure_class"] == "business"
    assert rec["error_type"] == "BusinessError" and "C1" in rec["error_message"]
    assert rec["envelope"] == _envelope(1) and rec["attempts"] == 1
    assert "reject" in rec["call_site"]
    assert calls[1] == 1
    assert broker.message_counts("q") == (0, 0)


def test_a_technical_failure_that_clears_up_is_retried_and_never_recorded(broker, store, worker):
    calls = Counter()

    @dramatiq.actor(queue_name="q")
    def flaky(env):
        calls[env["n"]] += 1
        if calls[env["n"]] <= 2:
            raise TechnicalError("cloud ERP returned 503")

    flaky.send(_envelope(2))
    _wait_for(lambda: calls[2] == 3)
    broker.join("q", timeout=2000)
    assert store.records == []
    assert broker.message_counts("q") == (0, 0)


def test_a_technical_failure_that_persists_is_recorded_after_max_retries(broker, store, worker):
    calls = Counter()

    @dramatiq.actor(queue_name="q")
    def broken(env):
        calls[env["n"]] += 1
        raise RuntimeError("socket timeout")

    broken.send(_envelope(3))
    _wait_for(lambda: store.records)
    broker.join("q", timeout=2000)
    (rec,) = store.records
    assert rec["failure_class"] == "technical" and rec["error_type"] == "RuntimeError"
    assert rec["attempts"] == 4 and calls[3] == 4  # the first try and max_retries=3 retries
    assert rec["message"]["options"]["retries"] == 3
    assert broker.message_counts("q") == (0, 0)


def test_a_retry_that_cannot_be_enqueued_is_handed_back_not_acked(broker, store, worker):
    # dramatiq's Retries logs the failed enqueue and the worker acks: the message is lost.
    calls = Counter()
    broker.retries_fail = True

    @dramatiq.actor(queue_name="q")
    def fails_once(env):
        calls[env["n"]] += 1
        if calls[env["n"]] == 1:
            raise TechnicalError("timeout")

    fails_once.send(_envelope(4))
    _wait_for(lambda: calls[4] >= 2)  # handed back and delivered again, retry still failing
    broker.retries_fail = False
    broker.join("q", timeout=3000)
    assert store.records == []
    assert broker.message_counts("q") == (0, 0)


def test_a_failure_that_cannot_be_recorded_is_handed_back_until_the_store_is_back(
    broker, store, worker
):
    store.down = True
    calls = Counter()

    @dramatiq.actor(queue_name="q")
    def reject(env):
        calls[env["n"]] += 1
        raise BusinessError("stray write")

    reject.send(_envelope(5))
    _wait_for(lambda: calls[5] >= 2)
    assert broker.message_counts("q") == (1, 0)  # neither acked nor dead-lettered
    store.down = False
    broker.join("q", timeout=3000)
    assert [r["failure_class"] for r in store.records] == ["business"]


def test_an_undecodable_envelope_is_recorded_with_its_raw_bytes(broker, store, worker):
    from bus.envelope import envelope_from_message

    @dramatiq.actor(queue_name="q")
    def decode_it(env):
        envelope_from_message(dramatiq.middleware.CurrentMessage.get_current_message())

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    decode_it.send({"message_id": "bad", "domain": ""})
    _wait_for(lambda: store.records)
    (rec,) = store.records
    assert rec["failure_class"] == "undecodable"
    assert rec["envelope"] is None
    assert b'"bad"' in rec["raw"]
    assert rec["error_type"] == "MessageDecodeError"
