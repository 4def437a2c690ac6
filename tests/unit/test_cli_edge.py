"""The one place where a failure becomes one line and an exit code (``CoexistGroup`` and
``workers.errors.explain``): Ctrl-C is 130, a bug is 3 and says how to see the traceback,
``--debug`` shows it."""

from __future__ import annotations

from click.testing import CliRunner

from workers.cli import cli
from workers.config import Settings
from workers.errors import SetupError, explain


class Broken:
    """An app whose state database raises ``error`` when a command opens it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self._settings = Settings(home="/nonexistent")

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def state(self):
        raise self.error


def test_ctrl_c_in_any_command_exits_130_in_one_line():
    result = CliRunner().invoke(cli, ["status"], obj=Broken(KeyboardInterrupt()))
    assert result.exit_code == 130 and result.output.strip() == "interrupted"


def test_a_bug_is_exit_3_one_line_and_the_traceback_only_with_debug():
    result = CliRunner().invoke(cli, ["status"], obj=Broken(ZeroDivisionError("oops")))
    assert result.exit_code == 3
    assert result.output.strip() == ("Error: internal error: ZeroDivisionError: oops (a bug: "
                                     "run again with --debug for the traceback and report it)")
    debug = CliRunner().invoke(cli, ["--debug", "status"], obj=Broken(ZeroDivisionError("x")))
    assert isinstance(debug.exception, ZeroDivisionError)  # raised, so a traceback shows


def test_a_setup_error_names_the_setting_and_hides_the_password():
    err = SetupError("state database", "COEXIST_STATE_URL", "postgresql://u:pw@db/x",
                     "connection refused", "is PostgreSQL running?")
    result = CliRunner().invoke(cli, ["status"], obj=Broken(err))
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: state database (COEXIST_STATE_URL="
                                     "postgresql://u:***@db/x): connection refused; is "
                                     "PostgreSQL running?")


def test_driver_errors_name_the_part_they_come_from():
    class RedisDown(Exception):
        __module__ = "redis.exceptions"

    settings = Settings(home="/nonexistent", redis_url="redis://:secret@cache:6379/0")
    message, code = explain(RedisDown("Connection refused"), settings)
    assert code == 2
    assert message == ("Redis (COEXIST_REDIS_URL=redis://:***@cache:6379/0): RedisDown: "
                       "Connection refused")


def test_help_opens_nothing_so_a_broken_configuration_does_not_hide_it():
    env = {"COEXIST_ENV_FILE": "/nonexistent/env", "COEXIST_QUEUE_TYPE": "fast"}
    for args in (["--help"], ["status", "--help"], ["cutover", "set", "--help"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output
