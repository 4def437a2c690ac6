"""The correlation id flows from a handled message into its logs and the messages it causes."""

from __future__ import annotations

import io
import json
import logging

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from bus import context
from bus.context import JsonLogFormatter
from bus.correlation import CorrelationMiddleware, ids_of
from bus.envelope import envelope_from_message, new_envelope, to_message_arg


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[])
    broker.add_middleware(CorrelationMiddleware())
    yield broker
    broker.close()


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("coexist.test.correlation")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def run(broker, *queues):
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        for _ in range(3):  # downstream messages land after upstream ones are handled
            for queue in queues:
                broker.join(queue, timeout=5000)
            worker.join()
    finally:
        worker.stop()


def test_a_handler_logs_and_causes_messages_under_the_incoming_correlation(broker, log_stream):
    logger, stream = log_stream
    seen: list[dict] = []

    @dramatiq.actor(broker=broker, queue_name="down")
    def downstream(envelope_dict):
        seen.append({"env": envelope_dict, **context.current_ids()})

    @dramatiq.actor(broker=broker, queue_name="up")
    def upstream(envelope_dict):
        logger.info("handling %s", envelope_dict["key"])
        child = new_envelope(domain="order", kind="accepted", key="O1", payload={},
                             source_system="router", source_version=1)
        downstream.send(to_message_arg(child))

    root = new_envelope(domain="order", kind="received", key="O1", payload={},
                        source_system="edi", source_version=1, correlation_id="corr-42")
    upstream.send(to_message_arg(root))
    run(broker, "up", "down")

    line = json.loads(stream.getvalue().splitlines()[0])
    assert line["correlation_id"] == "corr-42"
    assert line["message_id"] == root.message_id
    (child,) = seen
    assert child["env"]["correlation_id"] == "corr-42"
    assert child["env"]["causation_id"] == root.message_id
    assert child["correlation_id"] == "corr-42"
    assert context.correlation_id.get() is None


def test_a_message_without_an_envelope_gets_the_ids_stamped_into_its_options(broker):
    options_seen: list[dict] = []

    @dramatiq.actor(broker=broker, queue_name="plain")
    def plain(n):
        options_seen.append(dict(context.current_ids()))

    @dramatiq.actor(broker=broker, queue_name="up")
    def upstream(envelope_dict):
        plain.send(1)

    root = new_envelope(domain="order", kind="received", key="O1", payload={},
                        source_system="edi", source_version=1, correlation_id="corr-7")
    upstream.send(to_message_arg(root))
    run(broker, "up", "plain")
    (ids,) = options_seen
    assert ids["correlation_id"] == "corr-7"
    assert ids["causation_id"] == root.message_id


def test_a_message_outside_any_handler_is_not_stamped(broker):
    @dramatiq.actor(broker=broker, queue_name="plain")
    def plain(n):
        pass

    message = plain.send(1)
    assert "correlation_id" not in message.options


def test_a_message_without_correlation_is_its_own_correlation():
    message = dramatiq.Message(queue_name="q", actor_name="a", args=("not an envelope",),
                               kwargs={}, options={})
    assert ids_of(message) == (message.message_id, None, message.message_id)
    env = new_envelope(domain="d", kind="k", key="K", payload={}, source_system="s",
                       source_version=1, correlation_id="c", causation_id="p")
    wrapped = dramatiq.Message(queue_name="q", actor_name="a", args=(to_message_arg(env),),
                               kwargs={}, options={})
    assert ids_of(wrapped) == ("c", "p", env.message_id)
    assert envelope_from_message(wrapped) == env
