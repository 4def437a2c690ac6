"""``coexist trace`` on a state database built by the real router: the composition root,
the embedded broker, real dramatiq workers and middleware, the legacy reference ERP in
SQLite (its change log is a trace source) and an in-memory cloud ERP."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest
from click.testing import CliRunner

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


def move(app, domain: str, mode: str, actor: str, reason: str) -> FlagState:
    """A flag change as `coexist cutover set` commits it: audited first, then applied."""
    store = SqlFlagStore(app.state)
    before = store.load()[domain]
    after = FlagState(domain, Mode(mode), Mode(mode), Rollout(), before.version + 1)
    stamped = store.commit(before, after, actor=actor, reason=reason, action="set")
    app.flags.apply([stamped])
    return stamped


@pytest.fixture(scope="module")
def stray(tmp_path_factory):
    """Legacy SoR (shadow) -> a person creates 10042 in legacy -> switch to cloud -> the
    person edits 10042 in legacy again: a stray write, reported and repaired.  Built once per
    module: the commands under test only read it."""
    tmp_path = tmp_path_factory.mktemp("trace")
    settings = Settings(
        home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}",
        legacy_url=f"sqlite:///{tmp_path / 'legacy.db'}", broker_url=None,
        queue_type="classic", redis_url=None, redis_prefix="coexist:", cloud_url=None,
    )
    engine = create_legacy_engine(settings.legacy_url)
    create_legacy_schema(engine)
    legacy = LegacyErp(engine)
    app = bootstrap(settings, erps={LEGACY: legacy, CLOUD: InMemoryErp("cloud")},
                    retry_options={"max_retries": 0}, create_state=True)
    driver = Driver(app)
    move(app, "customer", "shadow", "alice", "pilot the shadow")
    legacy.person_upsert(CUSTOMER, "JSMITH")
    driver.settle()
    move(app, "customer", "cloud", "bob", "cloud is the SoR now")
    legacy.person_upsert(CUSTOMER.model_copy(update={"credit_limit": Decimal(9)}), "JSMITH")
    driver.settle()
    env = {"COEXIST_HOME": str(tmp_path), "COEXIST_STATE_URL": settings.state_url,
           "COEXIST_LEGACY_URL": settings.legacy_url, "COEXIST_BROKER_URL": "",
           "COEXIST_CLOUD_URL": ""}
    yield app, env
    driver.stop()
    engine.dispose()


def _ms(at: str) -> datetime:
    t = datetime.fromisoformat(at)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def run(env, *args):
    result = CliRunner().invoke(cli, ["trace", *args], env=env)
    return result


def test_a_stray_writes_trace_shows_the_persons_change_the_report_the_repair_and_the_flag(
        stray):
    app, env = stray
    # Repaired from the SoR (the legacy form of a record is lossy; the limit is not).
    assert app.erps[LEGACY].get("customer", "10042").credit_limit == Decimal(5000)
    result = run(env, "customer:10042", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    events = out["events"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)

    person = [e for e in events if e["source"] == "chglog" and e["who"] == "JSMITH"]
    assert len(person) >= 2 and all("person's change" in e["what"] for e in person)
    [report] = [e for e in events if e["detail"].get("kind") == "stray_write"]
    assert report["who"] == "JSMITH" and "credit_limit" in report["what"]
    assert report["flag_version"] == 2
    assert report["flag"]["actor"] == "bob" and report["flag"]["change"] == "shadow -> cloud"
    assert report["flag"]["reason"] == "cloud is the SoR now"
    [repair] = [e for e in events if e["detail"].get("kind") == "repair"]
    assert repair["system"] == "legacy" and repair["correlation_id"] == report["correlation_id"]
    # The repair re-sends the SoR's state under the version it was last routed with (v1).
    assert repair["flag_version"] == 1 and repair["flag"]["actor"] == "alice"
    [failure] = [e for e in events if e["source"] == "exception"]
    assert "StrayWrite" in failure["what"] and failure["message_id"] == report["message_id"]
    [shadow] = [e for e in events if e["detail"].get("kind") == "upsert"]
    assert shadow["system"] == "cloud" and shadow["flag"]["change"] == "legacy -> shadow"
    # The repair's own write is in the change log too, as coexist's echo.
    assert any(e["source"] == "chglog" and e["who"] == "COEXIST" for e in events)
    audits = [e for e in events if e["source"] == "flag_audit"]
    assert [(a["who"], a["flag_version"]) for a in audits] == [("alice", 1), ("bob", 2)]
    # The person's stray edit happened after bob's switch and before its report, compared at
    # the legacy change log's precision (CHGTS: epoch milliseconds, truncated): the switch and
    # the edit can fall in the same millisecond.
    stray_edit = person[-1]
    assert _ms(audits[1]["at"]) <= _ms(stray_edit["at"]) <= _ms(report["at"])
    assert stray_edit["correlation_id"] == report["correlation_id"]
    assert out["route"]["last_flag_version"] == 1 and out["route"]["pinned_sor"] is None
    sources = {s["name"]: s for s in out["sources"]}
    assert sources["legacy change log"]["state"] == "ok"
    assert sources["cloud change feed"]["state"] == "not configured"


def test_a_correlation_trace_holds_every_message_of_one_change_and_the_change_itself(stray):
    app, env = stray
    [record] = ExceptionStore(app.state).list(domain="customer")
    result = run(env, record.correlation_id, "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["domain"], out["key"]) == ("customer", "10042")
    events = out["events"]
    kinds = sorted(e["detail"].get("kind", e["source"]) for e in events)
    assert kinds == ["chglog", "exception", "flag_audit", "flag_audit", "repair",
                     "stray_write"]
    assert all(e["correlation_id"] == record.correlation_id
               for e in events if e["source"] != "flag_audit")
    [change] = [e for e in events if e["source"] == "chglog"]
    assert change["who"] == "JSMITH"
    # Only the flag changes these messages were routed under, not the domain's whole history.
    assert {e["flag_version"] for e in events if e["source"] == "flag_audit"} == {1, 2}


def test_the_table_names_the_sources_and_the_flag_change_that_routed_each_message(stray):
    _, env = stray
    result = run(env, "customer:10042")
    assert result.exit_code == 0, result.output
    assert "stray write by JSMITH" in result.output
    assert "v2: shadow -> cloud by bob" in result.output
    assert "cloud change feed: not configured" in result.output
    assert "StrayWrite [open]" in result.output  # people's texts are never read as markup


def test_since_leaves_out_what_happened_before(stray):
    _, env = stray
    result = run(env, "customer:10042", "--since", "2999-01-01T00:00Z", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.output.splitlines()[0])["events"] == []
    assert "nothing found for customer:10042" in result.output


@pytest.mark.parametrize("arg, message", [
    ("custmer:10042", "unknown domain 'custmer'"),
    ("customer:", "the key after 'customer:' is empty"),
    ("customer:ABC", "is not a valid customer key"),
    ("not an id", "is not a correlation id"),
])
def test_bad_targets_are_one_line_errors_with_exit_2(stray, arg, message):
    _, env = stray
    result = run(env, arg)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_an_unknown_correlation_id_finds_nothing_and_exits_1(stray):
    _, env = stray
    result = run(env, "5b0c7f2e-0000-4c0e-9a51-000000000000")
    assert result.exit_code == 1
    assert "nothing found for correlation 5b0c7f2e-0000-4c0e-9a51-000000000000" in result.output


def test_an_unreachable_state_database_is_one_line_without_its_password(stray):
    _, env = stray
    url = "postgresql+psycopg://coexist:pa55word@127.0.0.1:1/state"
    for command in (["trace", "customer:10042"], ["status"]):
        result = CliRunner().invoke(cli, command, env={**env, "COEXIST_STATE_URL": url})
        assert result.exit_code == 2, result.output
        assert "state database (COEXIST_STATE_URL=postgresql+psycopg://coexist:***@127.0.0.1:1/" \
               "state): OperationalError" in result.output
        assert "pa55word" not in result.output and "Traceback" not in result.output


def test_a_bad_since_is_a_one_line_error(stray):
    _, env = stray
    result = run(env, "customer:10042", "--since", "yesterday")
    assert result.exit_code == 2 and "--since 'yesterday'" in result.output


def test_a_missing_legacy_database_is_named_unavailable_not_fatal(stray, tmp_path):
    _, env = stray
    env = {**env, "COEXIST_HOME": str(tmp_path)}
    result = run({**env, "COEXIST_LEGACY_URL": f"sqlite:///{tmp_path / 'nowhere.db'}"},
                 "customer:10042", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    sources = {s["name"]: s for s in out["sources"]}
    assert sources["legacy change log"]["state"] == "unavailable"
    assert "nowhere.db" in sources["legacy change log"]["detail"]
    assert not (tmp_path / "nowhere.db").exists()
    assert any(e["detail"].get("kind") == "stray_write" for e in out["events"])


def test_a_key_nobody_touched_is_nothing_found_even_though_its_domain_moved(stray):
    _, env = stray
    result = run(env, "customer:999999", "--format", "json")
    assert result.exit_code == 1, result.output
    out = json.loads(result.output.splitlines()[0])
    # The domain's flag changes are shown as context, but they are not news about the key.
    assert {e["source"] for e in out["events"]} == {"flag_audit"}
    assert "nothing found for customer:999999" in result.output
