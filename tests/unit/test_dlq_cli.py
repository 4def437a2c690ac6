"""``coexist dlq`` as a user runs it, on a real SQLite state database and embedded broker."""

from __future__ import annotations

import json
import sqlite3

import dramatiq
import pytest
from click.testing import CliRunner

from bus.envelope import new_envelope, to_message_arg
from bus.exception_store import ExceptionStore, group_key
from workers.cli import cli
from workers.config import Settings
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in ("COEXIST_STATE_URL", "COEXIST_BROKER_URL", "COEXIST_QUEUE_TYPE",
                 "COEXIST_ENV_FILE", "COEXIST_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_ACTOR", "maria")
    return tmp_path


@pytest.fixture
def store(home):
    engine = create_state_engine(Settings.from_env().state_url)
    upgrade_schema(engine)
    yield ExceptionStore(engine)
    engine.dispose()


def fail(store, key, *, error_type="UnknownRecord", site="workers.crm.apply",
         failure_class="business", domain="customer"):
    env = new_envelope(domain=domain, kind="upserted", key=key, payload={"key": key},
                       source_system="legacy", source_version=1)
    message = {"queue_name": "crm", "actor_name": "sync_crm", "args": [to_message_arg(env)],
               "kwargs": {}, "options": {"retries": 4, "traceback": "..."},
               "message_id": env.message_id, "message_timestamp": 1}
    return store.record(failure_class=failure_class, queue_name="crm", actor_name="sync_crm",
                        message_id=env.message_id, envelope=env, raw=None, message=message,
                        error_type=error_type, error_message=f"unknown customer {key}",
                        call_site=site, attempts=1)


def run(*args):
    result = CliRunner().invoke(cli, ["dlq", *args], catch_exceptions=False)
    return result


def test_list_shows_open_records_and_says_so_when_there_are_none(store):
    assert "no open exception records" in run("list").output
    rid = fail(store, "C001")
    out = run("list").output
    assert str(rid) in out and "C001" in out and "UnknownRecord" in out


def test_list_as_json_filters_by_domain(store):
    fail(store, "C001")
    fail(store, "P001", domain="product")
    result = run("list", "--domain", "product", "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["key"] for r in rows] == ["P001"]
    assert rows[0]["failure_class"] == "business"


def test_list_group_counts_records_per_error_type_and_call_site(store):
    for key in ("C1", "C2", "C3"):
        fail(store, key)
    fail(store, "C4", error_type="Timeout", failure_class="technical", site="workers.cloud.put")
    groups = json.loads(run("list", "--group", "--format", "json").output)
    assert [(g["error_type"], g["count"]) for g in groups] == [("UnknownRecord", 3),
                                                               ("Timeout", 1)]
    table = run("list", "--group").output
    assert group_key("UnknownRecord", "workers.crm.apply") in table


def test_show_prints_the_envelope_and_the_message(store):
    rid = fail(store, "C001")
    out = run("show", str(rid)).output
    assert "unknown customer C001" in out and "envelope" in out
    detail = json.loads(run("show", str(rid), "--format", "json").output)
    assert detail["envelope"]["key"] == "C001"
    assert detail["message"]["actor_name"] == "sync_crm"


def test_show_of_undecodable_input_previews_the_raw_bytes(store):
    rid = store.record(failure_class="undecodable", queue_name="crm", actor_name="sync_crm",
                       message_id=None, envelope=None, raw=b"\xff\xfegarbage", message=None,
                       error_type="MessageDecodeError", error_message="not UTF-8 at byte 0",
                       call_site="bus.envelope.decode", attempts=1)
    detail = json.loads(run("show", str(rid), "--format", "json").output)
    assert detail["raw_bytes"] == 9
    assert detail["raw_preview"] == "\\xff\\xfegarbage"


def test_show_of_an_unknown_id_is_one_clear_line(store):
    result = run("show", "4242")
    assert result.exit_code == 2
    assert "no exception record 4242" in result.output
    assert "Traceback" not in result.output


def test_a_bad_argument_is_refused_without_a_traceback(store):
    result = run("replay", "--reason", "r")
    assert result.exit_code == 2 and "give record IDs or --group" in result.output
    result = run("replay", "1", "--group", "abc", "--reason", "r")
    assert result.exit_code == 2
    result = run("replay", "1")
    assert result.exit_code == 2 and "--reason" in result.output
    result = run("show", "not-a-number")
    assert result.exit_code == 2 and "not-a-number" in result.output


def test_archive_by_id_and_by_group(store):
    a = fail(store, "C1")
    b = fail(store, "C2", error_type="Timeout")
    c = fail(store, "C3", error_type="Timeout")
    assert "archived 1" in run("archive", str(a), "--reason", "fixed by hand").output
    out = run("archive", "--group", group_key("Timeout", "workers.crm.apply"),
              "--reason", "cloud outage, records re-sent").output
    assert "archived 2" in out
    assert {store.get(i).status for i in (a, b, c)} == {"archived"}
    assert "no open exception records" in run("list").output
    [action] = store.actions(a)
    assert (action["actor"], action["reason"]) == ("maria", "fixed by hand")
    shown = json.loads(run("show", str(b), "--format", "json").output)
    assert [(x["action"], x["actor"]) for x in shown["actions"]] == [("archive", "maria")]


def test_archiving_an_unknown_or_archived_id_exits_1_and_names_it(store):
    a = fail(store, "C1")
    result = run("archive", "99999", "--reason", "r")
    assert result.exit_code == 1 and "not archived 99999: no such record" in result.output
    assert run("archive", str(a), "--reason", "r").exit_code == 0
    again = run("archive", str(a), "--reason", "r")
    assert again.exit_code == 1 and "it is archived, not open" in again.output


def test_replaying_an_unknown_or_archived_record_exits_1_and_changes_nothing(store, home):
    a = fail(store, "C1")
    result = run("replay", "99999", "--reason", "r")
    assert result.exit_code == 1 and "skipped 99999: no such record" in result.output
    run("archive", str(a), "--reason", "handled by hand")
    result = run("replay", str(a), "--reason", "r")
    assert result.exit_code == 1 and "archived (handled by hand)" in result.output
    assert store.get(a).status == "archived"
    with sqlite3.connect(home / "bus.db") as conn:
        assert conn.execute("SELECT count(*) FROM bus_queue").fetchone()[0] == 0


def test_an_unknown_domain_is_refused(store):
    result = run("list", "--domain", "nosuch")
    assert result.exit_code == 2 and "nosuch" in result.output


def test_a_dry_run_replay_changes_nothing(store, home):
    rid = fail(store, "C1")
    result = run("replay", str(rid), "--dry-run", "--reason", "r")
    assert result.exit_code == 0 and f"would replay 1 record(s): {rid}" in result.output
    assert store.get(rid).status == "open"
    assert not (home / "bus.db").exists()


def test_replay_puts_the_message_back_on_the_embedded_broker_with_retries_reset(store, home):
    rid = fail(store, "C1")
    other = fail(store, "C2")
    result = run("replay", str(rid), "999", "--reason", "bug 42 fixed")
    assert result.exit_code == 1, result.output  # 999 is unknown
    assert f"replayed 1 record(s): {rid}" in result.output
    assert "skipped 999: no such record" in result.output
    assert store.get(rid).status == "replayed"
    assert store.get(other).status == "open"
    with sqlite3.connect(home / "bus.db") as conn:
        rows = conn.execute("SELECT queue_name, body FROM bus_queue").fetchall()
    ((queue, body),) = rows
    message = dramatiq.Message.decode(body)
    assert queue == "crm"
    assert message.options["retries"] == 0 and "traceback" not in message.options
    assert message.args[0]["key"] == "C1"
    assert message.message_id == store.get(rid).message_id


def test_replay_by_group_replays_only_its_open_records(store, home):
    a = fail(store, "C1")
    b = fail(store, "C2")
    other = fail(store, "C3", error_type="Timeout")
    result = run("replay", "--group", group_key("UnknownRecord", "workers.crm.apply"),
                 "--format", "json", "--reason", "bug 42 fixed")
    assert json.loads(result.output)["replayed"] == [a, b]
    assert store.get(other).status == "open"


def test_an_unreachable_state_database_is_one_clear_line(home, monkeypatch):
    monkeypatch.setenv("COEXIST_STATE_URL",
                       "postgresql+psycopg://nobody:secretpw@127.0.0.1:1/none")
    result = run("list")
    assert result.exit_code == 2
    assert "state database (COEXIST_STATE_URL=postgresql+psycopg://nobody:***@" in result.output
    assert "secretpw" not in result.output
    assert "Traceback" not in result.output
