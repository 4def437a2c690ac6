"""Every command with every bad setting an operator is known to make: one line naming the
setting (credentials hidden), the documented exit code, never a traceback.

Each case runs each command in-process (``CliRunner``, through the same group and edge as
the console script); the processes supervisord starts (``router``, ``run``, ``worker``)
are also started as OS processes with the worst cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support import services
from workers.cli import cli
from workers.db import create_state_engine
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.migrate import upgrade as upgrade_schema

#: Every command with arguments that are valid in themselves.  The processes would run
#: forever with a good configuration; the base configuration below has no cloud ERP, so
#: they always stop at start, at the first bad part.
COMMANDS: dict[str, list[str]] = {
    "status": ["status"],
    "cutover status": ["cutover", "status"],
    "cutover plan": ["cutover", "plan", "customer", "shadow"],
    "cutover set": ["cutover", "set", "customer", "shadow", "--reason", "r", "--force",
                    "--no-wait", "--actor", "maria"],
    "cutover rollback": ["cutover", "rollback", "customer", "--reason", "r", "--actor", "m",
                         "--no-wait"],
    "cutover history": ["cutover", "history"],
    "dlq list": ["dlq", "list"],
    "dlq show": ["dlq", "show", "1"],
    "dlq replay": ["dlq", "replay", "1", "--reason", "r", "--actor", "maria"],
    "dlq archive": ["dlq", "archive", "1", "--reason", "r", "--actor", "maria"],
    "reconcile": ["reconcile", "customer", "--no-progress"],
    "trace": ["trace", "customer:10042"],
    "edi status": ["edi", "status"],
    "legacy changes": ["legacy", "changes"],
    "config show": ["config", "show"],
    "doctor": ["doctor"],
    "sample": ["sample", "--customers", "1"],
    "legacy init": ["legacy", "init"],  # last: it repairs an empty legacy database
    "run": ["run", "--threads", "1"],
    "router": ["router"],
    "worker": ["worker", "--threads", "1"],
}
PROCESSES = ("run", "router", "worker")
STATE_USERS = tuple(c for c in COMMANDS if c.split()[0] in (
    "status", "cutover", "dlq", "reconcile", "trace", *PROCESSES))
EVERY_LOADER = tuple(c for c in COMMANDS if c != "sample")


@dataclass
class Bad:
    """One bad setting: the environment it adds, which commands it must stop (exit 2,
    naming ``names``), which must say so with exit 1 (``attention``)."""

    env: dict[str, str]
    names: str
    stops: tuple[str, ...]
    attention: tuple[str, ...] = ()
    #: Files to write first: name -> text (``$tmp`` is the test's folder).
    files: dict[str, str] = field(default_factory=dict)
    needs_pg: bool = False


BAD: dict[str, Bad] = {
    "env file missing": Bad({"COEXIST_ENV_FILE": "$tmp/nope.env"}, "COEXIST_ENV_FILE",
                            EVERY_LOADER),
    "env file malformed": Bad({"COEXIST_ENV_FILE": "$tmp/bad.env"}, "COEXIST_ENV_FILE",
                              EVERY_LOADER, files={"bad.env": "COEXIST_HOME=$tmp\nhello\n"}),
    "state db is a text file": Bad({"COEXIST_STATE_URL": "sqlite:///$tmp/notes.txt"},
                                   "COEXIST_STATE_URL", STATE_USERS, ("doctor",),
                                   files={"notes.txt": "remember the milk\n" * 300}),
    "state db bad url": Bad({"COEXIST_STATE_URL": "state.db"}, "COEXIST_STATE_URL",
                            STATE_USERS, ("doctor",)),
    "state db closed port": Bad(
        {"COEXIST_STATE_URL": "postgresql://coexist:pa55@127.0.0.1:1/state"},
        "COEXIST_STATE_URL", STATE_USERS, ("doctor",)),
    "state db missing database": Bad(
        {"COEXIST_STATE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_x"},
        "COEXIST_STATE_URL", STATE_USERS, ("doctor",), needs_pg=True),
    "state db mysql": Bad({"COEXIST_STATE_URL": "mysql://u:pa55@db/coexist"},
                          "COEXIST_STATE_URL", STATE_USERS, ("doctor",)),
    "state db malformed host": Bad({"COEXIST_STATE_URL": "postgresql://u:pa55@[bad/db"},
                                   "COEXIST_STATE_URL", STATE_USERS, ("doctor",)),
    "queue type": Bad({"COEXIST_QUEUE_TYPE": "fast"}, "COEXIST_QUEUE_TYPE", EVERY_LOADER),
    "freeze malformed": Bad({"COEXIST_FREEZE": "next week"}, "COEXIST_FREEZE", EVERY_LOADER),
    "redis down": Bad({"COEXIST_REDIS_URL": "redis://127.0.0.1:1/0"}, "COEXIST_REDIS_URL",
                      PROCESSES, ("status", "doctor")),
    "empty legacy db": Bad({"COEXIST_LEGACY_URL": "sqlite:///$tmp/empty.db"},
                           "COEXIST_LEGACY_URL", ("legacy changes",),
                           ("status", "doctor"), files={"empty.db": ""}),
}


def expand(text: str, tmp: Path) -> str:
    return text.replace("$tmp", str(tmp))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A working embedded configuration (state and legacy databases exist, no cloud ERP)."""
    for name in list(os.environ):
        if name.startswith("COEXIST_") and not name.startswith(("COEXIST_TEST",
                                                                "COEXIST_REQUIRE")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    state.dispose()
    legacy = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    create_legacy_schema(legacy)
    legacy.dispose()
    return tmp_path


def apply(bad: Bad, tmp: Path, monkeypatch) -> dict[str, str]:
    if bad.needs_pg:
        services.need("PostgreSQL", services.port_open("127.0.0.1", 5432))
    for name, text in bad.files.items():
        (tmp / name).write_text(expand(text, tmp))
    env = {k: expand(v, tmp) for k, v in bad.env.items()}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def assert_one_clean_answer(output: str) -> None:
    assert "Traceback" not in output and 'File "' not in output, output
    assert "pa55" not in output, output
    assert "internal error" not in output, output


@pytest.mark.parametrize("case", BAD, ids=str)
def test_every_command_answers_a_bad_setting_in_one_line(case, home, monkeypatch):
    bad = BAD[case]
    apply(bad, home, monkeypatch)
    for command, args in COMMANDS.items():
        if command in PROCESSES and command not in bad.stops:
            continue  # with this setting alone a process would start and run
        result = CliRunner().invoke(cli, args)
        where = f"{command} with {case}: exit {result.exit_code}\n{result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), where
        assert_one_clean_answer(result.output)
        if command in bad.stops:
            assert result.exit_code == 2, where
            assert bad.names in result.output, where
            errors = [line for line in result.output.splitlines() if line.startswith("Error")]
            assert len(errors) == 1, where
        elif command in bad.attention:
            assert result.exit_code == 1, where
            assert bad.names in result.output, where
        else:
            assert result.exit_code in (0, 1, 2), where


def test_without_a_cloud_erp_the_processes_stop_at_start_naming_it(home):
    for command in PROCESSES:
        result = CliRunner().invoke(cli, COMMANDS[command])
        assert result.exit_code == 2, result.output
        assert "COEXIST_CLOUD_URL" in result.output and "not set" in result.output
        assert_one_clean_answer(result.output)


@pytest.mark.parametrize("args", [["run", "--log-level", "nonsense"],
                                  ["worker", "--threads", "0"], ["run", "--threads", "-2"],
                                  ["router", "--metrics-port", "70000"]], ids=" ".join)
def test_bad_process_options_are_refused_before_anything_starts(args, home):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert_one_clean_answer(result.output)
    assert args[-1] in result.output


COEXIST = str(Path(sys.executable).with_name("coexist"))


@pytest.mark.parametrize("case", ["state db is a text file", "state db closed port",
                                  "queue type", "redis down", "env file malformed"])
def test_the_router_as_supervisord_starts_it_fails_in_one_line(case, home, monkeypatch):
    bad = BAD[case]
    env = {**os.environ, **apply(bad, home, monkeypatch)}
    proc = subprocess.run([COEXIST, "router"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert bad.names in lines[0]
    assert_one_clean_answer(proc.stderr + proc.stdout)


@pytest.mark.parametrize("command", ["run", "worker"])
def test_run_and_worker_as_processes_fail_in_one_line_without_a_cloud_erp(command, home):
    proc = subprocess.run([COEXIST, command], env=dict(os.environ), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "COEXIST_CLOUD_URL" in lines[0], proc.stderr


def test_read_only_commands_never_create_state_where_there_is_none(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("COEXIST_") and not name.startswith(("COEXIST_TEST",
                                                                "COEXIST_REQUIRE")):
            monkeypatch.delenv(name)
    home = tmp_path / "typo"  # a wrong COEXIST_HOME
    monkeypatch.setenv("COEXIST_HOME", str(home))
    monkeypatch.setenv("COEXIST_CLOUD_URL", "http://127.0.0.1:9")
    for args in (["status"], ["cutover", "status"], ["cutover", "history"], ["dlq", "list"],
                 ["trace", "customer:10042"], ["reconcile", "customer"], ["legacy", "changes"],
                 ["doctor"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert f"no state database at {home}/state.db" in result.output or \
            f"no legacy database at {home}/legacy.db" in result.output, (args, result.output)
        assert_one_clean_answer(result.output)
    assert not home.exists(), "a read-only command created files"
    # reconcile with a state database but no legacy file: refused, and no empty file made.
    home.mkdir()
    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    upgrade_schema(state)
    state.dispose()
    result = CliRunner().invoke(cli, ["reconcile", "customer"])
    assert result.exit_code == 2 and "no legacy database at" in result.output
    assert "coexist legacy init" in result.output
    assert not (home / "legacy.db").exists()
