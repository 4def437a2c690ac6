"""``coexist dlq`` with the state database on real PostgreSQL."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bus.exception_store import ExceptionStore, group_key
from tests.unit.test_dlq_cli import fail
from workers.cli import cli
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_url, tmp_path, monkeypatch):
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_STATE_URL", pg_url)
    monkeypatch.delenv("COEXIST_BROKER_URL", raising=False)
    engine = create_state_engine(pg_url)
    upgrade_schema(engine)
    yield ExceptionStore(engine)
    engine.dispose()


def run(*args):
    return CliRunner().invoke(cli, ["dlq", *args], catch_exceptions=False)


def test_list_show_group_archive_and_replay_on_postgresql(store, tmp_path):
    a = fail(store, "C1")
    b = fail(store, "C2")
    t = fail(store, "C3", error_type="Timeout", failure_class="technical")
    rows = json.loads(run("list", "--format", "json").output)
    assert {r["id"] for r in rows} == {a, b, t}
    groups = json.loads(run("list", "--group", "--format", "json").output)
    assert {g["error_type"]: g["count"] for g in groups} == {"UnknownRecord": 2, "Timeout": 1}
    assert json.loads(run("show", str(t), "--format", "json").output)["key"] == "C3"
    assert "archived 2" in run("archive", "--group",
                               group_key("UnknownRecord", "workers.crm.apply"),
                               "--reason", "fixed by hand", "--actor", "maria").output
    # onto the embedded broker under COEXIST_HOME
    result = run("replay", str(t), "--reason", "cloud back", "--actor", "maria")
    assert result.exit_code == 0, result.output
    assert store.get(t).status == "replayed"
    assert store.open_count() == 0
    assert (tmp_path / "bus.db").exists()
