"""`coexist portal endpoint ...` on an injected state database (no file, no socket)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy.pool import StaticPool

from workers.bootstrap import App
from workers.cli import cli
from workers.config import Settings
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema


@pytest.fixture
def run():
    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(engine)
    obj = App(Settings.from_env, state=engine)

    def invoke(*args):
        return CliRunner().invoke(cli, ["portal", *args], obj=obj,
                                  env={"COEXIST_ACTOR": "ops"})

    yield invoke
    engine.dispose()


def test_add_prints_the_secret_once_and_list_never_shows_it(run):
    added = run("endpoint", "add", "--customer", "10001", "--child", "10002",
                "--url", "https://acme.example/hooks", "--reason", "onboarding")
    assert added.exit_code == 0, added.output
    assert "whsec_" in added.output
    listed = run("endpoint", "list", "--format", "json")
    [row] = json.loads(listed.output)
    assert (row["customers"], row["status"]) == (["10001", "10002"], "active")
    assert "whsec_" not in listed.output


def test_every_change_is_audited_with_actor_and_reason(run):
    run("endpoint", "add", "--customer", "10001", "--url", "https://a.example/h",
        "--reason", "onboarding")
    assert run("endpoint", "rotate-secret", "1", "--reason", "yearly").exit_code == 0
    assert run("endpoint", "disable", "1", "--reason", "customer asked").exit_code == 0
    assert run("notices").exit_code == 1
    assert run("endpoint", "enable", "1", "--reason", "back").exit_code == 0
    history = json.loads(run("endpoint", "history", "1", "--format", "json").output)
    assert [(h["action"], h["actor"], h["reason"]) for h in history] == [
        ("enable", "ops", "back"), ("disable", "ops", "customer asked"),
        ("rotate-secret", "ops", "yearly"), ("add", "ops", "onboarding")]
    assert run("notices").exit_code == 0


def test_bad_input_is_one_line_and_exit_2(run):
    bad = run("endpoint", "add", "--customer", "10001", "--url", "ftp://x", "--reason", "r")
    assert bad.exit_code == 2 and "http(s) URL" in bad.output
    missing = run("endpoint", "disable", "42", "--reason", "r")
    assert missing.exit_code == 2 and "no endpoint 42" in missing.output
    event = run("endpoint", "add", "--customer", "1", "--url", "https://x.example",
                "--event", "order.created", "--reason", "r")
    assert event.exit_code == 2 and "order.created" in event.output
