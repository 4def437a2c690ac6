"""``coexist dlq replay`` against a real RabbitMQ: the message is back on its queue."""

from __future__ import annotations

import uuid

import dramatiq
import pika
import pytest
from click.testing import CliRunner

from bus.envelope import new_envelope, to_message_arg
from bus.exception_store import ExceptionStore
from workers.cli import cli
from workers.config import Settings
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration


WHO = ("--reason", "replayed after the fix", "--actor", "maria")


@pytest.fixture(params=["classic", "quorum"])
def configured(request, rabbit_vhost, tmp_path, monkeypatch):
    monkeypatch.delenv("COEXIST_STATE_URL", raising=False)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_BROKER_URL", rabbit_vhost)
    monkeypatch.setenv("COEXIST_QUEUE_TYPE", request.param)
    engine = create_state_engine(Settings.from_env().state_url)
    upgrade_schema(engine)
    queue = f"dlq_{uuid.uuid4().hex[:8]}"
    yield ExceptionStore(engine), rabbit_vhost, queue
    engine.dispose()
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_vhost))
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        conn.channel().queue_delete(name)
    conn.close()


def test_replay_puts_the_message_back_on_its_rabbitmq_queue_with_retries_reset(configured):
    store, url, queue = configured
    env = new_envelope(domain="customer", kind="upserted", key="C1", payload={},
                       source_system="legacy", source_version=1)
    message = {"queue_name": f"{queue}.XQ", "actor_name": "sync_crm",
               "args": [to_message_arg(env)], "kwargs": {},
               "options": {"retries": 20, "traceback": "..."}, "message_id": env.message_id,
               "message_timestamp": 1}
    rid = store.record(failure_class="dead_letter", queue_name=queue, actor_name="sync_crm",
                       message_id=env.message_id, envelope=env, raw=None, message=message,
                       error_type="DeadLetter", error_message="rejected",
                       call_site="rabbitmq.XQ", attempts=20)
    result = CliRunner().invoke(cli, ["dlq", "replay", str(rid), *WHO], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert store.get(rid).status == "replayed"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        method, _props, body = conn.channel().basic_get(queue, auto_ack=True)
    finally:
        conn.close()
    assert method is not None, "the replayed message is not on its queue"
    replayed = dramatiq.Message.decode(body)
    assert replayed.message_id == env.message_id
    assert replayed.options["retries"] == 0 and "traceback" not in replayed.options
    assert replayed.args[0]["key"] == "C1"


def test_an_unreachable_broker_leaves_the_record_open_and_says_why(configured, monkeypatch):
    store, _url, queue = configured
    monkeypatch.setenv("COEXIST_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/%2F")
    env = new_envelope(domain="customer", kind="upserted", key="C2", payload={},
                       source_system="legacy", source_version=1)
    message = {"queue_name": queue, "actor_name": "sync_crm", "args": [to_message_arg(env)],
               "kwargs": {}, "options": {}, "message_id": env.message_id}
    rid = store.record(failure_class="business", queue_name=queue, actor_name="sync_crm",
                       message_id=env.message_id, envelope=env, raw=None, message=message,
                       error_type="UnknownRecord", error_message="unknown customer",
                       call_site="workers.crm.apply", attempts=1)
    result = CliRunner().invoke(cli, ["dlq", "replay", str(rid), *WHO])
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output
    assert "guest:guest" not in result.output
    assert store.get(rid).status == "open"
