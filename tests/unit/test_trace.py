"""Trace arguments, and the timeline built from the in-process router (harness) with an
in-memory cloud change feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.support.records import ACME as CUSTOMER
from tests.support.router_harness import Harness
from workers.observe import TraceInputError, build_trace, parse_since, parse_target
from workers.observe.sources import SourceNote
from workers.router.capture import correlation_of


@pytest.mark.parametrize("text, domain, key", [
    ("customer:10042", "customer", "10042"),
    ("Customer:10042", "customer", "10042"),
    ("inventory:DAL1:WID-01000", "inventory", "DAL1:WID-01000"),
    (" order:500001 ", "order", "500001"),
])
def test_domain_and_key_are_parsed_with_the_key_left_whole(text, domain, key):
    target = parse_target(text)
    assert (target.domain, target.key, target.correlation_id) == (domain, key, None)


def test_anything_else_printable_is_a_correlation_id():
    cid = "56f27ff4-3a8c-597d-9640-601cceae5ba2"
    assert parse_target(cid).correlation_id == cid


@pytest.mark.parametrize("text, message", [
    ("", "give a correlation id or domain:key"),
    ("orders:1", "unknown domain 'orders'"),
    ("product:", "the key after 'product:' is empty"),
    ("customer:12x", "is not a valid customer key"),
    ("two words", "is not a correlation id"),
    ("x" * 129, "is not a correlation id"),
])
def test_bad_targets_name_what_is_wrong(text, message):
    with pytest.raises(TraceInputError, match=message):
        parse_target(text)


def test_since_takes_durations_and_iso_times():
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-11-27T10:00", now) == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert parse_since("2026-11-27T10:00+02:00", now) == datetime(2026, 11, 27, 8, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="--since '3 weeks'"):
        parse_since("3 weeks")


@pytest.fixture
def h(tmp_path):
    harness = Harness.on_sqlite(tmp_path / "state.db")
    yield harness
    harness.engine.dispose()


def test_the_cloud_feed_is_filtered_to_the_key_and_a_stray_report_joins_its_change(h):
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.legacy.person_upsert(CUSTOMER.model_copy(update={"key": "10043"}), "JSMITH")
    h.settle()
    h.cloud.person_upsert(CUSTOMER.model_copy(update={"credit_limit": Decimal(7)}), "cloud.user")
    h.settle()
    trace = build_trace(h.engine, parse_target("customer:10042"), cloud=h.cloud,
                        legacy_note=SourceNote("legacy change log", "unavailable", "fake ERP"))
    feed = [e for e in trace.events if e.source == "cloud_feed"]
    # The shadow write's echo, the person's edit and the repair's echo; never 10043.
    assert [e.who for e in feed] == ["COEXIST", "cloud.user", "COEXIST"]
    assert "person's change" in feed[1].what
    [report] = [e for e in trace.events if e.detail.get("kind") == "stray_write"]
    assert report.correlation_id == feed[1].correlation_id
    [edit] = [c for c in h.cloud.read(0, 100) if c.writer == "cloud.user"]
    assert feed[1].correlation_id == correlation_of("cloud", edit)
    # Versions come from the in-memory flags here: no audit row names them.
    assert report.flag == {"version": 1, "change": "no audit row found for this version"}
    notes = {n.name: n for n in trace.sources}
    assert notes["legacy change log"].detail == "fake ERP"
    assert "cursors 1..4 scanned (4 entries)" in notes["cloud change feed"].detail


def test_the_cloud_scan_is_a_window_around_the_checkpoint_and_says_what_it_left_out(h):
    h.set_mode("customer", "shadow")
    for i in range(6):
        h.legacy.person_upsert(CUSTOMER.model_copy(update={"key": str(30000 + i)}), "JSMITH")
    h.settle()
    trace = build_trace(h.engine, parse_target("customer:30000"), cloud=h.cloud, cloud_scan=2)
    notes = {n.name: n for n in trace.sources}
    assert "entries up to 4 not scanned" in notes["cloud change feed"].detail
    assert not [e for e in trace.events if e.source == "cloud_feed"]
    trace = build_trace(h.engine, parse_target("customer:30005"), cloud=h.cloud, cloud_scan=2)
    assert [e.who for e in trace.events if e.source == "cloud_feed"] == ["COEXIST"]


def test_limit_bounds_every_source_and_must_be_positive(h):
    h.set_mode("customer", "shadow")
    for limit in (1, 5):
        h.legacy.person_upsert(CUSTOMER.model_copy(update={"credit_limit": Decimal(limit)}),
                               "JSMITH")
    h.settle()
    assert len([e for e in build_trace(h.engine, parse_target("customer:10042"), limit=1).events
                if e.source == "outbox"]) == 1
    with pytest.raises(TraceInputError, match="--limit"):
        build_trace(h.engine, parse_target("customer:10042"), limit=0)
