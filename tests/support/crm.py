"""Helpers for CRM channel tests: router-shaped event envelopes and a report sink."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.pool import StaticPool

from bus.envelope import Envelope, new_envelope
from coexistence.canonical import CanonicalRecord
from workers.db import create_state_engine
from workers.migrate import upgrade as upgrade_schema
from workers.router import queues


def event(record: CanonicalRecord, source_version: int, *, flag_version: int = 1,
          sor: str = "legacy", message_id: str | None = None) -> Envelope:
    """A canonical event as the router fans it out to the CRM subscription."""
    return new_envelope(
        domain=record.domain, kind=queues.KIND_EVENT, key=record.key,
        payload={"record": record.model_dump(mode="json")}, source_system=sor,
        source_version=source_version, schema_version=type(record).current_schema_version,
        flag_version=flag_version, message_id=message_id or str(uuid.uuid4()),
        correlation_id=f"corr-{record.key}-{source_version}")


def deleted(domain: str, key: str, source_version: int, *, flag_version: int = 1,
            sor: str = "legacy") -> Envelope:
    return new_envelope(domain=domain, kind=queues.KIND_DELETE, key=key, payload={},
                        source_system=sor, source_version=source_version,
                        flag_version=flag_version)


@dataclass
class Report:
    error_type: str
    message: str
    message_id: str
    domain: str
    key: str
    actor: str
    envelope: Envelope | None


@dataclass
class ListReports:
    """``Reports`` in a dict by (actor, message id): a re-report folds, as in the store."""

    by_id: dict[tuple[str, str], Report] = field(default_factory=dict)

    def report(self, *, error_type, message, message_id, domain, key, actor, envelope=None):
        self.by_id[(actor, message_id)] = Report(error_type, message, message_id, domain, key,
                                                 actor, envelope)

    @property
    def all(self) -> list[Report]:
        return list(self.by_id.values())

    def of(self, error_type: str) -> list[Report]:
        return [r for r in self.by_id.values() if r.error_type.startswith(error_type)]


def memory_state_engine():
    """coexist's state schema in an in-memory SQLite database (no file)."""
    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    upgrade_schema(engine)
    return engine
