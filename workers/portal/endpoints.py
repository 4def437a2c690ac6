"""Webhook endpoints of portal customers: registry, signing secrets and audit (state DB).

An endpoint belongs to one customer account and receives the events of that
account and of the child accounts it names (``customers``), filtered by event
type.  Every operator change (add, disable, enable, rotate-secret) and every
automatic disable (a receiver's 410, an endpoint failing for days) is a row
in ``portal_endpoint_audit`` with actor and reason, as flag changes are.

Secrets: ``add`` and ``rotate_secret`` return the new ``whsec_`` secret once,
for the operator to hand to the customer; it is kept in the state database
(the dispatcher signs with it) and never logged.  After a rotation the old
secret keeps signing, beside the new one, for ``ROTATION_OVERLAP_S``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import Column, DateTime, Engine, Integer, String, Text, insert, or_, select, update
from sqlmodel import Field

from bus.errors import BusinessError
from workers.db import StateTable
from workers.portal.signing import new_secret

#: How long the previous secret keeps signing after a rotation.
ROTATION_OVERLAP_S = 24 * 3600

#: The event types an endpoint can subscribe to (see ``workers.portal.events``).
EVENT_TYPES: tuple[str, ...] = ("order.status_changed", "shipment.milestone", "invoice.posted",
                                "price.changed", "availability.changed")

ACTIVE = "active"
DISABLED = "disabled"


class EndpointError(BusinessError):
    """A request about endpoints that cannot be done (names what and why)."""


class PortalEndpoint(StateTable, table=True):
    __tablename__ = "portal_endpoint"

    id: int | None = Field(default=None, primary_key=True)
    #: The customer account that registered the endpoint.
    customer_key: str = Field(max_length=40, index=True)
    #: JSON list: the account and the child accounts whose events it receives.
    customers: str = Field(sa_column=Column(Text, nullable=False))
    url: str = Field(max_length=2000)
    #: JSON list of subscribed event types.
    event_types: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default=ACTIVE, max_length=16)
    disabled_reason: str | None = Field(default=None, max_length=2000)
    #: First failure of the current run of failures (cleared by a success).
    failing_since: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PortalSecret(StateTable, table=True):
    __tablename__ = "portal_endpoint_secret"

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: int = Field(index=True)
    secret: str = Field(sa_column=Column(String(200), nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: ``None`` while current; set by a rotation to the end of the overlap.
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class PortalAudit(StateTable, table=True):
    __tablename__ = "portal_endpoint_audit"

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str = Field(max_length=200)
    #: add, disable, enable, rotate-secret, auto-disable.
    action: str = Field(max_length=20)
    reason: str = Field(max_length=2000)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


_E = PortalEndpoint.__table__
_S = PortalSecret.__table__
_A = PortalAudit.__table__


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    customer_key: str
    customers: frozenset[str]
    url: str
    event_types: frozenset[str]
    status: str
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


@dataclass(frozen=True, slots=True)
class AuditRow:
    endpoint_id: int
    at: datetime
    actor: str
    action: str
    reason: str
    detail: str


def _endpoint(row) -> Endpoint:
    return Endpoint(row.id, row.customer_key, frozenset(json.loads(row.customers)), row.url,
                    frozenset(json.loads(row.event_types)), row.status, row.disabled_reason,
                    _utc(row.failing_since), _utc(row.created_at))


def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"endpoint url {url!r} must be an http(s) URL with a host")
    return url.strip()


def _need(actor: str, reason: str) -> tuple[str, str]:
    if not actor.strip():
        raise EndpointError("an actor is required for every endpoint change")
    if not reason.strip():
        raise EndpointError("a reason is required for every endpoint change")
    return actor.strip(), reason.strip()


class EndpointRegistry:
    """Reads and changes ``portal_endpoint`` and its secrets, auditing every change."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ reads

    def get(self, endpoint_id: int) -> Endpoint:
        with self.engine.connect() as conn:
            row = conn.execute(select(_E).where(_E.c.id == endpoint_id)).first()
        if row is None:
            raise EndpointError(f"no endpoint {endpoint_id} (see `coexist portal endpoint list`)")
        return _endpoint(row)

    def list(self, customer: str | None = None) -> list[Endpoint]:
        stmt = select(_E).order_by(_E.c.id)
        if customer is not None:
            stmt = stmt.where(_E.c.customer_key == customer)
        with self.engine.connect() as conn:
            return [_endpoint(r) for r in conn.execute(stmt)]

    def subscribed(self, event_type: str) -> list[Endpoint]:
        """Active endpoints that receive ``event_type``."""
        return [e for e in self.list() if e.active and event_type in e.event_types]

    def secrets(self, endpoint_id: int, now: datetime | None = None) -> list[str]:
        """Secrets that sign now: the current one first, then any still in its overlap."""
        now = now or datetime.now(UTC)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_S.c.secret, _S.c.expires_at).where(
                    _S.c.endpoint_id == endpoint_id,
                    or_(_S.c.expires_at.is_(None), _S.c.expires_at > now))
                .order_by(_S.c.id.desc())).all()
        return [r.secret for r in rows]

    def history(self, endpoint_id: int | None = None, limit: int = 100) -> list[AuditRow]:
        stmt = select(_A).order_by(_A.c.id.desc()).limit(limit)
        if endpoint_id is not None:
            stmt = stmt.where(_A.c.endpoint_id == endpoint_id)
        with self.engine.connect() as conn:
            return [AuditRow(r.endpoint_id, _utc(r.at), r.actor, r.action, r.reason, r.detail)
                    for r in conn.execute(stmt)]

    # ------------------------------------------------------------------ changes

    def add(self, customer: str, url: str, *, actor: str, reason: str,
            children: tuple[str, ...] = (), event_types: tuple[str, ...] = EVENT_TYPES
            ) -> tuple[Endpoint, str]:
        """Register an endpoint; returns it and its first secret (shown once)."""
        actor, reason = _need(actor, reason)
        if not customer.strip():
            raise EndpointError("an endpoint belongs to a customer account (--customer)")
        unknown = sorted(set(event_types) - set(EVENT_TYPES))
        if unknown or not event_types:
            raise EndpointError(f"event types {unknown or '(none)'} not among "
                                f"{', '.join(EVENT_TYPES)}")
        url = check_url(url)
        now = datetime.now(UTC)
        secret = new_secret()
        customers = sorted({customer.strip(), *(c.strip() for c in children if c.strip())})
        with self.engine.begin() as conn:
            endpoint_id = conn.execute(insert(_E).values(
                customer_key=customer.strip(), customers=json.dumps(customers), url=url,
                event_types=json.dumps(sorted(set(event_types))), status=ACTIVE,
                created_at=now)).inserted_primary_key[0]
            conn.execute(insert(_S).values(endpoint_id=endpoint_id, secret=secret,
                                           created_at=now))
            self._audit(conn, endpoint_id, actor, "add", reason,
                        f"customer {customer} (+{','.join(children) or 'no children'}) {url}")
        return self.get(int(endpoint_id)), secret

    def disable(self, endpoint_id: int, *, actor: str, reason: str,
                action: str = "disable") -> Endpoint:
        actor, reason = _need(actor, reason)
        endpoint = self.get(endpoint_id)
        with self.engine.begin() as conn:
            conn.execute(update(_E).where(_E.c.id == endpoint_id).values(
                status=DISABLED, disabled_reason=reason))
            self._audit(conn, endpoint_id, actor, action, reason, f"was {endpoint.status}")
        return self.get(endpoint_id)

    def enable(self, endpoint_id: int, *, actor: str, reason: str) -> Endpoint:
        actor, reason = _need(actor, reason)
        endpoint = self.get(endpoint_id)
        with self.engine.begin() as conn:
            conn.execute(update(_E).where(_E.c.id == endpoint_id).values(
                status=ACTIVE, disabled_reason=None, failing_since=None))
            self._audit(conn, endpoint_id, actor, "enable", reason, f"was {endpoint.status}")
        return self.get(endpoint_id)

    def rotate_secret(self, endpoint_id: int, *, actor: str, reason: str,
                      overlap_s: float = ROTATION_OVERLAP_S) -> str:
        """A new current secret; the previous ones sign for ``overlap_s`` more."""
        actor, reason = _need(actor, reason)
        self.get(endpoint_id)
        now = datetime.now(UTC)
        until = now + timedelta(seconds=overlap_s)
        secret = new_secret()
        with self.engine.begin() as conn:
            conn.execute(update(_S).where(_S.c.endpoint_id == endpoint_id,
                                          or_(_S.c.expires_at.is_(None), _S.c.expires_at > until))
                         .values(expires_at=until))
            conn.execute(insert(_S).values(endpoint_id=endpoint_id, secret=secret,
                                           created_at=now))
            self._audit(conn, endpoint_id, actor, "rotate-secret", reason,
                        f"previous secret signs until {until.isoformat(timespec='seconds')}")
        return secret

    @staticmethod
    def _audit(conn, endpoint_id: int, actor: str, action: str, reason: str,
               detail: str) -> None:
        conn.execute(insert(_A).values(endpoint_id=endpoint_id, at=datetime.now(UTC),
                                       actor=actor, action=action, reason=reason,
                                       detail=detail))
