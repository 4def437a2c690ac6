"""``coexist run`` and ``coexist router`` as OS processes, started the way supervisord starts
them: the channel subscriptions come from the configuration (a real run fans out), SIGTERM
stops gracefully with exit 0, Ctrl-C (SIGINT) with exit 130."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import cloud_sim, processes
from tests.support.records import ACME as CUSTOMER
from tests.support.state import shadow_home
from workers.legacy_erp.adapter import LegacyErp

simulator, sim = cloud_sim.simulator, cloud_sim.sim

COEXIST = str(Path(sys.executable).with_name("coexist"))
#: Longest wait for a process to do what it is asked, in seconds (a bound, not a figure).
WAIT_S = 60


@pytest.fixture
def deployment(tmp_path, sim):
    """A home with state and legacy databases, customer in shadow, a TOML file that
    subscribes channel ``crm`` to customers, and the environment of a supervisord program."""
    legacy = shadow_home(tmp_path)
    (tmp_path / "coexist.toml").write_text(
        "# which channel consumes which domains\n"
        "[subscriptions.crm]\ndomains = [\"customer\", \"order\"]\nkinds = [\"event\"]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")
           or k.startswith(("COEXIST_TEST", "COEXIST_REQUIRE"))}
    env.update({"COEXIST_HOME": str(tmp_path), "COEXIST_CLOUD_URL": sim.url})
    yield tmp_path, env, legacy
    legacy.dispose()


def start(command: str, env: dict, home: Path) -> subprocess.Popen:
    with open(home / f"{command}.log", "w") as log:
        return subprocess.Popen([COEXIST, command, "--log-level", "INFO"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def started(home: Path, command: str) -> bool:
    return '"coexist bootstrapped"' in (home / f"{command}.log").read_text()


def wait_until(predicate, what: str, proc: subprocess.Popen) -> None:
    processes.wait_until(predicate, WAIT_S, what, alive=[proc])


def channel_events(home: Path) -> int:
    path = home / "bus.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute("SELECT count(*) FROM bus_queue WHERE queue_name = "
                                "'coexist.channel.crm'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def stop(proc: subprocess.Popen, signum: int) -> int:
    proc.send_signal(signum)
    try:
        return proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_real_run_fans_out_to_the_configured_channel_and_ctrl_c_exits_130(deployment, sim):
    home, env, legacy = deployment
    proc = start("run", env, home)
    try:
        wait_until(lambda: started(home, "run"), "the run's start", proc)
        LegacyErp(legacy).person_upsert(CUSTOMER, "JSMITH")
        wait_until(lambda: sim.changes() != [] and channel_events(home) == 1,
                   "shadow write and channel event", proc)
    finally:
        code = stop(proc, signal.SIGINT)
    assert code == 130, (home / "run.log").read_text()
    assert "Traceback" not in (home / "run.log").read_text()
    # The channel has no consumer yet: its event waits, durable, in its own queue.
    assert channel_events(home) == 1


def test_the_router_stops_on_sigterm_with_exit_0(deployment):
    home, env, _legacy = deployment
    proc = start("router", env, home)
    try:
        wait_until(lambda: started(home, "router"), "the router's start", proc)
    finally:
        code = stop(proc, signal.SIGTERM)
    assert code == 0, (home / "router.log").read_text()
