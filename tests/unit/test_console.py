"""The console's data endpoints answer exactly what the CLI prints as JSON for the same state
(one source for both), and the console is read-only and guarded off loopback."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from tests.support.console_world import build_world
from workers.bootstrap import App
from workers.cli import cli
from workers.cli.console import is_loopback
from workers.config import Settings
from workers.console.app import Sampler, create_app


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("console"))


@pytest.fixture
def client(world):
    app = App(Settings.from_env(world.env))
    with TestClient(create_app(app, sampler=Sampler(app))) as c:
        yield c
    app.close()


def cli_json(world, *args):
    result = CliRunner().invoke(cli, [*args, "--format", "json"], env=world.env)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output[: result.output.rindex("}") + 1]
                      if result.output.lstrip().startswith("{") else
                      result.output[: result.output.rindex("]") + 1])


def without(d: dict, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def test_the_status_endpoint_is_coexist_status_json(world, client):
    page = client.get("/api/status").json()
    cli_out = cli_json(world, "status")
    assert without(page, "at") == without(cli_out, "at")
    assert page["ok"] is False and "customer: 1 open exception(s) (business 1)" in page[
        "attention"]


def test_exception_views_are_dlq_list_and_show(world, client):
    groups = client.get("/api/exceptions/groups").json()
    assert groups == cli_json(world, "dlq", "list", "--group")
    [group] = groups
    assert group["error_type"] == "StrayWrite" and group["first_failed_at"]
    records = client.get("/api/exceptions", params={"group": group["group"]}).json()
    assert records == cli_json(world, "dlq", "list", "--in-group", group["group"])
    [record] = records
    detail = client.get(f"/api/exceptions/{record['id']}").json()
    assert without(detail, "commands") == cli_json(world, "dlq", "show", str(record["id"]))
    assert f"coexist dlq replay {record['id']} --reason '...'" in detail["commands"]
    assert client.get("/api/exceptions/999999").status_code == 404
    assert client.get("/api/exceptions/abc").status_code == 400


def test_the_trace_endpoint_is_coexist_trace_json(world, client):
    page = client.get("/api/trace", params={"target": "customer:10042"}).json()
    assert page == cli_json(world, "trace", "customer:10042")
    assert any(e["source"] == "exception" for e in page["events"])
    bad = client.get("/api/trace", params={"target": "custmer:1"})
    assert bad.status_code == 400 and "custmer" in bad.json()["error"]


def test_the_board_shows_each_domains_next_move_with_the_plans_checks(world, client):
    board = client.get("/api/board").json()
    customer = next(d for d in board["domains"] if d["domain"] == "customer")
    assert (customer["mode"], customer["sor"], customer["next"]) == ("shadow", "legacy", "cloud")
    plan = cli_json(world, "cutover", "plan", "customer", "cloud")
    assert customer["guards"]["checks"] == plan["checks"]
    failed = {c["name"] for c in customer["guards"]["checks"] if not c["ok"]}
    assert failed, "an open exception must block the customer's next move"
    assert [d["domain"] for d in board["domains"]][:2] == ["customer", "product"]


def test_history_kpis_and_channels_come_from_the_stored_records(world, client):
    history = client.get("/api/history").json()
    assert [r["drift_pct"] for r in history["drift"]["product"]] == [2.5]
    assert sum(m["routed"] for m in history["routed_per_minute"]) > 0
    kpis = client.get("/api/kpis").json()
    assert kpis["stray_writes_per_domain"] == {"customer": 1}
    assert client.get("/api/channels").json()["subscriptions"] == []


def test_the_page_is_served_without_any_remote_resource(client):
    html = client.get("/").text
    assert "<script>" in html and "http://" not in html.replace(
        "http://www.w3.org/2000/svg", "")
    assert "https://" not in html


def test_with_a_token_every_request_needs_it(world):
    app = App(Settings.from_env(world.env))
    with TestClient(create_app(app, token="s3cret", sampler=Sampler(app))) as c:
        assert c.get("/api/kpis").status_code == 401
        assert c.get("/").headers["www-authenticate"].startswith("Basic")
        basic = base64.b64encode(b"ops:s3cret").decode()
        assert c.get("/api/kpis", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert c.get("/api/kpis", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/kpis", headers={"Authorization": "Bearer nope"}).status_code == 401
    app.close()


def test_binding_off_loopback_without_a_token_is_refused(world):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    result = CliRunner().invoke(cli, ["console", "--host", "0.0.0.0"], env=world.env)
    assert result.exit_code == 2
    assert "COEXIST_CONSOLE_TOKEN" in result.output


def test_onboarding_time_on_the_kpi_strip_is_coexist_status_s_crm_figure(tmp_path):
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from sqlalchemy.orm import Session

    from workers.console import data
    from workers.crm import state as crm_state
    from workers.db import create_state_engine
    from workers.migrate import upgrade

    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_state_engine(state_url)
    upgrade(engine)
    created = datetime.now(UTC) - timedelta(hours=2)
    with Session(engine) as session:
        for i, took_s in enumerate((30, 90, 600)):
            session.add(crm_state.CrmOnboarding(
                crm_account_id=f"001Dx00000000{i}AAA", customer_key=str(9_000_000_001 + i),
                decision=crm_state.CREATE, allocated=9_000_000_001 + i, state="done",
                crm_created_at=created, completed_at=created + timedelta(seconds=took_s)))
        session.commit()
    engine.dispose()
    (tmp_path / "coexist.toml").write_text(
        '[subscriptions.crm]\ndomains = ["customer"]\n\n'
        '[crm]\nurl = "http://127.0.0.1:9"\nclient_id = "console-test"\n')
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": state_url,
           "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'legacy.db'}",
           "COEXIST_BROKER_URL": "", "COEXIST_CLOUD_URL": "", "COEXIST_REDIS_URL": "",
           "COEXIST_CRM_CLIENT_SECRET": "not-used"}
    app = App(Settings.from_env(env))
    try:
        with TestClient(create_app(app, sampler=Sampler(app))) as c:
            kpi = c.get("/api/kpis").json()["onboarding_time"]
        assert kpi == data.kpis(app)["onboarding_time"]
    finally:
        app.close()
    cli_crm = cli_json(SimpleNamespace(env=env), "status")["crm"]
    assert kpi == cli_crm["onboarding_time"]
    assert kpi == {"window_days": 7, "completed": 3, "median_s": 90.0, "p95_s": 600.0,
                   "open": 0}
