"""coexist's own state tables outside the bus (xref, flags audit, reconciliation runs,
CDC checkpoints, EDI control numbers) and the one function that creates them all."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

from bus.db import create_bus_schema, create_state_engine

STATE_METADATA = MetaData()


class StateTable(SQLModel, registry=registry(metadata=STATE_METADATA)):
    """Base class of coexist's state tables (not the legacy ERP's, not the bus's)."""


def create_state_schema(engine: Engine) -> None:
    """Create every state table (bus and workers); idempotent."""
    # Import modules that declare tables so they register on STATE_METADATA.
    import workers.tables  # noqa: F401

    create_bus_schema(engine)
    STATE_METADATA.create_all(engine)


__all__ = ["STATE_METADATA", "StateTable", "create_state_engine", "create_state_schema"]
