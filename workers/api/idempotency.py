"""Idempotency-Key for inbound orders (draft-ietf-httpapi-idempotency-key-header), in SQL.

One ``api_idempotency`` row per (account, key), kept ``IDEMPOTENCY_TTL_S`` (24 h):

* first request: the row is inserted ``in_flight`` with a lease, the order number
  and the command's message id are fixed in it (so a re-execution writes the
  same order under the same idempotency key into the SoR - never a second one);
* same key, different request fingerprint: ``KeyReused`` (422);
* same key while the first is in flight: ``InFlight`` (409);
* same key after the first answered: the stored answer is replayed;
* a first request's command (the order, built from SoR reads before the claim) is stored
  in the claim's own transaction, and a refusal found while building it (credit hold,
  unknown SKU) is stored as the key's answer in that same transaction: an accepted order
  costs two state transactions (claim with command, answer), a refused one one;
* a first request that failed technically (SoR unreachable) or whose process
  died gives its lease up (or lets it run out); the next request with the same
  key executes again with the same number and message id.

On SQLite the claim runs under ``BEGIN IMMEDIATE``; on PostgreSQL two first
requests race on the primary key and the loser reads the winner's row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field

from workers.db import StateTable

#: How long a key and its answer are kept (the draft asks for a documented window).
IDEMPOTENCY_TTL_S = 24 * 3600.0
#: How long a first request holds its key before another may take over.
IN_FLIGHT_LEASE_S = 30.0

IN_FLIGHT = "in_flight"
DONE = "done"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ApiIdempotency(StateTable, table=True):
    __tablename__ = "api_idempotency"

    account: str = Field(primary_key=True, max_length=200)
    idem_key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    lease_until: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    order_key: str = Field(sa_column=Column(String(40), nullable=False))
    message_id: str = Field(sa_column=Column(String(64), nullable=False))
    correlation_id: str = Field(sa_column=Column(String(128), nullable=False, index=True))
    #: The order as first built (canonical JSON): a resumed execution writes exactly it.
    command: str | None = Field(default=None, sa_column=Column(Text))
    response_status: int | None = Field(default=None, sa_column=Column(Integer))
    response_body: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False,
                                                  index=True))


class ApiSequence(StateTable, table=True):
    """Numbers coexist hands out (portal order numbers)."""

    __tablename__ = "api_sequence"

    name: str = Field(primary_key=True, max_length=40)
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


_T = ApiIdempotency.__table__
_SEQ = ApiSequence.__table__


class KeyReused(Exception):
    """The key was first used for a different request."""


class InFlight(Exception):
    """The first request with this key has not answered yet."""


@dataclass(frozen=True, slots=True)
class Claimed:
    order_key: str
    message_id: str
    correlation_id: str
    #: When the key was first used (the order's time, the same on a re-execution).
    created_at: datetime
    #: The command built by an earlier attempt that did not finish, if it got that far.
    command: str | None


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The key was new and its answer (a refusal known before the claim) is stored with it."""

    status: int
    body: str


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# Statements built once (a py-spy profile of ``POST /v1/orders`` put a quarter of the
# idempotency bookkeeping in building the same SQLAlchemy expressions on every request).
_KEY = (_T.c.account == bindparam("k_account")) & (_T.c.idem_key == bindparam("k_key"))
_READ = select(_T).where(_KEY)
_READ_LOCKED = _READ.with_for_update()
_DROP = delete(_T).where(_KEY)
_INSERT = _T.insert()
_TAKE_OVER = (sql_update(_T).where(_KEY, _T.c.state == IN_FLIGHT,
                                   _T.c.lease_until == bindparam("k_lease_was"))
              .values(lease_until=bindparam("k_lease")))
_SAVE_COMMAND = sql_update(_T).where(_KEY).values(command=bindparam("k_command"))
_FINISH = sql_update(_T).where(_KEY).values(state=DONE, response_status=bindparam("k_status"),
                                            response_body=bindparam("k_body"))
_RELEASE = sql_update(_T).where(_KEY, _T.c.state == IN_FLIGHT).values(lease_until=_EPOCH)
_NEXT = (sql_update(_SEQ).where(_SEQ.c.name == bindparam("s_name"))
         .values(value=_SEQ.c.value + 1).returning(_SEQ.c.value))


def next_number(conn, name: str, base: int) -> int:
    """The next number of sequence ``name`` (the first is ``base + 1``), in ``conn``'s tx.

    The row is bumped first; only a sequence not made yet is inserted (then bumped), so a
    number costs one statement, not an insert that conflicts plus the update."""
    number = conn.execute(_NEXT, {"s_name": name}).scalar_one_or_none()
    if number is not None:
        return int(number)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(_SEQ).values(name=name, value=base).on_conflict_do_nothing(
        index_elements=[_SEQ.c.name]))
    return int(conn.execute(_NEXT, {"s_name": name}).scalar_one())


def begin(engine: Engine, account: str, key: str, fingerprint: str, *, correlation_id: str,
          order_number_base: int, now: datetime | None = None,
          lease_s: float = IN_FLIGHT_LEASE_S, ttl_s: float = IDEMPOTENCY_TTL_S,
          command: Callable[[str], str] | None = None,
          answer: tuple[int, str] | None = None) -> Claimed | Replay | Answered:
    """Claim ``key`` for a first (or resumed) execution, or return the stored answer.

    For a key that is new (or past its window), in the claim's transaction: ``command``
    (given the new order number, the command's JSON) is stored with the claim, or
    ``answer`` (status, body) is stored as the key's answer at once (``Answered``).  A key
    already claimed ignores both: its own command and answer stand."""
    now = now or datetime.now(UTC)
    k = {"k_account": account, "k_key": key}
    for _ in range(3):
        try:
            with engine.begin() as conn:
                read = _READ_LOCKED if conn.dialect.name == "postgresql" else _READ
                row = conn.execute(read, k).first()
                if row is not None and _utc(row.expires_at) <= now:
                    conn.execute(_DROP, k)
                    row = None
                if row is None:
                    number = str(next_number(conn, "portal_order", order_number_base))
                    made = command(number) if command is not None and answer is None else None
                    claimed = Claimed(number, str(uuid.uuid4()), correlation_id, now, made)
                    conn.execute(_INSERT, {
                        "account": account, "idem_key": key, "fingerprint": fingerprint,
                        "state": IN_FLIGHT if answer is None else DONE,
                        "lease_until": now + timedelta(seconds=lease_s),
                        "order_key": claimed.order_key, "message_id": claimed.message_id,
                        "correlation_id": correlation_id, "command": made,
                        "response_status": None if answer is None else answer[0],
                        "response_body": None if answer is None else answer[1],
                        "created_at": now, "expires_at": now + timedelta(seconds=ttl_s)})
                    return claimed if answer is None else Answered(*answer)
                if row.fingerprint != fingerprint:
                    raise KeyReused()
                if row.state == DONE:
                    return Replay(int(row.response_status), row.response_body or "")
                if _utc(row.lease_until) > now:
                    raise InFlight()
                taken = conn.execute(_TAKE_OVER, {
                    **k, "k_lease_was": row.lease_until,
                    "k_lease": now + timedelta(seconds=lease_s)}).rowcount
                if not taken:
                    raise InFlight()
                return Claimed(row.order_key, row.message_id, row.correlation_id,
                               _utc(row.created_at), row.command)
        except IntegrityError:
            continue  # another first request inserted the key meanwhile: read its row
    raise InFlight()


def save_command(engine: Engine, account: str, key: str, command: str) -> None:
    """Keep the built command before it is written, so a re-execution writes the same one."""
    with engine.begin() as conn:
        conn.execute(_SAVE_COMMAND, {"k_account": account, "k_key": key, "k_command": command})


def finish(engine: Engine, account: str, key: str, status: int, body: str) -> None:
    """Store the answer; later requests with the key get it replayed."""
    with engine.begin() as conn:
        conn.execute(_FINISH, {"k_account": account, "k_key": key, "k_status": status,
                               "k_body": body})


def release(engine: Engine, account: str, key: str) -> None:
    """Give the key up after a technical failure: the next request executes again."""
    with engine.begin() as conn:
        conn.execute(_RELEASE, {"k_account": account, "k_key": key})


def purge(engine: Engine, now: datetime | None = None) -> int:
    """Forget keys past their window; returns how many."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        return conn.execute(delete(_T).where(_T.c.expires_at <= now)).rowcount
