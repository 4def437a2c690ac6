"""The chaos run at its smallest scale, in the suite: a regression in any guarantee it checks
(nothing lost, nothing regressed, the ERPs equal, every exception explained, drift 0 after
repair) fails CI. The real processes on PostgreSQL + RabbitMQ (quorum) + Redis + the cloud
simulator, with kill -9 of workers and the active router, a closed-connections storm, a
cloud fault window, and a forward switch and rollback through the guarded CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import ROOT
from tests.support.services import AMQP_HOST, AMQP_PORT, need, port_open


def test_the_tiny_chaos_run_loses_nothing_and_explains_every_exception():
    need("PostgreSQL", port_open("127.0.0.1", 5432))
    need("RabbitMQ", port_open(AMQP_HOST, AMQP_PORT))
    need("Redis", port_open("127.0.0.1", 6379))
    done = subprocess.run([sys.executable, "scripts/chaos/run.py", "--scale", "tiny",
                           "--max-s", "400"], cwd=ROOT, capture_output=True, text=True,
                          timeout=460)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and report["ok"], json.dumps(report, indent=2)[-4000:] + \
        done.stderr[-3000:]
    assert report["lost"] == report["regressed"] == report["diverged"] == 0
    assert report["faults"]["kill_worker"] >= 2 and report["faults"]["kill_router"] >= 1
    assert report["exceptions"]["stray_reports"] >= 1
    print(json.dumps(report))
