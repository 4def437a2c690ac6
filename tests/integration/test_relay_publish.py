"""The relay's RabbitMQ publisher: what a confirmed batch costs on the wire, and that the
messages it sends from outbox rows are the ones dramatiq would have sent."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pika
import pytest
from pika.adapters.utils.io_services_utils import _AsyncTransportBase

from bus.brokers import make_broker
from bus.envelope import encode, new_envelope
from bus.outbox import OutboxRow
from bus.publish import RabbitmqBatchPublisher

pytestmark = pytest.mark.integration

BATCH = 300


@pytest.fixture
def broker(rabbit_vhost):
    b = make_broker(rabbit_vhost)
    b.work = f"relay_{uuid.uuid4().hex[:8]}"
    yield b
    for name in b.queue_names(b.work):
        b.channel.queue_delete(name)
    b.close()


def _rows(queue: str, n: int) -> list[OutboxRow]:
    rows = []
    for i in range(n):
        env = new_envelope(domain="customer", kind="upserted", key=f"C{i:04d}",
                           payload={"record": {"n": i, "name": f"Kunde {i} ü"}},
                           source_system="legacy", source_version=i)
        rows.append(OutboxRow(id=i + 1, message_id=env.message_id, queue_name=queue,
                              actor_name="write_cloud", domain="customer",
                              partition_key=env.key, payload=encode(env).decode(),
                              created_at=datetime.now(UTC), attempts=0))
    return rows


@pytest.fixture
def sends(monkeypatch):
    """Counts pika's socket sends (each one releases the GIL and must win it back)."""
    counted = {"n": 0}
    real = _AsyncTransportBase._sigint_safe_send

    def counting(sock, data):
        counted["n"] += 1
        return real(sock, data)

    monkeypatch.setattr(_AsyncTransportBase, "_sigint_safe_send", staticmethod(counting))
    return counted


def test_a_confirmed_batch_goes_out_in_a_few_sends_not_three_per_message(broker, sends):
    publish = RabbitmqBatchPublisher(broker)
    publish(_rows(broker.work, 1))  # opens the connection, declares the queue
    before = sends["n"]
    publish(_rows(broker.work, BATCH))
    # pika queues the method, header and body frame of each message apart and sends each
    # on its own: 3 * BATCH sends.  Joined, the socket takes them in a handful.
    assert sends["n"] - before <= 20
    assert broker.get_queue_message_counts(broker.work)[0] == BATCH + 1
    publish.close()


def test_messages_published_from_outbox_rows_carry_their_envelope_and_message_id(broker):
    rows = _rows(broker.work, 50)
    publish = RabbitmqBatchPublisher(broker)
    publish(rows)
    publish.close()
    conn = pika.BlockingConnection(broker.parameters)
    try:
        channel = conn.channel()
        got = []
        for _ in rows:
            method, props, body = channel.basic_get(broker.work, auto_ack=True)
            got.append((props.message_id, json.loads(body)))
    finally:
        conn.close()
    assert [m for m, _ in got] == [r.message_id for r in rows]
    for (message_id, data), row in zip(got, rows, strict=True):
        expected = json.loads(row.to_message().encode())
        assert data.pop("message_timestamp") > 0
        expected.pop("message_timestamp")
        assert data == expected
        assert data["message_id"] == message_id
