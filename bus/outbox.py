"""Transactional outbox: a state change and the messages it causes commit together.

A writer calls ``add_to_outbox(session, envelope, ...)`` inside the transaction
that changes its state; both commit or neither does.  An ``OutboxRelay`` then
publishes unsent rows in id order, in batches, through a ``publish_batch``
callable that returns only once the broker has confirmed every message, and
marks them sent.  A failed publish leaves the rows unsent (retried with capped
backoff), so a message is never lost; a crash between publish and mark
publishes it again, which every consumer absorbs (the inbox, or version checks
and idempotency keys: docs/architecture.md, "What makes each consumer idempotent").

Ordering.  Rows of one partition key (the envelope key) are published in id
order.  On PostgreSQL several relays run at once: each claims rows with
``FOR UPDATE SKIP LOCKED`` and holds the locks while it publishes; before
publishing it computes, per key, the first unsent row it does *not* hold (held
by another relay) and publishes only its rows of that key below it, leaving the
rest for a later round.  So no relay ever publishes a key's row while an
earlier row of that key is still unpublished by someone else.  Id order equals
commit order for one key as long as writers of a key serialise on its state
row (they do: they update it first); beyond that, consumers apply only newer
versions (checked against what the target holds).

On SQLite one relay publishes at a time, enforced by a lease row, and no write
lock is held while publishing (the embedded broker may live in the same file).

A row the broker keeps refusing must not hold back every other key.  After a
batch fails the relay publishes one row at a time; a row that fails alone while
the next publishable row (another key) goes through is *quarantined* for
``RELAY_QUARANTINE_S``: it stays unsent and keeps blocking its own key (order),
while other keys flow.  It is tried again when the quarantine ends.  When the
broker itself is down the probe fails too and nothing is quarantined.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Text,
    any_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlmodel import Field

from bus import stages
from bus.db import BusTable
from bus.envelope import Envelope, encode
from bus.errors import TechnicalError

log = logging.getLogger(__name__)

#: Backoff after a failed publish: doubles from MIN to MAX, with full jitter.
RELAY_BACKOFF_MIN_S = 0.2
RELAY_BACKOFF_MAX_S = 30.0
#: How long an idle relay sleeps before looking again (``wake()`` cuts it short).
RELAY_IDLE_POLL_S = 0.1
#: SQLite: a relay's lease lasts this long and is renewed on every round; longer than
#: any publish may take (confirm timeouts), so a slow relay is not taken over mid-batch.
RELAY_LEASE_S = 120.0
#: A row that failed alone while another went through waits this long before a new try.
RELAY_QUARANTINE_S = 60.0
#: Longest error text kept on a row.
MAX_ERROR_CHARS = 2000

RELAYED = Counter("coexist_outbox_published_total", "Outbox rows published and confirmed")
PUBLISH_FAILURES = Counter("coexist_outbox_publish_failures_total", "Failed outbox batches")
QUARANTINED = Counter("coexist_outbox_quarantined_total",
                      "Outbox rows refused by the broker while others were accepted")


class OutboxRecord(BusTable, table=True):
    """One message waiting to be (or already) published."""

    __tablename__ = "outbox"
    __table_args__ = (
        # Partial indexes keep the relay's scans proportional to the backlog, not history.
        Index("ix_outbox_unsent", "id", postgresql_where=text("sent_at IS NULL"),
              sqlite_where=text("sent_at IS NULL")),
        Index("ix_outbox_unsent_key", "partition_key", "id",
              postgresql_where=text("sent_at IS NULL"), sqlite_where=text("sent_at IS NULL")),
        # What ``purge_sent`` scans by: a row's created_at is written once, so unlike the
        # former ``ix_outbox_sent_at`` the sent mark adds no entry to it; BRIN on PostgreSQL
        # (rows are appended in about created_at order), so an INSERT barely touches it.
        Index("ix_outbox_created_at", "created_at", postgresql_using="brin"),
        # The settle ledger (bus/ledger.py): what a cutover switch waits for.
        Index("ix_outbox_unsettled", "domain", "flag_version",
              postgresql_where=text("settled_at IS NULL"), sqlite_where=text("settled_at IS NULL")),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                         autoincrement=True),
    )
    message_id: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    queue_name: str = Field(sa_column=Column(String(200), nullable=False))
    actor_name: str = Field(sa_column=Column(String(200), nullable=False))
    domain: str = Field(sa_column=Column(String(64), nullable=False))
    partition_key: str = Field(sa_column=Column(String(256), nullable=False))
    #: The envelope's correlation id, indexed for ``coexist trace``.
    correlation_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True,
                                                                      index=True))
    #: The envelope as JSON text.
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    sent_at: datetime | None = Field(default=None,
                                     sa_column=Column(DateTime(timezone=True), nullable=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: Set when this row failed alone while others were published (see the module doc).
    quarantined_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    #: The settle ledger (``bus.ledger``): the envelope's flag version, and when and how a
    #: consumer finished with the message (handled, or its failure recorded).
    flag_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False,
                                                          server_default="0"))
    settled_at: datetime | None = Field(default=None,
                                        sa_column=Column(DateTime(timezone=True), nullable=True))
    outcome: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))


class OutboxLease(BusTable, table=True):
    """SQLite only: which relay may publish right now."""

    __tablename__ = "outbox_lease"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    holder: str = Field(sa_column=Column(String(200), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


_T = OutboxRecord.__table__
_LEASE = OutboxLease.__table__


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A claimed outbox row, as handed to ``publish_batch``."""

    id: int
    message_id: str
    queue_name: str
    actor_name: str
    domain: str
    partition_key: str
    #: The envelope as JSON text.
    payload: str
    created_at: datetime
    attempts: int

    def envelope_dict(self) -> dict[str, Any]:
        return json.loads(self.payload)

    def encoded(self) -> bytes:
        """``to_message().encode()`` for dramatiq's default (JSON) encoder, without parsing
        the stored envelope and serialising it again: the message's JSON is put together
        around the stored envelope text, which decodes to the same ``args[0]``.  Callers
        check that the JSON encoder is the one in use (``bus.publish``)."""
        return b"".join((
            b'{"queue_name":', _json(self.queue_name), b',"actor_name":', _json(self.actor_name),
            b',"args":[', self.payload.encode(), b'],"kwargs":{},"options":{},"message_id":',
            _json(self.message_id), b',"message_timestamp":',
            str(int(time.time() * 1000)).encode(), b"}"))

    def to_message(self):
        """The dramatiq message to publish: the envelope dict in ``args[0]``.

        The dramatiq message id is the envelope's message id, so a dead letter,
        an exception record and an inbox row all name the same id.
        """
        import dramatiq

        return dramatiq.Message(
            queue_name=self.queue_name,
            actor_name=self.actor_name,
            args=(self.envelope_dict(),),
            kwargs={},
            options={},
            message_id=self.message_id,
        )


#: Publishes every row and returns only after the broker confirmed all of them;
#: raises on any failure (the relay then leaves all of them unsent).
PublishBatch = Callable[[list[OutboxRow]], Any]


class OutboxPublishError(TechnicalError):
    """A batch could not be published; its rows stay unsent and will be retried."""


def add_to_outbox(session: Any, envelope: Envelope, *, actor_name: str, queue_name: str) -> None:
    """Queue ``envelope`` for ``actor_name`` on ``queue_name`` in the CALLER's transaction.

    ``session`` is a SQLAlchemy/SQLModel ``Session`` or ``Connection``; nothing
    is committed here.  Raises ``EnvelopeTooLarge`` for an oversized envelope, so
    the state change fails with it instead of leaving a message that can never be sent.
    """
    add_all_to_outbox(session, [envelope], actor_name=actor_name, queue_name=queue_name)


def add_all_to_outbox(
    session: Any, envelopes: Sequence[Envelope], *, actor_name: str, queue_name: str
) -> None:
    """``add_to_outbox`` for several envelopes in one statement (same actor and queue)."""
    if not envelopes:
        return
    now = datetime.now(UTC)
    payloads = [encode(env).decode() for env in envelopes]
    session.execute(
        insert(_T),
        [
            {
                "message_id": env.message_id,
                "queue_name": queue_name,
                "actor_name": actor_name,
                "domain": env.domain,
                "partition_key": env.key,
                "correlation_id": env.correlation_id,
                "flag_version": env.flag_version,
                "payload": payload,
                "created_at": now,
                "attempts": 0,
            }
            for env, payload in zip(envelopes, payloads, strict=True)
        ],
    )


def backlog(engine: Engine, domain: str | None = None) -> int:
    """Number of rows not yet published (for one domain, or all)."""
    stmt = select(func.count()).select_from(_T).where(_T.c.sent_at.is_(None))
    if domain is not None:
        stmt = stmt.where(_T.c.domain == domain)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def lag_seconds(engine: Engine, domain: str | None = None) -> float:
    """Age of the oldest unsent row in seconds (0 when nothing waits): the relay's lag."""
    stmt = select(func.min(_T.c.created_at)).where(_T.c.sent_at.is_(None))
    if domain is not None:
        stmt = stmt.where(_T.c.domain == domain)
    with engine.connect() as conn:
        oldest = conn.execute(stmt).scalar_one()
    if oldest is None:
        return 0.0
    if isinstance(oldest, str):  # SQLite's MIN() returns the stored text
        oldest = datetime.fromisoformat(oldest)
    return max(0.0, (datetime.now(UTC) - _aware(oldest)).total_seconds())


def stuck(engine: Engine, min_attempts: int = 5, limit: int = 20) -> list[OutboxRecord]:
    """Unsent rows whose publish failed at least ``min_attempts`` times, oldest first.

    The relay publishes in id order and never skips a row, so one row the broker
    keeps refusing holds back everything behind it; this names it (with
    ``last_error``) for ``coexist status`` and for a person to act on.
    """
    stmt = (select(_T).where(_T.c.sent_at.is_(None), _T.c.attempts >= min_attempts)
            .order_by(_T.c.id).limit(limit))
    with engine.connect() as conn:
        return [OutboxRecord.model_validate(r._mapping) for r in conn.execute(stmt)]


def purge_sent(engine: Engine, older_than: timedelta, *, chunk: int = 5000) -> int:
    """Delete rows sent more than ``older_than`` ago and settled (``bus.ledger``: an
    unsettled row is what a switch waits for), in chunks; returns how many."""
    cutoff = datetime.now(UTC) - older_than
    total = 0
    while True:
        with engine.begin() as conn:
            # created_at <= sent_at: the bound the index (ix_outbox_created_at) serves.
            settled = select(_T.c.id).where(_T.c.created_at < cutoff,
                                            _T.c.sent_at.is_not(None), _T.c.sent_at < cutoff,
                                            _T.c.settled_at.is_not(None))
            ids = [r[0] for r in conn.execute(settled.limit(chunk))]
            if not ids:
                return total
            conn.execute(delete(_T).where(_T.c.id.in_(ids)))
            total += len(ids)


class OutboxRelay:
    """Publishes outbox rows in id order, in confirmed batches; safe to run several on PG."""

    def __init__(
        self,
        engine: Engine,
        publish_batch: PublishBatch,
        *,
        name: str | None = None,
        idle_poll_s: float = RELAY_IDLE_POLL_S,
        backoff_min_s: float = RELAY_BACKOFF_MIN_S,
        backoff_max_s: float = RELAY_BACKOFF_MAX_S,
    ) -> None:
        self.engine = engine
        self.publish_batch = publish_batch
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.idle_poll_s = idle_poll_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._wake = threading.Event()
        self._sqlite = engine.dialect.name == "sqlite"
        self._lease_until: datetime | None = None
        #: After a failed batch: publish one row at a time until one goes through.
        self._solo = False
        #: PostgreSQL: the relay's own connection, kept between rounds (``_connection``).
        self._conn: Any = None

    def wake(self) -> None:
        """Cut the idle sleep short (a producer in the same process just committed)."""
        self._wake.set()

    def purge_sent(self, older_than: timedelta) -> int:
        return purge_sent(self.engine, older_than)

    def run_once(self, batch_size: int = 500) -> int:
        """Publish up to ``batch_size`` rows; returns how many were published.

        Raises ``OutboxPublishError`` when the publish failed (rows stay unsent,
        their ``attempts`` and ``last_error`` are updated).
        """
        if self._sqlite and not self._take_lease():
            return 0
        with self._connection() as conn:
            rows = self._claim(conn, 1 if self._solo else batch_size)
            if not rows:
                return 0
            try:
                self._publish_and_mark(conn, rows)
            except OutboxPublishError as exc:
                if len(rows) > 1:
                    self._solo = True  # find out whether one row is the cause
                    raise
                failure = exc
            else:
                self._solo = False
                return len(rows)
        # The row failed alone: is it the row, or the broker?
        published = self._probe_after(rows[0])
        if not published:
            raise failure
        return published

    def run_forever(self, stop_event: threading.Event, batch_size: int = 500) -> None:
        """Relay until ``stop_event`` is set; backs off (capped, jittered) after failures."""
        failures = 0
        try:
            while not stop_event.is_set():
                try:
                    published = self.run_once(batch_size)
                    failures = 0
                except Exception as exc:  # never let the relay die: rows are safe, retry later
                    failures += 1
                    delay = min(self.backoff_max_s, self.backoff_min_s * 2 ** (failures - 1))
                    delay = random.uniform(delay / 2, delay)
                    log.warning("outbox relay %s: %s; retrying in %.1fs", self.name, exc, delay,
                                extra={"failures": failures})
                    stop_event.wait(delay)
                    continue
                if published < batch_size:
                    self._wake.wait(self.idle_poll_s)
                    self._wake.clear()
        finally:
            self.close()

    def close(self) -> None:
        """Give up the relay's connection (PostgreSQL) and its lease (SQLite)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection cannot close cleanly
                conn.close()
        try:
            self.release_lease()
        except Exception as exc:  # the lease expires on its own
            log.warning("outbox relay %s could not release its lease: %s", self.name, exc)

    @contextlib.contextmanager
    def _connection(self):
        """The connection of one round.

        SQLite: one from the pool, as before.  PostgreSQL: the relay's own, kept open
        between rounds and outside the pool, so a round (every ``idle_poll_s`` while
        idle) pays no checkout ping; every round trip a busy router makes the relay
        thread wait for the GIL and a CPU again.  Its session commits without waiting
        for the WAL flush: all the relay ever writes is bookkeeping that a crash may
        lose at no cost (a lost sent mark publishes its rows again, which every
        consumer absorbs: the module doc; a lost attempt count or quarantine is tried
        again).  Any error but a refused publish drops it; the next round opens another.
        """
        if self._sqlite:
            with self.engine.connect() as conn:
                yield conn
            return
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = self.engine.connect()
            try:
                conn.detach()  # never back to the pool with this session's setting
                conn.exec_driver_sql("SET synchronous_commit = off")
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        try:
            yield self._conn
        except OutboxPublishError:
            raise  # its transaction is committed: the connection is fine
        except BaseException:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _probe_after(self, failed: OutboxRow) -> int:
        """After ``failed`` failed alone: publish another row, then ``failed`` once more.

        If the other row goes through and ``failed`` fails again, the broker is
        refusing that row: quarantine it.  Returns how many rows were published.
        """
        with self.engine.connect() as conn:
            probe = self._claim(conn, 1, exclude=failed.id)
            if not probe:
                return 0  # nothing else to publish: the failed row holds back nothing
            try:
                self._publish_and_mark(conn, probe)
            except OutboxPublishError:
                return 0  # the broker refuses everything: no row is to blame
        self._solo = False
        with self.engine.connect() as conn:
            again = self._claim(conn, 1, only=failed.id)
            if not again:
                return 1  # another relay took it, or it was sent meanwhile
            try:
                self._publish_and_mark(conn, again)
                return 2  # it went through this time: the failure was passing
            except OutboxPublishError:
                pass
            conn.execute(update(_T).where(_T.c.id == failed.id, _T.c.sent_at.is_(None)).values(
                quarantined_until=datetime.now(UTC) + timedelta(seconds=RELAY_QUARANTINE_S)))
            conn.commit()
        QUARANTINED.inc()
        log.error("outbox row %s (message %s, key %s) is refused by the broker while others "
                  "are accepted; quarantined for %.0fs, its key waits", failed.id,
                  failed.message_id, failed.partition_key, RELAY_QUARANTINE_S)
        return 1

    def _claim(self, conn, limit: int, exclude: int | None = None,
               only: int | None = None) -> list[OutboxRow]:
        """The next publishable rows in id order, in a transaction left open on ``conn``.

        PostgreSQL: the rows are locked (``SKIP LOCKED``) until the caller commits.
        SQLite: the read transaction is ended (it holds the database write lock)
        and the lease keeps other relays away.  Per key, rows behind an earlier
        unsent row this relay does not hold (another relay's, or quarantined)
        are left for later.
        """
        now = datetime.now(UTC)
        stmt = (select(*_ROW_COLUMNS)
                .where(_T.c.sent_at.is_(None),
                       or_(_T.c.quarantined_until.is_(None), _T.c.quarantined_until <= now))
                .order_by(_T.c.id).limit(limit))
        if exclude is not None:
            stmt = stmt.where(_T.c.id != exclude)
        if only is not None:
            stmt = stmt.where(_T.c.id == only)
        conn.begin()
        if not self._sqlite:
            # One round trip: the claim, and per row whether an earlier unsent row of its
            # key is held by someone else (locked by another relay, or quarantined).
            claimed = stmt.with_for_update(skip_locked=True).cte("claimed")
            other = _T.alias("other")
            blocked = (select(other.c.id)
                       .where(other.c.sent_at.is_(None),
                              other.c.partition_key == claimed.c.partition_key,
                              other.c.id < claimed.c.id,
                              other.c.id.not_in(select(claimed.c.id).correlate(None)))
                       .exists())
            rows = [_row(r[:-1]) for r in conn.execute(
                select(*claimed.c, blocked.label("blocked")).order_by(claimed.c.id))
                if not r[-1]]
            if not rows:
                conn.rollback()
            return rows
        rows = [_row(r) for r in conn.execute(stmt)]
        if rows:
            held = [r.id for r in rows]
            keys = list({r.partition_key for r in rows})
            barrier = dict(conn.execute(
                select(_T.c.partition_key, func.min(_T.c.id))
                .where(_T.c.sent_at.is_(None), self._keys(keys), ~self._ids(held),
                       _T.c.id < held[-1])
                .group_by(_T.c.partition_key)
            ).all())
            rows = [r for r in rows if r.id < barrier.get(r.partition_key, r.id + 1)]
        conn.rollback()  # SQLite: the lease keeps other relays away, not locks
        return rows

    def _take_lease(self) -> bool:
        now = datetime.now(UTC)
        # Renew only past half-life: an idle relay polling would otherwise write every round.
        if self._lease_until is not None and now < self._lease_until - timedelta(
                seconds=RELAY_LEASE_S / 2):
            return True
        expires = now + timedelta(seconds=RELAY_LEASE_S)
        taken = self._write_lease(now, expires)
        self._lease_until = expires if taken else None
        return taken

    def _write_lease(self, now: datetime, expires: datetime) -> bool:
        with self.engine.begin() as conn:
            current = conn.execute(select(_LEASE).where(_LEASE.c.name == "relay")).first()
            if current is None:
                conn.execute(insert(_LEASE).values(name="relay", holder=self.name,
                                                   expires_at=expires))
                return True
            if current.holder != self.name and _aware(current.expires_at) > now \
                    and not _holder_gone(current.holder):
                return False
            conn.execute(update(_LEASE).where(_LEASE.c.name == "relay")
                         .values(holder=self.name, expires_at=expires))
            return True

    def release_lease(self) -> None:
        """SQLite: give the lease up at shutdown so another relay need not wait for expiry."""
        if not self._sqlite:
            return
        self._lease_until = None
        with self.engine.begin() as conn:
            conn.execute(delete(_LEASE).where(_LEASE.c.name == "relay",
                                              _LEASE.c.holder == self.name))

    # -- shared --------------------------------------------------------------------------

    def _ids(self, ids: list[int]):
        # PostgreSQL: one array parameter, so the statement text (and the driver's
        # parse of it) is the same for every batch; IN (...) would differ per size.
        if self._sqlite:
            return _T.c.id.in_(ids)
        return _T.c.id == any_(_array(ids, BigInteger))

    def _keys(self, keys: list[str]):
        if self._sqlite:
            return _T.c.partition_key.in_(keys)
        return _T.c.partition_key == any_(_array(keys, String))

    def _publish_and_mark(self, conn, rows: list[OutboxRow]) -> None:
        """Publish ``rows``, then mark them sent (or count the failed attempt) and commit."""
        ids = [r.id for r in rows]
        try:
            self.publish_batch(rows)
        except Exception as exc:
            PUBLISH_FAILURES.inc()
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            conn.execute(update(_T).where(self._ids(ids))
                         .values(attempts=_T.c.attempts + 1, last_error=error))
            conn.commit()
            raise OutboxPublishError(
                f"publishing {len(rows)} outbox rows (ids {ids[0]}..{ids[-1]}) failed: {error}"
            ) from exc
        conn.execute(update(_T).where(self._ids(ids))
                     .values(sent_at=datetime.now(UTC), attempts=_T.c.attempts + 1,
                             last_error=None))
        conn.commit()
        RELAYED.inc(len(rows))
        if stages.enabled():
            stages.mark("published", (f"{r.domain}:{r.partition_key}" for r in rows))


def _json(value: str) -> bytes:
    return json.dumps(value).encode()


def _array(values: list, item_type) -> Any:
    return bindparam(None, values, type_=postgresql.ARRAY(item_type))


#: Selected in ``OutboxRow``'s field order, so a result row maps positionally.
_ROW_COLUMNS = tuple(_T.c[name] for name in OutboxRow.__dataclass_fields__)


def _row(r) -> OutboxRow:
    return OutboxRow(*r)


def _aware(ts: datetime) -> datetime:
    # SQLite returns naive datetimes for DateTime(timezone=True); they were written in UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _holder_gone(holder: str) -> bool:
    """True when the relay ``host:pid:nonce`` ran on this host and its process has ended.

    SQLite is one host's database, so every relay of it runs here: a relay killed with
    SIGKILL (or by a crash) cannot release its lease, and the process restarted in its
    place takes it over at once instead of waiting ``RELAY_LEASE_S`` with nothing
    published.  A live process, a pid this process cannot signal, or another host's name
    (a file shared oddly) all count as present: the lease then runs out as before."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False
