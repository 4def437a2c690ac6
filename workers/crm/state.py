"""What the CRM channel remembers in coexist's state database: onboarding decisions.

``crm_onboarding`` has one row per person-created CRM account that onboarding decided on:
the customer it is (a link to an existing customer, or a new customer number), why, and
the match keys, so that

* a crash between deciding and committing re-uses the same decision and number (the
  number is committed before the CRM account is keyed by it);
* the same company typed again before the SoR created the first one matches the first
  (``known_pending``), and never becomes a second customer.

A new customer's number comes from its SoR (``coexistence.ports.NumberingErp``: the
legacy ERP's control record, the cloud's own sequence), which creates the customer before
the decision is committed here; the decision keeps that number.  Without an SoR to ask
(handler tests, benches) coexist numbers it from ``CRM_CUSTOMER_NUMBER_BASE`` upwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Engine, Text, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import Field

from coexistence.crm.onboarding import Candidate, Known
from workers.db import StateTable

#: First customer number coexist allocates for a customer created from the CRM when no SoR
#: numbers it (see above); above the ERPs' own sequences, so the two never collide.
CRM_CUSTOMER_NUMBER_BASE = 9_000_000_000

LINK, CREATE, DUPLICATE = "link", "create", "duplicate_in_crm"
#: The customer key of a ``create`` decision whose SoR has not given the number yet.
NUMBER_PENDING = ""


class CrmOnboarding(StateTable, table=True):
    """One onboarding decision for a person's CRM account."""

    __tablename__ = "crm_onboarding"

    crm_account_id: str = Field(primary_key=True, max_length=18)
    customer_key: str = Field(max_length=40, index=True)
    #: ``link``, ``create`` or ``duplicate_in_crm``.
    decision: str = Field(max_length=20)
    #: Allocated numbers are unique; a link or a duplicate names an existing customer.
    #: 64-bit: numbers from ``CRM_CUSTOMER_NUMBER_BASE`` (9e9) do not fit PostgreSQL's
    #: ``integer`` (revision 0012 widened it).
    allocated: int | None = Field(default=None, unique=True, sa_type=BigInteger)
    name_key: str = Field(default="", max_length=200)
    postal_keys: str = Field(default="", max_length=200)
    tax_key: str = Field(default="", max_length=40)
    #: ``decided`` until the command / link is committed with the feed checkpoint, then
    #: ``done``.
    state: str = Field(default="decided", max_length=10)
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: When the account was created in the CRM (its ``CreatedDate``; the CREATE event's
    #: commit time when the record has none): where the onboarding time starts.
    crm_created_at: datetime | None = Field(default=None)
    #: When the CRM account showed the SoR's customer: a link, once the account is keyed
    #: and set to the SoR's values; a new customer, once the SoR created it and the
    #: outbound channel wrote it (its number) onto the account.  ``None`` until then.
    completed_at: datetime | None = Field(default=None)
    #: A ``create`` decision's customer as first asked of the SoR (canonical JSON, its key
    #: ignored): asked again after a crash, the same body goes under the same idempotency
    #: key, whatever the CRM account says by then (the cloud refuses another body under
    #: a key with 422).  ``None`` for links, duplicates and decisions older than 0019.
    create_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: When the outbound consumer last held a customer delivery because it may be this
    #: create's customer while its number is pending (``coexist status`` shows it).
    held_at: datetime | None = Field(default=None)


_T = CrmOnboarding.__table__


def decision_of(engine: Engine, crm_account_id: str) -> CrmOnboarding | None:
    with Session(engine) as session:
        return session.get(CrmOnboarding, crm_account_id)


def known_pending(engine: Engine) -> list[Known]:
    """Customers onboarding asked the SoR to create, as matching sees them."""
    with Session(engine) as session:
        rows = session.execute(select(_T).where(_T.c.decision == CREATE,
                                                _T.c.customer_key != NUMBER_PENDING)).all()
    return [Known(r.customer_key, r.name_key, frozenset(filter(None, r.postal_keys.split(","))),
                  r.tax_key) for r in rows]


def decide(engine: Engine, candidate: Candidate, decision: str,
           customer_key: str | None = None, *, base: int = CRM_CUSTOMER_NUMBER_BASE,
           crm_created_at: datetime | None = None,
           create_body: str | None = None) -> CrmOnboarding:
    """Commit a decision for ``candidate``; idempotent.  A ``create`` names the number
    the SoR gave the customer (``customer_key``), or, without one, takes coexist's next
    number from ``base`` up (no SoR to ask: handler tests, benches); ``create_body`` is
    the customer it asks the SoR for (kept for a create asked again).

    A decision already taken for the account is returned unchanged.  Two decisions
    racing for one number: the loser's insert fails on the unique number and it
    allocates the next one.
    """
    for _ in range(5):
        existing = decision_of(engine, candidate.crm_id)
        if existing is not None:
            return existing
        with Session(engine) as session:
            allocated = None
            key = customer_key
            if decision == CREATE and customer_key is None:
                top = session.execute(select(func.max(_T.c.allocated))).scalar_one_or_none()
                allocated = max(int(top or 0), base) + 1
                key = str(allocated)
            if key is None:
                raise ValueError(f"a {decision} decision names its customer")
            row = CrmOnboarding(crm_account_id=candidate.crm_id, customer_key=key,
                                decision=decision, allocated=allocated,
                                name_key=candidate.name_key[:200],
                                postal_keys=",".join(sorted(candidate.postal_keys))[:200],
                                tax_key=candidate.tax_key[:40],
                                crm_created_at=crm_created_at, create_body=create_body)
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                continue
            session.refresh(row)
            return row
    raise RuntimeError(f"could not record the onboarding of CRM account {candidate.crm_id}")


def set_number(engine: Engine, crm_account_id: str, customer_key: str) -> CrmOnboarding:
    """The SoR created the customer of this ``create`` decision as ``customer_key``."""
    if not customer_key:
        raise ValueError(f"no customer number for CRM account {crm_account_id}")
    with Session(engine) as session:
        session.execute(update(_T).where(_T.c.crm_account_id == crm_account_id,
                                         _T.c.customer_key == NUMBER_PENDING)
                        .values(customer_key=customer_key))
        session.commit()
    row = decision_of(engine, crm_account_id)
    if row is None or row.customer_key != customer_key:
        raise RuntimeError(f"CRM account {crm_account_id}'s onboarding holds customer "
                           f"{row.customer_key if row else None!r}, the SoR made "
                           f"{customer_key!r}")
    return row


def open_creates(engine: Engine) -> list:
    """``create`` decisions whose customer the CRM does not show yet (its number not
    recorded, or not yet written onto the account): crm_account_id, customer_key,
    decided_at, create_body and the candidate's match keys (name_key, postal_keys,
    tax_key)."""
    with engine.connect() as conn:
        return list(conn.execute(select(
            _T.c.crm_account_id, _T.c.customer_key, _T.c.decided_at, _T.c.create_body,
            _T.c.name_key, _T.c.postal_keys, _T.c.tax_key).where(
            _T.c.decision == CREATE, _T.c.completed_at.is_(None))).all())


def numbers_pending(engine: Engine) -> list:
    """``create`` decisions whose number the SoR has not given coexist yet (the moment
    between its create and coexist's record of it, or a crash there until the poller
    asks again): crm_account_id, decided_at, held_at, oldest first.  Their customers'
    CRM writes are held meanwhile (``workers.crm.consumer``)."""
    with engine.connect() as conn:
        return list(conn.execute(select(_T.c.crm_account_id, _T.c.decided_at,
                                        _T.c.held_at).where(
            _T.c.decision == CREATE, _T.c.customer_key == NUMBER_PENDING)
            .order_by(_T.c.decided_at)).all())


def note_held(engine: Engine, crm_account_ids: list[str], now: datetime) -> None:
    """The consumer held a delivery for these pending creates' customers just now."""
    with engine.begin() as conn:
        conn.execute(update(_T).where(_T.c.crm_account_id.in_(crm_account_ids),
                                      _T.c.customer_key == NUMBER_PENDING)
                     .values(held_at=now))


def forget_pending(engine: Engine, crm_account_id: str) -> None:
    """Drop a ``create`` decision the SoR never numbered (it refused the create, or the
    account went away): nothing waits for it any more."""
    with engine.begin() as conn:
        conn.execute(_T.delete().where(_T.c.crm_account_id == crm_account_id,
                                       _T.c.customer_key == NUMBER_PENDING))


def mark_done(session: Session, crm_account_ids: list[str],
              completed: Sequence[str] = (), now: datetime | None = None) -> None:
    """In the caller's transaction (with the outbox commands and the feed checkpoint);
    ``completed``: those of them the CRM shows as their customer already (links)."""
    if crm_account_ids:
        session.execute(update(_T).where(_T.c.crm_account_id.in_(crm_account_ids))
                        .values(state="done"))
    if completed:
        session.execute(update(_T).where(_T.c.crm_account_id.in_(list(completed)),
                                         _T.c.completed_at.is_(None))
                        .values(completed_at=now or datetime.now(UTC)))


def note_shown(engine: Engine, customer_keys: list[str], now: datetime | None = None) -> int:
    """The outbound channel wrote these customers onto their CRM accounts: the onboardings
    that created them are complete (their number is in the CRM).  Returns how many
    completed.

    Reads the open creates first (a short list, most often empty: one small statement per
    delivery) rather than matching every key of the delivery in SQL: the UPDATE with an
    ``IN`` of up to 200 keys per delivery was 12 % of the worker's samples end to end."""
    if not customer_keys:
        return 0
    with engine.begin() as conn:
        open_ = conn.execute(select(_T.c.crm_account_id, _T.c.customer_key).where(
            _T.c.decision == CREATE, _T.c.state == "done",
            _T.c.completed_at.is_(None))).all()
        if not open_:
            return 0
        shown = set(customer_keys)
        ids = [r.crm_account_id for r in open_ if r.customer_key in shown]
        if not ids:
            return 0
        done = conn.execute(update(_T).where(_T.c.crm_account_id.in_(ids),
                                             _T.c.completed_at.is_(None))
                            .values(completed_at=now or datetime.now(UTC)))
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


# ===================================================================== channel state

#: The one row of ``crm_channel`` (one CRM per installation).
CHANNEL_ROW = "crm"


class CrmChannelState(StateTable, table=True):
    """The CRM channel as its processes last saw it: paused or not, and the API budget.

    Written by the outbound consumer and the inbound poller (every process of the
    channel), read by ``coexist status``.  A pause is a time, not a flag: every consumer
    holds its messages (re-queued with a delay, not counted as failures) until
    ``paused_until``, then tries again; a CRM that is still over budget pauses it again.
    """

    __tablename__ = "crm_channel"

    name: str = Field(primary_key=True, max_length=20)
    paused_until: datetime | None = Field(default=None)
    pause_reason: str = Field(default="", max_length=500)
    #: ``Sforce-Limit-Info: api-usage=used/max`` as last seen.
    budget_used: int | None = Field(default=None)
    budget_max: int | None = Field(default=None)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


_C = CrmChannelState.__table__


def channel_state(engine: Engine) -> CrmChannelState | None:
    with Session(engine) as session:
        row = session.get(CrmChannelState, CHANNEL_ROW)
        if row is not None:
            session.expunge(row)
        return row


def paused_until(engine: Engine, now: datetime | None = None) -> datetime | None:
    """The end of the channel's pause when it is paused now, else ``None``."""
    row = channel_state(engine)
    if row is None or row.paused_until is None:
        return None
    until = _aware(row.paused_until)
    return until if until > (now or datetime.now(UTC)) else None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _upsert(engine: Engine, **values) -> None:
    values["updated_at"] = datetime.now(UTC)
    with Session(engine) as session:
        done = session.execute(update(_C).where(_C.c.name == CHANNEL_ROW).values(**values))
        if done.rowcount == 0:  # type: ignore[attr-defined]
            session.add(CrmChannelState(name=CHANNEL_ROW, **values))
            try:
                session.commit()
            except IntegrityError:  # another process inserted it first
                session.rollback()
                session.execute(update(_C).where(_C.c.name == CHANNEL_ROW).values(**values))
                session.commit()
            return
        session.commit()


def pause(engine: Engine, until: datetime, reason: str, budget=None) -> None:
    """Pause the channel until ``until`` (never shortens a longer pause already set)."""
    current = paused_until(engine)
    if current is not None and current >= until:
        return
    values: dict = {"paused_until": until, "pause_reason": reason[:500]}
    if budget is not None:
        values.update(budget_used=budget.used, budget_max=budget.max)
    _upsert(engine, **values)


def resume(engine: Engine) -> None:
    """The CRM took a request again: the channel is not paused."""
    row = channel_state(engine)
    if row is not None and row.paused_until is not None:
        _upsert(engine, paused_until=None, pause_reason="")


def note_budget(engine: Engine, budget) -> None:
    """Remember the API budget the CRM last reported (``coexist status`` shows it)."""
    row = channel_state(engine)
    if row is not None and (row.budget_used, row.budget_max) == (budget.used, budget.max):
        return
    _upsert(engine, budget_used=budget.used, budget_max=budget.max)
