"""``workers.api.idempotency`` on SQLite and PostgreSQL, with its statements built once:
numbers from ``base + 1`` on, the stored answer replayed, a lease that ran out taken over
(same number and message id), a key past its window starting again with a new number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workers.api import idempotency as idem
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = create_state_engine(url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def _begin(engine, key, fp="fp", now=T0, account="A1", **kw):
    return idem.begin(engine, account, key, fp, correlation_id="cid", order_number_base=500,
                      now=now, **kw)


def test_the_key_lifecycle(engine):
    first = _begin(engine, "k1")
    assert isinstance(first, idem.Claimed) and first.order_key == "501"
    assert _begin(engine, "k2").order_key == "502"
    assert _begin(engine, "k1", account="A2").order_key == "503"  # keys scoped by account
    with pytest.raises(idem.InFlight):
        _begin(engine, "k1")
    with pytest.raises(idem.KeyReused):
        _begin(engine, "k1", fp="other")
    idem.save_command(engine, "A1", "k1", '{"key": "501"}')
    later = T0 + timedelta(seconds=idem.IN_FLIGHT_LEASE_S + 1)
    resumed = _begin(engine, "k1", now=later)  # the lease ran out: same order, same command
    assert (resumed.order_key, resumed.message_id, resumed.command) == (
        "501", first.message_id, '{"key": "501"}')
    idem.finish(engine, "A1", "k1", 201, '{"ok": 1}')
    assert _begin(engine, "k1", now=later) == idem.Replay(201, '{"ok": 1}')
    idem.release(engine, "A1", "k2")  # released: the next request executes again at once
    assert _begin(engine, "k2").order_key == "502"
    past = T0 + timedelta(seconds=idem.IDEMPOTENCY_TTL_S + 1)
    again = _begin(engine, "k1", now=past)
    assert isinstance(again, idem.Claimed) and again.order_key == "504"


def test_a_new_key_stores_its_command_or_its_answer_in_the_claim_and_a_claimed_one_keeps_its_own(
        engine):
    claimed = _begin(engine, "k1", command=lambda number: f'{{"key": "{number}"}}')
    assert (claimed.order_key, claimed.command) == ("501", '{"key": "501"}')
    later = T0 + timedelta(seconds=idem.IN_FLIGHT_LEASE_S + 1)
    resumed = _begin(engine, "k1", now=later, command=lambda number: "never stored",
                     answer=(422, "never stored"))
    assert (resumed.order_key, resumed.command) == ("501", '{"key": "501"}')
    refused = _begin(engine, "k2", answer=(422, '{"code": "credit_hold"}'),
                     command=lambda number: "never stored")
    assert refused == idem.Answered(422, '{"code": "credit_hold"}')
    assert _begin(engine, "k2", now=later) == idem.Replay(422, '{"code": "credit_hold"}')
