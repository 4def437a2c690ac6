"""``coexist trace`` and ``coexist status`` against the cloud ERP simulator (a real HTTP
server on loopback): the cloud change feed as a source, and a cloud that cannot be reached."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support import cloud_sim
from tests.support.records import ACME as CUSTOMER
from tests.support.state import upgraded_state
from workers.cli import cli
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim



@pytest.fixture
def env(tmp_path, sim):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    engine.dispose()
    state_url = upgraded_state(f"sqlite:///{tmp_path}/state.db")
    return {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": state_url,
            "COEXIST_LEGACY_URL": legacy_url, "COEXIST_BROKER_URL": "",
            "COEXIST_CLOUD_URL": sim.url}


def invoke(env, *args):
    result = CliRunner().invoke(cli, [*args, "--format", "json"], env=env)
    return result, json.loads(result.output.splitlines()[0])


def test_a_persons_edit_in_the_cloud_appears_in_the_trace_of_its_key_only(sim, env):
    sim.person_upsert(CUSTOMER, "cloud.user")
    sim.person_upsert(CUSTOMER.model_copy(update={"key": "10043"}), "other.user")
    result, out = invoke(env, "trace", "customer:10042")
    assert result.exit_code == 0, result.output
    [edit] = out["events"]
    assert (edit["system"], edit["who"], edit["source"]) == ("cloud", "cloud.user", "cloud_feed")
    assert "person's change" in edit["what"]
    sources = {s["name"]: s for s in out["sources"]}
    assert sources["cloud change feed"]["state"] == "ok"


def test_status_measures_the_cloud_capture_lag_from_the_routers_checkpoint(sim, env):
    for i in range(3):
        sim.person_upsert(CUSTOMER.model_copy(update={"key": str(20000 + i)}), "cloud.user")
    result, out = invoke(env, "status")
    [cloud] = [c for c in out["capture"] if c["system"] == "cloud"]
    assert (cloud["checkpoint"], cloud["lag"], cloud["last_cursor"]) == (0, 3, 3)
    assert result.exit_code == 0, out["attention"]
    result, out = invoke(env, "status", "--max-capture-lag", "2")
    assert result.exit_code == 1
    assert out["attention"] == ["cloud capture lag 3 change(s) > 2"]


def test_an_unreachable_cloud_is_named_and_the_rest_is_still_reported(env):
    env = {**env, "COEXIST_CLOUD_URL": "http://127.0.0.1:9/"}
    result, out = invoke(env, "trace", "customer:10042")
    assert result.exit_code == 1  # nothing found, but no traceback
    sources = {s["name"]: s for s in out["sources"]}
    assert sources["cloud change feed"]["state"] == "unavailable"
    assert sources["legacy change log"]["state"] == "ok"
    result, out = invoke(env, "status")
    assert result.exit_code == 1
    assert any(r.startswith("cloud change feed unavailable") for r in out["attention"])
