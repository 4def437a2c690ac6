"""A state database at the code's schema revision, as `coexist db upgrade` leaves it."""

from __future__ import annotations

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
