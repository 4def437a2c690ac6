"""The inbox makes consumers idempotent: one effect per (consumer, message)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text, update
from sqlmodel import Session

from bus import inbox
from bus.db import create_state_engine
from bus.inbox import DUPLICATES, InboxRecord, claim, once, purge_processed
from workers.migrate import upgrade as upgrade_schema


@pytest.fixture
def engine(tmp_path):
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE effect (n INTEGER)"))
    yield engine
    engine.dispose()


def effects(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM effect")).scalar_one()


def apply(engine, consumer, message_id) -> bool:
    with Session(engine) as session:
        if not claim(session, consumer, message_id):
            return False
        session.execute(text("INSERT INTO effect VALUES (1)"))
        session.commit()
        return True


def duplicates(consumer: str) -> float:
    return DUPLICATES.labels(consumer=consumer)._value.get()


def test_a_redelivered_message_is_skipped_and_counted(engine):
    before = duplicates("crm")
    assert apply(engine, "crm", "m1") is True
    assert apply(engine, "crm", "m1") is False
    assert effects(engine) == 1
    assert duplicates("crm") == before + 1


def test_each_consumer_applies_the_same_message_once(engine):
    assert apply(engine, "crm", "m1")
    assert apply(engine, "edi", "m1")
    assert effects(engine) == 2


def test_a_claim_rolled_back_with_its_effect_lets_the_retry_apply_it(engine):
    with Session(engine) as session:
        assert claim(session, "crm", "m1")
        session.execute(text("INSERT INTO effect VALUES (1)"))
        session.rollback()
    assert apply(engine, "crm", "m1") is True
    assert effects(engine) == 1


def test_once_commits_the_effect_with_the_claim_and_yields_none_for_a_duplicate(engine):
    for _ in range(3):
        with once(engine, "portal", "m9") as session:
            if session is not None:
                session.execute(text("INSERT INTO effect VALUES (1)"))
    assert effects(engine) == 1


def test_once_rolls_back_the_claim_when_the_effect_fails(engine):
    with pytest.raises(RuntimeError), once(engine, "portal", "m9") as session:
        session.execute(text("INSERT INTO effect VALUES (1)"))
        raise RuntimeError("cloud ERP timed out")
    with once(engine, "portal", "m9") as session:
        assert session is not None
        session.execute(text("INSERT INTO effect VALUES (1)"))
    assert effects(engine) == 1


def test_claim_works_on_a_plain_connection(engine):
    with engine.begin() as conn:
        assert inbox.claim(conn, "crm", "m1")
        assert not inbox.claim(conn, "crm", "m1")


def test_purge_forgets_only_old_claims(engine):
    apply(engine, "crm", "old")
    apply(engine, "crm", "new")
    t = InboxRecord.__table__
    with engine.begin() as conn:
        conn.execute(update(t).where(t.c.message_id == "old")
                     .values(processed_at=datetime.now(UTC) - timedelta(days=40)))
    assert purge_processed(engine, timedelta(days=30)) == 1
    assert apply(engine, "crm", "new") is False
    assert apply(engine, "crm", "old") is True
