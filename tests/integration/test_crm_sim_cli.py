"""``coexist crm-sim`` is the simulator: it serves, answers, and refuses bad settings."""

from __future__ import annotations

import selectors
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_coexist_crm_sim_serves_the_crm_until_terminated(tmp_path):
    coexist = [sys.executable, "-c", "from workers.cli import main; main()"]
    proc = subprocess.Popen([*coexist, "crm-sim", "--port", "0", "--db",
                             str(tmp_path / "crm.db")], stdout=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(15)
        url = proc.stdout.readline().strip()
        token = httpx.post(f"{url}/services/oauth2/token",
                           data={"grant_type": "client_credentials", "client_id": "demo"})
        assert token.status_code == 200 and token.json()["instance_url"] == url
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_bad_fault_settings_are_a_clear_usage_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "workers.crm_sim", "--db",
                             str(tmp_path / "crm.db"), "--faults", '{"nope": 1}'],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown setting(s) nope" in result.stderr
    assert "Traceback" not in result.stderr
