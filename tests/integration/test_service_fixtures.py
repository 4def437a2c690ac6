"""The test-run isolation the other integration tests rely on really holds on the real servers."""

from __future__ import annotations

import uuid

import pika
import redis
from sqlalchemy import create_engine, text

from tests.support import services


def test_each_test_gets_its_own_postgresql_schema_and_it_is_empty(pg_url):
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        assert schema.startswith("t_")
        tables = conn.execute(
            text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        ).scalar_one()
        assert tables == 0
        conn.execute(text("CREATE TABLE probe (id int primary key)"))
        conn.execute(text("INSERT INTO probe VALUES (1)"))
    engine.dispose()


def test_the_run_database_is_not_the_shared_test_database(pg_database_url):
    assert pg_database_url.rsplit("/", 1)[1].startswith("coexist_test_")


def test_the_run_vhost_is_private_and_usable(rabbit_vhost):
    params = pika.URLParameters(rabbit_vhost)
    conn = pika.BlockingConnection(params)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare("probe", durable=True)
        channel.basic_publish("", "probe", b"hello", pika.BasicProperties(delivery_mode=2))
        method, _props, body = channel.basic_get("probe", auto_ack=True)
        assert body == b"hello"
        assert params.virtual_host.startswith("coexist_test_")
    finally:
        conn.close()
    assert params.virtual_host in services.rabbitmqctl("list_vhosts")


def test_a_private_vhost_is_removed_when_its_test_ends(rabbit_vhost):
    name = f"coexist_test_probe_{uuid.uuid4().hex[:6]}"
    with services.private_vhost(name):
        assert name in services.rabbitmqctl("list_vhosts").split()
    assert name not in services.rabbitmqctl("list_vhosts").split()


def test_redis_keys_live_under_the_test_prefix_and_are_deleted_after(redis_prefix):
    url, prefix = redis_prefix
    client = redis.Redis.from_url(url)
    client.set(f"{prefix}probe", "1")
    assert client.get(f"{prefix}probe") == b"1"
    assert prefix.startswith("coexist_test:")
    client.close()


def test_a_private_redis_prefix_is_emptied_when_its_test_ends(redis_prefix):
    url, _ = redis_prefix
    prefix = f"coexist_test:probe:{uuid.uuid4().hex[:6]}:"
    client = redis.Redis.from_url(url)
    with services.private_redis_prefix(prefix):
        client.mset({f"{prefix}a": 1, f"{prefix}b": 2, "coexist_test:outside": 3})
    assert client.keys(f"{prefix}*") == []
    assert client.get("coexist_test:outside") == b"3"
    client.delete("coexist_test:outside")
    client.close()
