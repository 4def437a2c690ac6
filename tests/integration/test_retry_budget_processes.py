"""The cross-layer retry budget through real processes: ``coexist cloud-sim`` (started as
its own process from the CLI, faults injected), ``coexist run`` (router and writers, the
embedded broker) and the ``coexist dlq`` commands, all as OS processes.

One run, three phases, the retry figures set small through the environment (the one
place they are configured):

1. a 429 (``Retry-After: 1``) on the first write: the adapter's in-call retry waits it
   out inside the delivery; the record is applied, nothing is recorded as failed;
2. every write answered 503: the message spends exactly its budget of failed attempts
   (``COEXIST_RETRY_BUDGET``) over the writers' batch, HTTP attempts and the bus's
   re-deliveries, then is recorded as a technical exception within seconds; ``coexist
   dlq show`` shows the attempt history;
3. the cloud recovers: ``coexist dlq replay`` sends the message again and the running
   writer applies it; the record is marked replayed by the actor with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coexistence.canonical import decode
from tests.support import processes
from tests.support.state import shadow_home
from workers.cloud_sim.admin import SimulatorAdmin
from workers.legacy_erp.adapter import LegacyErp

pytestmark = [pytest.mark.integration]

COEXIST = str(Path(sys.executable).with_name("coexist"))
#: Longest wait for a process to do what it is asked, in seconds (a bound, not a figure).
WAIT_S = 60
#: The retry figures of this run (environment), small so the phases take seconds.
BUDGET = 7
HTTP_ATTEMPTS = 2
RETRY_ENV = {"COEXIST_RETRY_BUDGET": str(BUDGET),
             "COEXIST_CLOUD_RETRY_ATTEMPTS": str(HTTP_ATTEMPTS),
             "COEXIST_RETRY_MAX_RETRIES": "8",
             "COEXIST_RETRY_MIN_BACKOFF_S": "0.05", "COEXIST_RETRY_MAX_BACKOFF_S": "0.2",
             "COEXIST_RETRY_DELIVERY_S": "10"}
#: The failing message's budget, from the write to its exception record: deliveries
#: 0.05-0.2 s apart, in-call waits of at most 0.2 s (Retry-After 0), plus the embedded
#: broker's polling; generous for a loaded host, far below 9 deliveries x 6 attempts.
SPENT_WITHIN_S = 20


def customer(key: str, name: str):
    return decode("customer", {
        "schema_version": 2, "key": key, "name": name, "status": "active",
        "currency": "USD", "credit_limit": "5000", "credit_hold": False, "terms": "net30",
        "customer_group": "RETAIL", "region": "WEST",
    })


def wait_until(predicate, what: str, *procs: subprocess.Popen, within_s: float = WAIT_S):
    return processes.wait_until(predicate, within_s, what, alive=procs)


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def coexist(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COEXIST, *args], env=env, capture_output=True, text=True,
                          timeout=WAIT_S)


@pytest.fixture
def home(tmp_path):
    legacy = shadow_home(tmp_path)
    yield tmp_path, legacy
    legacy.dispose()


@pytest.fixture
def cloud_sim(tmp_path):
    """``coexist cloud-sim`` as a process: it prints its URL as the first line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
    env["COEXIST_HOME"] = str(tmp_path / "sim-home")
    proc = subprocess.Popen(
        [COEXIST, "cloud-sim", "--db", str(tmp_path / "cloud.db"),
         "--faults", "next=429,retry_after_s=1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        admin = SimulatorAdmin(url)
        yield url, admin, proc
        admin.close()
    finally:
        code = stop(proc)
    assert code == 0, proc.stderr.read()


def test_the_simulator_process_answers_the_api_and_its_faults(cloud_sim):
    url, admin, _proc = cloud_sim
    assert admin.http.get("/admin/faults").json()["next"] == ["429"]
    # ``next`` faults default to writes: reads are answered.
    assert httpx.get(f"{url}/customers").status_code == 200
    first = httpx.post(f"{url}/customers", json={})
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert admin.stats()["injected"] == {"429": 1}


def test_a_failing_cloud_write_spends_one_budget_then_replays_from_the_cli(home, cloud_sim):
    tmp_path, legacy = home
    url, admin, sim_proc = cloud_sim
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
    env.update({"COEXIST_HOME": str(tmp_path), "COEXIST_CLOUD_URL": url, **RETRY_ENV})
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        run = subprocess.Popen([COEXIST, "run", "--log-level", "INFO"], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    people = LegacyErp(legacy)
    try:
        wait_until(lambda: '"coexist bootstrapped"' in log_path.read_text(), "the start",
                   run, sim_proc)

        # 1. A 429 with Retry-After 1: waited out in the call, applied, no failure.
        written = time.monotonic()
        people.person_upsert(customer("10001", "Acme Supply"), "JSMITH")
        wait_until(lambda: _cloud_has(url, "10001"), "the write behind a 429",
                   run, sim_proc)
        assert time.monotonic() - written >= 1.0  # Retry-After honoured
        assert admin.stats()["injected"] == {"429": 1}
        assert "handling each alone" not in log_path.read_text()  # the batch's own retry
        assert json.loads(coexist(env, "dlq", "list", "--format", "json").stdout) == []

        # 2. Every write 503: exactly the budget of failed attempts, then one record.
        admin.faults(error_rate=1.0, scope="write", retry_after_s=0)
        written = time.monotonic()
        people.person_upsert(customer("10002", "Bolt Works"), "JSMITH")
        [record] = wait_until(
            lambda: json.loads(coexist(env, "dlq", "list", "--format", "json").stdout),
            "the exception record", run, sim_proc)
        spent_s = time.monotonic() - written
        assert spent_s < SPENT_WITHIN_S, f"the budget took {spent_s:.1f} s"
        assert admin.stats()["injected"] == {"429": 1, "error": BUDGET}
        assert record["failure_class"] == "technical" and record["key"] == "10002"
        assert f"retry budget spent: {BUDGET} failed attempts of {BUDGET}" in \
            record["error_message"]
        shown = coexist(env, "dlq", "show", str(record["id"]), "--format", "json")
        assert shown.returncode == 0, shown.stderr
        detail = json.loads(shown.stdout)
        assert detail["failed_attempts"] == BUDGET
        # The writers' batch tried first (2 attempts, charged to the message), then the
        # message alone: 2 + 2 in its first two deliveries, the budget's last one in the
        # third; 3 deliveries, not the bus's 9, and 7 attempts, not 9 x 2.
        history = detail["retry_history"]
        assert [h.split(": ", 1)[1].split(";")[0] for h in history] == [
            "2 failed attempt(s)", "2 failed attempt(s)", "1 failed attempt(s)"], history
        assert all("HTTP 503" in h for h in history)
        assert detail["attempts"] == 3  # deliveries
        assert not _cloud_has(url, "10002")
        traced = coexist(env, "trace", "customer:10002", "--format", "json")
        assert traced.returncode == 0, traced.stdout + traced.stderr
        assert f"retry budget spent: {BUDGET} failed attempts" in traced.stdout

        # 3. The cloud recovers; the operator replays through the CLI; the writer applies.
        admin.faults()
        replay = coexist(env, "dlq", "replay", str(record["id"]), "--reason", "cloud back",
                         "--actor", "ops")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        wait_until(lambda: _cloud_has(url, "10002"), "the replayed write", run, sim_proc)
        detail = json.loads(coexist(env, "dlq", "show", str(record["id"]), "--format",
                                    "json").stdout)
        assert detail["status"] == "replayed"
        assert [(a["action"], a["actor"], a["reason"]) for a in detail["actions"]] == [
            ("replay", "ops", "cloud back")]
        # The replay started with a fresh budget: nothing failed again.
        assert json.loads(coexist(env, "dlq", "list", "--format", "json").stdout) == []
    finally:
        code = stop(run)
    out = log_path.read_text()
    assert code == 0, out
    assert "Traceback" not in out


def _cloud_has(url: str, key: str) -> bool:
    response = httpx.get(f"{url}/customers(number='{key}')", timeout=5)
    return response.status_code == 200
