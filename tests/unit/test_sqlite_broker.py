"""The embedded SQLite broker: leases, acks, dead letters, delays (one file in tmp_path)."""

from __future__ import annotations

import time

import dramatiq
import pytest

from bus.brokers import make_broker, request_redelivery
from bus.brokers.sqlite import SqliteBroker, connect


def _message(queue: str = "q", n: int = 0) -> dramatiq.Message:
    return dramatiq.Message(queue_name=queue, actor_name="act", args=({"n": n},), kwargs={},
                            options={})


@pytest.fixture
def broker(tmp_path):
    b = SqliteBroker(tmp_path / "bus.db", lease_ms=120, poll_interval_ms=5,
                     redelivery_delay_ms=0)
    yield b
    b.close()


def _take(consumer, *, within_s: float = 10.0):
    """The next message, polling at least once (a stalled machine still looks) and for at
    most ``within_s`` (a bound for a failure, never a figure)."""
    deadline = time.monotonic() + within_s
    while True:
        message = next(consumer)
        if message is not None or time.monotonic() >= deadline:
            return message


def test_make_broker_without_a_url_gives_the_embedded_broker(tmp_path):
    broker = make_broker(None, sqlite_path=tmp_path / "b.db")
    assert isinstance(broker, SqliteBroker)
    broker.close()


def test_make_broker_rejects_a_url_that_is_not_amqp(tmp_path):
    with pytest.raises(ValueError, match="amqp://"):
        make_broker("redis://localhost", sqlite_path=tmp_path / "b.db")


def test_an_acked_message_is_gone_for_every_consumer(broker):
    broker.enqueue(_message())
    consumer = broker.consume("q", prefetch=4, timeout=50)
    message = _take(consumer)
    assert message.args == ({"n": 0},)
    consumer.ack(message)
    assert broker.message_counts("q") == (0, 0)
    assert _take(broker.consume("q", timeout=20), within_s=0.2) is None


class VirtualClock:
    """The broker's clocks (lease expiry, delays, polling) on a virtual time line.

    Polling sleeps advance it, so a consumer's ``next()`` returns as soon as its
    timeout has passed on the virtual line; nothing depends on how fast this machine
    runs the test.
    """

    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def millis(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000

    def sleep(self, seconds: float) -> None:
        self.ms += max(1, round(seconds * 1000))

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock(monkeypatch):
    import bus.brokers.sqlite as module

    clock = VirtualClock()
    monkeypatch.setattr(module, "current_millis", clock.millis)
    monkeypatch.setattr(module, "time", clock)
    return clock


def _first(consumer, clock, *, until_ms: int):
    """(first message, virtual time it came) polling until ``until_ms``; (None, now) if none."""
    while clock.ms <= until_ms:
        message = next(consumer)
        if message is not None:
            return message, clock.ms
    return None, clock.ms


def test_a_message_held_by_a_dead_consumer_comes_back_when_its_lease_expires(tmp_path, clock):
    broker = SqliteBroker(tmp_path / "b.db", lease_ms=500, poll_interval_ms=5)
    broker.enqueue(_message())
    taken_at = clock.ms
    dead = broker.consume("q", timeout=50)
    assert next(dead) is not None
    # The consumer "dies": no ack, no renewal.  Another consumer must not see the
    # message while the lease runs, and must get it after.
    other = broker.consume("q", timeout=50)
    redelivered, at = _first(other, clock, until_ms=taken_at + 2_000)
    assert redelivered is not None and redelivered.redelivered
    assert taken_at + 500 <= at < taken_at + 600
    other.ack(redelivered)
    assert broker.message_counts("q") == (0, 0)
    broker.close()


def test_a_living_consumer_renews_its_lease_so_a_slow_message_is_not_delivered_twice(
        tmp_path, clock):
    broker = SqliteBroker(tmp_path / "b.db", lease_ms=300, poll_interval_ms=5)
    broker.enqueue(_message())
    slow = broker.consume("q", timeout=20)
    held = next(slow)
    assert held is not None
    other = broker.consume("q", timeout=20)
    end = clock.ms + 3 * 300  # three lease lengths
    while clock.ms < end:
        assert next(slow) is None  # the consumer keeps polling, which renews
        assert next(other) is None
    slow.ack(held)
    assert broker.message_counts("q") == (0, 0)
    broker.close()


def test_a_delayed_message_is_invisible_until_its_delay_has_passed(tmp_path, clock):
    broker = SqliteBroker(tmp_path / "b.db", lease_ms=120, poll_interval_ms=5)
    sent_at = clock.ms
    broker.enqueue(_message(), delay=150)
    consumer = broker.consume("q", timeout=20)
    message, at = _first(consumer, clock, until_ms=sent_at + 2_000)
    assert message is not None
    assert sent_at + 150 <= at < sent_at + 200
    broker.close()


def test_a_nacked_message_moves_to_the_dead_letter_table_with_its_body(broker):
    sent = broker.enqueue(_message(n=7))
    consumer = broker.consume("q", timeout=20)
    consumer.nack(_take(consumer))
    assert broker.message_counts("q") == (0, 1)
    conn = connect(broker.path)
    body, reason = conn.execute("SELECT body, reason FROM bus_dead_letters").fetchone()
    assert dramatiq.Message.decode(body).message_id == sent.message_id
    assert "rejected" in reason


def test_a_redelivery_request_puts_the_message_back_instead_of_dead_lettering_it(broker):
    broker.enqueue(_message())
    consumer = broker.consume("q", timeout=20)
    message = _take(consumer)
    request_redelivery(message)
    consumer.nack(message)
    assert broker.message_counts("q") == (1, 0)
    assert _take(consumer) is not None


def test_a_row_that_is_not_a_dramatiq_message_is_dead_lettered_with_its_raw_bytes(broker):
    broker.declare_queue("q")
    conn = connect(broker.path)
    conn.execute(
        "INSERT INTO bus_queue (queue_name, message_id, body, visible_at_ms, enqueued_at_ms)"
        " VALUES ('q', 'x', ?, 0, 0)",
        (b"\xff not json",),
    )
    consumer = broker.consume("q", timeout=20)
    assert _take(consumer, within_s=0.1) is None
    body, reason = conn.execute("SELECT body, reason FROM bus_dead_letters").fetchone()
    assert body == b"\xff not json" and "undecodable" in reason


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered_after_the_delivery_limit(
    tmp_path, clock,
):
    broker = SqliteBroker(tmp_path / "b.db", lease_ms=30, poll_interval_ms=5, delivery_limit=3)
    broker.enqueue(_message())
    for _ in range(3):
        message, _at = _first(broker.consume("q", timeout=50), clock, until_ms=clock.ms + 1_000)
        assert message is not None  # and its consumer "dies"
    # The fourth delivery would exceed the limit: it is dead-lettered when its lease ends.
    message, _at = _first(broker.consume("q", timeout=20), clock, until_ms=clock.ms + 1_000)
    assert message is None
    assert broker.message_counts("q") == (0, 1)


def test_enqueue_many_inserts_a_batch_in_one_transaction(broker):
    broker.enqueue_many([_message(n=i) for i in range(50)])
    assert broker.message_counts("q") == (50, 0)
    with pytest.raises(AttributeError):
        broker.enqueue_many([_message(n=1), object()])  # type: ignore[list-item]
    assert broker.message_counts("q") == (50, 0)


def test_graceful_close_gives_prefetched_messages_back_at_once(broker):
    for i in range(3):
        broker.enqueue(_message(n=i))
    consumer = broker.consume("q", prefetch=3, timeout=20)
    first = _take(consumer)
    consumer.requeue([first])
    consumer.close()
    other = broker.consume("q", prefetch=3, timeout=20)
    got = [_take(other) for _ in range(3)]
    assert sorted(m.args[0]["n"] for m in got) == [0, 1, 2]


class _Store:
    def __init__(self, down: bool = False):
        self.records: list[dict] = []
        self.down = down

    def record(self, **fields) -> int:
        if self.down:
            raise ConnectionError("database down")
        self.records.append(fields)
        return len(self.records)


def test_the_drain_moves_dead_letters_into_the_store_only_once_recorded(broker):
    from bus.dlq_drain import make_drain

    sent = broker.enqueue(_message(n=3))
    consumer = broker.consume("q", timeout=20)
    consumer.nack(_take(consumer))
    with pytest.raises(ConnectionError):
        make_drain(broker, _Store(down=True)).run_once()
    assert broker.message_counts("q") == (0, 1)  # still there
    store = _Store()
    assert make_drain(broker, store).run_once() == 1
    assert broker.message_counts("q") == (0, 0)
    (rec,) = store.records
    assert rec["failure_class"] == "dead_letter" and rec["message_id"] == sent.message_id
    assert rec["envelope"] == {"n": 3} and "rejected" in rec["error_message"]
