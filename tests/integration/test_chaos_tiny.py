"""The chaos run at its smallest scale, in the suite: a regression in any guarantee it checks
(nothing lost, nothing regressed, the ERPs equal, every exception explained, drift 0 after
repair) fails CI. The real processes on PostgreSQL + RabbitMQ (quorum) + Redis + the cloud
simulator, with kill -9 of workers and the active router, a closed-connections storm, a
cloud fault window, and a forward switch and rollback through the guarded CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.support.processes import ROOT
from tests.support.services import AMQP_HOST, AMQP_PORT, need, port_open

#: The run gives up by itself after this (and removes what it made); the test waits longer.
MAX_S = 300


@pytest.mark.timeout(MAX_S + 200)
def test_the_tiny_chaos_run_loses_nothing_and_explains_every_exception():
    need("PostgreSQL", port_open("127.0.0.1", 5432))
    need("RabbitMQ", port_open(AMQP_HOST, AMQP_PORT))
    need("Redis", port_open("127.0.0.1", 6379))
    run = subprocess.Popen([sys.executable, "scripts/chaos/run.py", "--scale", "tiny",
                            "--max-s", str(MAX_S)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = run.communicate(timeout=MAX_S + 60)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGTERM)  # it cleans up its databases, vhost and processes
        stdout, stderr = run.communicate(timeout=120)
    report = json.loads(stdout.strip().splitlines()[-1])
    assert run.returncode == 0 and report["ok"], json.dumps(report, indent=2)[-4000:] + \
        stderr[-3000:]
    assert report["lost"] == report["regressed"] == report["diverged"] == 0
    assert report["faults"]["kill_worker"] >= 2 and report["faults"]["kill_router"] >= 1
    assert report["exceptions"]["stray_reports"] >= 1
    print(json.dumps(report))
