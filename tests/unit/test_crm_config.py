"""The ``[crm]`` section and ``COEXIST_CRM_CLIENT_SECRET``: validated at start with one line
naming the key, the secret from the environment only and never shown, the composition root
builds the CRM client from them and registers the ``crm`` channel's consumer."""

from __future__ import annotations

import pytest

from tests.support.crm import memory_state_engine
from workers.bootstrap import App, channel_handlers_for
from workers.config import ConfigError, Settings
from workers.crm.client import CrmClient
from workers.crm.consumer import CrmConsumer, runs_crm
from workers.errors import SetupError


def load(tmp_path, toml: str, **env: str) -> Settings:
    (tmp_path / "coexist.toml").write_text(toml)
    return Settings.from_env({"COEXIST_HOME": str(tmp_path), **env})


CRM = '[crm]\nurl = "https://login.example.com/"\nclient_id = "coexist-prod"\n'
SUB = '[subscriptions.crm]\ndomains = ["customer", "order"]\n'


def test_the_crm_section_builds_the_client_and_the_consumer(tmp_path):
    s = load(tmp_path, SUB + CRM + "poll_interval_s = 2\nbudget_reserve_pct = 5\n",
             COEXIST_CRM_CLIENT_SECRET="s3cret-value")
    assert s.crm is not None and s.crm.url == "https://login.example.com"
    assert s.crm.poll_interval_s == 2 and s.crm.api_version == "60.0"
    app = App(s, state=memory_state_engine())
    client = app.crm
    try:
        assert isinstance(client, CrmClient)
        assert client.api_version == "60.0" and client.pause_fraction == pytest.approx(0.95)
        assert runs_crm(app)
        handlers = channel_handlers_for(app)
        assert isinstance(handlers["crm"], CrmConsumer)
    finally:
        app.close()
    rows = {name: (value, origin) for name, value, origin in s.describe()}
    assert rows["COEXIST_CRM_CLIENT_SECRET"] == ("***", "environment")
    assert "s3cret-value" not in repr(rows) and "s3cret-value" not in repr(s)


def test_without_a_secret_the_start_fails_naming_the_variable(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, CRM)
    assert str(err.value).startswith("crm (TOML ")
    assert "COEXIST_CRM_CLIENT_SECRET is not set" in str(err.value)
    assert "'coexist-prod'" in str(err.value)


@pytest.mark.parametrize("extra, message", [
    ('api_version = "45.0"\n', "crm.api_version='45.0' (TOML"),
    ('budget_reserve_pct = 20\n', "budget_slow_pct 90 is beyond the pause at 80%"),
    ('poll_interval_s = 0\n', "crm.poll_interval_s"),
    ('colour = "red"\n', "crm.colour"),
])
def test_a_bad_crm_setting_is_one_line_naming_it(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(tmp_path, CRM + extra, COEXIST_CRM_CLIENT_SECRET="x")
    with pytest.raises(ConfigError, match=r"crm.url=.*must be an http"):
        load(tmp_path, '[crm]\nurl = "ftp://x"\nclient_id = "c"\n',
             COEXIST_CRM_CLIENT_SECRET="x")


def test_no_crm_section_no_crm_consumer_and_a_clear_error_when_asked(tmp_path):
    s = load(tmp_path, SUB)
    app = App(s)
    assert channel_handlers_for(app) == {} and not runs_crm(app)
    with pytest.raises(SetupError, match=r"no \[crm\] section"):
        app.crm  # noqa: B018
