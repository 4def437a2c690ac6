"""What the long-running processes write to their logs, counted on their stderr (JSON lines),
as supervisord starts them: alerting on ERROR/CRITICAL must not fire on routine events.

* a graceful stop of ``coexist worker`` on RabbitMQ, after a stray-write report and after the
  server dropped its idle connections (a short heartbeat stands in for a long run), writes no
  ERROR or CRITICAL line (0.1.0: ~16 ERROR lines per stop, an ERROR and a traceback per stray
  write);
* an idle ``coexist run`` writes at most a few lines a minute (0.1.0: 5 INFO lines a second
  from the cloud feed's HTTP requests);
* ``coexist run`` with the broker down writes one line per state change with a backoff, not
  one per attempt (0.1.0: ~2,350 lines in 40 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bus.envelope import new_envelope
from tests.support import cloud_sim
from tests.support.state import upgraded_state
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim

#: Longest wait for a process to start or to finish what it was given (a bound for a failure).
START_WAIT_S = 150.0
#: How long an idle process is watched.  Lines are counted, not timed: an idle process
#: that logs periodically shows it within this window whatever the machine's load.
IDLE_WATCH_S = 10.0


def lines_of(log: Path) -> list[dict]:
    out = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append({"level": "RAW", "logger": "-", "message": raw})
    return out


def levels(lines: list[dict]) -> Counter:
    return Counter(line["level"] for line in lines)


def wait_logged(log: Path, needle: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no {needle!r} logged:\n{log.read_text()[-3000:]}")


@pytest.fixture
def home(tmp_path, sim):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    engine.dispose()
    env = {**os.environ, "COEXIST_HOME": str(tmp_path), "COEXIST_LEGACY_URL": legacy_url,
           "COEXIST_STATE_URL": upgraded_state(f"sqlite:///{tmp_path / 'state.db'}"),
           "COEXIST_CLOUD_URL": sim.url, "COEXIST_BROKER_URL": "", "COEXIST_REDIS_URL": "",
           "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: Path, **overrides: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from workers.cli import main; main()", *args],
            env={**env, **overrides}, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        procs.append(proc)
        return proc

    yield tmp_path, env, start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stray_write_report(env: dict) -> None:
    """A stray-write report on the report queue, as the router's capture sends one."""
    from bus.brokers import make_broker
    from workers.router import queues

    report = new_envelope(
        domain="customer", kind=queues.KIND_STRAY, key="10042", source_system="cloud",
        source_version=3, payload={"writer": "JSMITH", "system": "cloud", "sor": "legacy",
                                   "op": "upsert", "fields": ["credit_limit"],
                                   "repaired": True})
    broker = make_broker(env["COEXIST_BROKER_URL"])
    import dramatiq

    broker.enqueue(dramatiq.Message(
        queue_name=queues.REPORT_QUEUE, actor_name=queues.REPORT_ACTOR,
        args=(report.model_dump(mode="json"),), kwargs={}, options={},
        message_id=report.message_id))
    broker.close()


@pytest.mark.timeout(600)
def test_a_graceful_stop_of_a_worker_on_rabbitmq_logs_no_error_or_critical(
        home, fresh_rabbit_vhost):
    tmp_path, env, start = home
    url, _vhost = fresh_rabbit_vhost
    # heartbeat=2: RabbitMQ drops the connections the worker leaves idle within seconds, as
    # it does after a few minutes with the default heartbeat.
    broker_url = f"{url}?heartbeat=2"
    log = tmp_path / "worker.log"
    proc = start(["worker", "--threads", "2"], log, COEXIST_BROKER_URL=broker_url)
    wait_logged(log, "coexist bootstrapped", proc)
    stray_write_report({**env, "COEXIST_BROKER_URL": url})
    wait_logged(log, "stray write", proc)
    # Let the server miss heartbeats on the idle connections (the failure this stands for).
    time.sleep(8)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(START_WAIT_S) == 0, log.read_text()[-3000:]
    lines = lines_of(log)
    bad = [line for line in lines if line["level"] in ("ERROR", "CRITICAL", "RAW")]
    assert bad == [], bad[:5]
    assert not [line for line in lines if "exc" in line]  # no traceback at all


@pytest.mark.timeout(600)
def test_an_idle_run_logs_at_most_a_few_lines_a_minute(home):
    tmp_path, _env, start = home
    log = tmp_path / "run.log"
    proc = start(["run", "--threads", "2"], log)
    wait_logged(log, "coexist bootstrapped", proc)
    started_with = len(lines_of(log))
    time.sleep(IDLE_WATCH_S)  # watching an idle process: nothing should happen
    idle = lines_of(log)[started_with:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(START_WAIT_S) == 0
    assert len(idle) <= 2, idle[:10]
    assert levels(lines_of(log))["ERROR"] == 0


@pytest.mark.timeout(600)
def test_with_the_broker_down_run_logs_one_line_per_state_change_not_per_attempt(home):
    tmp_path, _env, start = home
    log = tmp_path / "run.log"
    closed = "amqp://guest:guest@127.0.0.1:1/nowhere"  # nothing listens on port 1
    proc = start(["run", "--threads", "4"], log, COEXIST_BROKER_URL=closed)
    wait_logged(log, "coexist bootstrapped", proc)
    time.sleep(IDLE_WATCH_S)  # consumers reconnect every 3 s, the drain every 5 s
    proc.send_signal(signal.SIGTERM)
    proc.wait(START_WAIT_S)
    lines = lines_of(log)
    alarms = [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
    assert alarms == [], alarms[:3]  # a broker outage is retried, not a crash
    assert not [line for line in lines if "exc" in line]  # and needs no traceback
    # First line of each failing part (consumers, drain), then one every 10, 20, 40 s...
    assert len(lines) <= 15, Counter(line["message"][:60] for line in lines).most_common(8)
    assert any("connection error" in line["message"] for line in lines)
