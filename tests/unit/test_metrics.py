"""Business metrics: the router's work moves them, and the endpoint serves them on loopback.

The router runs in-process (``tests.support.router_harness``: real capture loops, outbox,
relay and handlers on in-memory ERPs and a SQLite state database); the test scrapes
``/metrics`` over HTTP before and after, and compares.
"""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from coexistence.router import CLOUD
from tests.support.records import ACME as CUSTOMER
from tests.support.router_harness import Harness
from workers import metrics_server
from workers.router import handlers, queues


@pytest.fixture
def served(tmp_path):
    h = Harness.on_sqlite(tmp_path / "state.db")
    server = metrics_server.serve(0, SimpleNamespace(state=h.engine, erps=h.erps))
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    yield h, url
    server.shutdown()
    server.server_close()
    metrics_server.register_state_collector(None)
    h.engine.dispose()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before, after, name, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_routing_stray_writes_echoes_and_shadow_writes_move_the_counters(served):
    h, url = served
    h.set_mode("customer", "shadow")
    before = scrape(url)
    for i in range(3):
        h.legacy.person_upsert(CUSTOMER.model_copy(update={"key": str(20000 + i)}), "JSMITH")
    h.settle()
    h.cloud.person_upsert(CUSTOMER.model_copy(update={"key": "20000",
                                                      "credit_limit": Decimal(1)}), "cloud.user")
    h.settle()
    after = scrape(url)
    assert delta(before, after, "coexist_changes_captured_total", system="legacy") == 3
    assert delta(before, after, "coexist_changes_routed_total", system="legacy") == 3
    assert delta(before, after, "coexist_stray_writes_total", system="cloud") == 1
    # The cloud's echoes of three shadow writes and one repair.
    assert delta(before, after, "coexist_echoes_suppressed_total", system="cloud") == 4
    assert delta(before, after, "coexist_router_messages_total", system="legacy",
                 purpose="write") == 3
    assert delta(before, after, "coexist_router_messages_total", system="legacy",
                 purpose="event") == 3
    assert delta(before, after, "coexist_erp_writes_total", target="cloud", kind="upsert",
                 result="applied") == 3
    assert delta(before, after, "coexist_erp_writes_total", target="cloud", kind="repair",
                 result="applied") == 1
    assert ("coexist_capture_delay_seconds", (("system", "legacy"),)) in after


def test_a_write_older_than_the_target_holds_counts_as_stale(served):
    h, url = served
    h.set_mode("customer", "shadow")
    h.legacy.person_upsert(CUSTOMER, "JSMITH")
    h.settle()
    before = scrape(url)
    old = new_envelope(domain="customer", kind=queues.KIND_UPSERT, key=CUSTOMER.key,
                       payload={"record": CUSTOMER.model_dump(mode="json")},
                       source_system="legacy", source_version=0, flag_version=0)
    handlers.apply_write(old, h.cloud, lambda *a: None, h.write_context())
    after = scrape(url)
    assert delta(before, after, "coexist_erp_writes_total", target=CLOUD, kind="upsert",
                 result="stale") == 1
    assert delta(before, after, "coexist_erp_writes_total", target=CLOUD, kind="upsert",
                 result="applied") == 0


def test_open_exceptions_by_class_backlog_and_flag_versions_are_read_at_scrape_time(served):
    h, url = served
    store = ExceptionStore(h.engine)
    for failure_class in ("business", "dead_letter", "dead_letter"):
        store.record(failure_class=failure_class, queue_name="coexist.write.cloud",
                     actor_name="write_cloud", message_id=None, envelope=None, raw=b"x",
                     message=None, error_type="Boom", error_message="boom", call_site="t.t",
                     attempts=1, domain="customer", key="10042")
    h.command(CUSTOMER, "crm", 1)  # queued in the outbox, not relayed yet
    now = scrape(url)
    assert now[("coexist_open_exceptions", (("domain", "customer"),
                                            ("failure_class", "dead_letter")))] == 2
    assert now[("coexist_open_exceptions", (("domain", "customer"),
                                            ("failure_class", "business")))] == 1
    assert now[("coexist_outbox_backlog", (("domain", "customer"),))] == 1
    assert now[("coexist_flag_version", (("domain", "customer"), ("mode", "legacy")))] == 0
    store.archive(ids=[r.id for r in store.list()], actor="ops", reason="reviewed")
    h.settle()
    later = scrape(url)
    assert ("coexist_open_exceptions", (("domain", "customer"),
                                        ("failure_class", "dead_letter"))) not in later
    assert later[("coexist_outbox_backlog", (("domain", "customer"),))] == 0


def test_a_busy_port_is_a_clear_error(served):
    _, url = served
    port = int(url.split(":")[2].split("/")[0])
    with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        metrics_server.serve(port)


def test_run_router_and_worker_offer_a_metrics_port():
    from click.testing import CliRunner

    from workers.cli import cli

    for command in ("run", "router", "worker"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert "--metrics-port" in result.output and "127.0.0.1" in result.output


def test_registering_the_state_collector_reads_nothing_so_it_cannot_deadlock_the_registry():
    """prometheus_client calls collect() under its registry lock when a collector has no
    describe(); a module first imported then that registers a metric waits for that lock
    forever (coexist router --metrics-port hung at start that way)."""
    from prometheus_client import CollectorRegistry

    class Exploding(metrics_server.StateCollector):
        def collect(self):
            raise AssertionError("collect() called at registration")

    registry = CollectorRegistry(auto_describe=True)  # as the default REGISTRY
    registry.register(Exploding(engine=None))  # type: ignore[arg-type]
