"""A state the console and the CLI can both read: the real router on the embedded default
(SQLite state and broker, the legacy reference ERP, an in-memory cloud) with the customer
domain in shadow, one person's edit routed and one stray write reported (an open exception),
and a product reconciliation above its drift limit."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sqlalchemy import update

from coexistence.flags import FlagState, Mode, Rollout
from coexistence.router import CLOUD, LEGACY
from tests.support.records import ACME as CUSTOMER
from workers.bootstrap import bootstrap
from workers.config import Settings
from workers.driver import Driver
from workers.erp_memory import InMemoryErp
from workers.flags import SqlFlagStore
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.reconcile.store import ReconcileRun, RunStore


@dataclass
class World:
    settings: Settings
    env: dict[str, str]


def build_world(home: Path) -> World:
    settings = Settings(
        home=home, state_url=f"sqlite:///{home / 'state.db'}",
        legacy_url=f"sqlite:///{home / 'legacy.db'}", broker_url=None,
        queue_type="classic", redis_url=None, redis_prefix="coexist:", cloud_url=None,
    )
    engine = create_legacy_engine(settings.legacy_url)
    create_legacy_schema(engine)
    app = bootstrap(settings, erps={LEGACY: LegacyErp(engine), CLOUD: InMemoryErp("cloud")},
                    retry_options={"max_retries": 0}, create_state=True)
    driver = Driver(app)
    try:
        store = SqlFlagStore(app.state)
        before = store.load()["customer"]
        app.flags.apply([store.commit(
            before, FlagState("customer", Mode.SHADOW, Mode.SHADOW, Rollout(), 1),
            actor="alice", reason="pilot", action="set")])
        app.erps[LEGACY].person_upsert(CUSTOMER, "JSMITH")
        driver.settle()
        app.erps[CLOUD].person_upsert(
            CUSTOMER.model_copy(update={"credit_limit": Decimal(1)}), "cloud.user")
        driver.settle()
        runs = RunStore(app.state)
        run_id = runs.start("product", 0.1)
        with app.state.begin() as conn:
            conn.execute(update(ReconcileRun.__table__)
                         .where(ReconcileRun.__table__.c.id == run_id)
                         .values(status="drift", drift_pct=2.5,
                                 finished_at=ReconcileRun.__table__.c.started_at))
    finally:
        driver.stop()
        engine.dispose()
    env = {"COEXIST_HOME": str(home), "COEXIST_STATE_URL": settings.state_url,
           "COEXIST_LEGACY_URL": settings.legacy_url, "COEXIST_BROKER_URL": "",
           "COEXIST_CLOUD_URL": "", "COEXIST_REDIS_URL": ""}
    return World(settings, env)
