"""A state database at the code's schema revision, as `coexist db upgrade` leaves it."""

from __future__ import annotations

import pytest

from workers import migrate
from workers.db import create_state_engine


def upgraded_state(url: str) -> str:
    """Upgrade the state database at ``url`` (created if new) and return ``url``."""
    engine = create_state_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def state_engine(request, tmp_path):
    """An upgraded state engine on SQLite (a file in ``tmp_path``) and on PostgreSQL (the
    ``pg_url`` fixture's database); disposed afterwards."""
    if request.param == "sqlite":
        engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        engine = create_state_engine(request.getfixturevalue("pg_url"))
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
