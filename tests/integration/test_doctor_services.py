"""``coexist doctor`` and ``coexist config show`` against the real services (PostgreSQL state
and legacy ERP, RabbitMQ, Redis) and the embedded default: one line per part, which answers."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.support import cloud_sim
from workers.bootstrap import App
from workers.cli import cli
from workers.config import Settings
from workers.db import create_state_engine
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim


def test_doctor_says_every_real_service_answers(tmp_path, pg_url, rabbit_vhost, redis_prefix,
                                                sim):
    redis_url, prefix = redis_prefix
    state = create_state_engine(pg_url)
    upgrade_schema(state)
    state.dispose()
    legacy = create_legacy_engine(pg_url)
    create_legacy_schema(legacy)
    legacy.dispose()
    app = App(Settings(home=tmp_path, state_url=pg_url, legacy_url=pg_url,
                       broker_url=rabbit_vhost, redis_url=redis_url, redis_prefix=prefix,
                       cloud_url=sim.url, cloud_token="t0ken"))
    try:
        result = CliRunner().invoke(cli, ["doctor"], obj=app)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert [line.split(":")[0] for line in lines] == [
            "ok   state database", "ok   legacy ERP", "ok   cloud ERP", "ok   broker",
            "ok   Redis", "ok   subscriptions"]
        assert "rabbitmq amqp://guest:***@" in result.output
        shown = CliRunner().invoke(cli, ["config", "show", "--format", "json"], obj=app)
        rows = {r["name"]: r["value"] for r in json.loads(shown.output)}
        assert rows["COEXIST_BROKER_URL"].startswith("amqp://guest:***@")
        assert rows["COEXIST_CLOUD_TOKEN"] == "***" and "t0ken" not in shown.output
    finally:
        app.close()


def test_doctor_on_the_embedded_default_and_a_part_that_does_not_answer(tmp_path):
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    state.dispose()
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    legacy.dispose()
    result = CliRunner().invoke(cli, ["doctor"], obj=App(Settings(home=tmp_path)))
    assert result.exit_code == 0, result.output
    assert "ok   cloud ERP: not configured (COEXIST_CLOUD_URL)" in result.output
    # No process has made the embedded broker's file yet: doctor does not say it answers.
    [broker] = [x for x in result.output.splitlines() if x.startswith("ok   broker: ")]
    assert broker == (f"ok   broker: embedded {tmp_path / 'bus.db'} not made yet (no coexist "
                      "process has started with this COEXIST_HOME)"), broker
    assert not (tmp_path / "bus.db").exists()
    down = App(Settings(home=tmp_path, cloud_url="http://127.0.0.1:9"))
    result = CliRunner().invoke(cli, ["doctor"], obj=down)
    assert result.exit_code == 1
    [line] = [x for x in result.output.splitlines() if x.startswith("FAIL")]
    assert line.startswith("FAIL cloud ERP: ") and "(COEXIST_CLOUD_URL=http://127.0.0.1:9)" in line
