"""A state database at the code's schema revision, as `coexist db upgrade` leaves it."""

from __future__ import annotations

from pathlib import Path

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


def shadow_home(home: Path):
    """A home as a deployment's processes find it: ``state.db`` upgraded with the customer
    domain in shadow (set by alice, "pilot") and ``legacy.db`` with the legacy schema.
    Returns the legacy engine (the caller disposes of it)."""
    from coexistence.flags import FlagState, Mode, Rollout
    from workers.flags import SqlFlagStore
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

    state = create_state_engine(f"sqlite:///{home / 'state.db'}")
    try:
        migrate.upgrade(state)
        store = SqlFlagStore(state)
        store.commit(store.load()["customer"],
                     FlagState("customer", Mode.SHADOW, Mode.SHADOW, Rollout(), 1),
                     actor="alice", reason="pilot", action="set")
    finally:
        state.dispose()
    legacy = create_legacy_engine(f"sqlite:///{home / 'legacy.db'}")
    create_legacy_schema(legacy)
    return legacy
