"""``coexist status`` and ``coexist cutover status`` see the broker: per queue ready /
unacked / consumers, "needs attention" when a queue holds messages nobody consumes, an
unreachable broker or Redis, the configured channel subscriptions with their backlog, the
freeze windows and the state database it read.  On the embedded broker and on RabbitMQ
(passive declares: the management plugin is not assumed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dramatiq
import pytest
from click.testing import CliRunner

from coexistence.flags import FlagState, Mode, Rollout
from coexistence.router import CLOUD, LEGACY
from tests.support.records import ACME as CUSTOMER
from workers.bootstrap import App, bootstrap
from workers.cli import cli
from workers.config import Settings
from workers.erp_memory import InMemoryErp
from workers.flags import SqlFlagStore


def routed_app(tmp_path, broker_url=None, **settings):
    """A started router app (fakes for the ERPs) with a configured ``crm`` subscription, the
    customer domain in shadow."""
    s = Settings(home=tmp_path, broker_url=broker_url, broker_management_url="off",
                 subscriptions={"crm": {"domains": ["customer"]}}, **settings)
    app = bootstrap(s, erps={LEGACY: InMemoryErp("legacy"), CLOUD: InMemoryErp("cloud")},
                    create_state=True)
    store = SqlFlagStore(app.state)
    before = store.load()["customer"]
    app.flags.apply([store.commit(before, FlagState("customer", Mode.SHADOW, Mode.SHADOW,
                                                    Rollout(), 1),
                                  actor="alice", reason="pilot", action="set")])
    return app


def capture_one_change(app) -> None:
    """A person's change in the SoR, captured and relayed: one shadow write and one channel
    event wait in the broker (no worker runs)."""
    app.erps[LEGACY].person_upsert(CUSTOMER, "JSMITH")
    for loop in app.capture_loops():
        loop.drain()
    app.relay().run_once(100)


def status(app, *args):
    result = CliRunner().invoke(cli, ["status", "--format", "json", *args], obj=app)
    return result, json.loads(result.output.splitlines()[0])


def queues(out) -> dict[str, dict]:
    return {q["name"]: q for q in out["broker"]["queues"]}


def test_embedded_messages_nobody_consumes_need_attention_until_a_worker_runs(tmp_path):
    app = routed_app(tmp_path)
    try:
        capture_one_change(app)
        result, out = status(app)
        assert result.exit_code == 1
        q = queues(out)
        assert (q["coexist.write.cloud"]["ready"], q["coexist.write.cloud"]["consumers"]) == (1, 0)
        assert out["broker"]["source"] == "embedded broker tables"
        assert "queue coexist.write.cloud holds 1 message(s) and has no consumer" in \
            out["attention"]
        assert "queue coexist.channel.crm holds 1 message(s) and has no consumer" in \
            out["attention"]
        [sub] = out["subscriptions"]
        assert (sub["name"], sub["domains"], sub["queue"], sub["backlog"], sub["consumers"]) == (
            "crm", ["customer"], "coexist.channel.crm", 1, 0)
        assert out["state"] == f"sqlite:///{tmp_path / 'state.db'}"

        worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=100,
                                 queues={"coexist.write.cloud"})
        worker.start()
        try:
            app.broker.join("coexist.write.cloud", timeout=20_000)
            _, out = status(app)
            q = queues(out)
            # The writers run on the batch consumer: two consumer threads per queue.
            assert q["coexist.write.cloud"]["held"] == 0
            assert q["coexist.write.cloud"]["consumers"] >= 1
            assert not any("coexist.write.cloud" in r for r in out["attention"])
        finally:
            worker.stop()
        # The channel has no consumer in this release: its backlog stays visible.
        _, out = status(app)
        assert queues(out)["coexist.channel.crm"]["ready"] == 1
        assert queues(out)["coexist.write.cloud"]["consumers"] == 0
    finally:
        app.close()


def test_freeze_windows_are_shown_and_a_redis_that_does_not_answer_needs_attention(tmp_path):
    now = datetime.now(UTC)
    window = f"{(now - timedelta(hours=1)).isoformat()}/{(now + timedelta(hours=1)).isoformat()}"
    app = routed_app(tmp_path, freeze=window)
    try:
        _, out = status(app)
        [w] = out["freeze_windows"]
        assert w["state"] == "active" and w["window"].endswith("+00:00")
        table = CliRunner().invoke(cli, ["status"], obj=app)
        assert "freeze window" in table.output and "active" in table.output
    finally:
        app.close()
    down = App(Settings(home=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    try:
        result, out = status(down)
        assert result.exit_code == 1
        assert out["redis"]["reachable"] is False
        assert any(r.startswith("Redis (COEXIST_REDIS_URL=redis://127.0.0.1:1/0) unreachable")
                   for r in out["attention"])
    finally:
        down.close()


def test_cutover_status_shows_the_queues_of_the_domain_and_what_is_not_yet_applied(tmp_path):
    app = routed_app(tmp_path)
    try:
        capture_one_change(app)
        result = CliRunner().invoke(cli, ["cutover", "status", "customer", "--format", "json"],
                                    obj=app)
        assert result.exit_code == 1, result.output  # a queue with messages and no consumer
        out = json.loads(result.output.splitlines()[0])
        assert [d["domain"] for d in out["domains"]] == ["customer"]
        [row] = out["domains"]
        # The shadow write is routed under v1 and waits in the broker; the channel event is
        # not a write the switch waits for.
        assert row["unsettled"] == {"total": 1, "unsent": 0, "in_broker": 1,
                                    "by_flag_version": {"1": 1},
                                    "by_queue": {"coexist.write.cloud": 1}}
        names = [q["name"] for q in out["broker"]["queues"]]
        assert "coexist.channel.crm" in names and "coexist.write.cloud" in names
        assert "queue coexist.write.cloud holds 1 message(s) and has no consumer" in \
            out["attention"]
        other = CliRunner().invoke(cli, ["cutover", "status", "order", "--format", "json"],
                                   obj=app)
        assert "coexist.channel.crm" not in [
            q["name"] for q in json.loads(other.output.splitlines()[0])["broker"]["queues"]]
        table = CliRunner().invoke(cli, ["cutover", "status", "customer"], obj=app)
        assert "holds 1 message(s) and has no consumer" in table.output
        assert "1 (v1: 1; 1 in the broker, 0 unsent)" in table.output
    finally:
        app.close()


def test_status_needs_attention_for_work_routed_under_an_older_flag_version(tmp_path):
    app = routed_app(tmp_path)
    try:
        capture_one_change(app)
        _, out = status(app)
        [customer] = [d for d in out["domains"] if d["domain"] == "customer"]
        assert customer["unsettled"]["by_flag_version"] == {"1": 1}
        assert not any("older than" in r for r in out["attention"])
        store = SqlFlagStore(app.state)
        store.commit(store.load()["customer"],
                     FlagState("customer", Mode.CLOUD, Mode.CLOUD, Rollout(), 2),
                     actor="alice", reason="forced past a write", action="set", forced=True)
        result, out = status(app)
        assert result.exit_code == 1
        assert ("customer: 1 message(s) routed under flag version(s) older than 2 not yet "
                "applied (v1: 1)") in out["attention"]
        worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=100,
                                 queues={"coexist.write.cloud"})
        worker.start()
        try:
            app.broker.join("coexist.write.cloud", timeout=20_000)
        finally:
            worker.stop()
        _, out = status(app)
        assert not any("older than" in r for r in out["attention"])
        [customer] = [d for d in out["domains"] if d["domain"] == "customer"]
        assert customer["unsettled"]["total"] == 0
    finally:
        app.close()


def test_rabbitmq_queues_are_read_by_passive_declares(tmp_path, fresh_rabbit_vhost):
    url, _vhost = fresh_rabbit_vhost
    app = routed_app(tmp_path, broker_url=url)
    try:
        capture_one_change(app)
        result, out = status(app)
        assert result.exit_code == 1
        assert out["broker"]["source"] == "passive declares"
        q = queues(out)
        assert (q["coexist.write.cloud"]["ready"], q["coexist.write.cloud"]["consumers"],
                q["coexist.write.cloud"]["unacked"]) == (1, 0, None)
        assert q["coexist.channel.crm"]["ready"] == 1
        assert "queue coexist.write.cloud holds 1 message(s) and has no consumer" in \
            out["attention"]
    finally:
        app.close()


@pytest.mark.parametrize("broker_url", [
    "amqp://guest:guest@127.0.0.1:1/%2F",             # closed port
    "amqp://guest:guest@127.0.0.1:5432/%2F",          # a port that is not AMQP
    "amqp://guest:guest@127.0.0.1:5672/no_such_vhost",
], ids=["closed port", "not amqp", "missing vhost"])
def test_an_unreachable_broker_needs_attention(tmp_path, broker_url, rabbit_vhost):
    base = routed_app(tmp_path)
    base.close()
    app = App(Settings(home=tmp_path, broker_url=broker_url, broker_management_url="off"))
    try:
        result, out = status(app)
        assert result.exit_code == 1, out
        assert out["broker"]["reachable"] is False
        [reason] = [r for r in out["attention"] if r.startswith("broker")]
        assert reason.startswith("broker (COEXIST_BROKER_URL=amqp://guest:***@127.0.0.1:")
        assert "Traceback" not in result.output
    finally:
        app.close()
