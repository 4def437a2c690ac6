"""The one configuration: typed settings, embedded defaults, clear errors naming the setting,
dotenv text as python-dotenv reads it, TOML sections, credentials never shown."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coexistence import flags, router
from workers.bootstrap import App, subscriptions_from
from workers.config import (
    ConfigError,
    Settings,
    env_names_of,
    explain_validation,
    parse_env,
    parse_toml,
    redact_url,
)

#: A home no test creates: nothing is read from it.
NOWHERE = "/nonexistent/coexist-home"


def load(**env: str) -> Settings:
    return Settings.from_env({"COEXIST_HOME": NOWHERE, **env})


def test_with_nothing_configured_everything_is_embedded():
    s = load()
    assert s.broker_url is None and s.redis_url is None and s.cloud_url is None
    assert s.state_url == f"sqlite:///{NOWHERE}/state.db"
    assert s.legacy_url == f"sqlite:///{NOWHERE}/legacy.db"
    assert s.queue_type == "classic" and s.max_drift_pct == 0.1
    assert s.subscriptions == {}


def test_an_empty_variable_counts_as_unset():
    s = load(COEXIST_BROKER_URL="", COEXIST_QUEUE_TYPE="")
    assert s.broker_url is None and s.queue_type == "classic"


def test_settings_built_in_code_read_nothing_from_the_environment(monkeypatch):
    monkeypatch.setenv("COEXIST_BROKER_URL", "amqp://elsewhere/")
    assert Settings(home=NOWHERE).broker_url is None


@pytest.mark.parametrize("env, message", [
    ({"COEXIST_QUEUE_TYPE": "fast"},
     "COEXIST_QUEUE_TYPE='fast' (environment): must be 'classic' or 'quorum'"),
    ({"COEXIST_FREEZE": "next week"},
     "COEXIST_FREEZE='next week' (environment): freeze window 'next week' must look like "
     "START/END"),
    ({"COEXIST_FREEZE": "2026-11-28T00:00/2026-12-02T00:00"}, "needs a time zone"),
    ({"COEXIST_MAX_DRIFT_PCT": "lots"}, "COEXIST_MAX_DRIFT_PCT='lots' (environment)"),
    ({"COEXIST_MAX_DRIFT_PCT": "101"}, "COEXIST_MAX_DRIFT_PCT='101'"),
    ({"COEXIST_CUTOVER_MAX_BACKLOG": "-1"}, "COEXIST_CUTOVER_MAX_BACKLOG='-1'"),
    ({"COEXIST_CLOUD_RATE_PER_S": "fast"}, "COEXIST_CLOUD_RATE_PER_S='fast'"),
    ({"COEXIST_BROKER_URL": "redis://x"}, "COEXIST_BROKER_URL='redis://x' (environment): must "
                                          "start with amqp://"),
    ({"COEXIST_CLOUD_URL": "cloud.example"}, "COEXIST_CLOUD_URL='cloud.example'"),
    ({"COEXIST_REDIS_URL": "localhost:6379"}, "COEXIST_REDIS_URL='localhost:6379'"),
])
def test_a_bad_setting_is_one_error_naming_the_variable_and_its_value(env, message):
    with pytest.raises(ConfigError) as err:
        load(**env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_credential_in_a_bad_value_is_not_repeated():
    with pytest.raises(ConfigError) as err:
        load(COEXIST_BROKER_URL="http://u:hunter2@mq/")
    assert "hunter2" not in str(err.value) and "u:***@mq" in str(err.value)


def test_dotenv_text_is_read_as_python_dotenv_reads_it():
    values = parse_env(
        "# coexist\n"
        "export COEXIST_BROKER_URL=amqp://u:secret@mq:5672/prod\n"
        "COEXIST_QUEUE_TYPE=quorum   # the cluster\n"
        "COEXIST_HOME='/srv/coexist'\n"
        'COEXIST_ACTOR="ops team"\n'
        "\n", "env")
    assert values == {"COEXIST_BROKER_URL": "amqp://u:secret@mq:5672/prod",
                      "COEXIST_QUEUE_TYPE": "quorum", "COEXIST_HOME": "/srv/coexist",
                      "COEXIST_ACTOR": "ops team"}


def test_a_malformed_dotenv_line_is_named():
    with pytest.raises(ConfigError, match=r"COEXIST_ENV_FILE /etc/coexist/env line 2: expected "
                                          r"KEY=VALUE, got 'this is not a setting'"):
        parse_env("GOOD=1\nthis is not a setting\n", "/etc/coexist/env")
    with pytest.raises(ConfigError, match="line 1: COEXIST_ACTOR has no value"):
        parse_env("COEXIST_ACTOR\n", "env")


def test_subscriptions_are_validated_naming_the_bad_entry():
    data = parse_toml('[subscriptions.crm]\ndomains = ["customer", "custmer"]\n', "c.toml")
    with pytest.raises(ValidationError) as err:
        Settings(**data)
    text = explain_validation(err.value, env_names_of(Settings), {"subscriptions": "TOML c.toml"})
    assert text == ("subscriptions.crm.domains (TOML c.toml): 'custmer' is not a domain (one of "
                    "customer, product, price, inventory, order, shipment, invoice)")
    for body, message in [
        ('[subscriptions.crm]\ndomains = []\n', "must name at least one domain"),
        ('[subscriptions.crm]\ndomains = ["order"]\nkinds = ["upsert"]\n',
         "'upsert' is not a kind (one of event, delete)"),
        ('[subscriptions.crm]\ndomains = ["order"]\ncolour = "red"\n',
         "subscriptions.crm.colour"),
        ('[subscriptions.CRM-1]\ndomains = ["order"]\n', "channel name 'CRM-1'"),
    ]:
        with pytest.raises(ValidationError) as err:
            Settings(**parse_toml(body, "c.toml"))
        assert message in explain_validation(err.value, env_names_of(Settings), {})


def test_a_toml_file_holds_sections_only():
    with pytest.raises(ConfigError, match="unknown section.* broker_url"):
        parse_toml('broker_url = "amqp://x"\n', "c.toml")
    with pytest.raises(ConfigError, match="c.toml: not valid TOML"):
        parse_toml("[subscriptions.crm\n", "c.toml")


def test_configured_subscriptions_become_the_routers_subscriptions():
    settings = Settings(**parse_toml(
        '[subscriptions.crm]\ndomains = ["customer", "order"]\n'
        '[subscriptions.portal]\ndomains = ["order"]\nkinds = ["event"]\n', "c.toml"))
    crm, portal = subscriptions_from(settings)
    assert (crm.name, crm.domains, crm.kinds) == ("crm", {"customer", "order"},
                                                  {"event", "delete"})
    assert crm.queue == "coexist.channel.crm"
    assert portal.wants("order", "event") and not portal.wants("order", "delete")
    assert not portal.wants("customer", "event")
    assert App(settings).subscriptions == (crm, portal)


def test_passwords_never_appear_in_a_url_shown_even_a_malformed_one():
    assert redact_url("amqp://u:secret@mq:5672/prod") == "amqp://u:***@mq:5672/prod"
    assert redact_url("postgresql://u:pw@[bad/db") == "postgresql://u:***@[bad/db"
    assert "secret" not in repr(Settings(home=".", cloud_token="secret"))


def test_config_show_hides_credentials_and_says_where_each_value_came_from():
    s = load(COEXIST_CLOUD_TOKEN="tok3n", COEXIST_BROKER_URL="amqp://u:pw@mq/",
             COEXIST_SIM_TOKENS="crm:s3cret")
    rows = {name: (value, origin) for name, value, origin in s.describe()}
    assert rows["COEXIST_CLOUD_TOKEN"] == ("***", "environment")
    assert rows["COEXIST_SIM_TOKENS"] == ("***", "environment")
    assert rows["COEXIST_BROKER_URL"] == ("amqp://u:***@mq/", "environment")
    assert rows["COEXIST_QUEUE_TYPE"] == ("classic", "default")
    text = repr(rows)
    assert "tok3n" not in text and "s3cret" not in text and ":pw@" not in text


def test_every_setting_has_one_variable_and_every_variable_is_a_setting():
    names = env_names_of(Settings)
    assert names["max_drift_pct"] == "COEXIST_MAX_DRIFT_PCT" and names["user"] == "USER"
    assert "subscriptions" not in names  # a section, from the TOML file
    assert len(set(names.values())) == len(names)


def test_the_mode_table_and_segment_list_are_defined_once():
    assert router.SEGMENT_FIELDS is flags.SEGMENT_KEYS
    for mode, route in flags.ROUTES.items():
        sor, shadows = router.MODE_TABLE[str(mode)]
        assert (sor, shadows) == (route.sor, tuple(route.writes[1:]))
