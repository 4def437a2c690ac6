"""Delivering queued webhook messages: signed POSTs, retries, lanes, disables, dead letters.

The scheduler is the ``portal_delivery`` table: a row is due when its
``next_attempt_at`` has passed.  ``Dispatcher.run_once`` claims due rows (a
wall-clock lease, so a crashed dispatcher's claims run out and another takes
them) and hands them to a thread pool, never more than ``per_endpoint`` in
flight per endpoint: each endpoint is its own lane, so one slow or dead
receiver holds at most that many threads (each for at most the 15 s timeout)
while every other endpoint's messages keep flowing.

Per attempt (every one is a ``portal_attempt`` row):

* 2xx: delivered; the endpoint's run of failures ends.
* 410 Gone: the receiver asked to stop; the endpoint is disabled (audited) and
  its waiting messages end in the exception store.
* anything else (429, 5xx, other 4xx, timeout, refused connection): retried on
  ``SCHEDULE_S`` (Svix's schedule) with +/- ``JITTER`` jitter; a ``Retry-After``
  on 429/5xx is honoured when it asks for longer.  After the last attempt the
  message ends in the exception store (``coexist dlq list``), replayable with
  ``coexist dlq replay`` (the ``portal_redeliver`` actor puts it back on the
  schedule).
* an endpoint failing without a success for ``DISABLE_AFTER_FAILING_S`` is
  disabled with an operator notice (``notices``; shown by ``coexist status``).

Scheduling decisions take ``now`` (tests pass it; nothing sleeps); the
``webhook-timestamp`` of an attempt is always the wall clock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from sqlalchemy import Engine, bindparam, func, insert, or_, select, update

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from workers.portal import signing
from workers.portal.endpoints import EndpointError, EndpointRegistry, PortalEndpoint
from workers.portal.store import ATTEMPT, DELIVERED, DELIVERY, FAILED, PENDING, utc

log = logging.getLogger(__name__)

#: Delay before attempt n+1 (index n), as Svix: immediately, 5 s, 5 min, 30 min, 2 h, 5 h,
#: 10 h, 10 h.  Eight attempts over about 27.5 hours.
SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
#: Each delay is multiplied by a factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: Longest Retry-After honoured (a receiver asking for more gets the schedule's last step).
MAX_RETRY_AFTER_S = 36000.0
#: One attempt's whole HTTP exchange.
DELIVERY_TIMEOUT_S = 15.0
#: An endpoint failing without a single success for this long is disabled.
DISABLE_AFTER_FAILING_S = 5 * 24 * 3600.0
#: Deliveries in flight per endpoint (its lane) and in the whole pool.
PER_ENDPOINT_IN_FLIGHT = 2
POOL_THREADS = 16
#: Messages of one endpoint a lane slot takes per claim (``coexist portal deliver``; the
#: Dispatcher's own default is 1).  The slot POSTs them one after another on its kept-alive
#: connection and records the successes in one transaction; it stops at the first attempt
#: that does not succeed and gives the rest back (unattempted).  With one message per slot
#: each delivery paid a claim round (the audit-mark read, the due read, the leasing UPDATE)
#: and a commit of its own in a lane of two: ~20-36 deliveries/s to one endpoint, measured
#: with py-spy --idle (the loop spent half its time waiting for a lane slot, the rest in the
#: claim's statements; the attempt threads in the success commit and the POST).
SLOT_BATCH = 8
#: Longest a dispatcher signs with the endpoints and secrets it read (changes made through
#: the registry are seen on the next round: each is an audit row).
ENDPOINT_REFRESH_S = 1.0
#: Margin of a claim's lease beyond the attempt's timeout.
LEASE_MARGIN_S = 15.0

#: The actor and queue a replayed dead letter goes to (``coexist dlq replay``).
REDELIVER_ACTOR = "portal_redeliver"
REDELIVER_QUEUE = "coexist.portal.redeliver"
#: Who the registry names for automatic disables.
SYSTEM_ACTOR = "coexist"


def next_delay_s(attempts_made: int, retry_after_s: float | None,
                 rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones; ``None``: give up."""
    if attempts_made >= len(SCHEDULE_S):
        return None
    base = SCHEDULE_S[attempts_made]
    delay = base * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def retry_after_s(response: httpx.Response, now: datetime) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), if the response has one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


@dataclass(frozen=True, slots=True)
class Claim:
    id: int
    endpoint_id: int
    webhook_id: str
    event_type: str
    domain: str
    object_key: str
    body: str
    attempts: int
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class Notice:
    """Something about an endpoint an operator should see (``coexist status``)."""

    endpoint_id: int
    customer_key: str
    url: str
    #: disabled, failing.
    state: str
    detail: str
    failed_deliveries: int


def redeliver_message_id(delivery_id: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"coexist:portal-delivery:{delivery_id}"))


class Dispatcher:
    """Attempts due webhook deliveries, endpoint by endpoint in parallel lanes."""

    def __init__(self, engine: Engine, registry: EndpointRegistry, exceptions: ExceptionStore,
                 *, http: httpx.Client | None = None, timeout_s: float = DELIVERY_TIMEOUT_S,
                 per_endpoint: int = PER_ENDPOINT_IN_FLIGHT, threads: int = POOL_THREADS,
                 rng: random.Random | None = None,
                 wall: Callable[[], float] = time.time,
                 lease_margin_s: float = LEASE_MARGIN_S, batch: int = 1) -> None:
        self.engine = engine
        #: Messages per lane slot and claim (see ``SLOT_BATCH``).
        self.batch = max(1, batch)
        self.registry = registry
        self.exceptions = exceptions
        self.timeout_s = timeout_s
        self.lease_margin_s = lease_margin_s
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False,
            headers={"User-Agent": "coexist-webhooks", "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=threads * 2,
                                max_keepalive_connections=threads * 2))
        self.per_endpoint = per_endpoint
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self.threads = threads
        self.rng = rng or random.Random()
        self.wall = wall
        self._lock = threading.Lock()
        #: Active endpoints and their signing secrets as last read: (audit mark, wall
        #: time read, {endpoint id: (endpoint, secrets)}); see ``_endpoints``.
        self._view: tuple[int | None, float, dict[int, tuple]] | None = None
        self._in_flight: Counter[int] = Counter()
        self._futures: set[Future] = set()
        #: Set when an attempt finishes: a loop with attempts in flight claims again at once
        #: instead of sleeping its poll interval.  Sleeping it capped a dispatcher at
        #: threads / poll_s deliveries a second when every thread was busy (20/s with 4
        #: threads), and one endpoint at per_endpoint / poll_s (10/s) when its lane was full
        #: with threads free: the freed slot waited out the interval.
        self._freed = threading.Event()
        # Group commit of successes: attempts finishing together share one transaction.
        self._delivered: list[tuple] = []
        self._delivered_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    # ------------------------------------------------------------------ loop

    def run_once(self, now: datetime | None = None) -> int:
        """Claim what is due at ``now`` (lanes permitting) and start it; returns how many."""
        now = now or datetime.now(UTC)
        with self._lock:
            free = self.threads - sum(self._in_flight.values())
        if free <= 0:
            return 0
        started = 0
        for slot in self._claim_slots(now, free):
            endpoint_id = slot[0].endpoint_id
            with self._lock:
                self._in_flight[endpoint_id] += 1
            if len(slot) == 1:
                future = self.pool.submit(self._attempt_safely, slot[0], now)
            else:
                future = self.pool.submit(self._attempt_slot, slot, now)
            with self._lock:
                self._futures.add(future)
            future.add_done_callback(self._done(endpoint_id))
            started += len(slot)
        return started

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Block until every started attempt finished; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = list(self._futures)
            if not pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            futures_wait(pending, timeout=remaining)

    def run_forever(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        while not stop.is_set():
            self._freed.clear()
            if self.run_once():
                continue
            with self._lock:
                busy = sum(self._in_flight.values()) > 0
            if busy:
                # Nothing claimable now, but attempts are in flight: a full lane or a full
                # pool frees a slot when one finishes, so claim again then (the poll
                # interval still bounds the wait, so ``stop`` and new messages are seen).
                self._freed.wait(poll_s)
            else:
                stop.wait(poll_s)
        self.wait(self.timeout_s + 5)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.http.close()

    def in_flight(self, endpoint_id: int) -> int:
        with self._lock:
            return self._in_flight[endpoint_id]

    def _done(self, endpoint_id: int):
        def done(future: Future) -> None:
            with self._lock:
                self._in_flight[endpoint_id] -= 1
                self._futures.discard(future)
            self._freed.set()
        return done

    # ------------------------------------------------------------------ claiming

    def _claim(self, now: datetime, limit: int) -> list[Claim]:
        """Claim what is due at ``now`` in at most ``limit`` lane slots (flattened)."""
        return [c for slot in self._claim_slots(now, limit) for c in slot]

    def _lease(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC) + timedelta(
            seconds=self.timeout_s + self.lease_margin_s)

    def _claim_slots(self, now: datetime, limit: int) -> list[list[Claim]]:
        """Claim what is due at ``now`` for at most ``limit`` lane slots, each up to
        ``batch`` messages of one endpoint, lanes permitting (``per_endpoint`` slots)."""
        wall_now = datetime.fromtimestamp(self.wall(), UTC)
        lease = wall_now + timedelta(seconds=self.timeout_s + self.lease_margin_s)
        with self._lock:
            busy = dict(self._in_flight)
        active = set(self._endpoints())
        if not active:
            return []
        due = (select(DELIVERY.c.id, DELIVERY.c.endpoint_id)
               .where(DELIVERY.c.status == PENDING, DELIVERY.c.next_attempt_at <= now,
                      DELIVERY.c.endpoint_id.in_(active),
                      or_(DELIVERY.c.lease_until.is_(None), DELIVERY.c.lease_until < wall_now))
               .order_by(DELIVERY.c.next_attempt_at, DELIVERY.c.id)
               .limit(limit * max(8, self.batch * self.per_endpoint)))
        # Read what is due without the write lock (SQLite has one): most rounds find nothing.
        with self.engine.connect() as conn:
            rows = conn.execute(due).all()
        if not rows:
            return []
        # Pick within the lanes first, then take them all in one statement: an UPDATE per
        # row plus a SELECT per row held the write lock for 2 statements per delivery.
        chosen: list[int] = []
        slots: list[list[int]] = []
        filling: dict[int, list[int]] = {}  # endpoint -> its slot still taking messages
        for row in rows:
            slot = filling.get(row.endpoint_id)
            if slot is not None and len(slot) < self.batch:
                slot.append(row.id)
                chosen.append(row.id)
                continue
            if len(slots) >= limit:
                if all(len(s) >= self.batch for s in filling.values()):
                    break
                continue
            if busy.get(row.endpoint_id, 0) >= self.per_endpoint:
                continue
            busy[row.endpoint_id] = busy.get(row.endpoint_id, 0) + 1
            slot = filling[row.endpoint_id] = [row.id]
            slots.append(slot)
            chosen.append(row.id)
        if not chosen:
            return []
        # Only rows still pending and unleased are taken (another dispatcher may have
        # claimed one since the read); RETURNING names exactly the rows this one took.
        take = (update(DELIVERY)
                .where(DELIVERY.c.id.in_(chosen), DELIVERY.c.status == PENDING,
                       or_(DELIVERY.c.lease_until.is_(None), DELIVERY.c.lease_until < wall_now))
                .values(lease_until=lease)
                .returning(DELIVERY.c.id, DELIVERY.c.endpoint_id, DELIVERY.c.webhook_id,
                           DELIVERY.c.event_type, DELIVERY.c.domain, DELIVERY.c.object_key,
                           DELIVERY.c.body, DELIVERY.c.attempts, DELIVERY.c.correlation_id))
        with self.engine.begin() as conn:
            taken = {r.id: r for r in conn.execute(take)}
        out = []
        for slot in slots:
            claims = [Claim(r.id, r.endpoint_id, r.webhook_id, r.event_type, r.domain,
                            r.object_key, r.body, r.attempts, r.correlation_id)
                      for r in (taken[i] for i in slot if i in taken)]
            if claims:
                out.append(claims)
        return out

    def _endpoints(self) -> dict[int, tuple]:
        """Active endpoints with their signing secrets, read again when an endpoint changed
        (every change is an audit row: add, disable, enable, rotate-secret, auto-disable),
        when this dispatcher marked one failing or healthy, and at least every
        ``ENDPOINT_REFRESH_S`` (secrets leave their overlap by time): not on every round."""
        from workers.portal.endpoints import PortalAudit

        audit = PortalAudit.__table__
        with self.engine.connect() as conn:
            mark = conn.execute(select(func.max(audit.c.id))).scalar_one()
        wall = self.wall()
        with self._lock:
            view = self._view
        if view is not None and view[0] == mark and 0 <= wall - view[1] < ENDPOINT_REFRESH_S:
            return view[2]
        wall_now = datetime.fromtimestamp(wall, UTC)
        fresh = {e.id: (e, self.registry.secrets(e.id, wall_now))
                 for e in self.registry.list() if e.active}
        with self._lock:
            self._view = (mark, wall, fresh)
        return fresh

    def _forget_endpoints(self) -> None:
        with self._lock:
            self._view = None

    # ------------------------------------------------------------------ one attempt

    def _attempt_safely(self, claim: Claim, now: datetime) -> None:
        try:
            self.attempt(claim, now)
        except Exception:  # the lease runs out and the row is tried again
            log.exception("webhook delivery %s to endpoint %s could not be recorded",
                          claim.webhook_id, claim.endpoint_id)

    def _attempt_slot(self, slot: list[Claim], now: datetime) -> None:
        """One lane slot's messages (one endpoint), one after another; successes are
        recorded together at the end.  The first attempt that does not succeed (or cannot
        be made) ends the slot: the messages after it go back unattempted.  A slot that
        would outlive its lease renews the lease of the messages it still holds."""
        delivered: list[tuple] = []
        lease_until = self.wall() + self.timeout_s + self.lease_margin_s
        done = 0
        try:
            for claim in slot:
                if done and self.wall() + self.timeout_s + 1 >= lease_until:
                    lease_until = self._renew(slot[done:])
                try:
                    outcome = self.attempt(claim, now, deferred=delivered)
                except Exception:  # the lease runs out and the row is tried again
                    log.exception("webhook delivery %s to endpoint %s could not be recorded",
                                  claim.webhook_id, claim.endpoint_id)
                    outcome = "error"
                done += 1
                if outcome != "delivered":
                    break
        finally:
            try:
                if delivered:
                    self._record_delivered_all(delivered)
                if done < len(slot):
                    self._release_all(slot[done:])
            except Exception:  # the leases run out and the rows are tried again
                log.exception("webhook deliveries to endpoint %s could not be recorded",
                              slot[0].endpoint_id)

    def _renew(self, claims: list[Claim]) -> float:
        lease = self._lease()
        with self.engine.begin() as conn:
            conn.execute(update(DELIVERY).where(DELIVERY.c.id.in_([c.id for c in claims]),
                                                DELIVERY.c.status == PENDING)
                         .values(lease_until=lease))
        return lease.timestamp()

    def _release_all(self, claims: list[Claim]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(DELIVERY).where(DELIVERY.c.id.in_([c.id for c in claims]),
                                                DELIVERY.c.status == PENDING)
                         .values(lease_until=None))

    def attempt(self, claim: Claim, now: datetime, *, deferred: list | None = None) -> str:
        """POST one claimed message and record what happened; returns the outcome.  With
        ``deferred``, a success is appended to it for the caller to record
        (``_record_delivered_all``) instead of being recorded here."""
        with self._lock:
            held = self._view[2].get(claim.endpoint_id) if self._view is not None else None
        if held is None:
            endpoint, secrets = self.registry.get(claim.endpoint_id), None
        else:
            endpoint, secrets = held
        if not endpoint.active:
            self._release(claim)
            return "skipped"
        body = claim.body.encode()
        timestamp = int(self.wall())
        if secrets is None:
            secrets = self.registry.secrets(endpoint.id)
        head = signing.headers(secrets, claim.webhook_id, timestamp, body)
        if claim.correlation_id:
            head["X-Correlation-Id"] = claim.correlation_id
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        wait_hint: float | None = None
        try:
            response = self.http.post(endpoint.url, content=body, headers=head)
            status = response.status_code
            if status == 429 or status >= 500:
                wait_hint = retry_after_s(response, now)
        except httpx.TimeoutException:
            error = f"timeout after {self.timeout_s:g} s"
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = int((time.monotonic() - started) * 1000)
        attempt_no = claim.attempts + 1
        if status is not None and 200 <= status < 300:
            healthy = endpoint.failing_since is not None
            if deferred is not None:
                deferred.append((claim, attempt_no, now, status, duration_ms, healthy))
            else:
                self._record_delivered(claim, attempt_no, now, status, duration_ms,
                                       healthy=healthy)
            return "delivered"
        if status == 410:
            reason = f"receiver answered 410 Gone to {claim.webhook_id}"
            self._finish(claim, attempt_no, now, status, "410 Gone", duration_ms, "gone")
            # Disabled before the dead letter is recorded: whoever sees the exception record
            # (an operator, a replay) sees the endpoint already disabled, as its message says.
            self.disable(endpoint.id, reason, action="auto-disable")
            self._dead_letter(claim, attempt_no, "WebhookEndpointGone",
                              f"{endpoint.url} answered 410 Gone; endpoint {endpoint.id} "
                              "disabled", "business")
            return "gone"
        error = error or f"HTTP {status}"
        delay = next_delay_s(attempt_no, wait_hint, self.rng)
        if delay is None:
            self._finish(claim, attempt_no, now, status, error, duration_ms, "failed")
            self._dead_letter(claim, attempt_no, "WebhookDeliveryFailed",
                              f"{attempt_no} attempts to {endpoint.url} failed; last: {error}",
                              "technical")
            outcome = "failed"
        else:
            self._retry(claim, attempt_no, now, status, error, duration_ms,
                        now + timedelta(seconds=delay))
            outcome = "retry"
        self._failing(endpoint.id, now)
        return outcome

    # ------------------------------------------------------------------ recording

    def _release(self, claim: Claim) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(DELIVERY).where(DELIVERY.c.id == claim.id)
                         .values(lease_until=None))

    def _log(self, conn, claim: Claim, attempt_no: int, now: datetime, status: int | None,
             error: str | None, duration_ms: int, outcome: str,
             next_at: datetime | None) -> None:
        conn.execute(insert(ATTEMPT).values(
            delivery_id=claim.id, endpoint_id=claim.endpoint_id, attempt_no=attempt_no, at=now,
            status_code=status, error=error, duration_ms=duration_ms, outcome=outcome,
            next_attempt_at=next_at))

    def _finish(self, claim: Claim, attempt_no: int, now: datetime, status: int | None,
                error: str | None, duration_ms: int, outcome: str, *,
                healthy: bool = False) -> None:
        with self.engine.begin() as conn:
            if healthy:  # the endpoint's run of failures ends with this success
                t = PortalEndpoint.__table__
                conn.execute(update(t).where(t.c.id == claim.endpoint_id)
                             .values(failing_since=None))
            self._log(conn, claim, attempt_no, now, status, error, duration_ms, outcome, None)
            conn.execute(update(DELIVERY).where(DELIVERY.c.id == claim.id).values(
                status=DELIVERED if outcome == "delivered" else FAILED, attempts=attempt_no,
                last_status=status, last_error=error, lease_until=None, finished_at=now))

    def _record_delivered(self, claim: Claim, attempt_no: int, now: datetime, status: int,
                          duration_ms: int, *, healthy: bool) -> None:
        """Record a success; returns once it is committed.  Successes finishing while
        another thread commits are committed together by the next one (group commit), so
        16 threads delivering do not queue for the state database's write lock one by one
        (SQLite has one)."""
        self._record_delivered_all([(claim, attempt_no, now, status, duration_ms, healthy)])

    def _record_delivered_all(self, entries: list[tuple]) -> None:
        """``_record_delivered`` for several successes (claim, attempt_no, now, status,
        duration_ms, healthy); returns once they are committed."""
        with self._delivered_lock:
            self._delivered.extend(entries)
        with self._commit_lock:
            with self._delivered_lock:
                batch, self._delivered = self._delivered, []
            if not batch:
                return  # a thread that committed before this one took this success along
            t = PortalEndpoint.__table__
            with self.engine.begin() as conn:
                conn.execute(insert(ATTEMPT), [
                    {"delivery_id": c.id, "endpoint_id": c.endpoint_id, "attempt_no": n,
                     "at": at, "status_code": code, "error": None, "duration_ms": ms,
                     "outcome": "delivered", "next_attempt_at": None}
                    for c, n, at, code, ms, _h in batch])
                # One UPDATE executed for the whole batch (executemany), not one per row.
                conn.execute(
                    update(DELIVERY).where(DELIVERY.c.id == bindparam("b_id")).values(
                        status=DELIVERED, attempts=bindparam("b_attempts"),
                        last_status=bindparam("b_status"), last_error=None,
                        lease_until=None, finished_at=bindparam("b_at")),
                    [{"b_id": c.id, "b_attempts": n, "b_status": code, "b_at": at}
                     for c, n, at, code, _ms, _h in batch])
                healed = {c.endpoint_id for c, *_rest, h in batch if h}
                for endpoint_id in healed:
                    conn.execute(update(t).where(t.c.id == endpoint_id)
                                 .values(failing_since=None))
            if healed:
                self._forget_endpoints()

    def _retry(self, claim: Claim, attempt_no: int, now: datetime, status: int | None,
               error: str, duration_ms: int, next_at: datetime) -> None:
        with self.engine.begin() as conn:
            self._log(conn, claim, attempt_no, now, status, error, duration_ms, "retry",
                      next_at)
            conn.execute(update(DELIVERY).where(DELIVERY.c.id == claim.id).values(
                attempts=attempt_no, last_status=status, last_error=error, lease_until=None,
                next_attempt_at=next_at))

    def _failing(self, endpoint_id: int, now: datetime) -> None:
        t = PortalEndpoint.__table__
        with self.engine.begin() as conn:
            marked = conn.execute(update(t).where(t.c.id == endpoint_id,
                                                  t.c.failing_since.is_(None))
                                  .values(failing_since=now)).rowcount
        if marked:
            self._forget_endpoints()
        with self.engine.connect() as conn:
            since = utc(conn.execute(select(t.c.failing_since).where(t.c.id == endpoint_id))
                        .scalar_one())
        if since is not None and (now - since).total_seconds() >= DISABLE_AFTER_FAILING_S:
            days = DISABLE_AFTER_FAILING_S / 86400
            self.disable(endpoint_id, f"failing without a success since "
                                      f"{since.isoformat(timespec='seconds')} ({days:g} days)",
                         action="auto-disable")

    def disable(self, endpoint_id: int, reason: str, *, action: str = "disable",
                actor: str = SYSTEM_ACTOR) -> int:
        """Disable an endpoint (audited) and move its waiting messages to the exception store."""
        self.registry.disable(endpoint_id, actor=actor, reason=reason, action=action)
        return fail_waiting(self.engine, self.exceptions, endpoint_id,
                            f"endpoint {endpoint_id} disabled: {reason}")

    def _dead_letter(self, claim: Claim, attempts: int, error_type: str, message: str,
                     failure_class: str) -> None:
        dead_letter(self.exceptions, claim, attempts, error_type, message, failure_class)


def dead_letter(exceptions: ExceptionStore, claim: Claim, attempts: int, error_type: str,
                message: str, failure_class: str) -> None:
    """Record a delivery that will not be attempted again, replayable from ``coexist dlq``."""
    env = new_envelope(
        domain=claim.domain, kind="webhook_redeliver", key=claim.object_key,
        payload={"delivery_id": claim.id, "endpoint_id": claim.endpoint_id,
                 "webhook_id": claim.webhook_id, "event_type": claim.event_type},
        source_system="portal", source_version=0,
        message_id=redeliver_message_id(claim.id),
        correlation_id=claim.correlation_id or redeliver_message_id(claim.id))
    envelope = env.model_dump(mode="json")
    exceptions.record(
        failure_class=failure_class, queue_name=REDELIVER_QUEUE, actor_name=REDELIVER_ACTOR,
        message_id=env.message_id, envelope=envelope, raw=None,
        message={"queue_name": REDELIVER_QUEUE, "actor_name": REDELIVER_ACTOR,
                 "args": [envelope], "kwargs": {}, "options": {},
                 "message_id": env.message_id,
                 "message_timestamp": int(time.time() * 1000)},
        error_type=error_type, error_message=message,
        call_site="workers.portal.delivery.Dispatcher.attempt", attempts=attempts)


def fail_waiting(engine: Engine, exceptions: ExceptionStore, endpoint_id: int,
                 reason: str) -> int:
    """Every pending message of an endpoint -> failed + an exception record; returns how many."""
    with engine.connect() as conn:
        rows = conn.execute(select(DELIVERY).where(DELIVERY.c.endpoint_id == endpoint_id,
                                                   DELIVERY.c.status == PENDING)).all()
    for row in rows:
        claim = Claim(row.id, row.endpoint_id, row.webhook_id, row.event_type, row.domain,
                      row.object_key, row.body, row.attempts, row.correlation_id)
        dead_letter(exceptions, claim, row.attempts, "WebhookEndpointDisabled", reason,
                    "business")
        with engine.begin() as conn:
            conn.execute(update(DELIVERY).where(DELIVERY.c.id == row.id,
                                                DELIVERY.c.status == PENDING)
                         .values(status=FAILED, last_error=reason, lease_until=None,
                                 finished_at=datetime.now(UTC)))
    return len(rows)


def redeliver(envelope_payload: dict, engine: Engine, registry: EndpointRegistry,
              now: datetime | None = None) -> str:
    """Put a failed delivery back on the schedule (the ``portal_redeliver`` actor's handler).

    Attempts start again from the first step of the schedule; the message keeps its
    ``webhook-id`` and body.  Refused (a ``BusinessError``) while the endpoint is disabled.
    """
    delivery_id = int(envelope_payload["delivery_id"])
    with engine.connect() as conn:
        row = conn.execute(select(DELIVERY).where(DELIVERY.c.id == delivery_id)).first()
    if row is None:
        raise EndpointError(f"no webhook delivery {delivery_id} to replay")
    endpoint = registry.get(row.endpoint_id)
    if not endpoint.active:
        raise EndpointError(
            f"endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); enable it "
            f"(`coexist portal endpoint enable {endpoint.id}`) and replay again")
    if row.status == DELIVERED:
        return "already delivered"
    with engine.begin() as conn:
        conn.execute(update(DELIVERY).where(DELIVERY.c.id == delivery_id).values(
            status=PENDING, attempts=0, lease_until=None, finished_at=None,
            next_attempt_at=now or datetime.now(UTC)))
    return "rescheduled"


def notices(engine: Engine) -> list[Notice]:
    """Disabled and failing endpoints, with their failed deliveries (for ``coexist status``)."""
    t = PortalEndpoint.__table__
    with engine.connect() as conn:
        failed = dict(conn.execute(
            select(DELIVERY.c.endpoint_id, func.count()).where(DELIVERY.c.status == FAILED)
            .group_by(DELIVERY.c.endpoint_id)).all())
        rows = conn.execute(select(t).where(or_(
            t.c.status != "active", t.c.failing_since.is_not(None)))
            .order_by(t.c.id)).all()
    out = []
    for r in rows:
        if r.status != "active":
            state, detail = "disabled", r.disabled_reason or ""
        else:
            state = "failing"
            detail = f"failing since {utc(r.failing_since).isoformat(timespec='seconds')}"
        out.append(Notice(r.id, r.customer_key, r.url, state, detail, int(failed.get(r.id, 0))))
    return out
