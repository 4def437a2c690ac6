"""A migration team's cutover of one domain from the CLI alone, on the reference ERPs:
reconcile (and backfill with --repair), guarded `cutover set`, people's edits routed by the
running router, a refused move while drift is high, and a rollback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from coexistence.router import CLOUD, LEGACY
from coexistence.sample import SampleSpec
from tests.support import cloud_sim
from workers.bootstrap import bootstrap
from workers.cli import cli
from workers.config import Settings
from workers.driver import Driver
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.legacy_erp.seed import seed_legacy
from workers.scenario import touched

simulator, sim = cloud_sim.simulator, cloud_sim.sim


@pytest.fixture
def team(tmp_path, sim, monkeypatch):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    seed_legacy(engine, SampleSpec(customers=5, products=6))
    engine.dispose()
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": f"sqlite:///{tmp_path / 's.db'}",
           "COEXIST_LEGACY_URL": legacy_url, "COEXIST_CLOUD_URL": sim.url,
           "COEXIST_ACTOR": "maria", "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    driver = Driver(bootstrap(Settings.from_env(), create_state=True))
    yield driver, env
    driver.stop()


def coexist(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def drift(domain: str) -> float:
    code, out = coexist("reconcile", domain, "--format", "json", "--no-progress")
    assert code in (0, 1), out
    [run] = json.loads(out)["runs"]
    return float(run["drift_pct"])


def test_a_domain_is_cut_over_and_rolled_back_from_the_cli_alone(team, sim):
    driver, _env = team
    app = driver.app
    driver.settle()  # the router has captured the legacy ERP's history (legacy mode)

    # The cloud is empty: the move is refused on drift, then the backfill repairs it.
    assert drift("customer") == 100.0
    code, out = coexist("cutover", "set", "customer", "shadow", "--reason", "wave 1")
    assert code == 1 and "drift" in out
    code, out = coexist("reconcile", "customer", "--repair", "--yes", "--no-progress")
    assert code == 1, out  # the drift it found; the repairs are queued
    driver.settle()
    assert drift("customer") == 0.0

    code, out = coexist("cutover", "set", "customer", "shadow", "--reason", "wave 1")
    assert code == 0, out
    assert app.flags.wait_for("customer", 1, timeout_s=10)

    # People keep working in the legacy ERP; the router copies it to the cloud.
    record = next(iter(app.erps[LEGACY].stream("customer")))
    app.erps[LEGACY].person_upsert(touched(record, 7), "JSMITH")
    driver.settle()
    assert app.erps[CLOUD].get("customer", record.key).credit_limit == record.credit_limit + 7
    assert drift("customer") == 0.0

    code, out = coexist("cutover", "set", "customer", "cloud", "--reason", "wave 2")
    assert code == 0, out
    assert app.flags.wait_for("customer", 2, timeout_s=10)
    sim.person_upsert(touched(record, 11), "ana.cloud")
    driver.settle()
    assert app.erps[LEGACY].get("customer", record.key).credit_limit == record.credit_limit + 11

    code, out = coexist("cutover", "rollback", "customer", "--reason", "month-end issue")
    assert code == 0, out
    code, out = coexist("cutover", "history", "customer", "--format", "json")
    assert code == 0, out
    moves = [(e["from"]["mode"], e["to"]["mode"], e["forced"]) for e in json.loads(out)]
    assert sorted(moves) == sorted([("legacy", "shadow", False), ("shadow", "cloud", False),
                                    ("cloud", "shadow", False)])
