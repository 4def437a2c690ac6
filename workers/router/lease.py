"""One active capture per ERP: a lease row in the state database with a fencing token.

Any number of router processes may run (``coexist router``, ``coexist run``; one
host or several).  Each asks for the lease of every ERP's capture
(``capture.legacy``, ``capture.cloud``); exactly one holds each at a time and
runs that capture loop; the others are standbys.

* **Lease.**  A row of ``capture_lease`` per ERP: holder, fencing token, expiry.
  The holder renews it every ``RENEW_EVERY_S`` from a thread of its own; a
  standby looks as often and takes it over once it has expired,
  incrementing the token.  Expiry is judged by the *database's* clock, so hosts'
  clocks need not agree.  A holder that stops (kill -9, a dead host, SIGSTOP, a
  network partition) stops renewing, and a standby captures ``LEASE_TTL_S`` (+ at
  most one look) later.  A graceful stop releases the lease at once.
* **Fence.**  Every capture batch first updates the lease row *where the token is
  still its own*, in the batch's own state transaction.  A holder that lost the
  lease (a standby took over while it was paused) finds no row, and its batch
  rolls back with ``LeaseLost``: it never commits a batch after the takeover.
  The update also locks the row until the batch commits, so a takeover waits for
  a batch in progress and the batch and the takeover are ordered one way or the
  other.  On PostgreSQL the batch's transaction is bounded by
  ``idle_in_transaction_session_timeout`` (``LEASE_TTL_S``): a holder paused in
  mid-batch has its session ended by the server, which rolls the batch back and
  frees the row for the standby.  On SQLite (one host) the write lock orders
  them; a process paused while holding it stalls every writer until it resumes
  or dies, as any SQLite writer does.

Why a lease row and not a PostgreSQL advisory session lock: it works on the
embedded SQLite default too, a paused or partitioned holder loses it after a
bounded time (a session lock stays held while its TCP connection looks alive),
and the token lets each batch prove, in its own transaction, that it is still
the holder's.  The checkpoint's compare-and-set (``workers.checkpoints``)
remains a second guard: two batches from one checkpoint never both commit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Engine, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlmodel import Field

from bus import stages
from bus.errors import TechnicalError
from workers.db import StateTable

log = logging.getLogger(__name__)

#: A holder that has not renewed for this long loses its lease to a standby.
LEASE_TTL_S = 5.0
#: How often the holder renews and a standby looks whether the lease expired (at most;
#: a quarter of the TTL when that is shorter, so several renewals may fail in a row).
RENEW_EVERY_S = 1.0
#: Longest a standby's look waits for a lease row a batch holds (PostgreSQL).
ACQUIRE_LOCK_TIMEOUT_MS = 500
#: Polling of a capture that came back empty (``LeasedCaptures.run_due``): a feed that had
#: changes within ``ACTIVE_WINDOW_S`` looks again after its fast interval (people are
#: typing: a change waits for the next look, on average half of it), one that had none
#: after the idle interval (``run_router``'s ``poll_s``).  Only the legacy ERP's change
#: log (one indexed query) polls fast; the cloud's feed is an HTTP API with a request
#: budget, polled at the idle interval always.
FAST_POLL_S = {"legacy": 0.02}
ACTIVE_WINDOW_S = 10.0
#: A capture whose run failed (an ERP away, a state database refusing) waits before its
#: next try: the idle interval after the first failure, doubling per failure in a row up
#: to this.  No jitter: one router captures each ERP (the lease), so no herd retries
#: together.
CAPTURE_BACKOFF_MAX_S = 10.0


class CaptureLease(StateTable, table=True):
    """Who captures one ERP now, and the token its batches prove it with."""

    __tablename__ = "capture_lease"

    #: ``capture.<system>``.
    name: str = Field(primary_key=True, max_length=64)
    #: ``host:pid:nonce`` of the process that holds (or last held) it.
    holder: str = Field(max_length=200)
    #: Incremented at every takeover; a batch commits only under its holder's token.
    token: int = Field(sa_type=BigInteger)
    #: Database time (epoch ms) after which a standby may take over; 0 once released.
    expires_at_ms: int = Field(sa_type=BigInteger)
    acquired_at_ms: int = Field(sa_type=BigInteger)
    renewed_at_ms: int = Field(sa_type=BigInteger)


_T = CaptureLease.__table__

_NOW_MS = {
    "postgresql": "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
}


class LeaseLost(TechnicalError):
    """This process no longer holds the capture lease: its batch was rolled back.

    Technical, and expected after a takeover: the changes are still in the feed
    and the new holder captures them from the checkpoint.
    """


def lease_name(system: str) -> str:
    """The lease of the router's capture of ``system``."""
    return f"capture.{system}"


def process_identity() -> str:
    """``host:pid:nonce``: unique per process, readable in ``coexist status``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """One capture lease as seen by one process."""

    def __init__(self, engine: Engine, name: str, holder: str, ttl_s: float = LEASE_TTL_S):
        if ttl_s <= 0:
            raise ValueError(f"lease TTL must be > 0 s, got {ttl_s}")
        self.engine, self.name, self.holder = engine, name, holder
        self.ttl_ms = int(ttl_s * 1000)
        self._now = _NOW_MS[engine.dialect.name]
        self._token: int | None = None
        self._lock = threading.Lock()

    @property
    def token(self) -> int | None:
        """The fencing token while this process believes it holds the lease, else None."""
        return self._token

    @property
    def held(self) -> bool:
        return self._token is not None

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired; True if this process holds it now."""
        if self.held:
            return self.renew()
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ACQUIRE_LOCK_TIMEOUT_MS}")
                    conn.exec_driver_sql(
                        f"SET LOCAL idle_in_transaction_session_timeout = {self.ttl_ms}")
                token = conn.execute(text(
                    f"UPDATE capture_lease SET holder = :me, token = token + 1, "
                    f"expires_at_ms = {self._now} + :ttl, acquired_at_ms = {self._now}, "
                    f"renewed_at_ms = {self._now} "
                    f"WHERE name = :name AND expires_at_ms < {self._now} RETURNING token"),
                    {"me": self.holder, "ttl": self.ttl_ms, "name": self.name}).scalar()
                if token is None:
                    token = self._insert_first(conn)
        except OperationalError as exc:  # a batch holds the row, or the database is away
            log.debug("capture lease %s not taken now: %s", self.name, exc)
            return False
        if token is None:
            return False
        with self._lock:
            self._token = int(token)
        log.warning("took the capture lease %s (token %s) as %s", self.name, token, self.holder)
        return True

    def _insert_first(self, conn) -> int | None:
        """The first holder ever creates the row (token 1); None if another came first."""
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        now = text(self._now)
        stmt = dialect_insert(_T).values(
            name=self.name, holder=self.holder, token=1,
            expires_at_ms=text(f"{self._now} + {self.ttl_ms}"), acquired_at_ms=now,
            renewed_at_ms=now,
        ).on_conflict_do_nothing().returning(_T.c.token)
        return conn.execute(stmt).scalar()

    def renew(self) -> bool:
        """Extend the lease; False (and no longer held) if another process took it over."""
        token = self._token
        if token is None:
            return False
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(
                        f"SET LOCAL idle_in_transaction_session_timeout = {self.ttl_ms}")
                kept = self._extend(conn, token)
        except (OperationalError, DBAPIError) as exc:
            # Still ours until a standby takes over; the fence decides for every batch.
            log.warning("could not renew the capture lease %s: %s", self.name, exc)
            return True
        if not kept:
            self._lose(token)
        return kept

    def fence(self, session: Session) -> None:
        """Prove in ``session``'s transaction that this process still holds the lease.

        Call first thing in every capture batch's transaction.  Raises
        :class:`LeaseLost` if another process took the lease over (the caller's
        transaction must roll back); otherwise the lease row stays locked, and
        the lease extended, until that transaction ends.
        """
        token = self._token
        if token is None:
            raise LeaseLost(f"{self.name} is not held by {self.holder}")
        conn = session.connection()
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {self.ttl_ms}")
        if not self._extend(conn, token):
            self._lose(token)
            raise LeaseLost(f"{self.name} was taken over from {self.holder} (token {token})")

    def release(self) -> None:
        """Give the lease up now (graceful stop), so that a standby takes over at once."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(text("UPDATE capture_lease SET expires_at_ms = 0 "
                                  "WHERE name = :name AND token = :token"),
                             {"name": self.name, "token": token})
        except (OperationalError, DBAPIError) as exc:  # it expires on its own
            log.warning("could not release the capture lease %s: %s", self.name, exc)

    def _extend(self, conn, token: int) -> bool:
        row = conn.execute(text(
            f"UPDATE capture_lease SET expires_at_ms = {self._now} + :ttl, "
            f"renewed_at_ms = {self._now} WHERE name = :name AND token = :token RETURNING token"),
            {"ttl": self.ttl_ms, "name": self.name, "token": token}).first()
        return row is not None

    def _lose(self, token: int) -> None:
        with self._lock:
            if self._token == token:
                self._token = None
                log.warning("lost the capture lease %s (token %s): another router holds it",
                            self.name, token)


class LeasedCaptures:
    """The capture loops of one router process, each run only while its lease is held.

    ``start()`` runs the lease thread (renew what is held, look for what is
    not); ``run_forever()`` runs every capture in a thread of its own, each at its
    own pace (``run_due``), until stopped; ``run_once()`` runs one batch of every
    loop this process holds the lease of, each fenced by it; ``close()`` releases
    the leases.
    """

    def __init__(self, engine: Engine, loops: Iterable[Any], *, holder: str | None = None,
                 ttl_s: float = LEASE_TTL_S,
                 fast_poll_s: dict[str, float] | None = None) -> None:
        self.holder = holder or process_identity()
        self.fast_poll_s = dict(FAST_POLL_S if fast_poll_s is None else fast_poll_s)
        #: Per system: when its capture is due again, and when it last read changes.
        self._due: dict[str, float] = {}
        self._active: dict[str, float] = {}
        #: Per system: its runs that failed in a row, and the failure last logged.
        self._failures: dict[str, int] = {}
        self._failing: dict[str, str] = {}
        #: Per system: the lease token its loop last ran under.
        self._ran_under: dict[str, int | None] = {}
        self.loops = list(loops)
        self.leases = {loop.system: Lease(engine, lease_name(loop.system), self.holder, ttl_s)
                       for loop in self.loops}
        self.tick_s = min(RENEW_EVERY_S, ttl_s / 4)
        for loop in self.loops:
            loop.fence = self.leases[loop.system].fence
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> LeasedCaptures:
        for lease in self.leases.values():
            lease.try_acquire()
        self._thread = threading.Thread(target=self._keep, name="capture-lease", daemon=True)
        self._thread.start()
        return self

    def held(self) -> list[str]:
        """The systems this process captures now."""
        return [system for system, lease in self.leases.items() if lease.held]

    def run_once(self) -> int:
        """One batch of every capture this process holds; returns the changes read."""
        return sum(self._run(loop) or 0 for loop in self.loops
                   if self.leases[loop.system].held)

    def run_forever(self, stop: threading.Event, idle_poll_s: float,
                    moved: Callable[[], None] | None = None) -> None:
        """Run every capture in a thread of its own (``run_due``) until ``stop`` is set;
        ``moved()`` after each run that read changes (the relay's wake-up).

        One thread per ERP: a capture waiting on its feed (the cloud's HTTP API behind a
        busy server, a batch of echoes being recorded) never holds back another ERP's
        look at its own feed."""
        threads = [threading.Thread(target=self._pace, args=(loop, stop, idle_poll_s, moved),
                                    name=f"capture-{loop.system}", daemon=True)
                   for loop in self.loops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _pace(self, loop, stop: threading.Event, idle_poll_s: float,
              moved: Callable[[], None] | None) -> None:
        while not stop.is_set():
            try:
                read, wait_s = self.run_due(loop.system, idle_poll_s)
                if read and moved is not None:
                    moved()
            except Exception:  # the thread must outlive any one failure
                log.exception("capture of %s: unexpected failure", loop.system)
                wait_s = idle_poll_s
            if wait_s > 0:
                stop.wait(wait_s)

    def run_due(self, system: str, idle_poll_s: float) -> tuple[int, float]:
        """One batch of ``system``'s capture if this process holds it and it is due;
        returns the changes read and how long to wait before it is due again (0: at once).

        A capture that read changes is due again at once (a backlog drains without a
        pause); one that read none waits its fast interval (``FAST_POLL_S``) if it read
        changes within ``ACTIVE_WINDOW_S``, else ``idle_poll_s``; one that failed backs
        off (``idle_poll_s`` doubling per failure in a row, up to
        ``CAPTURE_BACKOFF_MAX_S``).  A standby looks again at ``idle_poll_s``."""
        if not self.leases[system].held:
            return 0, idle_poll_s
        due = self._due.get(system, 0.0)
        now = time.monotonic()
        if due > now:
            return 0, due - now
        loop = next(loop for loop in self.loops if loop.system == system)
        read = self._run(loop)
        now = time.monotonic()
        if read is None:
            failures = self._failures[system] = self._failures.get(system, 0) + 1
            self._due[system] = now + min(CAPTURE_BACKOFF_MAX_S,
                                          idle_poll_s * 2 ** min(failures - 1, 30))
            read = 0
        elif read:
            self._active[system] = now
            self._due[system] = now
        else:
            fast = self.fast_poll_s.get(system)
            recent = now - self._active.get(system, -ACTIVE_WINDOW_S) < ACTIVE_WINDOW_S
            self._due[system] = now + (min(fast, idle_poll_s) if fast and recent
                                       else idle_poll_s)
        return read, max(0.0, self._due[system] - time.monotonic())

    def _run(self, loop) -> int | None:
        """One batch of ``loop``: the changes read, or None if it failed."""
        system = loop.system
        token = self.leases[system].token
        if self._ran_under.get(system) != token:
            # Taken (again): another router may have moved the checkpoint meanwhile.
            forget = getattr(loop, "forget_checkpoint", None)
            if forget is not None:
                forget()
            self._ran_under[system] = token
        traced = stages.enabled()
        started = time.time() if traced else 0.0
        try:
            read = loop.run_once().read
        except LeaseLost as exc:
            log.warning("capture of %s stopped: %s", system, exc)
            return 0
        except Exception as exc:  # a feed that fails is retried, backing off
            # One line per state change (a new failure, then "works again"), not one per
            # try.  An unreachable ERP is routine; anything else is a bug and keeps its
            # traceback.
            failure = f"{type(exc).__name__}: {exc}"
            if self._failing.get(system) != failure:
                self._failing[system] = failure
                log.warning("capture from %s failed; retrying with backoff: %s", system,
                            failure, exc_info=not isinstance(exc, TechnicalError))
            return None
        if traced:
            stages.span("capture_run", started, time.time(), sys=system, n=read)
        self._failures.pop(system, None)
        if self._failing.pop(system, None) is not None:
            log.info("capture from %s works again", system)
        return read

    def close(self) -> None:
        """Stop the lease thread and release every lease held (a standby takes over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.tick_s * 5)
        for lease in self.leases.values():
            lease.release()

    def _keep(self) -> None:
        while not self._stop.wait(self.tick_s):
            for lease in self.leases.values():
                try:
                    lease.renew() if lease.held else lease.try_acquire()
                except Exception:  # the thread must outlive any one failure
                    log.exception("capture lease %s: unexpected failure", lease.name)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One capture lease as ``coexist status`` shows it."""

    name: str
    holder: str
    token: int
    #: ``held`` (not expired), ``expired`` (its holder stopped renewing) or ``released``.
    state: str
    #: Seconds until it expires (negative: since it expired); None once released.
    expires_in_s: float | None


def holders(engine: Engine) -> list[LeaseInfo]:
    """Which process holds which capture lease (read-only; empty before any router ran)."""
    now = _NOW_MS[engine.dialect.name]
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT name, holder, token, expires_at_ms, {now} FROM capture_lease ORDER BY name"
        )).all()
    out = []
    for name, holder, token, expires, now_ms in rows:
        if expires == 0:
            out.append(LeaseInfo(name, holder, int(token), "released", None))
        else:
            left = (int(expires) - int(now_ms)) / 1000
            out.append(LeaseInfo(name, holder, int(token), "held" if left > 0 else "expired",
                                 left))
    return out
