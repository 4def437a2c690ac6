"""State revision 0018 keeps the 810s that 0016 held for their 856 (now rows of a table
that holds any document for the one it follows), on SQLite and PostgreSQL; its downgrade
refuses to lose a held 856."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import text

from workers import migrate
from workers.db import create_state_engine
from workers.edi.store import HELD

AT = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = create_state_engine(url)
    yield engine
    engine.dispose()


def test_0018_keeps_the_810s_held_by_0016(engine):
    migrate.upgrade(engine, to="0017")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO edi_held (partner, invoice_key, order_key, envelope, held_at, "
            "release_after) VALUES ('ACME', '777', '700001', '{}', :at, :at)"), {"at": AT})
    migrate.upgrade(engine)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(
            HELD.select().with_only_columns(HELD.c.partner, HELD.c.doc_type,
                                            HELD.c.business_key, HELD.c.order_key,
                                            HELD.c.waits_for))]
    assert rows == [("ACME", "810", "777", "700001", "856")]


def test_0018_down_to_0017_refuses_while_an_856_is_held(engine):
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(HELD.insert(), {"partner": "ACME", "doc_type": "856",
                                     "business_key": "555", "order_key": "700001",
                                     "waits_for": "855", "envelope": "{}", "held_at": AT,
                                     "release_after": AT})
    config = migrate._config(migrate.STATE)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        with pytest.raises(RuntimeError, match="1 856"):
            command.downgrade(config, "0017")
    with engine.begin() as conn:
        conn.execute(HELD.delete())
        conn.execute(HELD.insert(), {"partner": "ACME", "doc_type": "810",
                                     "business_key": "777", "order_key": "700001",
                                     "waits_for": "856", "envelope": "{}", "held_at": AT,
                                     "release_after": AT})
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0017")
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(text(
            "SELECT partner, invoice_key, order_key FROM edi_held"))] == [
            ("ACME", "777", "700001")]
