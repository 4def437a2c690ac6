"""The configuration files as a deployment writes them: the env file supervisord programs
point at (COEXIST_ENV_FILE) and the TOML file with the sections (COEXIST_CONFIG)."""

from __future__ import annotations

import os

import pytest

from workers.config import ConfigError, Settings


def test_an_env_file_fills_settings_but_never_overrides_the_environment(tmp_path):
    env = tmp_path / "env"
    env.write_text("# coexist on prod\n"
                   "export COEXIST_BROKER_URL=amqp://u:secret@mq:5672/prod\n"
                   "COEXIST_QUEUE_TYPE=quorum   # the cluster\n"
                   "COEXIST_REDIS_URL=redis://cache:6379/0 # shared rate limits\n"
                   "COEXIST_HOME='/srv/coexist'\n")
    s = Settings.from_env({"COEXIST_ENV_FILE": str(env), "COEXIST_QUEUE_TYPE": "classic"})
    assert s.broker_url == "amqp://u:secret@mq:5672/prod"  # an `export` line
    assert s.redis_url == "redis://cache:6379/0"  # no inline comment in the value
    assert s.queue_type == "classic"  # the environment wins
    assert str(s.home) == "/srv/coexist"
    origins = {name: origin for name, _, origin in s.describe()}
    assert origins["COEXIST_BROKER_URL"] == f"env file {env}"
    assert origins["COEXIST_QUEUE_TYPE"] == "environment"


def test_a_missing_or_malformed_env_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=f"COEXIST_ENV_FILE {tmp_path}/nope: no such file"):
        Settings.from_env({"COEXIST_ENV_FILE": str(tmp_path / "nope")})
    env = tmp_path / "env"
    env.write_text("GOOD=1\nthis is not a setting\n")
    with pytest.raises(ConfigError, match="line 2: expected KEY=VALUE"):
        Settings.from_env({"COEXIST_ENV_FILE": str(env)})
    env.write_text("COEXIST_BROKR_URL=amqp://x/\n")
    with pytest.raises(ConfigError, match="COEXIST_BROKR_URL is not a coexist setting"):
        Settings.from_env({"COEXIST_ENV_FILE": str(env)})


def test_other_variables_of_the_env_file_reach_the_process_environment(tmp_path,
                                                                       monkeypatch):
    env = tmp_path / "env"
    env.write_text("PGSSLMODE_FOR_COEXIST_TEST=require\n")
    # Set, then unset: monkeypatch removes what the test adds to the environment again.
    monkeypatch.setenv("PGSSLMODE_FOR_COEXIST_TEST", "")
    monkeypatch.delenv("PGSSLMODE_FOR_COEXIST_TEST")
    Settings.from_env({"COEXIST_ENV_FILE": str(env)})
    assert os.environ["PGSSLMODE_FOR_COEXIST_TEST"] == "require"


def test_sections_come_from_the_toml_file_beside_the_state(tmp_path):
    (tmp_path / "coexist.toml").write_text(
        '[subscriptions.crm]\ndomains = ["customer", "order"]\n')
    s = Settings.from_env({"COEXIST_HOME": str(tmp_path)})
    assert list(s.subscriptions) == ["crm"] and s.config_file == tmp_path / "coexist.toml"
    other = tmp_path / "prod.toml"
    other.write_text('[subscriptions.edi]\ndomains = ["order"]\nkinds = ["event"]\n')
    s = Settings.from_env({"COEXIST_HOME": str(tmp_path), "COEXIST_CONFIG": str(other)})
    assert list(s.subscriptions) == ["edi"]


def test_a_bad_toml_file_is_one_line_naming_the_file_and_the_entry(tmp_path):
    with pytest.raises(ConfigError, match="COEXIST_CONFIG .*/missing.toml: no such file"):
        Settings.from_env({"COEXIST_CONFIG": str(tmp_path / "missing.toml")})
    bad = tmp_path / "coexist.toml"
    bad.write_text('[subscriptions.crm]\ndomains = ["customer", "vendor"]\n')
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"COEXIST_HOME": str(tmp_path)})
    assert str(err.value).startswith(f"subscriptions.crm.domains (TOML {bad}): 'vendor' is not "
                                     "a domain")


def test_edi_partners_are_a_section_of_the_same_toml_file(tmp_path):
    (tmp_path / "coexist.toml").write_text(
        '[subscriptions.edi]\ndomains = ["order", "shipment", "invoice"]\n\n'
        '[[edi.partners]]\nid = "ACME"\npartner_isa = { qualifier = "ZZ", id = "ACMEBUY" }\n'
        'our_isa = { qualifier = "ZZ", id = "DISTCO" }\npartner_gs = "ACMEBUY"\n'
        'our_gs = "DISTCO"\ncustomers = ["10000"]\nfolder = "/srv/edi/acme"\n')
    s = Settings.from_env({"COEXIST_HOME": str(tmp_path)})
    [acme] = s.edi.partners
    assert acme.id == "ACME" and list(s.subscriptions) == ["edi"]
    (tmp_path / "coexist.toml").write_text(
        '[[edi.partners]]\nid = "ACME"\npartner_isa = { qualifier = "Z", id = "ACMEBUY" }\n')
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"COEXIST_HOME": str(tmp_path)})
    assert "edi.partners[0].partner_isa.qualifier='Z' (TOML" in str(err.value)


def test_the_readme_lists_every_setting_and_no_other():
    import re
    from pathlib import Path

    from workers.config import env_names_of

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("## Exit codes", 1)[0]
    listed = set(re.findall(r"`(COEXIST_[A-Z_]+)`", table))
    known = {n for n in env_names_of(Settings).values() if n.startswith("COEXIST_")}
    assert listed == known | {"COEXIST_ENV_FILE", "COEXIST_CONFIG"}
