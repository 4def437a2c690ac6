"""scripts/grafana/coexist.json stays in step with the metrics coexist serves: every metric a
panel queries is served, and every metric served has a panel."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.router_harness import Harness
from workers import metrics_server

DASHBOARD = Path(__file__).resolve().parents[2] / "scripts" / "grafana" / "coexist.json"


def import_every_module() -> None:
    """A process serves the metrics of every module it imported: take them all."""
    import bus
    import workers

    for package in (bus, workers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def served_families(tmp_path) -> set[str]:
    import_every_module()
    h = Harness.on_sqlite(tmp_path / "state.db")
    # A legacy ERP with a change log: the capture-lag gauge is served only then.
    legacy = SimpleNamespace(feed=SimpleNamespace(last_cursor=lambda: 0))
    server = metrics_server.serve(0, SimpleNamespace(state=h.engine, erps={"legacy": legacy}))
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text
    finally:
        server.shutdown()
        server.server_close()
        metrics_server.register_state_collector(None)
    names = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("coexist_") and not family.name.endswith("_created"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_every_panel_queries_a_served_metric_and_every_metric_has_a_panel(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for t in panel["targets"]
               for name in re.findall(r"\bcoexist_[a-z_]+", t["expr"])}
    served = served_families(tmp_path)
    assert queried - served == set(), "panels query metrics coexist does not serve"
    assert served - queried == set(), "served metrics without a panel"
