"""Trace and status on PostgreSQL: the state tables and the legacy ERP (change log and
triggers) in one PostgreSQL schema, driven by the in-process router (harness)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bus.exception_store import ExceptionStore
from coexistence.flags import FlagState, Mode, Rollout
from coexistence.reconcile.findings import Finding, Kind
from tests.support.records import ACME as CUSTOMER
from tests.support.router_harness import Harness
from workers.bootstrap import App
from workers.config import Settings
from workers.db import create_state_engine
from workers.flags.audit import FlagAuditLog
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema
from workers.observe import build_trace, collect_status, parse_target
from workers.reconcile.store import RunStore


@pytest.fixture
def pg(pg_url, tmp_path):
    state = create_state_engine(pg_url)
    upgrade_schema(state)
    legacy_engine = create_legacy_engine(pg_url)
    create_legacy_schema(legacy_engine)
    h = Harness(state, legacy=LegacyErp(legacy_engine))
    settings = Settings(home=tmp_path, state_url=pg_url, legacy_url=pg_url, broker_url=None,
                        queue_type="classic", redis_url=None, redis_prefix="coexist:",
                        cloud_url=None)
    yield h, legacy_engine, settings
    state.dispose()
    legacy_engine.dispose()


def move(h: Harness, mode: str, actor: str) -> None:
    """An audited flag change, applied to the harness's flags."""
    audit = FlagAuditLog(h.engine)
    before = audit.latest()["customer"]
    after = FlagState("customer", Mode(mode), Mode(mode), Rollout(), before.version + 1)
    h.flags.states["customer"] = audit.append(before, after, actor=actor, reason=mode,
                                              action="set")


def record_business_errors(h: Harness) -> None:
    """What the failure middleware does with a business error: an exception record."""
    store = ExceptionStore(h.engine)
    for actor, env, exc in h.business_errors:
        store.record(failure_class="business", queue_name="coexist.report", actor_name=actor,
                     message_id=env.message_id, envelope=env, raw=None, message=None,
                     error_type=type(exc).__name__, error_message=str(exc), call_site="test",
                     attempts=1)


def test_a_stray_write_is_traced_and_reported_on_postgresql(pg):
    h, legacy_engine, settings = pg
    move(h, "shadow", "alice")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    h.cloud.person_upsert(CUSTOMER.model_copy(update={"credit_limit": Decimal(1)}), "ana")
    h.settle()
    record_business_errors(h)
    runs = RunStore(h.engine)
    run_id = runs.start("customer", 1.0)
    runs.add_findings(run_id, [Finding(Kind.MISMATCH, "customer", "10042", "credit_limit",
                                       legacy="5000", cloud="1")])

    trace = build_trace(h.engine, parse_target("customer:10042"), legacy=legacy_engine)
    by_source = {}
    for e in trace.events:
        by_source.setdefault(e.source, []).append(e)
    # The person's insert; the stray write and its repair happened in the cloud.
    assert [e.who for e in by_source["chglog"]] == ["JSMITH"]
    [report] = [e for e in by_source["outbox"] if e.detail["kind"] == "stray_write"]
    assert report.who == "ana" and report.flag["actor"] == "alice"
    [failure] = by_source["exception"]
    assert failure.message_id == report.message_id
    [finding] = by_source["reconcile"]
    assert "mismatch credit_limit" in finding.what and finding.detail["cloud"] == "1"
    assert all(e.at.tzinfo is not None for e in trace.events)

    report = collect_status(App(settings, state=h.engine))
    customer = next(d for d in report.domains if d["domain"] == "customer")
    assert customer["open_exceptions"] == {"business": 1} and customer["flag_version"] == 1
    [legacy] = [c for c in report.capture if c["system"] == "legacy"]
    assert legacy["lag"] == 0 and legacy["last_cursor"] >= 1
    assert report.attention == ["customer: 1 open exception(s) (business 1)"]
