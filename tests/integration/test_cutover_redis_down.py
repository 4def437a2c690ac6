"""``cutover set`` with Redis down: the change is audited in SQL (the truth) and applied, so
the command exits 0 with a warning naming COEXIST_REDIS_URL; a script must not retry it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from workers.bootstrap import App
from workers.cli import cli
from workers.config import Settings
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema


def test_an_audited_change_exits_0_with_a_warning_when_redis_is_down(tmp_path):
    state = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(state)
    state.dispose()
    app = App(Settings(home=tmp_path, redis_url="redis://127.0.0.1:1/0", actor="maria"))
    try:
        result = CliRunner().invoke(cli, ["cutover", "set", "customer", "shadow", "--force",
                                          "--reason", "pilot", "--no-wait"], obj=app)
        assert result.exit_code == 0, result.output
        assert "customer is now shadow at flag version 1 (audited)" in result.output
        assert "warning: customer v1 is audited (it is the truth) but Redis was not updated" \
            in result.output
        assert "Traceback" not in result.output
        history = CliRunner().invoke(cli, ["cutover", "history", "--format", "json"], obj=app)
        [entry] = json.loads(history.output)
        assert (entry["to"]["mode"], entry["actor"], entry["reason"]) == (
            "shadow", "maria", "pilot")
        # Reading the flags warns, names the setting, and still answers from the audit.
        status = CliRunner().invoke(cli, ["cutover", "status", "--format", "json"], obj=app)
        assert status.exit_code == 0
        assert "could not refresh Redis (COEXIST_REDIS_URL)" in status.output
    finally:
        app.close()
