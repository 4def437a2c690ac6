"""The CRM channel in the production processes: the outbound consumer and the feed poller.

Outbound (``channel_handler(app)``, registered for the subscription ``crm``): the
router's canonical events of ``coexist.channel.crm`` go to ``sync_outbound`` (one
sObject Collections request per object per 200 records), and each envelope's result
decides what happens to its message:

* ``synced`` / ``stale`` (never regress) / ``skipped`` / ``refused`` (already in the
  exception store, replayable): acked;
* ``retry`` (row lock, parent not in the CRM yet, CRM unavailable): in a batch
  (``CrmConsumer.many``) only those records are left to the per-message path and the
  rest settle with the batch; there, alone, ``CrmRetryLater`` is raised, a technical
  error, so the bus's failure middleware retries that delivery with backoff and records
  it as technical once the retries are spent (a batch of which nothing was written, the
  CRM unavailable, raises it too: each message then goes alone);
* ``paused`` (403 ``REQUEST_LIMIT_EXCEEDED``, or the client-side budget reserve reached):
  the channel is paused until a time (the ``crm_channel`` row, seen by every process and
  by ``coexist status``), and the message is re-queued with a delay, without counting an
  attempt; while the pause lasts, messages are re-queued without calling the CRM.

A customer written onto its CRM account completes the onboarding that created it from
that account (``crm_onboarding.completed_at``, one statement per delivery): its number is
in the CRM; the onboarding time (``workers.crm.status.onboarding_time``) ends there.

Idempotent in effect: the CRM's own rule that ``Coexist_Version__c`` never goes down
(``Stale`` for an older version; the same version is the same content) makes a
redelivery, a deferred copy or a replayed batch a no-op, so the consumer does not use
the inbox (whose "seen" mark would drop a deferred copy that shares its message id).

Inbound (``CrmPoller``): one thread per process that runs the channel calls
``poll_inbound`` every ``[crm] poll_interval_s`` under a lease (``crm.inbound``,
``workers.router.lease``), whose fence is taken in the same transaction that commits
the commands and the feed checkpoint: two pollers never both commit one batch (the
checkpoint's compare-and-set guards that too), and only the lease holder polls.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import dramatiq
from prometheus_client import Counter
from sqlalchemy import Engine

from bus.envelope import Envelope
from bus.errors import TechnicalError
from coexistence.canonical import CanonicalRecord, Customer, decode
from coexistence.crm import onboarding
from coexistence.crm.ports import ApiBudget, Crm, CrmPaused, CrmUnavailable, ReplayExpired
from coexistence.errors import TranslationError
from coexistence.router import placement
from workers.crm import handlers, state
from workers.crm.handlers import Outcome, Result
from workers.crm.reports import CRM_QUEUE, OUTBOUND_ACTOR, ExceptionStoreReports, Reports
from workers.router import queues

if TYPE_CHECKING:
    from workers.bootstrap import App

log = logging.getLogger("coexist.crm")

#: Longest delay of one re-queue while the channel is paused, in seconds: a delayed
#: message on RabbitMQ is held unacked by a worker until it is due, which must stay
#: well below the broker's consumer timeout; a longer pause re-queues again.
MAX_DEFER_S = 60.0
#: How long a consumer trusts its last read of the channel's pause row, in seconds (a pause
#: set by another process is seen within this), and how often it writes the API budget.
STATE_READ_S = 1.0
BUDGET_WRITE_S = 5.0
#: The inbound poller's lease, and how long a silent holder keeps it from the others.
INBOUND_LEASE = "crm.inbound"
INBOUND_LEASE_TTL_S = 10.0
#: How long every customer delivery waits while an onboarded customer's number is not
#: recorded yet (``CrmConsumer._onboarded_first``), in seconds; past it only the
#: customers that may be that create's wait (until the number is known, however long:
#: a poller down that long), and the others are shown.
PENDING_HOLD_S = 120.0
#: How soon a held customer delivery looks again, in seconds.
PENDING_RECHECK_S = 1.0
#: How old a pending create must be before a consumer asks the SoR itself which customer
#: it made (``CrmConsumer._resolve``), in seconds: the poller records the number within
#: milliseconds of the SoR's answer, so before this the two would ask the SoR together.
PENDING_RESOLVE_S = 10.0

DEFERRED = Counter("coexist_crm_deferred_total",
                   "CRM channel messages re-queued while the channel is paused")
PAUSES = Counter("coexist_crm_pauses_total", "Times the CRM channel paused (API budget)")
RETRIED_ALONE = Counter("coexist_crm_retried_alone_total",
                        "CRM records of a batch the CRM did not take now (row lock), "
                        "left to the per-message path while the rest settled")


class CrmRetryLater(TechnicalError):
    """Some records of the delivery could not be written now; the bus retries it.

    The records of the delivery that were written show again at the same version on the
    retry (the CRM's version rule makes that a no-op)."""


class CrmConsumer:
    """``sync_outbound`` for a delivery of one envelope or a batch (see the module doc)."""

    def __init__(self, *, crm: Callable[[], Crm], engine: Engine, reports: Reports,
                 defer: Callable[[Envelope, float], None], pause_s: float = 60.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 created_by: CreatedBy | None = None):
        self._crm, self.engine, self.reports = crm, engine, reports
        self.created_by = created_by
        self.defer, self.pause_s, self.clock = defer, pause_s, clock
        self._lock = threading.Lock()
        self._until: datetime | None = None
        self._read_at: datetime | None = None
        self._budget_at: datetime | None = None

    def _paused_until(self, now: datetime) -> datetime | None:
        """The pause's end as last read (at most ``STATE_READ_S`` old)."""
        with self._lock:
            if self._read_at is None or (now - self._read_at).total_seconds() >= STATE_READ_S:
                row = state.channel_state(self.engine)
                self._until = state._aware(row.paused_until) if row and row.paused_until \
                    else None
                self._read_at = now
            return self._until

    def __call__(self, delivery: Envelope | Sequence[Envelope]) -> list[Result]:
        """Results of ``delivery``; raises ``CrmRetryLater`` when a record must be tried
        again (the per-message path: the bus retries that delivery)."""
        results = self._sync(delivery)
        retry = [r for r in results if r.outcome is Outcome.RETRY]
        if retry:
            codes = sorted({r.code or "RETRY" for r in retry})
            raise CrmRetryLater(f"{len(retry)} of {len(results)} CRM record(s) not written "
                                f"now ({', '.join(codes)}): {retry[0].detail}")
        return results

    def many(self, envelopes: Sequence[Envelope]) -> list[int]:
        """A batch delivery (``workers.router.actors``): the positions in ``envelopes`` of
        the records the CRM did not take now (a row lock, a parent not there yet), left to
        the per-message path, where each is retried alone with the bus's backoff and
        failure classes; every other message settles with the batch.  When no record of
        the delivery was written (the CRM unavailable), raises ``CrmRetryLater``: the
        batch consumer then sends each alone, as for any failed batch."""
        results = self._sync(envelopes)
        retry = {r.message_id for r in results if r.outcome is Outcome.RETRY}
        if not retry:
            return []
        if all(r.outcome is Outcome.RETRY for r in results):
            codes = sorted({r.code or "RETRY" for r in results})
            raise CrmRetryLater(f"none of {len(results)} CRM record(s) written now "
                                f"({', '.join(codes)}): {results[0].detail}")
        RETRIED_ALONE.inc(len(retry))
        return [i for i, e in enumerate(envelopes) if e.message_id in retry]

    def _sync(self, delivery: Envelope | Sequence[Envelope]) -> list[Result]:
        envelopes = [delivery] if isinstance(delivery, Envelope) else list(delivery)
        if not envelopes:
            return []
        now = self.clock()
        until = self._paused_until(now)
        if until is not None and until > now:
            self._defer_all(envelopes, until - now)
            return [Result(e.message_id, Outcome.PAUSED, f"channel paused until {until}")
                    for e in envelopes]
        crm = self._crm()
        held = self._onboarded_first(crm, envelopes, now)
        if held:
            # Re-queued with a short delay (not a failure, no retry attempt counted), as
            # a pause holds them; the rest of the delivery goes on.
            self._defer_all([e for e in envelopes if e.message_id in held],
                            timedelta(seconds=PENDING_RECHECK_S))
            envelopes = [e for e in envelopes if e.message_id not in held]
            if not envelopes:
                return [Result(m, Outcome.PAUSED, "waiting for an onboarded customer's "
                               "number from the SoR", "ONBOARDING_PENDING") for m in held]
        results = handlers.sync_outbound(envelopes, crm=crm, reports=self.reports)
        budget = _budget(crm)
        paused = [(e, r) for e, r in zip(envelopes, results, strict=True)
                  if r.outcome is Outcome.PAUSED]
        if paused:
            until = now + timedelta(seconds=self.pause_s)
            first = paused[0][1]
            reason = f"{first.code}: {first.detail}" if first.code else first.detail
            state.pause(self.engine, until, reason, budget)
            with self._lock:
                self._until, self._read_at = until, now
            PAUSES.inc()
            log.warning("CRM channel paused until %s: %s", until.isoformat(), reason)
            self._defer_all([e for e, _ in paused], until - now)
        else:
            if until is not None:  # a pause that ran out, and the CRM took the request
                state.resume(self.engine)
                with self._lock:
                    self._until = None
            if budget is not None and (self._budget_at is None or (
                    now - self._budget_at).total_seconds() >= BUDGET_WRITE_S):
                self._budget_at = now
                state.note_budget(self.engine, budget)
        shown = [e.key for e, r in zip(envelopes, results, strict=True)
                 if r.outcome is Outcome.SYNCED and e.domain == "customer"]
        state.note_shown(self.engine, shown, now)
        if held:
            results = [*results, *(Result(m, Outcome.PAUSED, "waiting for an onboarded "
                                          "customer's number from the SoR",
                                          "ONBOARDING_PENDING") for m in sorted(held))]
        return results

    def _onboarded_first(self, crm: Crm, envelopes: Sequence[Envelope],
                         now: datetime) -> set[str]:
        """A customer the SoR created for a person's CRM account reaches the CRM as that
        account, never as a second one: the SoR creates it (and its change may be routed
        here) before the inbound poller keyed the account by its number.  Key such
        accounts first (the poller's link, idempotent).  While a create's number is not
        recorded yet (the moment between the SoR's create and coexist's record of it, or
        after a crash there until the poller asks again), hold (re-queue, no attempt
        counted) the delivery's customers that are that create's (``is_created_from``
        its kept body: no time limit, shown by ``coexist status``), and, for the first
        ``PENDING_HOLD_S``, every customer of the delivery (a net for an SoR that keeps
        the customer other than asked).  Returns the message ids held.  One small read
        per delivery (the open creates: most often none)."""
        keys = {e.key for e in envelopes if e.domain == "customer"}
        if not keys:
            return set()
        open_ = state.open_creates(self.engine)
        if not open_:
            return set()
        none_made: set[str] = set()
        if self.created_by is not None:
            open_, none_made = self._resolve(open_, now)
        unlinked: set[str] = set()
        for row in open_:
            if row.customer_key in keys:
                try:
                    crm.link(row.crm_account_id, row.customer_key,
                             correlation_id=handlers._stable_id(
                                 f"crm:onboard:{row.crm_account_id}"))
                except (CrmPaused, CrmUnavailable):
                    # Not keyed yet: its customer waits (a write now could be a second
                    # account); the rest goes on, and meets the same CRM state.
                    unlinked.add(row.customer_key)
        if unlinked:
            return {e.message_id for e in envelopes
                    if e.domain == "customer" and e.key in unlinked}
        pending = [row for row in open_ if row.customer_key == state.NUMBER_PENDING
                   and row.crm_account_id not in none_made]
        if not pending:
            return set()
        held: dict[str, str] = {}
        for e in envelopes:
            if e.domain == "customer" and (crm_id := _pending_of(e, pending)) is not None:
                held[e.message_id] = crm_id
        if held:
            state.note_held(self.engine, sorted(set(held.values())), now)
        if any((now - state._aware(row.decided_at)).total_seconds() < PENDING_HOLD_S
               for row in pending):
            return {e.message_id for e in envelopes if e.domain == "customer"}
        return set(held)

    def _resolve(self, open_: list, now: datetime) -> tuple[list, set[str]]:
        """Ask the SoR which customer each pending create older than ``PENDING_RESOLVE_S``
        made (``created_by``: its record of the create's idempotency key, or its answer to
        the same create asked again), and record the number: the customer is then known
        by its key, however differently the SoR stores it (another name, another tax id)
        than the body onboarding sent.  Returns the open creates as they are now, and the
        pending ones the SoR says it made no customer for (their creates hold nothing:
        no customer of the SoR can be theirs yet).  A create the SoR cannot answer for
        now stays pending and held as before."""
        resolved = False
        none_made: set[str] = set()
        for row in open_:
            if row.customer_key != state.NUMBER_PENDING or not row.create_body or \
                    (now - state._aware(row.decided_at)).total_seconds() < PENDING_RESOLVE_S:
                continue
            crm_id = row.crm_account_id
            try:
                body = decode("customer", json.loads(row.create_body))
                number = self.created_by(body, handlers.numbered_create_key(crm_id))
            except Exception as exc:  # business or technical: the poller's to report
                log.info("CRM onboarding of account %s: the SoR did not say which customer "
                         "its create made (%s: %s); its customers stay held", crm_id,
                         type(exc).__name__, exc)
                continue
            if number is None:
                none_made.add(crm_id)
                continue
            state.set_number(self.engine, crm_id, number)
            log.info("CRM onboarding of account %s: the SoR made customer %s (recorded by "
                     "the consumer; the poller had not)", crm_id, number)
            resolved = True
        return (state.open_creates(self.engine) if resolved else open_), none_made

    def _defer_all(self, envelopes: Iterable[Envelope], wait: timedelta) -> None:
        delay = min(max(wait.total_seconds(), 1.0), MAX_DEFER_S)
        for env in envelopes:
            self.defer(env, delay)
            DEFERRED.inc()


def _pending_of(env: Envelope, pending: Sequence[Any]) -> str | None:
    """The CRM account of the pending numbered create that may have made the customer of
    ``env``, or ``None``."""
    record = env.payload.get("record") if env.kind == queues.KIND_EVENT else None
    if not isinstance(record, dict):
        return None
    try:
        customer = decode("customer", record)
    except (TranslationError, ValueError):
        return None  # the handler refuses it, with the reason
    for row in pending:
        if row.create_body:
            try:
                body = decode("customer", json.loads(row.create_body))
            except (TranslationError, ValueError):
                body = None
            if body is not None and onboarding.is_created_from(customer, body):
                return row.crm_account_id
        candidate = onboarding.Candidate(row.crm_account_id, row.name_key,
                                         frozenset(filter(None, row.postal_keys.split(","))),
                                         row.tax_key)
        if onboarding.match(candidate, [onboarding.Known.of(customer)]) is not None:
            return row.crm_account_id
    return None


#: ``(body, idempotency_key) -> key | None``: the customer the SoR's numbered create
#: under ``idempotency_key`` made, ``None`` when it made none (``sor_created``).
CreatedBy = Callable[[Customer, str], "str | None"]


@runtime_checkable
class CreateLookup(Protocol):
    """An ERP that tells which record a numbered create made, by its idempotency key,
    without creating anything (the legacy ERP's ``XCOEXNUM``)."""

    def created_by(self, domain: str, idempotency_key: str) -> str | None: ...


def sor_created(app: App) -> CreatedBy:
    """Which customer an onboarding create made: from any ERP's record of the key
    (``CreateLookup``: read only), else the SoR's answer to the same create asked again
    (the kept body under the same idempotency key: the first answer replayed, or, when
    the first never reached the SoR, the create the decision asked for made now)."""
    create = sor_numbering(app)

    def created_by(body: Customer, idempotency_key: str) -> str | None:
        for erp in app.erps.values():
            if isinstance(erp, CreateLookup) and \
                    (key := erp.created_by("customer", idempotency_key)) is not None:
                return key
        sor = placement("customer", "", app.flags.state("customer"), {}, None)[1]
        if isinstance(app.erps[sor], CreateLookup):
            return None  # the SoR keeps its creates' keys: none was made under this one
        return create(body, idempotency_key)

    return created_by


def _budget(crm: Crm) -> ApiBudget | None:
    try:
        budget = crm.budget()
    except (CrmUnavailable, CrmPaused):
        return None
    return budget if budget is not None and budget.max else None


def channel_handler(app: App) -> Callable[[Envelope | Sequence[Envelope]], Any]:
    """The ``crm`` subscription's handler in ``app``'s process (``workers.bootstrap``)."""

    def defer(env: Envelope, delay_s: float) -> None:
        app.broker.enqueue(dramatiq.Message(
            queue_name=CRM_QUEUE, actor_name=OUTBOUND_ACTOR,
            args=(env.model_dump(mode="json"),), kwargs={}, options={},
            message_id=env.message_id), delay=int(delay_s * 1000))

    section = app.settings.crm
    return CrmConsumer(crm=lambda: app.crm, engine=app.state,
                       reports=ExceptionStoreReports(app.exceptions), defer=defer,
                       pause_s=section.pause_s if section else 60.0,
                       created_by=sor_created(app))


# ===================================================================== inbound


def sor_lookup(app: App) -> handlers.SorLookup:
    """``(domain, key) -> (system, record)`` from the record's SoR now (flag and pin)."""
    from workers.router.state import get_route

    def lookup(domain: str, key: str) -> tuple[str, CanonicalRecord] | None:
        with app.state.connect() as conn:
            route = get_route(conn, domain, key)
        pinned = route.pinned_sor if route else None
        _mode, sor, _shadows, _pinned = placement(domain, key, app.flags.state(domain), {},
                                                  pinned)
        record = app.erps[sor].get(domain, key)
        return (sor, record) if record is not None else None

    return lookup


def sor_numbering(app: App) -> handlers.CreateNumbered:
    """``(customer, idempotency_key) -> key``: the customer domain's SoR now creates the
    customer under the next number of its own sequence (``NumberingErp``), written as the
    CRM channel's command writer, so its change capture routes it on (the shadow, and the
    CRM, where the number lands on the account)."""
    from coexistence.ports import NumberingErp

    writer = queues.COMMAND_WRITERS[handlers.CHANNEL]

    def create(customer: Customer, idempotency_key: str) -> str:
        sor = placement("customer", "", app.flags.state("customer"), {}, None)[1]
        erp = app.erps[sor]
        if not isinstance(erp, NumberingErp):
            raise TypeError(f"the {sor} ERP cannot assign customer numbers "
                            "(no create_numbered)")
        return erp.create_numbered(customer, idempotency_key=idempotency_key, writer=writer)

    return create


def customer_directory(app: App) -> Callable[[], Iterable[Customer]]:
    """The customers onboarding matches a new CRM account against: both ERPs' (the SoR
    may not have copied a new one to the other yet), each key once."""

    def directory() -> Iterable[Customer]:
        seen: set[str] = set()
        sor = placement("customer", "", app.flags.state("customer"), {}, None)[1]
        for system in (sor, *(s for s in app.erps if s != sor)):
            for customer in app.erps[system].stream("customer"):
                if customer.key not in seen:
                    seen.add(customer.key)
                    yield customer  # type: ignore[misc]

    return directory


class CrmPoller:
    """Reads the CRM's change feed every ``interval_s`` while this process holds the lease."""

    def __init__(self, app: App, *, interval_s: float | None = None,
                 lease_ttl_s: float = INBOUND_LEASE_TTL_S):
        from workers.router.lease import Lease, process_identity

        self.app = app
        section = app.settings.crm
        self.interval_s = interval_s or (section.poll_interval_s if section else 5.0)
        self.lease = Lease(app.state, INBOUND_LEASE, process_identity(), lease_ttl_s)
        self.reports = ExceptionStoreReports(app.exceptions)
        self.sor_record = sor_lookup(app)
        self.directory = customer_directory(app)
        self.create_customer = sor_numbering(app)
        self.turns = 0
        self.last: handlers.InboundStats | None = None
        self._failing: str | None = None

    def run_once(self) -> handlers.InboundStats | None:
        """One read of the feed (``None`` when paused or another process holds the lease)."""
        if state.paused_until(self.app.state) is not None:
            return None
        if not self.lease.held and not self.lease.try_acquire():
            return None
        stats = handlers.poll_inbound(
            crm=self.app.crm, engine=self.app.state, sor_record=self.sor_record,
            directory=self.directory, reports=self.reports, fence=self.lease.fence,
            create_customer=self.create_customer)
        self.turns += 1
        self.last = stats
        return stats

    def _keep(self, stop: threading.Event) -> None:
        """Renew the lease while held, look for it while not (a turn may take longer than
        the TTL: onboarding many accounts is many requests)."""
        tick = self.lease.ttl_ms / 4000
        while not stop.wait(tick):
            try:
                self.lease.renew() if self.lease.held else self.lease.try_acquire()
            except Exception:  # the thread must outlive any one failure
                log.exception("CRM inbound lease: unexpected failure")

    def run_forever(self, stop: threading.Event) -> None:
        keeper = threading.Thread(target=self._keep, args=(stop,), name="crm-inbound-lease",
                                  daemon=True)
        keeper.start()
        try:
            while not stop.is_set():
                busy = False
                try:
                    stats = self.run_once()
                    busy = stats is not None and stats.read >= handlers.FEED_READ
                    self._recovered()
                except CrmPaused as paused:
                    until = datetime.now(UTC) + timedelta(
                        seconds=self.app.settings.crm.pause_s if self.app.settings.crm else 60)
                    state.pause(self.app.state, until, str(paused), paused.budget)
                    self._failed(f"CRM paused until {until.isoformat()}: {paused}")
                except ReplayExpired as expired:
                    # Business: events were missed; an operator must reconcile.  Reported
                    # once per distinct message, the poller keeps trying (nothing to skip to
                    # without a person's decision).
                    self._failed(f"CRM change feed: {expired}; reconcile the CRM and reset "
                                 "the `crm` checkpoint")
                except Exception as exc:  # one bad turn must not end the thread
                    self._failed(f"CRM feed poll failed; retrying: {type(exc).__name__}: "
                                 f"{exc}", exc_info=not isinstance(exc, TechnicalError))
                if not busy:
                    stop.wait(self.interval_s)
        finally:
            keeper.join(self.lease.ttl_ms / 1000)
            self.lease.release()

    def _failed(self, message: str, exc_info: bool = False) -> None:
        if message != self._failing:
            log.warning(message, exc_info=exc_info)
            self._failing = message

    def _recovered(self) -> None:
        if self._failing is not None:
            log.info("CRM feed poll works again")
            self._failing = None


def start_poller(app: App, stop: threading.Event) -> threading.Thread | None:
    """The inbound poller thread, when this process runs the CRM channel (``[crm]`` set
    and the ``crm`` subscription configured)."""
    if not runs_crm(app):
        return None
    poller = CrmPoller(app)
    thread = threading.Thread(target=poller.run_forever, args=(stop,), name="crm-inbound",
                              daemon=True)
    thread.start()
    return thread


def runs_crm(app: App) -> bool:
    return app.settings.crm is not None and any(s.name == "crm" for s in app.subscriptions)


__all__ = ["CrmConsumer", "CrmPoller", "CrmRetryLater", "channel_handler", "runs_crm",
           "sor_lookup", "start_poller"]
