"""The cutover console in a real browser: `coexist console` as a process over a router's
state, driven by Debian's headless Chromium through playwright-core (tests/browser/).

The page must show every domain's mode, the customer's next move refused by a red guard with
its reason, an exception's detail one click from its group (with the commands to run), a
trace search answering on the page, and the charts; it must raise no script error. The
screenshot is kept under var/ (CI keeps var/ as its artifact)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.support.console_world import build_world
from tests.support.processes import ROOT, Process, coexist_env, free_port, wait_until
from tests.support.services import need

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = ROOT / "var" / "console.png"


def test_the_console_shows_the_board_a_red_guard_an_exception_and_a_trace(tmp_path):
    need(f"headless Chromium ({CHROMIUM}; scripts/test.sh installs Debian's chromium)",
         Path(CHROMIUM).exists())
    need("node with playwright-core (scripts/test.sh runs npm ci in tests/browser)",
         shutil.which("node") is not None
         and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir())
    world = build_world(tmp_path)
    port = free_port()
    env = coexist_env(tmp_path, state_url=world.settings.state_url,
                      legacy_url=world.settings.legacy_url)
    console = Process(["console", "--port", str(port), "--sample-s", "1", "--refresh-s", "1"],
                      env, tmp_path / "console.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        def up():
            try:
                return httpx.get(url + "api/kpis", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(lambda: up() or not console.alive(), 20, "console answering")
        assert console.alive(), console.output()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        done = subprocess.run(["node", "console.mjs", url, str(SCREENSHOT), "customer:10042"],
                              cwd=BROWSER_DIR, capture_output=True, text=True, timeout=90,
                              env={**os.environ, "CHROMIUM": CHROMIUM})
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        console.stop()
    assert seen["errors"] == [], seen["errors"]
    assert seen["modes"]["customer"] == "shadow" and seen["modes"]["product"] == "legacy"
    assert seen["overall"].startswith("needs attention")
    assert "exceptions" in seen["failed_checks"], seen
    assert any("open" in r or "exception" in r for r in seen["reasons"]), seen["reasons"]
    assert "StrayWrite" in seen["detail"] and "coexist dlq replay" in seen["detail"]
    assert seen["trace_rows"] >= 2 and seen["charts"] == 3
    assert SCREENSHOT.stat().st_size > 10_000
