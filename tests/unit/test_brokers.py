"""make_broker and setup without a server: which broker, which queue arguments, which middleware."""

from __future__ import annotations

import pytest

from bus.brokers import make_broker, setup
from bus.brokers.rabbitmq import CoexistRabbitmqBroker

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class _Store:
    def record(self, **fields) -> int:
        return 1


def test_an_amqp_url_gives_rabbitmq_with_publisher_confirms_on():
    broker = make_broker(URL)
    assert isinstance(broker, CoexistRabbitmqBroker)
    assert broker.confirm_delivery is True
    assert broker.queue_type == "classic"


def test_classic_queues_dead_letter_to_xq_and_carry_no_quorum_arguments():
    arguments = make_broker(URL)._build_queue_arguments("orders")
    assert arguments == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "orders.XQ"}


def test_quorum_queues_bound_redeliveries_and_dead_letter_at_least_once():
    broker = make_broker(URL, queue_type="quorum", delivery_limit=7)
    arguments = broker._build_queue_arguments("orders")
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-delivery-limit"] == 7
    assert arguments["x-dead-letter-strategy"] == "at-least-once"
    assert arguments["x-overflow"] == "reject-publish"
    assert arguments["x-dead-letter-routing-key"] == "orders.XQ"


@pytest.mark.parametrize("queue_type", ["stream", "", "QUORUM"])
def test_an_unknown_queue_type_is_refused_with_the_choices(queue_type):
    with pytest.raises(ValueError, match="classic, quorum"):
        make_broker(URL, queue_type=queue_type)


def test_quorum_queues_refuse_priorities():
    with pytest.raises(ValueError, match="max_priority"):
        make_broker(URL, queue_type="quorum", max_priority=5)


def test_no_url_and_no_sqlite_path_is_a_clear_error():
    with pytest.raises(ValueError, match="sqlite_path"):
        make_broker(None)


def test_setup_puts_correlation_first_and_failure_classes_instead_of_retries():
    broker = setup(make_broker(URL), store=_Store())
    names = [type(m).__name__ for m in broker.middleware]
    assert names[0] == "CorrelationMiddleware"
    assert "Retries" not in names
    assert names.count("FailureClasses") == 1
