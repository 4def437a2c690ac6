"""The cross-layer retry budget (``bus.budget``): the adapter's in-call retries and the bus's
re-deliveries spend from one count per message, so a message that keeps failing makes a
bounded number of attempts in all and ends as a technical exception with its history.

The adapter runs over an ``httpx.MockTransport`` that counts requests; the bus part runs a
real dramatiq Worker on the embedded broker, as ``test_retry.py`` does.
"""

from __future__ import annotations

import time

import dramatiq
import httpx
import pytest

from bus import budget as retry_budget
from bus import retry
from bus.errors import TechnicalError
from tests.support.retry_bus import FakeStore, retry_broker, running_worker, wait_for
from workers import cloud_erp
from workers.cloud_erp import CloudErp, CloudTechnicalError
from workers.config import Settings


class Failing:
    """A cloud that answers every request with ``status`` (and Retry-After)."""

    def __init__(self, status: int = 503, retry_after: str | None = None):
        self.status, self.retry_after, self.requests = status, retry_after, 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return httpx.Response(self.status, headers=headers, json={"error": {"code": "x"}})


def _erp(cloud: Failing, attempts: int = 6) -> CloudErp:
    return CloudErp("http://cloud.test", transport=httpx.MockTransport(cloud),
                    attempts=attempts, sleep=lambda s: None)


def test_without_a_message_the_adapter_keeps_its_own_attempts():
    cloud = Failing()
    with _erp(cloud, attempts=4) as erp, pytest.raises(CloudTechnicalError,
                                                        match="failed 4 times"):
        erp.get("customer", "C1")
    assert cloud.requests == 4


def test_the_adapter_stops_retrying_when_the_message_budget_is_spent():
    cloud = Failing()
    budget = retry_budget.Budget(limit=10, spent_before=7)
    with _erp(cloud) as erp, retry_budget.scope(budget), \
            pytest.raises(CloudTechnicalError, match="retry budget: 10 of 10") as caught:
        erp.get("customer", "C1")
    assert cloud.requests == 3  # 10 - 7, not the adapter's 6
    assert budget.failures == 3 and retry_budget.is_counted(caught.value)


def test_the_budget_is_shared_by_the_calls_of_one_delivery():
    cloud = Failing()
    budget = retry_budget.Budget(limit=8)
    with _erp(cloud, attempts=5) as erp, retry_budget.scope(budget):
        with pytest.raises(CloudTechnicalError, match="failed 5 times"):
            erp.get("customer", "C1")
        with pytest.raises(CloudTechnicalError, match="failed 3 times"):
            erp.get("customer", "C2")
    assert cloud.requests == 8


def test_no_in_call_retry_waits_past_the_delivery_deadline():
    # Retry-After 5 s (the backoff's cap) with 1 s left: fail now, let the bus retry later.
    cloud = Failing(429, retry_after="5")
    budget = retry_budget.Budget(limit=100, deadline=time.monotonic() + 1.0)
    with _erp(cloud) as erp, retry_budget.scope(budget), \
            pytest.raises(CloudTechnicalError, match="delivery deadline"):
        erp.get("customer", "C1")
    assert cloud.requests == 1


def test_the_settings_are_the_code_defaults_and_reach_the_middleware():
    s = Settings()
    assert s.cloud_retry_attempts == cloud_erp.CLOUD_RETRY_ATTEMPTS
    assert s.retry_options() == {
        "max_retries": retry.MAX_RETRIES, "min_backoff_ms": retry.RETRY_MIN_BACKOFF_MS,
        "max_backoff_ms": retry.RETRY_MAX_BACKOFF_MS, "budget": retry_budget.RETRY_BUDGET,
        "delivery_s": retry_budget.RETRY_DELIVERY_S}
    with pytest.raises(ValueError, match="COEXIST_RETRY_MIN_BACKOFF_S 30 is above"):
        Settings(retry_min_backoff_s=30, retry_max_backoff_s=20)


def test_the_worst_case_is_bounded_in_attempts_and_time():
    """The defaults' worst case, as docs/architecture.md states it: at most RETRY_BUDGET
    failed attempts; time at most the bus's backoffs plus each delivery's deadline and
    one request timeout."""
    s = Settings()
    deliveries = s.retry_max_retries + 1
    assert s.retry_budget < deliveries * s.cloud_retry_attempts  # the budget binds
    backoffs = sum(min(s.retry_max_backoff_s, s.retry_min_backoff_s * 2**n)
                   for n in range(s.retry_max_retries))
    worst_s = backoffs + deliveries * (s.retry_delivery_s + cloud_erp.CLOUD_TIMEOUT_S)
    assert worst_s < 2 * 3600


# ---------------------------------------------------------------------- through the bus


@pytest.fixture
def store():
    return FakeStore()


@pytest.fixture
def broker(tmp_path, store):
    with retry_broker(tmp_path / "bus.db", store, max_retries=8, budget=7) as b:
        yield b


@pytest.fixture
def worker(broker):
    with running_worker(broker, threads=1) as w:
        yield w


def _wait_for(predicate, within_s: float = 10.0):
    wait_for(predicate, within_s)


def test_a_message_spends_one_budget_over_http_attempts_and_deliveries(broker, store, worker):
    cloud = Failing(503)
    erp = _erp(cloud, attempts=3)

    @dramatiq.actor(queue_name="budget")
    def write(env):
        erp.get("customer", env["key"])

    write.send({"message_id": "m1", "key": "C1"})
    _wait_for(lambda: store.records)
    broker.join("budget", timeout=5000)
    # 3 + 3 + 1 failed HTTP attempts = the budget of 7, in 3 deliveries (not 9 x 3 = 27).
    assert cloud.requests == 7
    [rec] = store.records
    assert rec["failure_class"] == "technical"
    assert "retry budget spent: 7 failed attempts of 7 in 3 deliveries" in rec["error_message"]
    options = rec["message"]["options"]
    assert options["failures"] == 7 and options["retries"] == 2
    history = options["retry_history"]
    assert [h.split(": ", 1)[1].split(";")[0] for h in history] == [
        "3 failed attempt(s)", "3 failed attempt(s)", "1 failed attempt(s)"]
    assert all("CloudTechnicalError" in h for h in history)
    erp.close()


def test_a_delivery_failing_without_http_counts_one(broker, store, worker):
    calls = []

    @dramatiq.actor(queue_name="budget")
    def flaky(env):
        calls.append(1)
        raise TechnicalError("state database unreachable")

    flaky.send({"message_id": "m2"})
    _wait_for(lambda: store.records)
    assert len(calls) == 7  # the budget (7) binds before max_retries (8 -> 9 deliveries)
    assert store.records[0]["message"]["options"]["failures"] == 7


def test_max_retries_still_ends_a_message_with_budget_left(broker, store, worker):
    calls = []

    @dramatiq.actor(queue_name="budget", max_retries=1)
    def flaky(env):
        calls.append(1)
        raise TechnicalError("down")

    flaky.send({"message_id": "m3"})
    _wait_for(lambda: store.records)
    assert len(calls) == 2
    assert "2 deliveries (1 retries), 2 failed attempts of 7" in \
        store.records[0]["error_message"]


def test_a_replay_starts_with_a_fresh_budget():
    from bus.exception_store import reset_for_replay

    message = {"queue_name": "coexist.write.cloud.DQ", "options": {
        "retries": 3, "failures": 24, "retry_history": ["..."], "max_retries": 9}}
    options = reset_for_replay(message, 7)["options"]
    assert "failures" not in options and "retry_history" not in options
    assert options["retries"] == 0 and options["max_retries"] == 9


def test_a_retry_after_beyond_the_in_call_cap_goes_to_the_bus():
    cloud = Failing(429, retry_after="60")
    with _erp(cloud) as erp, retry_budget.scope(retry_budget.Budget(limit=24)), \
            pytest.raises(CloudTechnicalError, match="Retry-After 60 s: retried by the bus") \
            as caught:
        erp.get("customer", "C1")
    assert cloud.requests == 1  # no in-call attempt spent before the server's time
    assert caught.value.retry_after_s == 60


class _Enqueued:
    def __init__(self):
        self.delays = []

    def get_actor(self, name):
        raise LookupError(name)

    def enqueue(self, message, *, delay=None):
        self.delays.append(delay)


def test_the_bus_waits_at_least_retry_after_up_to_its_cap():
    middleware = retry.FailureClasses(FakeStore(), min_backoff_ms=100, max_backoff_ms=90_000)
    broker = _Enqueued()
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={},
                               options={})
    error = CloudTechnicalError("429")
    error.retry_after_s = 60
    middleware._route(broker, message, error)
    error.retry_after_s = 3600
    middleware._route(broker, message, error)
    middleware._route(broker, message, CloudTechnicalError("no Retry-After"))
    assert broker.delays[0] == 60_000 and broker.delays[1] == 90_000
    assert broker.delays[2] <= 100
