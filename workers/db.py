"""The base class and metadata of coexist's state tables outside the bus (xref, flag
audit, reconciliation runs, CDC checkpoints, routing state).

``workers.tables`` imports every module that declares one; the schema itself is
built and upgraded by migrations (``workers.migrate``, ``coexist db upgrade``).
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

from bus.db import create_state_engine

STATE_METADATA = MetaData()


class StateTable(SQLModel, registry=registry(metadata=STATE_METADATA)):
    """Base class of coexist's state tables (not the legacy ERP's, not the bus's)."""


__all__ = ["STATE_METADATA", "StateTable", "create_state_engine"]
