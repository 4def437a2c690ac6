"""``coexist status`` on state built by the real router on the embedded default (SQLite
state and broker, dramatiq workers, the legacy reference ERP in SQLite, an in-memory cloud)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from bus.exception_store import ExceptionStore
from coexistence.flags import FlagState, Mode, Rollout
from coexistence.router import CLOUD, LEGACY
from tests.support.records import ACME as CUSTOMER
from workers.bootstrap import bootstrap
from workers.cli import cli
from workers.config import Settings
from workers.driver import Driver
from workers.erp_memory import InMemoryErp
from workers.flags import SqlFlagStore
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.reconcile.store import ReconcileRun, RunStore


@pytest.fixture
def router(tmp_path):
    settings = Settings(
        home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}",
        legacy_url=f"sqlite:///{tmp_path / 'legacy.db'}", broker_url=None,
        queue_type="classic", redis_url=None, redis_prefix="coexist:", cloud_url=None,
    )
    engine = create_legacy_engine(settings.legacy_url)
    create_legacy_schema(engine)
    app = bootstrap(settings, erps={LEGACY: LegacyErp(engine), CLOUD: InMemoryErp("cloud")},
                    retry_options={"max_retries": 0}, create_state=True)
    store = SqlFlagStore(app.state)
    before = store.load()["customer"]
    app.flags.apply([store.commit(
        before, FlagState("customer", Mode.SHADOW, Mode.SHADOW, Rollout(), 1),
        actor="alice", reason="pilot", action="set")])
    driver = Driver(app)
    driver.env = {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": settings.state_url,
                  "COEXIST_LEGACY_URL": settings.legacy_url, "COEXIST_BROKER_URL": "",
                  "COEXIST_CLOUD_URL": ""}
    yield driver
    driver.stop()
    engine.dispose()


def status(driver, *args, env=None):
    result = CliRunner().invoke(cli, ["status", "--format", "json", *args],
                                env={**driver.env, **(env or {})})
    return result, json.loads(result.output.splitlines()[0])


def domain(out, name):
    return next(d for d in out["domains"] if d["domain"] == name)


def test_a_settled_router_needs_no_attention_and_exits_0(router):
    router.app.erps[LEGACY].person_upsert(CUSTOMER, "JSMITH")
    router.settle()
    result, out = status(router)
    assert result.exit_code == 0, result.output
    assert out["ok"] is True and out["attention"] == []
    assert out["broker"]["kind"] == "embedded"
    customer = domain(out, "customer")
    assert (customer["mode"], customer["flag_version"], customer["backlog"]) == ("shadow", 1, 0)
    [legacy] = [c for c in out["capture"] if c["system"] == "legacy"]
    assert (legacy["checkpoint"], legacy["last_cursor"], legacy["lag"]) == (1, 1, 0)
    [cloud] = [c for c in out["capture"] if c["system"] == "cloud"]
    assert cloud["state"] == "not configured" and cloud["lag"] is None


def test_open_exceptions_are_counted_by_class_and_exit_1_until_archived(router):
    app = router.app
    app.erps[LEGACY].person_upsert(CUSTOMER, "JSMITH")
    router.settle()
    app.erps[CLOUD].person_upsert(CUSTOMER.model_copy(update={"credit_limit": Decimal(1)}),
                                  "cloud.user")
    router.settle()
    result, out = status(router)
    assert result.exit_code == 1
    assert domain(out, "customer")["open_exceptions"] == {"business": 1}
    assert out["attention"] == ["customer: 1 open exception(s) (business 1)"]
    assert "need attention" in result.output
    [record] = ExceptionStore(app.state).list()
    ExceptionStore(app.state).archive(ids=[record.id], actor="ops", reason="reviewed")
    result, out = status(router)
    assert result.exit_code == 0, out["attention"]


def test_uncaptured_changes_and_an_unsent_backlog_are_lag_over_the_limits(router):
    app = router.app
    for i in range(3):
        app.erps[LEGACY].person_upsert(CUSTOMER.model_copy(update={"key": str(20000 + i)}),
                                       "JSMITH")
    result, out = status(router, "--max-capture-lag", "2")
    assert result.exit_code == 1
    assert "legacy capture lag 3 change(s) > 2" in out["attention"]
    assert status(router, "--max-capture-lag", "3")[0].exit_code == 0
    # Captured but not relayed: the messages wait in the outbox.
    router.loops[0].drain()
    result, out = status(router, "--max-backlog", "2")
    assert result.exit_code == 1
    assert domain(out, "customer")["backlog"] == 3 and out["outbox"]["backlog"] == 3
    assert out["attention"] == ["outbox backlog 3 > 2"]
    assert status(router, "--max-backlog", "3")[0].exit_code == 0


def test_a_reconciliation_above_its_drift_limit_needs_attention(router):
    runs = RunStore(router.app.state)
    run_id = runs.start("product", 0.5)
    with router.app.state.begin() as conn:
        conn.execute(update(ReconcileRun.__table__).where(ReconcileRun.__table__.c.id == run_id)
                     .values(status="drift", drift_pct=2.5))
    result, out = status(router)
    assert result.exit_code == 1
    assert domain(out, "product")["last_reconciliation"]["drift_pct"] == 2.5
    assert out["attention"] == ["product: last reconciliation drift 2.5% above the limit 0.1% "
                                "(COEXIST_MAX_DRIFT_PCT)"]
    # One limit for reconcile, the guard and status: raise it and the run is within it.
    result, out = status(router, env={"COEXIST_MAX_DRIFT_PCT": "3"})
    assert result.exit_code == 0 and out["attention"] == []


def test_the_broker_url_is_shown_without_its_password(router):
    url = "amqp://coexist:s3cr3t@rabbit.example:5672/prod"
    result, out = status(router, env={"COEXIST_BROKER_URL": url})
    b = out["broker"]
    assert (b["kind"], b["url"], b["queue_type"]) == (
        "rabbitmq", "amqp://coexist:***@rabbit.example:5672/prod", "classic")
    assert b["reachable"] is False and result.exit_code == 1
    assert "s3cr3t" not in result.output
    table = CliRunner().invoke(cli, ["status"], env={**router.env, "COEXIST_BROKER_URL": url})
    assert "rabbitmq amqp://coexist:***@" in table.output and "s3cr3t" not in table.output


def test_a_missing_legacy_database_needs_attention_and_is_named(router, tmp_path):
    result, out = status(router, env={"COEXIST_LEGACY_URL": f"sqlite:///{tmp_path}/gone.db"})
    assert result.exit_code == 1
    assert any(r.startswith("legacy change log unavailable: no legacy database at")
               for r in out["attention"])


def test_help_says_what_the_exit_status_means():
    result = CliRunner().invoke(cli, ["status", "--help"])
    assert result.exit_code == 0
    assert "1 something needs" in " ".join(result.output.split())
