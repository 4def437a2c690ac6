"""``coexist reconcile`` against a cloud ERP that stops answering: ``--timeout`` really ends
the run (even inside a request that hangs), Ctrl-C exits 130, and either is stored for what
it is (``timeout``, ``interrupted``), never as drift or as a run still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from coexistence.sample import iter_customers
from tests.integration.test_reconcile import write_legacy
from workers.cli import cli
from workers.db import create_state_engine
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema
from workers.reconcile.store import RunStore

COEXIST = str(Path(sys.executable).with_name("coexist"))
#: The bound on a run that must end by itself (pytest-timeout fails the test beyond it).
BOUND_S = 30


class _Hung(BaseHTTPRequestHandler):
    """Answers /health, then holds every other request open until the server closes."""

    release: threading.Event

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/health"):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.server.hung += 1
        self.release.wait(120)

    def log_message(self, *args):
        pass


@pytest.fixture
def hung_cloud():
    release = threading.Event()
    handler = type("Hung", (_Hung,), {"release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.hung = 0
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch, hung_cloud):
    for name in list(os.environ):
        if name.startswith("COEXIST_") and not name.startswith(("COEXIST_TEST",
                                                                "COEXIST_REQUIRE")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.setenv("COEXIST_CLOUD_URL", f"http://127.0.0.1:{hung_cloud.server_port}")
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    write_legacy(legacy, list(iter_customers(20)))
    legacy.dispose()
    yield tmp_path, state
    state.dispose()


@pytest.mark.timeout(BOUND_S)
def test_a_timeout_ends_the_run_inside_a_hung_request_and_is_stored_as_timeout(home,
                                                                             hung_cloud):
    _, state = home
    result = CliRunner().invoke(cli, ["reconcile", "customer", "--timeout", "2",
                                      "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "reconcile customer: timed out after 2 s" in result.output
    assert hung_cloud.hung >= 1  # the run really was inside a request that never answered
    last = RunStore(state).last("customer")
    assert last["status"] == "timeout" and last["drift_pct"] is None


def test_ctrl_c_exits_130_and_the_run_is_stored_as_interrupted(home, hung_cloud):
    tmp, state = home
    proc = subprocess.Popen([COEXIST, "reconcile", "customer", "--no-progress"],
                            env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + BOUND_S
        while hung_cloud.hung == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "reconcile never asked the cloud"
            time.sleep(0.05)
        assert RunStore(state).last("customer")["status"] == "running"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted" and "Traceback" not in err + out
    last = RunStore(state).last("customer")
    assert last["status"] == "interrupted" and last["drift_pct"] is None
