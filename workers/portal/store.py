"""The portal channel's delivery state (state DB): what is due, what was tried, what was sent.

* ``portal_delivery``: one row per (endpoint, webhook message): the signed body,
  its status (``pending`` -> ``delivered`` | ``failed``), attempts made, when the
  next attempt is due and a lease while a dispatcher holds it.  This table is
  the scheduler: each endpoint's due rows form its own lane (see
  ``workers.portal.delivery``).
* ``portal_attempt``: every attempt: when, HTTP status or transport error, how
  long, and when the next one was scheduled.
* ``portal_object_state``: per (endpoint, event type, object) the newest
  version queued and a digest of what the endpoint was shown, so a duplicate or
  older event is never sent and an event that changes nothing visible is not
  sent either.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Text, UniqueConstraint
from sqlmodel import Field

from workers.db import StateTable

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


class PortalDelivery(StateTable, table=True):
    __tablename__ = "portal_delivery"
    __table_args__ = (UniqueConstraint("endpoint_id", "webhook_id",
                                       name="uq_portal_delivery_message"),)

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    #: ``webhook-id``: the same on every attempt of this message.
    webhook_id: str = Field(sa_column=Column(String(64), nullable=False))
    event_type: str = Field(sa_column=Column(String(40), nullable=False))
    domain: str = Field(sa_column=Column(String(32), nullable=False))
    object_key: str = Field(sa_column=Column(String(256), nullable=False))
    #: The event's version (routed version of the SoR change): receivers apply newer only.
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    correlation_id: str | None = Field(default=None, sa_column=Column(String(128), index=True))
    status: str = Field(default=PENDING, sa_column=Column(String(16), nullable=False,
                                                          index=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    next_attempt_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False,
                                                       index=True))
    #: Wall-clock end of a dispatcher's claim (a crashed dispatcher's claim runs out).
    lease_until: datetime | None = Field(default=None,
                                         sa_column=Column(DateTime(timezone=True)))
    last_status: int | None = Field(default=None, sa_column=Column(Integer))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC),
                                 sa_column=Column(DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class PortalAttempt(StateTable, table=True):
    __tablename__ = "portal_attempt"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    endpoint_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    attempt_no: int = Field(sa_column=Column(Integer, nullable=False))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    error: str | None = Field(default=None, sa_column=Column(Text))
    duration_ms: int = Field(sa_column=Column(Integer, nullable=False))
    #: What this attempt led to: delivered, retry, failed, gone.
    outcome: str = Field(sa_column=Column(String(16), nullable=False))
    next_attempt_at: datetime | None = Field(default=None,
                                             sa_column=Column(DateTime(timezone=True)))


class PortalObjectState(StateTable, table=True):
    __tablename__ = "portal_object_state"

    endpoint_id: int = Field(primary_key=True)
    event_type: str = Field(primary_key=True, max_length=40)
    object_key: str = Field(primary_key=True, max_length=256)
    version: int = Field(sa_type=BigInteger)
    #: SHA-256 of the data the endpoint was last shown (``""`` after a delete).
    digest: str = Field(max_length=64)


DELIVERY = PortalDelivery.__table__
ATTEMPT = PortalAttempt.__table__
OBJECT_STATE = PortalObjectState.__table__


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
