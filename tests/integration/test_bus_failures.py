"""The bus's promise under failure, on real RabbitMQ and PostgreSQL, classic and quorum queues.

A worker program (``tests/integration/bus_worker.py``) runs as a subprocess,
applies each message's effect with its inbox claim in one PostgreSQL
transaction, and is killed or cut off from RabbitMQ mid-run.  Afterwards every
message must have exactly one effect row (the effects table has no unique
constraint, so a double application would show).
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy import select

from bus.exception_store import ExceptionStore
from tests.integration import bus_worker
from tests.support import services
from tests.support.bus_runs import RUN_TIMEOUT_S, Worker, rabbit_run
from tests.support.bus_runs import assert_exactly_once as _assert_exactly_once
from tests.support.bus_runs import publish_all as _publish_all
from tests.support.bus_runs import wait_for as _wait_for

pytestmark = pytest.mark.integration

#: Messages in the kill -9 run: the 10,000 the issue names (about 30-50 s per queue type on
#: this 2-core machine); ``COEXIST_BUS_FAILURE_MESSAGES`` makes it smaller for quick runs.
KILL_RUN_MESSAGES = int(os.environ.get("COEXIST_BUS_FAILURE_MESSAGES", "10000"))
#: Messages in the connection-loss run.
CUT_RUN_MESSAGES = min(2000, KILL_RUN_MESSAGES)


@pytest.fixture(params=["classic", "quorum"])
def queue_type(request):
    return request.param


@pytest.fixture
def setup_run(pg_url, rabbit_vhost, queue_type, tmp_path):
    """(engine, broker, queue, start_worker) for one test; everything cleaned up after."""
    with rabbit_run(pg_url, rabbit_vhost, tmp_path, f"failures_{uuid.uuid4().hex[:8]}",
                    queue_type) as run:
        yield run.engine, run.broker, run.queue, run.start_worker


def _settle(broker, queue: str, worker: Worker) -> None:
    """Make "nothing more will be applied" a fact instead of a wait: stop the worker
    (what it holds unacked goes back to its queue), then the broker's counters must show
    nothing left anywhere, so no later redelivery can add an effect."""
    worker.stop()
    assert worker.proc.returncode == 0, worker.tail()
    assert broker.get_queue_message_counts(queue) == (0, 0, 0)


def test_kill_9_mid_run_then_restart_applies_every_message_exactly_once(setup_run):
    engine, broker, queue, start_worker = setup_run
    messages = [bus_worker.message_for("apply_effect", n, queue) for n in range(KILL_RUN_MESSAGES)]
    _publish_all(broker, messages)
    first = start_worker()
    _wait_for(lambda: bus_worker.effect_counts(engine)[0] >= KILL_RUN_MESSAGES // 5,
              "the first fifth of the effects", [first])
    first.kill9()
    applied_before = bus_worker.effect_counts(engine)[0]
    assert applied_before < KILL_RUN_MESSAGES, "the kill came too late to prove anything"

    second = start_worker()
    _wait_for(lambda: bus_worker.effect_counts(engine)[1] >= KILL_RUN_MESSAGES,
              "every effect", [second])
    broker.join(queue, min_successes=3, idle_time=100, timeout=RUN_TIMEOUT_S * 1000)
    _settle(broker, queue, second)
    _assert_exactly_once(engine, KILL_RUN_MESSAGES)
    assert ExceptionStore(engine).open_count() == 0


def test_all_connections_closed_mid_run_loses_nothing_and_applies_nothing_twice(
    setup_run, rabbit_vhost
):
    engine, broker, queue, start_worker = setup_run
    vhost = unquote(urlsplit(rabbit_vhost).path.lstrip("/"))
    worker = start_worker()
    messages = [bus_worker.message_for("apply_effect", n, queue) for n in range(CUT_RUN_MESSAGES)]
    _publish_all(broker, messages[: CUT_RUN_MESSAGES // 2])
    _wait_for(lambda: bus_worker.effect_counts(engine)[0] >= CUT_RUN_MESSAGES // 10,
              "the first effects", [worker])
    services.rabbitmqctl("close_all_connections", "-p", vhost, "coexist failure test")
    # This process's connections were closed too: drop them, then publish on
    # through the outage as the outbox relay would.
    del broker.connection
    _publish_all(broker, messages[CUT_RUN_MESSAGES // 2 :])
    _wait_for(lambda: bus_worker.effect_counts(engine)[1] >= CUT_RUN_MESSAGES,
              "every effect after the connections came back", [worker])
    broker.join(queue, min_successes=3, idle_time=100, timeout=RUN_TIMEOUT_S * 1000)
    assert worker.proc.poll() is None, "the worker died instead of reconnecting"
    _settle(broker, queue, worker)
    _assert_exactly_once(engine, CUT_RUN_MESSAGES)


def test_each_failure_class_ends_where_the_rules_say(setup_run, pg_url):
    engine, broker, queue, start_worker = setup_run
    worker = start_worker("--max-retries", "3", "--min-backoff-ms", "50",
                          "--max-backoff-ms", "200")
    flaky = bus_worker.message_for("fails_then_succeeds", 1, queue, fail_times=2)
    business = bus_worker.message_for("business_failure", 2, queue)
    always = bus_worker.message_for("always_fails", 3, queue)
    garbage = bus_worker.message_for("apply_effect", 4, queue).copy(args=({"domain": 7},))
    orphan = bus_worker.message_for("no_such_actor", 5, queue)
    _publish_all(broker, [flaky, business, always, garbage, orphan])

    store = ExceptionStore(engine)
    _wait_for(lambda: store.open_count() >= 4, "four exception records", [worker])
    _wait_for(lambda: bus_worker.effect_counts(engine)[0] >= 1, "the flaky effect", [worker])
    records = {r.message_id: r for r in store.list(status="open", limit=None)}
    attempts = dict(engine.connect().execute(select(bus_worker.ATTEMPTS)).all())

    assert flaky.message_id not in records  # retried twice, then applied
    assert attempts[flaky.message_id] == 3
    assert bus_worker.effect_counts(engine) == (1, 1)

    assert records[business.message_id].failure_class == "business"
    assert records[business.message_id].attempts == 1 and attempts[business.message_id] == 1

    assert records[always.message_id].failure_class == "technical"
    assert records[always.message_id].attempts == 4 and attempts[always.message_id] == 4
    assert records[always.message_id].error_type == "TechnicalError"

    assert records[garbage.message_id].failure_class == "undecodable"
    assert records[orphan.message_id].failure_class == "dead_letter"  # via .XQ and the drain
    assert broker.get_queue_message_counts(queue) == (0, 0, 0)

    # What an operator sees.
    from click.testing import CliRunner

    from workers.cli import cli

    shown = CliRunner().invoke(cli, ["dlq", "list", "--format", "json"],
                               env={"COEXIST_STATE_URL": pg_url})
    assert shown.exit_code == 0, shown.output
    listed = {r["message_id"]: r["failure_class"] for r in json.loads(shown.output)}
    assert listed == {business.message_id: "business", always.message_id: "technical",
                      garbage.message_id: "undecodable", orphan.message_id: "dead_letter"}
