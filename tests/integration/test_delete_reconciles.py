"""A customer a person deletes in the SoR, once the delete is routed to the other ERP, is gone
from both and leaves nothing behind that reconciliation counts as drift: no orphan xref entry
(found by the chaos run, where every delete blocked the next cutover on "drift failed")."""

from __future__ import annotations

import json
from decimal import Decimal

from click.testing import CliRunner

from coexistence.flags import Mode
from coexistence.router import CLOUD, LEGACY
from coexistence.sample import SampleSpec
from tests.support import cloud_sim
from workers.bootstrap import bootstrap
from workers.cli import cli
from workers.cloud_sim.admin import SimulatorAdmin
from workers.config import Settings
from workers.driver import Driver
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.legacy_erp.seed import seed_legacy

simulator, sim = cloud_sim.simulator, cloud_sim.sim


def test_a_routed_delete_leaves_no_orphan_and_reconciles_with_no_drift(tmp_path, sim,
                                                                        monkeypatch):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    seed_legacy(engine, SampleSpec(customers=6, products=2), domains=("customer",))
    engine.dispose()
    settings = Settings(home=tmp_path, state_url=state_url, legacy_url=legacy_url,
                        broker_url=None, queue_type="classic", redis_url=None,
                        redis_prefix="coexist:", cloud_url=sim.url)
    app = bootstrap(settings, create_state=True)
    driver = Driver(app)
    for name, value in {"COEXIST_HOME": str(tmp_path), "COEXIST_LEGACY_URL": legacy_url,
                        "COEXIST_STATE_URL": state_url, "COEXIST_CLOUD_URL": sim.url}.items():
        monkeypatch.setenv(name, value)
    for name in ("COEXIST_REDIS_URL", "COEXIST_CLOUD_TOKEN", "COEXIST_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    people = SimulatorAdmin(sim.url)
    try:
        app.cutover.set("customer", Mode.SHADOW, actor="test", reason="delete test", force=True)
        keys = [c.key for c in app.erps[LEGACY].stream("customer")]
        # Every customer reaches the cloud through the router (its xref link made there).
        for key in keys:
            record = app.erps[LEGACY].get("customer", key)
            app.erps[LEGACY].person_upsert(record.model_copy(update={"credit_limit": Decimal(123)}),
                                           "CLERK")
        driver.settle()
        assert all(app.erps[CLOUD].get("customer", k) is not None for k in keys)
        gone = keys[0]
        app.erps[LEGACY].person_delete("customer", gone, "CLERK")
        driver.settle()
        assert app.erps[LEGACY].get("customer", gone) is None
        assert app.erps[CLOUD].get("customer", gone) is None
        result = CliRunner().invoke(cli, ["reconcile", "customer", "--format", "json"],
                                    catch_exceptions=False)
    finally:
        people.close()
        driver.stop()
    [run] = json.loads(result.output)["runs"]
    assert (run["orphans"], run["findings"], run["drift_pct"]) == (0, 0, 0.0), result.output
    assert result.exit_code == 0
