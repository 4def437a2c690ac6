"""What a failed message writes to the log: one line from the failure middleware, never
dramatiq's ERROR with a traceback for a failure we classified (a stray write is a business
event, a 429 that will be retried is routine); a bug keeps its ERROR and traceback.

dramatiq's StubBroker and Worker in this process, a fake exception store.
"""

from __future__ import annotations

import logging
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from bus.brokers import setup
from bus.errors import BusinessError, TechnicalError

#: Longest wait for the worker to handle the messages (a bound for a failure).
WAIT_S = 20.0


class FakeStore:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def record(self, **fields) -> int:
        self.records.append(fields)
        return len(self.records)


class StrayWrite(BusinessError):
    pass


class TooManyRequests(TechnicalError):
    pass


@pytest.fixture
def run(caplog):
    broker = StubBroker()
    broker.emit_after("process_boot")
    store = FakeStore()
    setup(broker, store=store, retry_options={"max_retries": 1, "min_backoff_ms": 1,
                                              "max_backoff_ms": 2})
    calls: list[str] = []

    @dramatiq.actor(broker=broker, queue_name="q", actor_name="fails")
    def fails(kind: str) -> None:
        calls.append(kind)
        if kind == "stray":
            raise StrayWrite("JSMITH changed customer 10042 in cloud, not its SoR")
        if kind == "429":
            raise TooManyRequests("429 from the cloud ERP; Retry-After 1")
        raise KeyError("a bug")

    def go(*kinds: str) -> list[logging.LogRecord]:
        worker = dramatiq.Worker(broker, worker_timeout=10, worker_threads=1)
        worker.start()
        try:
            with caplog.at_level(logging.INFO):
                for kind in kinds:
                    fails.send(kind)
                deadline = time.monotonic() + WAIT_S
                while len(store.records) < len(kinds) and time.monotonic() < deadline:
                    time.sleep(0.01)
                broker.join("q", timeout=int(WAIT_S * 1000))
        finally:
            worker.stop()
        assert len(store.records) == len(kinds)
        return list(caplog.records)

    yield go, store
    broker.close()


def _errors(records) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.ERROR]


def test_a_business_failure_and_a_retried_technical_one_write_no_error_and_no_traceback(run):
    go, store = run
    records = go("stray", "429")
    assert _errors(records) == []
    assert not [r for r in records if r.exc_info]
    mine = [r.getMessage() for r in records if r.name == "bus.retry"]
    assert any("Retrying message" in m and "TooManyRequests" in m for m in mine)
    assert any("recorded as business exception" in m for m in mine)
    assert sorted(r["failure_class"] for r in store.records) == ["business", "technical"]


def test_a_bug_keeps_dramatiq_s_error_with_its_traceback(run):
    go, _store = run
    records = go("bug")
    errors = _errors(records)
    assert errors and all(r.exc_info and isinstance(r.exc_info[1], KeyError) for r in errors)
