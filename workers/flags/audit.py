"""The durable flag audit in SQL: every change, and the source of truth for flag values.

One row per change of one domain's flag: who, why, when, from what to what
(mode and rollout, as ``FlagState`` JSON), the new flag version, and whether
guards were forced (and which).  The current flag of a domain is the ``to``
state of its highest version, so the flags can always be rebuilt from here
(Redis is a fast copy with notifications, never the only copy).

``(domain, version)`` is unique: two concurrent writers cannot both produce
version N; the loser gets ``FlagConflict`` and must re-plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Engine, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import Field

from coexistence.flags import FlagError, FlagState, initial_flags
from workers.db import StateTable

__all__ = ["AuditEntry", "FlagAudit", "FlagAuditLog", "FlagConflict"]


class FlagConflict(FlagError):
    """The domain's flag changed between planning and committing; plan again."""


class FlagAudit(StateTable, table=True):
    """One audited change of one domain's cutover flag."""

    __tablename__ = "flag_audit"
    __table_args__ = (UniqueConstraint("domain", "version", name="uq_flag_audit_domain_version"),)

    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(max_length=40, index=True)
    #: The flag version this change produced (the domain's previous version + 1).
    version: int
    at: datetime = Field(default_factory=lambda: datetime.now(UTC),
                         sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str = Field(max_length=200)
    reason: str = Field(max_length=2000)
    #: ``set``, ``rollback`` or ``restore``.
    action: str = Field(max_length=20)
    forced: bool = False
    #: JSON list of the guard checks that failed and were overridden by ``--force``.
    overridden: str = "[]"
    from_mode: str = Field(max_length=20)
    to_mode: str = Field(max_length=20)
    #: ``FlagState`` JSON before and after (mode, base mode, rollout, version).
    from_state: str
    to_state: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    domain: str
    version: int
    at: datetime
    actor: str
    reason: str
    action: str
    forced: bool
    overridden: tuple[str, ...]
    before: FlagState
    after: FlagState


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _entry(row: FlagAudit) -> AuditEntry:
    return AuditEntry(
        id=row.id or 0, domain=row.domain, version=row.version, at=_utc(row.at),
        actor=row.actor, reason=row.reason, action=row.action, forced=row.forced,
        overridden=tuple(json.loads(row.overridden or "[]")),
        before=FlagState.from_json(row.from_state), after=FlagState.from_json(row.to_state),
    )


class FlagAuditLog:
    """Reads and appends the ``flag_audit`` table of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def mark(self) -> int:
        """The id of the newest audit row (0 if none): a cheap change counter to poll."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.coalesce(func.max(FlagAudit.id), 0))).scalar_one()

    def latest(self) -> dict[str, FlagState]:
        """Every domain's current flag, rebuilt from the audit (untouched domains: initial)."""
        newest = (
            select(FlagAudit.domain, func.max(FlagAudit.version).label("v"))
            .group_by(FlagAudit.domain)
            .subquery()
        )
        query = select(FlagAudit.to_state).join(
            newest, (FlagAudit.domain == newest.c.domain) & (FlagAudit.version == newest.c.v)
        )
        states = initial_flags()
        with self.engine.connect() as conn:
            for (text,) in conn.execute(query):
                state = FlagState.from_json(text)
                if state.domain in states:
                    states[state.domain] = state
        return states

    def append(
        self,
        before: FlagState,
        after: FlagState,
        *,
        actor: str,
        reason: str,
        action: str,
        forced: bool = False,
        overridden: tuple[str, ...] = (),
        now: datetime | None = None,
    ) -> FlagState:
        """Record ``before -> after``; returns ``after`` stamped with its time.

        Raises ``FlagConflict`` when the domain is no longer at ``before.version``.
        """
        if not actor.strip():
            raise FlagError("an actor is required for every flag change")
        if not reason.strip():
            raise FlagError("a reason is required for every flag change")
        if after.version != before.version + 1 or after.domain != before.domain:
            raise FlagError(f"{after.domain}: version {after.version} does not follow "
                            f"{before.domain} version {before.version}")
        at = now or datetime.now(UTC)
        stamped = FlagState(after.domain, after.mode, after.base_mode, after.rollout,
                            after.version, at)
        row = FlagAudit(
            domain=after.domain, version=after.version, at=at, actor=actor.strip(),
            reason=reason.strip(), action=action, forced=forced,
            overridden=json.dumps(list(overridden)), from_mode=before.mode.value,
            to_mode=after.mode.value, from_state=before.to_json(), to_state=stamped.to_json(),
        )
        try:
            with Session(self.engine) as session:
                current = session.execute(
                    select(func.coalesce(func.max(FlagAudit.version), 0))
                    .where(FlagAudit.domain == after.domain)
                ).scalar_one()
                if current != before.version:
                    raise FlagConflict(
                        f"{after.domain} changed meanwhile (now version {current}, planned "
                        f"from {before.version}); look at `coexist cutover history "
                        f"{after.domain}` and plan again"
                    )
                session.add(row)
                session.commit()
        except IntegrityError:
            raise FlagConflict(
                f"{after.domain} version {after.version} was written by someone else "
                "at the same time; plan again"
            ) from None
        return stamped

    def history(self, domain: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        query = select(FlagAudit).order_by(FlagAudit.id.desc()).limit(limit)
        if domain is not None:
            query = query.where(FlagAudit.domain == domain)
        with Session(self.engine) as session:
            return [_entry(r) for r in session.execute(query).scalars()]
