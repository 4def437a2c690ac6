"""The portal delivery process as supervisord runs it: `coexist portal deliver` as an OS
process on the embedded broker, an endpoint that answers 410, and the dead letter replayed
from `coexist dlq replay` after `coexist portal endpoint enable`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from tests.support import records as r
from tests.support.receiver import serving
from tests.support.state import upgraded_state
from workers.config import Settings
from workers.db import create_state_engine
from workers.portal.endpoints import EndpointRegistry
from workers.portal.events import publish

ROOT = Path(__file__).resolve().parents[2]
COEXIST = [str(Path(sys.executable).parent / "coexist")]


@pytest.fixture
def home(tmp_path, monkeypatch):
    env = {**os.environ, "COEXIST_HOME": str(tmp_path), "COEXIST_ACTOR": "ops",
           "PYTHONPATH": str(ROOT)}
    for name in ("COEXIST_BROKER_URL", "COEXIST_STATE_URL", "COEXIST_REDIS_URL",
                 "COEXIST_CLOUD_URL", "COEXIST_ENV_FILE"):
        env.pop(name, None)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    upgraded_state(f"sqlite:///{tmp_path / 'state.db'}")  # what `coexist db upgrade` leaves
    return env


@pytest.fixture
def receiver():
    with serving() as rec:
        yield rec


def _cli(env, *args) -> str:
    out = subprocess.run([*COEXIST, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def _until(predicate, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_410_dead_letter_is_replayed_from_the_dlq_by_the_delivery_process(home, receiver):
    url = receiver.script("/hook", [410, 200])
    out = _cli(home, "portal", "endpoint", "add", "--customer", "10001", "--url", url,
               "--reason", "onboarding acme")
    secret = re.search(r"(whsec_\S+)", out).group(1)
    state = create_state_engine(Settings.from_env().state_url)
    registry = EndpointRegistry(state)
    env = new_envelope(domain="order", kind="event", key="300001",
                       payload={"record": r.order("300001", "10001").model_dump(mode="json")},
                       source_system="legacy", source_version=1, flag_version=1)
    assert publish([env], engine=state, registry=registry,
                   order_owner=lambda k: None)[0].status == "queued"
    proc = subprocess.Popen([*COEXIST, "portal", "deliver", "--log-level", "WARNING"],
                            env=home, cwd=ROOT)
    try:
        exceptions = ExceptionStore(state)
        [record] = _until(exceptions.list, "the dead letter of the 410")
        assert record.error_type == "WebhookEndpointGone"
        assert not registry.get(1).active
        _cli(home, "portal", "endpoint", "enable", "1", "--reason", "receiver fixed")
        _cli(home, "dlq", "replay", str(record.id), "--reason", "receiver fixed")
        assert receiver.wait_for("/hook", 2, 20), "the replayed message never arrived"
        first, second = receiver.at("/hook")[:2]
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert Webhook(secret).verify(second.body, second.headers)["data"]["key"] == "300001"
        actions = [a.action for a in registry.history(1)]
        assert actions == ["enable", "auto-disable", "add"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        state.dispose()
