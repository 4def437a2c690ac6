"""Our RabbitMQ broker on a real server: queue arguments, confirmed batches, the drain.

Every test runs on classic AND quorum queues, in the run's vhost with queue
names of its own (a vhost per test costs seconds of rabbitmqctl).
"""

from __future__ import annotations

import uuid
from urllib.parse import unquote, urlsplit

import dramatiq
import pika
import pytest

from bus.brokers import make_broker
from bus.brokers.rabbitmq import CoexistRabbitmqBroker
from bus.dlq_drain import RabbitmqDlqDrain
from bus.publish import PublishError, RabbitmqBatchPublisher, make_publisher

pytestmark = pytest.mark.integration


class FakeStore:
    def __init__(self):
        self.records: list[dict] = []

    def record(self, **fields) -> int:
        self.records.append(fields)
        return len(self.records)


@pytest.fixture(params=["classic", "quorum"])
def broker(request, rabbit_vhost):
    b = make_broker(rabbit_vhost, queue_type=request.param)
    b.vhost = unquote(urlsplit(rabbit_vhost).path.lstrip("/"))
    b.work = f"work_{uuid.uuid4().hex[:8]}"
    yield b
    for name in b.queue_names(b.work):
        b.channel.queue_delete(name)
    b.close()


def _msg(n: int, queue: str) -> dramatiq.Message:
    return dramatiq.Message(queue_name=queue, actor_name="act", args=({"n": n},), kwargs={},
                            options={}, message_id=f"m{n}")


def test_dead_letter_queues_have_no_ttl_and_every_queue_has_the_configured_type(broker):
    work = broker.work
    broker.declare_queue(work, ensure=True)
    typed = {"x-queue-type": "quorum"} if broker.queue_type == "quorum" else {}
    expected = {
        # dramatiq's own broker declares .XQ with an x-message-ttl of 7 days; RabbitMQ
        # refuses (406 inequivalent arg) a redeclaration whose arguments differ.
        f"{work}.XQ": typed,
        work: {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{work}.XQ", **typed},
    }
    if broker.queue_type == "quorum":
        expected[work].update({"x-delivery-limit": broker.delivery_limit,
                               "x-dead-letter-strategy": "at-least-once",
                               "x-overflow": "reject-publish"})
    expected[f"{work}.DQ"] = expected[work]
    conn = pika.BlockingConnection(broker.parameters)
    try:
        for name, arguments in expected.items():
            conn.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        conn.close()


def test_a_confirmed_batch_is_on_the_queue_when_publish_returns(broker):
    publish = make_publisher(broker)
    assert isinstance(publish, RabbitmqBatchPublisher)
    publish([_msg(n, broker.work) for n in range(300)])
    publish([_msg(n, broker.work) for n in range(300, 301)])
    assert broker.get_queue_message_counts(broker.work)[0] == 301
    publish.close()


def test_a_batch_rabbitmq_cannot_route_fails_and_its_retry_redeclares_the_queue(broker):
    publish = RabbitmqBatchPublisher(broker, confirm_timeout_s=5)
    publish([_msg(1, broker.work)])  # declares the queue
    broker.channel.queue_delete(broker.work)
    with pytest.raises(PublishError, match="could not route 1"):
        publish([_msg(2, broker.work)])
    publish([_msg(2, broker.work)])  # the relay's retry: the queue is declared again
    assert broker.get_queue_message_counts(broker.work)[0] == 1
    publish.close()


def test_the_drain_moves_dead_letters_into_the_store_and_acks_them_after(broker):
    work = broker.work
    broker.declare_queue(work, ensure=True)
    conn = pika.BlockingConnection(broker.parameters)
    channel = conn.channel()
    channel.basic_publish("", f"{work}.XQ", _msg(7, work).encode(),
                          pika.BasicProperties(delivery_mode=2, message_id="m7"))
    channel.basic_publish("", f"{work}.XQ", b"\x00garbage",
                          pika.BasicProperties(delivery_mode=2, message_id="g1"))
    conn.close()

    class BrokenStore:
        def record(self, **fields):
            raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        RabbitmqDlqDrain(broker, BrokenStore(), [work]).run_once()
    assert broker.get_queue_message_counts(work)[2] == 2  # nothing lost

    store = FakeStore()
    assert RabbitmqDlqDrain(broker, store, [work]).run_once() == 2
    assert broker.get_queue_message_counts(work)[2] == 0
    dead, garbage = store.records
    assert dead["failure_class"] == "dead_letter" and dead["message_id"] == "m7"
    assert dead["envelope"] == {"n": 7}
    assert garbage["failure_class"] == "undecodable" and garbage["raw"] == b"\x00garbage"


def test_a_nacked_message_reaches_the_dead_letter_queue(broker):
    broker.enqueue(_msg(1, broker.work))
    consumer = broker.consume(broker.work, prefetch=1, timeout=2000)
    message = next(consumer)
    consumer.nack(message)
    consumer.close()
    store = FakeStore()
    deadline = 400  # polls, 20 s at most: a bound for a failure, not a figure
    while not RabbitmqDlqDrain(broker, store, [broker.work]).run_once() and deadline:
        deadline -= 1
        broker.connection.sleep(0.05)
    assert [r["message_id"] for r in store.records] == ["m1"]
    assert "rejected" in store.records[0]["error_message"]


def test_the_queue_type_is_validated():
    with pytest.raises(ValueError, match="classic, quorum"):
        CoexistRabbitmqBroker(url="amqp://guest:guest@127.0.0.1/", queue_type="stream")


def test_a_retry_that_rabbitmq_does_not_confirm_is_requeued_not_acked(rabbit_vhost):
    # dramatiq's Retries logs the failed enqueue and the worker acks: the message is lost.
    from collections import Counter

    from dramatiq.errors import ConnectionClosed

    from bus.brokers import setup
    from bus.errors import TechnicalError

    class FlakyBroker(CoexistRabbitmqBroker):
        retries_fail = True

        def enqueue(self, message, *, delay=None):
            if delay is not None and self.retries_fail:
                raise ConnectionClosed(OSError("broker unreachable"))
            return super().enqueue(message, delay=delay)

    broker = FlakyBroker(url=rabbit_vhost)
    queue = f"flaky_{uuid.uuid4().hex[:8]}"
    store = FakeStore()
    setup(broker, store=store, retry_options={"min_backoff_ms": 10, "max_backoff_ms": 50,
                                              "redelivery_pause_ms": 0})
    calls = Counter()

    @dramatiq.actor(broker=broker, queue_name=queue)
    def fails_first(env):
        calls["n"] += 1
        if calls["n"] == 1:
            raise TechnicalError("timeout")

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        fails_first.send({"n": 1})
        deadline = 400  # polls, 20 s at most
        while calls["n"] < 2 and deadline:  # requeued and delivered again
            deadline -= 1
            broker.connection.sleep(0.05)
        assert calls["n"] >= 2
        broker.retries_fail = False
        broker.join(queue, min_successes=3, idle_time=50, timeout=10_000)
    finally:
        worker.stop(timeout=5000)
        for name in broker.queue_names(queue):
            broker.channel.queue_delete(name)
        broker.close()
    assert store.records == []


def test_a_quorum_message_that_keeps_killing_its_consumer_ends_in_the_dead_letter_queue(
    rabbit_vhost,
):
    broker = make_broker(rabbit_vhost, queue_type="quorum", delivery_limit=2)
    queue = f"poison_{uuid.uuid4().hex[:8]}"
    try:
        broker.enqueue(_msg(9, queue))
        for _ in range(3):  # delivered, then the consumer "dies" without an ack
            conn = pika.BlockingConnection(broker.parameters)
            method, _props, _body = next(conn.channel().consume(queue, inactivity_timeout=5))
            assert method is not None
            conn.close()
        store = FakeStore()
        for _ in range(400):  # polls, 20 s at most
            if RabbitmqDlqDrain(broker, store, [queue]).run_once():
                break
            broker.connection.sleep(0.05)
        assert [r["message_id"] for r in store.records] == ["m9"]
        assert "delivery_limit" in store.records[0]["error_message"]
        assert broker.get_queue_message_counts(queue) == (0, 0, 0)
    finally:
        for name in broker.queue_names(queue):
            broker.channel.queue_delete(name)
        broker.close()
