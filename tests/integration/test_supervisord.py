"""supervisord runs ``scripts/supervisord/coexist.conf`` itself, against the real services
(PostgreSQL state and legacy ERP, RabbitMQ, the cloud simulator): the router and two
workers start, a worker killed with SIGKILL is restarted, and ``supervisorctl stop
coexist:`` stops every process with SIGTERM, each exiting cleanly, with no message left
unacknowledged; started again, they finish the work and nothing was lost.

The conf is included unchanged from a supervisord.conf written for the test (socket, logs
and pid file in the test's directory), exactly as its header tells an operator to do.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest
from click.testing import CliRunner

from bus.db import create_state_engine
from bus.exception_store import ExceptionStore
from coexistence.router import LEGACY
from coexistence.sample import iter_customers
from tests.support import cloud_sim, services
from tests.support.processes import ROOT, extra_pg_schema, wait_until
from workers import checkpoints
from workers.cli import cli
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema
from workers.router.capture import checkpoint_name

pytestmark = pytest.mark.integration

simulator, sim = cloud_sim.simulator, cloud_sim.sim

CONF = ROOT / "scripts" / "supervisord" / "coexist.conf"
PROGRAMS = {"coexist-router", "coexist-worker-00", "coexist-worker-01", "coexist-portal"}
#: Longest wait for supervisord to start (startsecs=5) or stop (SIGTERM) the programs,
#: or for the work to settle.
WAIT_S = 60.0


class Supervisor:
    """supervisord in the foreground as a child process, with its own socket and files."""

    def __init__(self, tmp_path: Path, env_file: Path) -> None:
        self.dir = tmp_path
        (tmp_path / "log").mkdir()
        self.sock = tmp_path / "supervisor.sock"
        self.conf = tmp_path / "supervisord.conf"
        self.conf.write_text(f"""\
[unix_http_server]
file={self.sock}

[supervisord]
nodaemon=true
logfile={tmp_path}/supervisord.log
pidfile={tmp_path}/supervisord.pid
childlogdir={tmp_path}
environment=COEXIST_ENV_FILE="{env_file}",COEXIST_LOG_DIR="{tmp_path / 'log'}"

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.sock}

[include]
files = {CONF}
""")
        bin_dir = Path(sys.executable).parent
        self.supervisord, self.supervisorctl = bin_dir / "supervisord", bin_dir / "supervisorctl"
        # Nothing of the test run's own COEXIST_* settings: the env file is the only source.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")}
        self.proc = subprocess.Popen([str(self.supervisord), "-c", str(self.conf)], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def processes(self) -> dict[str, dict]:
        """supervisord's view of every program, over its XML-RPC socket ({} until it answers)."""
        from supervisor.xmlrpc import SupervisorTransport

        rpc = xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{self.sock}"))
        try:
            return {p["name"]: p for p in rpc.supervisor.getAllProcessInfo()}
        except (OSError, http.client.HTTPException, xmlrpc.client.Fault):
            return {}

    def running(self) -> dict[str, int]:
        """Program -> pid, once all of them are RUNNING (past startsecs)."""
        procs = self.processes()
        if set(procs) == PROGRAMS and all(p["statename"] == "RUNNING" for p in procs.values()):
            return {name: p["pid"] for name, p in procs.items()}
        return {}

    def ctl(self, *args: str) -> str:
        out = subprocess.run([str(self.supervisorctl), "-c", str(self.conf), *args],
                             env=self.env, capture_output=True, text=True, timeout=WAIT_S * 3)
        return out.stdout + out.stderr

    def started(self, name: str) -> int:
        """How many times ``name`` has finished starting: its handlers are installed then
        (supervisord's RUNNING only means it lived ``startsecs``; on a loaded host a process
        can still be importing, and a SIGTERM then ends it by the default action)."""
        return self.program_log(name).count('"message": "coexist bootstrapped"')

    def log(self) -> str:
        path = self.dir / "supervisord.log"
        return path.read_text() if path.exists() else ""

    def program_log(self, name: str) -> str:
        files = {"coexist-router": "router.jsonl", "coexist-worker-00": "worker-00.jsonl",
                 "coexist-worker-01": "worker-01.jsonl", "coexist-portal": "portal.jsonl"}
        path = self.dir / "log" / files[name]
        return path.read_text(errors="replace") if path.exists() else ""

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.ctl("stop", "coexist:")
            self.proc.send_signal(signal.SIGTERM)  # supervisord stops what is left, then exits
            try:
                self.proc.wait(WAIT_S * 3)
            except subprocess.TimeoutExpired:  # pragma: no cover - reported by the assertions
                self.proc.kill()
                self.proc.wait(10)


def queue_counters(vhost: str) -> dict[str, tuple[int, int, int]]:
    """Queue -> (ready, unacknowledged, consumers), from the broker itself."""
    out = services.rabbitmqctl("list_queues", "-p", vhost, "name", "messages_ready",
                               "messages_unacknowledged", "consumers", "--formatter", "json")
    return {q["name"]: (q["messages_ready"], q["messages_unacknowledged"], q["consumers"])
            for q in json.loads(out or "[]")}


@pytest.fixture
def deployment(tmp_path, pg_url, pg_database_url, sim, fresh_rabbit_vhost):
    if not (ROOT / ".venv" / "bin" / "coexist").exists():
        pytest.skip("coexist.conf runs the installation's .venv/bin/coexist; none at "
                    f"{ROOT / '.venv'} (scripts/bootstrap.sh creates it)")
    amqp_url, vhost = fresh_rabbit_vhost
    with extra_pg_schema(pg_database_url) as legacy_url:
        legacy = create_legacy_engine(legacy_url, pool_size=8)
        create_legacy_schema(legacy)
        state = create_state_engine(pg_url)
        upgrade_schema(state)
        settings = {"COEXIST_HOME": str(tmp_path / "home"), "COEXIST_STATE_URL": pg_url,
                    "COEXIST_LEGACY_URL": legacy_url, "COEXIST_CLOUD_URL": sim.url,
                    "COEXIST_BROKER_URL": amqp_url, "COEXIST_ACTOR": "test"}
        env_file = tmp_path / "coexist.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        result = CliRunner().invoke(cli, ["cutover", "set", "customer", "shadow", "--force",
                                          "--reason", "supervisord test", "--no-wait"],
                                    env=settings)
        assert result.exit_code == 0, result.output
        sup = Supervisor(tmp_path, env_file)
        try:
            yield sup, LegacyErp(legacy), state, settings, vhost
        finally:
            sup.shutdown()
            print(sup.log()[-4000:])
            for name in sorted(PROGRAMS):
                print(f"--- {name}\n{sup.program_log(name)[-2000:]}")
            legacy.dispose()
            state.dispose()


def test_supervisord_runs_the_conf_restarts_a_killed_worker_and_stops_all_gracefully(
    deployment,
):
    sup, legacy, state, settings, vhost = deployment
    pids = wait_until(sup.running, WAIT_S,
                      "supervisord starts the router, two workers and the portal dispatcher")
    wait_until(lambda: all(sup.started(name) for name in PROGRAMS), WAIT_S,
               "the four programs finish starting")

    written: list[str] = []
    customers = iter(iter_customers(100_000, seed=11))
    stop_writing = threading.Event()

    def write() -> None:
        while not stop_writing.is_set():
            record = next(customers)
            legacy.person_upsert(record, "CLERK")
            written.append(record.key)
            time.sleep(0.005)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(written) >= 50, WAIT_S, "people write to the legacy ERP")
        os.kill(pids["coexist-worker-00"], signal.SIGKILL)
        restarted = wait_until(
            lambda: (p := sup.running()) and p["coexist-worker-00"] != pids["coexist-worker-00"]
            and p, WAIT_S, "supervisord restarts the killed worker")
        assert restarted["coexist-router"] == pids["coexist-router"]
        wait_until(lambda: sup.started("coexist-worker-00") == 2, WAIT_S,
                   "the restarted worker finishes starting")
        wait_until(lambda: len(written) >= 150, WAIT_S, "people keep writing")
        # Stop in the middle of the work: whatever is in flight must survive it.
        stopped = sup.ctl("stop", "coexist:")
    finally:
        stop_writing.set()
        writer.join(30)
    assert all(f"{name}: stopped" in stopped for name in PROGRAMS), stopped
    procs = sup.processes()
    assert {n: p["statename"] for n, p in procs.items()} == dict.fromkeys(PROGRAMS, "STOPPED")
    # SIGTERM handled: each exits 0 (never SIGKILLed after stopwaitsecs); the log line may
    # reach the file a moment after supervisorctl returns.
    log = wait_until(lambda: (text := sup.log()).count("stopped: coexist-") >= len(PROGRAMS)
                     and text, WAIT_S, "supervisord logs how each program stopped")
    for name in PROGRAMS:
        assert f"stopped: {name} (exit status 0)" in log, log[-3000:]
    assert "exited: coexist-worker-00 (terminated by SIGKILL" in log
    counters = queue_counters(vhost)
    assert counters, "the workers declared their queues"
    assert all(unacked == 0 and consumers == 0 for _r, unacked, consumers in counters.values()), \
        counters
    print(f"at the stop: {len(written)} changes written, router checkpoint "
          f"{checkpoints.get(state, checkpoint_name(LEGACY))}, queues (ready, unacked, "
          f"consumers) {counters}")

    # Started again, the same programs finish the work: nothing was lost in the stop.
    sup.ctl("start", "coexist:")
    wait_until(sup.running, WAIT_S, "supervisord starts them again")
    wait_until(lambda: sup.started("coexist-router") == 2, WAIT_S, "the router starts again")
    from workers.legacy_erp.cdc import LegacyChangeFeed
    from workers.legacy_erp.schema import captured_tables, key_decoders

    feed = LegacyChangeFeed(legacy.engine, captured_tables(), key_decoders())
    wait_until(lambda: checkpoints.get(state, checkpoint_name(LEGACY)) == feed.last_cursor(),
               WAIT_S, "the router routes every change")
    wait_until(lambda: all(r == 0 and u == 0 for r, u, _c in queue_counters(vhost).values()),
               WAIT_S, "the workers drain every queue")
    reconcile = CliRunner().invoke(cli, ["reconcile", "customer", "--format", "json"],
                                   env=settings)
    assert reconcile.exit_code == 0, reconcile.output
    report = json.loads(reconcile.output)
    assert ExceptionStore(state).open_count() == 0
    assert len(written) >= 150
    print(json.dumps(report)[:2000])
