"""``coexist run --metrics-port``: the real process (reference legacy ERP in SQLite, the cloud
simulator, embedded broker) serves the business metrics on loopback, and they move."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import cloud_sim
from tests.support.records import ACME as CUSTOMER
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: Longest wait for the process to start serving, or for a counter to move.
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for(url: str, key, at_least: float) -> dict:
    deadline = time.monotonic() + WAIT_S
    seen: dict = {}
    while time.monotonic() < deadline:
        try:
            seen = samples(url)
        except httpx.TransportError:
            seen = {}
        if seen.get(key, 0) >= at_least:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{key} never reached {at_least}; last scrape had {seen.get(key)}")


@pytest.fixture
def process(tmp_path, sim):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    port = free_port()
    env = {**os.environ, "COEXIST_HOME": str(tmp_path), "COEXIST_LEGACY_URL": legacy_url,
           "COEXIST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}", "COEXIST_CLOUD_URL": sim.url,
           "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from workers.cli import main; main()", "run", "--threads", "1",
         "--metrics-port", str(port), "--log-level", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield LegacyErp(engine), f"http://127.0.0.1:{port}/metrics", proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    engine.dispose()


def test_a_running_router_serves_its_metrics_and_they_move_with_people_s_changes(process):
    legacy, url, proc = process
    before = wait_for(url, ("coexist_flag_version", (("domain", "customer"),
                                                     ("mode", "legacy"))), 0)
    for i in range(3):
        legacy.person_upsert(CUSTOMER.model_copy(update={"key": str(10042 + i)}), "JSMITH")
    routed = ("coexist_changes_routed_total", (("system", "legacy"),))
    after = wait_for(url, routed, before.get(routed, 0) + 3)
    assert after[("coexist_capture_lag_changes", (("system", "legacy"),))] >= 0
    assert ("coexist_outbox_backlog", (("domain", "customer"),)) in after
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.stdout.read().decode()[-2000:]
