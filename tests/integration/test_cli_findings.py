"""Findings of issue 11 checked through the CLI as a person runs it (OS processes or the click
runner, never the functions underneath):

* with ``COEXIST_HOME`` unset the CLI uses ``var`` in the current folder: read-only commands
  there name that path and how to create it and create nothing; ``coexist db upgrade`` creates
  it there, and the same commands then read it (and from another folder do not);
* ``coexist reconcile --timeout`` ends on time against a cloud that never answers: exit 2,
  the message, and the elapsed time asserted (it once took 11.5 s for ``--timeout 5``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.integration.test_reconcile_interrupts import home as reconcile_home  # noqa: F401
from tests.integration.test_reconcile_interrupts import hung_cloud  # noqa: F401 - fixture
from workers.cli import cli
from workers.reconcile.store import RunStore

pytestmark = [pytest.mark.integration]

COEXIST = str(Path(sys.executable).with_name("coexist"))


def _env_without_home() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COEXIST_")
            or k.startswith(("COEXIST_TEST", "COEXIST_REQUIRE"))}


def _coexist(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COEXIST, *args], cwd=cwd, env=_env_without_home(),
                          capture_output=True, text=True, timeout=60)


READ_ONLY = (("cutover", "status"), ("cutover", "history"), ("dlq", "list"), ("status",))


def test_an_unset_home_is_var_in_the_current_folder(tmp_path):
    here, elsewhere = tmp_path / "ops", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    shown = _coexist(here, "config", "show")
    assert shown.returncode == 0, shown.stderr
    [line] = [ln for ln in shown.stdout.splitlines() if ln.startswith("COEXIST_HOME ")]
    assert f"{here}/var" in line and "(default)" in line

    for args in READ_ONLY:
        result = _coexist(here, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"no state database at {here}/var/state.db" in result.stderr, result.stderr
        assert "coexist db upgrade" in result.stderr and "Traceback" not in result.stderr
    assert not (here / "var").exists(), "a read-only command created the default home"

    upgraded = _coexist(here, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert (here / "var" / "state.db").is_file()
    status = _coexist(here, "cutover", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "customer" in status.stdout
    # The default is relative: another folder has no state, and says where it looked.
    other = _coexist(elsewhere, "cutover", "status")
    assert other.returncode == 2 and f"{elsewhere}/var/state.db" in other.stderr
    assert not (elsewhere / "var").exists()


@pytest.mark.timeout(30)
def test_reconcile_timeout_ends_on_time_against_a_hung_cloud(reconcile_home,  # noqa: F811
                                                             hung_cloud):  # noqa: F811
    _, state = reconcile_home
    timeout_s = 2
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["reconcile", "customer", "--timeout", str(timeout_s),
                                      "--no-progress"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert f"reconcile customer: timed out after {timeout_s} s" in result.output
    assert hung_cloud.hung >= 1  # it was inside a request that never answers
    # Not before the timeout, and not a request timeout (10 s) or more after it.
    assert timeout_s <= elapsed < timeout_s + 3, f"took {elapsed:.1f} s"
    assert RunStore(state).last("customer")["status"] == "timeout"
