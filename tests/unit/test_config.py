"""Settings: embedded defaults, an env file for supervisord, credentials kept out of logs."""

from __future__ import annotations

import pytest

from workers.config import Settings, redact_url


def forget(monkeypatch, name: str) -> None:
    """Unset ``name`` so that whatever the test sets is removed again afterwards."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


def test_with_nothing_configured_everything_is_embedded(monkeypatch, tmp_path):
    for name in ("COEXIST_BROKER_URL", "COEXIST_REDIS_URL", "COEXIST_STATE_URL",
                 "COEXIST_LEGACY_URL", "COEXIST_ENV_FILE", "COEXIST_CLOUD_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    s = Settings.from_env()
    assert s.broker_url is None and s.redis_url is None
    assert s.state_url == f"sqlite:///{tmp_path / 'state.db'}"
    assert s.legacy_url.startswith("sqlite:///")


def test_an_env_file_fills_settings_but_never_overrides_the_environment(monkeypatch, tmp_path):
    env = tmp_path / "env"
    env.write_text("# coexist\nCOEXIST_BROKER_URL=amqp://u:secret@mq:5672/prod\n"
                   "COEXIST_QUEUE_TYPE=quorum\n\nCOEXIST_HOME='/srv/coexist'\n")
    monkeypatch.setenv("COEXIST_ENV_FILE", str(env))
    monkeypatch.setenv("COEXIST_QUEUE_TYPE", "classic")
    for name in ("COEXIST_BROKER_URL", "COEXIST_HOME"):
        forget(monkeypatch, name)
    s = Settings.from_env()
    assert s.broker_url == "amqp://u:secret@mq:5672/prod"
    assert s.queue_type == "classic"
    assert str(s.home) == "/srv/coexist"


def test_a_malformed_env_file_names_the_line(monkeypatch, tmp_path):
    env = tmp_path / "env"
    env.write_text("GOOD=1\nthis is not a setting\n")
    monkeypatch.setenv("COEXIST_ENV_FILE", str(env))
    forget(monkeypatch, "GOOD")
    with pytest.raises(ValueError, match="line 2"):
        Settings.from_env()


def test_passwords_never_appear_in_a_logged_url():
    assert redact_url("amqp://u:secret@mq:5672/prod") == "amqp://u:***@mq:5672/prod"
    assert "secret" not in repr(Settings(home=".", state_url="x", legacy_url="y",
                                         broker_url=None, queue_type="classic", redis_url=None,
                                         redis_prefix="c:", cloud_url=None, cloud_token="secret"))
