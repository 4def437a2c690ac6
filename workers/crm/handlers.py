"""The CRM channel's handlers: plain functions of (envelopes or the feed, dependencies).

``sync_outbound`` shows a batch of the router's canonical events (from the SoR only) in
the CRM: one sObject Collections request per object per 200 records, ``allOrNone=false``,
each record's result handled on its own, one ``Result`` per envelope in input order.  The
batch consumer (a later round) acks on ``SYNCED``/``STALE``/``SKIPPED``/``REFUSED``
(refusals are already recorded in the exception store), retries ``RETRY`` with backoff
and holds ``PAUSED`` messages without counting an attempt until the budget returns.

``poll_inbound`` reads the CRM's change feed after a durable checkpoint, suppresses
coexist's own writes by ``changeOrigin``, and turns people's changes into effects:

* a new account is onboarded (``coexistence.crm.onboarding``): linked to the customer it
  already is, reported as a duplicate inside the CRM, or created in the SoR through a
  channel command (writer ``COEXCRM``) with a number that flows back to the CRM;
* a change of the primary contact becomes a command for the SoR (the CRM owns contacts);
* a change of an ERP-owned field (credit limit, hold, terms... any field coexist writes)
  is refused by field ownership: reported, and the CRM set back to the SoR's value;
* anything else (fields only the CRM has) is the CRM's own business.

Network calls (reads, links, set-backs) happen before the one state transaction that
commits the commands (outbox), the onboarding decisions and the checkpoint; each of them
is idempotent, so a crash anywhere re-reads the same events and ends the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bus.envelope import Envelope, new_envelope
from bus.errors import BusinessError
from bus.outbox import add_all_to_outbox
from coexistence.canonical import CanonicalRecord, Customer, decode
from coexistence.crm import mapping, onboarding
from coexistence.crm.ports import (
    CRM_OBJECTS,
    DOMAIN_OF_OBJECT,
    MAX_BATCH,
    Absent,
    Crm,
    CrmChange,
    CrmPaused,
    CrmRequestRefused,
    CrmUnavailable,
    CrmUpsert,
    Refused,
    Retry,
    Stale,
    Synced,
    UpsertResult,
)
from coexistence.errors import TranslationError
from coexistence.ownership import owner_of
from coexistence.router import routed_version
from workers import checkpoints
from workers.crm import state
from workers.crm.reports import INBOUND_ACTOR, OUTBOUND_ACTOR, Reports
from workers.router import queues

log = logging.getLogger("coexist.crm")

#: The CRM change feed's checkpoint name.
FEED = "crm"
#: The channel name commands carry (``workers.router.queues.COMMAND_WRITERS``).
CHANNEL = "crm"
#: Change events one poll reads (the feed's most per request).  Most of them are coexist's
#: own writes coming back (one per account it updates), dropped by ``changeOrigin`` for
#: little each; reading them 200 at a time cost a request and a state transaction (the
#: checkpoint) per 200 outbound accounts (``scripts/bench/crm.py``'s ``crm_inbound_echoes``).
FEED_READ = 1000
#: Objects in dependency order, so a batch writes parents before their documents.
_ORDER = ("customer", "order", "shipment", "invoice")

SYNCED = Counter("coexist_crm_records_total", "CRM writes by object and result",
                 ["object", "result"])
EXCEPTIONS = Counter("coexist_crm_exceptions_total", "CRM business exceptions by code",
                     ["code"])
ONBOARDED = Counter("coexist_crm_onboarded_total",
                    "Person-created CRM accounts onboarded, by decision", ["decision"])


class Outcome(StrEnum):
    SYNCED = "synced"
    #: The CRM already shows a newer version (or the batch carried a newer one).
    STALE = "stale"
    #: Nothing for the CRM to show (a domain it does not show, a delete of a record it
    #: never had).
    SKIPPED = "skipped"
    #: Refused for a business reason and recorded in the exception store.
    REFUSED = "refused"
    #: Not written now (row lock, parent not there yet, CRM unavailable): try again.
    RETRY = "retry"
    #: The API budget is spent: hold the message until it returns (not a failure).
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Result:
    message_id: str
    outcome: Outcome
    detail: str = ""
    code: str = ""


# ===================================================================== outbound


@dataclass
class _Pending:
    env: Envelope
    item: CrmUpsert


def sync_outbound(envelopes: Sequence[Envelope], *, crm: Crm, reports: Reports) -> list[Result]:
    """Show ``envelopes`` (canonical events) in the CRM; one ``Result`` per envelope."""
    results: dict[int, Result] = {}
    newest: dict[tuple[str, str], tuple[int, int]] = {}  # (domain, key) -> (version, index)
    first_of: dict[str, int] = {}
    followers: dict[int, list[int]] = {}
    pending: dict[int, _Pending] = {}
    for i, env in enumerate(envelopes):
        if env.message_id in first_of:  # the same message delivered twice in one batch
            followers.setdefault(first_of[env.message_id], []).append(i)
            continue
        first_of[env.message_id] = i
        prepared = _prepare(env, reports)
        if isinstance(prepared, Result):
            results[i] = prepared
            continue
        pending[i] = _Pending(env, prepared)
        where = (prepared.domain, prepared.key)
        seen = newest.get(where)
        if seen is None or prepared.version > seen[0]:
            if seen is not None:
                results[seen[1]] = Result(envelopes[seen[1]].message_id, Outcome.STALE,
                                          "superseded by a newer version in the same batch")
                pending.pop(seen[1])
            newest[where] = (prepared.version, i)
        else:
            results[i] = Result(env.message_id, Outcome.STALE,
                                "superseded by a newer version in the same batch")
            pending.pop(i)
    stop: Result | None = None
    for domain in _ORDER:
        group = [(i, p) for i, p in pending.items() if p.item.domain == domain]
        for start in range(0, len(group), MAX_BATCH):
            chunk = group[start:start + MAX_BATCH]
            if stop is not None:
                for i, p in chunk:
                    results[i] = Result(p.env.message_id, stop.outcome, stop.detail, stop.code)
                continue
            try:
                answers = crm.upsert(domain, [p.item for _, p in chunk])
            except CrmPaused as paused:
                stop = Result("", Outcome.PAUSED, str(paused), "REQUEST_LIMIT_EXCEEDED")
            except CrmUnavailable as down:
                stop = Result("", Outcome.RETRY, str(down), "UNAVAILABLE")
            except CrmRequestRefused as refused:
                for i, p in chunk:
                    results[i] = _refuse(p.env, reports, refused.code, str(refused), ())
                continue
            else:
                for (i, p), answer in zip(chunk, answers, strict=True):
                    results[i] = _outcome(p.env, answer, reports)
                continue
            for i, p in chunk:
                results[i] = Result(p.env.message_id, stop.outcome, stop.detail, stop.code)
    for first, others in followers.items():
        for i in others:
            results[i] = results[first]
    return [results[i] for i in range(len(envelopes))]


def _prepare(env: Envelope, reports: Reports) -> CrmUpsert | Result:
    if env.domain not in CRM_OBJECTS:
        return Result(env.message_id, Outcome.SKIPPED, f"the CRM shows no {env.domain}")
    if env.kind not in (queues.KIND_EVENT, queues.KIND_DELETE):
        return _refuse(env, reports, "NOT_AN_EVENT",
                       f"envelope kind {env.kind!r} on the CRM channel; expected "
                       f"{queues.KIND_EVENT!r} or {queues.KIND_DELETE!r}", ())
    try:
        version = routed_version(env.flag_version, env.source_version)
        record = None
        if env.kind == queues.KIND_EVENT:
            if "record" not in env.payload:
                raise TranslationError(env.domain, env.key, "payload.record", None,
                                       "an event carries its record")
            record = decode(env.domain, env.payload["record"])
            if record.key != env.key:
                raise TranslationError(env.domain, env.key, "payload.record.key", record.key,
                                       "differs from the envelope's key")
    except (TranslationError, ValueError) as exc:
        return _refuse(env, reports, "BAD_EVENT", str(exc), ())
    return CrmUpsert(env.domain, env.key, record, version, env.correlation_id,
                     env.source_system)


def _outcome(env: Envelope, answer: UpsertResult, reports: Reports) -> Result:
    sobject = CRM_OBJECTS[env.domain]
    if isinstance(answer, Synced):
        SYNCED.labels(sobject, "synced").inc()
        return Result(env.message_id, Outcome.SYNCED,
                      f"{sobject} {answer.crm_id} {'created' if answer.created else 'updated'}")
    if isinstance(answer, Stale):
        SYNCED.labels(sobject, "stale").inc()
        return Result(env.message_id, Outcome.STALE, "the CRM shows a newer version")
    if isinstance(answer, Absent):
        return Result(env.message_id, Outcome.SKIPPED, "deleted before the CRM ever showed it")
    if isinstance(answer, Retry):
        SYNCED.labels(sobject, "retry").inc()
        return Result(env.message_id, Outcome.RETRY, answer.message, answer.code)
    return _refuse(env, reports, answer.code, answer.message, answer.matched_ids, answer.fields)


def _refuse(env: Envelope, reports: Reports, code: str, message: str,
            matched: Iterable[str], fields: Iterable[str] = ()) -> Result:
    matched, fields = tuple(matched), tuple(fields)
    detail = f"CRM refused {env.domain} {env.key}: {code}: {message}"
    if fields:
        detail += f" (fields: {', '.join(fields)})"
    if matched:
        detail += f" (matches: {', '.join(matched)})"
    EXCEPTIONS.labels(code).inc()
    reports.report(error_type=f"CrmRefused:{code}", message=detail, message_id=env.message_id,
                   domain=env.domain, key=env.key, actor=OUTBOUND_ACTOR, envelope=env)
    return Result(env.message_id, Outcome.REFUSED, detail, code)


# ===================================================================== inbound

#: Looks up the SoR's record of (domain, key): (system, record), or None.
SorLookup = Callable[[str, str], "tuple[str, CanonicalRecord] | None"]
#: ``(customer, idempotency_key) -> key``: the SoR creates the customer under a number of
#: its own sequence (``coexistence.ports.NumberingErp``), idempotent on the key.
CreateNumbered = Callable[[Customer, str], str]


@dataclass
class InboundStats:
    read: int = 0
    echoes: int = 0
    commands: int = 0
    linked: int = 0
    created: int = 0
    duplicates: int = 0
    refused_edits: int = 0
    set_backs: int = 0
    ignored: int = 0
    reports: int = 0
    last_replay_id: int = 0


@dataclass
class _Inbound:
    crm: Crm
    engine: Engine
    sor_record: SorLookup
    directory: Callable[[], Iterable[Customer]]
    reports: Reports
    defaults: onboarding.OnboardingDefaults
    base: int
    create_customer: CreateNumbered | None = None
    stats: InboundStats = field(default_factory=InboundStats)
    commands: list[Envelope] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    #: Of ``done``: accounts that show their customer already (links set to the SoR's).
    completed: list[str] = field(default_factory=list)
    #: Customer key -> index in ``commands`` of the create command this run asks for.
    creating: dict[str, int] = field(default_factory=dict)
    _known: list[onboarding.Known] | None = None

    # ----------------------------------------------------------------- shared

    def known(self) -> list[onboarding.Known]:
        if self._known is None:
            self._known = [onboarding.Known.of(c) for c in self.directory()]
            self._known += state.known_pending(self.engine)
        return self._known

    def report(self, change: CrmChange, purpose: str, error_type: str, message: str,
               domain: str, key: str) -> None:
        self.stats.reports += 1
        EXCEPTIONS.labels(error_type).inc()
        self.reports.report(error_type=error_type, message=message,
                            message_id=_stable_id(f"crm:{change.replay_id}:{purpose}"),
                            domain=domain, key=key, actor=INBOUND_ACTOR)

    def command(self, change: CrmChange, purpose: str, record: CanonicalRecord,
                **extra: Any) -> None:
        mid = _stable_id(f"crm:{purpose}")
        self.commands.append(new_envelope(
            domain=record.domain, kind=queues.KIND_COMMAND, key=record.key,
            payload={"record": record.model_dump(mode="json"), "channel": CHANNEL, **extra},
            source_system=CHANNEL, source_version=change.replay_id,
            schema_version=type(record).current_schema_version, message_id=mid,
            correlation_id=mid))
        self.stats.commands += 1

    def set_back(self, change: CrmChange, domain: str, key: str, version: int | None) -> bool:
        found = self.sor_record(domain, key)
        if found is None:
            return False
        system, record = found
        [answer] = self.crm.upsert(domain, [CrmUpsert(
            domain, key, record, version or 0, _stable_id(f"crm:{change.replay_id}:set-back"),
            system)])
        if isinstance(answer, Retry):
            raise CrmUnavailable(f"setting {domain} {key} back in the CRM: {answer.message}")
        if isinstance(answer, Refused):
            self.report(change, "set-back", f"CrmRefused:{answer.code}",
                        f"could not set {domain} {key} back to the SoR's values in the CRM: "
                        f"{answer.message}", domain, key)
            return False
        self.stats.set_backs += 1
        return True

    # ----------------------------------------------------------------- one change

    def handle(self, change: CrmChange) -> None:
        self.stats.read += 1
        if change.is_echo:
            self.stats.echoes += 1
            return
        if change.sobject == "Account":
            if change.change_type == "CREATE":
                self.onboard(change)
            elif change.change_type in ("UPDATE", "UNDELETE"):
                self.edited(change, "customer")
            else:
                self.ignore(change, "an account deleted in the CRM stays a customer in the ERP")
        elif change.sobject == "Contact":
            self.contact(change)
        elif change.sobject in DOMAIN_OF_OBJECT:
            self.edited(change, DOMAIN_OF_OBJECT[change.sobject])
        else:
            self.ignore(change, f"{change.sobject} is the CRM's own")

    def ignore(self, change: CrmChange, why: str) -> None:
        self.stats.ignored += 1
        log.debug("CRM change %s (%s %s %s) ignored: %s", change.replay_id, change.sobject,
                  change.record_id, change.change_type, why)

    def onboard(self, change: CrmChange) -> None:
        crm_id = change.record_id
        prior = state.decision_of(self.engine, crm_id)
        if prior is not None and prior.state == "done":
            return self.ignore(change, "onboarded already")
        account = self.crm.get("Account", crm_id)
        if account is None:
            if prior is not None:
                state.forget_pending(self.engine, crm_id)
            return self.ignore(change, "the account was deleted before onboarding")
        candidate = onboarding.Candidate.of(crm_id, account.fields)
        created = _created_at(account.fields, change)
        if prior is None:
            if account.key is not None:
                return self.ignore(change, "the account is keyed by a customer already")
            hints = [(d.id, d.key) for d in self.crm.duplicates_of(crm_id)]
            decision = onboarding.decide(candidate, self.known(), hints)
            if isinstance(decision, onboarding.DuplicateInCrm):
                return self.duplicate(change, crm_id, decision.customer_key,
                                      (decision.other_crm_id,), candidate)
            if isinstance(decision, onboarding.Link):
                prior = state.decide(self.engine, candidate, state.LINK,
                                     decision.customer_key, crm_created_at=created)
            elif self.create_customer is not None:
                # The decision first, its number still to come from the SoR (below), with
                # the customer it asks for: asked again after a crash, the same body.
                body = onboarding.new_customer("0", account.fields, self.defaults)
                prior = state.decide(self.engine, candidate, state.CREATE,
                                     state.NUMBER_PENDING, crm_created_at=created,
                                     create_body=body.model_dump_json())
            else:
                prior = state.decide(self.engine, candidate, state.CREATE, base=self.base,
                                     crm_created_at=created)
        if prior.decision == state.CREATE and prior.customer_key == state.NUMBER_PENDING:
            numbered = self.numbered(change, prior, account.fields)
            if numbered is None:
                return None
            prior = numbered
        key = prior.customer_key
        if prior.decision == state.DUPLICATE:
            self.done.append(crm_id)
            return None
        linked = self.crm.link(crm_id, key, correlation_id=_stable_id(f"crm:onboard:{crm_id}"))
        if isinstance(linked, Refused):
            if linked.code == "DUPLICATE_VALUE":
                return self.duplicate(change, crm_id, key, linked.matched_ids, candidate)
            self.report(change, "link", f"CrmRefused:{linked.code}",
                        f"could not key CRM account {crm_id} by customer {key}: "
                        f"{linked.message}", "customer", key)
            return None
        self.done.append(crm_id)
        if prior.decision == state.LINK:
            self.stats.linked += 1
            ONBOARDED.labels("link").inc()
            if self.set_back(change, "customer", key, None):
                self.completed.append(crm_id)
            return None
        if account.key == key and account.version:
            # The CRM shows the SoR's customer on the account already: a consumer asked the
            # SoR which customer the create made and wrote it there while this poller was
            # away (``workers.crm.consumer``).  The account holds the SoR's values now; a
            # command built from it would only echo them back (or differ in what the SoR
            # derives, as site names: a false ownership report).  A contact of this poll
            # goes to the SoR as a command of its own.
            self.completed.append(crm_id)
            self.stats.created += 1
            ONBOARDED.labels("create").inc()
            return None
        customer = onboarding.new_customer(key, account.fields, self.defaults)
        self.creating[key] = len(self.commands)
        self.command(change, f"onboard:{crm_id}", customer, crm_account_id=crm_id)
        self.stats.created += 1
        ONBOARDED.labels("create").inc()
        if self._known is not None:
            self._known.append(candidate.known_as(key))
        return None

    def numbered(self, change: CrmChange, prior: state.CrmOnboarding,
                 fields: dict[str, Any]):
        """The SoR creates the customer of a ``create`` decision and gives it its number;
        the decision keeps it.  Asked again after a crash between the two (the decision
        still without its number), the SoR answers the customer it made under the same
        idempotency key: never a second one.  The body is the decision's, as first sent
        (an account edited since would be another body under the key, which the cloud
        refuses); a decision from before it was kept is built from the account now.
        ``None`` when the SoR refused (reported)."""
        assert self.create_customer is not None
        crm_id = prior.crm_account_id
        if prior.create_body:
            customer = decode("customer", json.loads(prior.create_body))
        else:
            customer = onboarding.new_customer("0", fields, self.defaults)
        try:
            number = self.create_customer(customer, numbered_create_key(crm_id))
        except BusinessError as exc:
            state.forget_pending(self.engine, crm_id)
            self.report(change, "create", "CrmOnboardingRefused",
                        f"the SoR did not create the customer of CRM account {crm_id}: "
                        f"{exc}", "customer", crm_id)
            return None
        _fault_after_sor_create()
        return state.set_number(self.engine, crm_id, number)

    def duplicate(self, change: CrmChange, crm_id: str, key: str, others: tuple[str, ...],
                  candidate: onboarding.Candidate) -> None:
        state.decide(self.engine, candidate, state.DUPLICATE, key)
        self.done.append(crm_id)
        self.stats.duplicates += 1
        ONBOARDED.labels("duplicate_in_crm").inc()
        self.report(change, "duplicate", "CrmDuplicateAccount",
                    f"CRM account {crm_id} is customer {key}, which the CRM already shows as "
                    f"account {', '.join(others) or '?'}: merge the two in the CRM; no second "
                    "customer was created", "customer", key)

    def edited(self, change: CrmChange, domain: str) -> None:
        owned = mapping.owned_fields_changed(change.sobject, change.changed_fields)
        if not owned:
            return self.ignore(change, "only fields the CRM owns changed")
        current = self.crm.get(change.sobject, change.record_id)
        if current is None or current.key is None:
            if domain == "customer" and current is not None and \
                    state.decision_of(self.engine, change.record_id) is None:
                return self.onboard(change)
            return self.ignore(change, "not a record coexist shows")
        key = current.key
        found = self.sor_record(domain, key)
        canonical = sorted({mapping.ACCOUNT_FIELDS.get(f, f) for f in owned})
        self.stats.refused_edits += 1
        owners = sorted({owner_of(domain, f) for f in canonical if not f.endswith("__c")})
        kept = "set back to the SoR's values" if found is not None else \
            "the SoR has no such record yet"
        self.report(change, "ownership", "OwnershipViolationReported",
                    f"crm may not change {domain} {key}: {', '.join(owned)} "
                    f"(owned by {', '.join(owners) or 'erp'}); refused, {kept}", domain, key)
        if found is not None:
            self.set_back(change, domain, key, current.version)
        return None

    def contact(self, change: CrmChange) -> None:
        if change.change_type == "DELETE":
            return self.ignore(change, "a deleted contact's account is not in the event")
        current = self.crm.get("Contact", change.record_id)
        if current is None or not current.fields.get("Primary_Contact__c"):
            return self.ignore(change, "not a primary contact")
        relevant = set(mapping.CONTACT_FIELDS) | {"Primary_Contact__c", "AccountId"}
        if change.change_type == "UPDATE" and not relevant & set(change.changed_fields):
            return self.ignore(change, "no field the ERP keeps changed")
        account_id = current.fields.get("AccountId")
        account = self.crm.get("Account", account_id) if account_id else None
        if account is None or account.key is None:
            return self.ignore(change, "its account is not a customer (yet)")
        if account.key in self.creating:
            # The account was onboarded a moment ago in this batch: its create command
            # carries the contact (one command, so the SoR never sees it without).
            at = self.creating[account.key]
            env = self.commands[at]
            record = decode("customer", env.payload["record"]).model_copy(
                update=mapping.contact_values(current.fields))
            self.commands[at] = env.model_copy(update={"payload": {
                **env.payload, "record": record.model_dump(mode="json")}})
            return None
        found = self.sor_record("customer", account.key)
        if found is None:
            self.report(change, "contact", "CrmContactNotApplied",
                        f"contact {change.record_id} of customer {account.key} not applied: "
                        "the SoR has no such customer yet; edit the contact again once it "
                        "exists", "customer", account.key)
            return None
        _, customer = found
        updated = customer.model_copy(update=mapping.contact_values(current.fields))
        if updated == customer:
            return self.ignore(change, "the SoR has these contact values already")
        self.command(change, f"{change.replay_id}:contact", updated,
                     crm_contact_id=change.record_id)
        return None


def poll_inbound(*, crm: Crm, engine: Engine, sor_record: SorLookup,
                 directory: Callable[[], Iterable[Customer]], reports: Reports,
                 limit: int = FEED_READ, feed: str = FEED,
                 defaults: onboarding.OnboardingDefaults = onboarding.OnboardingDefaults(),
                 number_base: int = state.CRM_CUSTOMER_NUMBER_BASE,
                 fence: Callable[[Session], None] | None = None,
                 create_customer: CreateNumbered | None = None) -> InboundStats:
    """Handle up to ``limit`` CRM change events after the checkpoint of ``feed``.

    ``sor_record(domain, key)`` reads the record from its SoR now; ``directory()``
    yields the customers onboarding matches against (the ERPs').  Raises
    ``ReplayExpired`` (business: an operator must reconcile) and ``CrmUnavailable`` /
    ``CrmPaused`` (nothing committed; call again later).  ``fence(session)`` runs first in
    the committing transaction (the poller's lease: ``LeaseLost`` rolls it back).
    ``create_customer``: how a new customer gets its number, from the SoR (what
    ``coexist worker`` passes: ``consumer.sor_numbering``); without it (handler tests and
    benches with no ERP) coexist numbers it from ``number_base`` up.
    """
    after = checkpoints.get(engine, feed)
    changes = crm.changes(after, limit)
    run = _Inbound(crm, engine, sor_record, directory, reports, defaults, number_base,
                   create_customer)
    if not changes:
        run.stats.last_replay_id = after
        return run.stats
    for change in changes:
        run.handle(change)
    with Session(engine) as session:
        if fence is not None:
            fence(session)
        add_all_to_outbox(session, run.commands, actor_name=queues.COMMAND_ACTOR,
                          queue_name=queues.COMMAND_QUEUE)
        state.mark_done(session, run.done, run.completed)
        checkpoints.advance(session, feed, changes[-1].replay_id, expected=after)
        session.commit()
    run.stats.last_replay_id = changes[-1].replay_id
    return run.stats


def _created_at(fields: dict[str, Any], change: CrmChange) -> datetime:
    """When the account was created in the CRM: its ``CreatedDate``, else (a CRM that does
    not give it, an unreadable value) the commit time of the change that brought it."""
    raw = fields.get("CreatedDate")
    if isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            value = None
        if value is not None:
            return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(change.commit_ms / 1000, UTC)


#: Fault injection (tests only, off unless set): ``1`` makes the process SIGKILL itself
#: right after the SoR created an onboarded customer and before coexist recorded its
#: number, where the crash test kills a real ``coexist run``/``worker``.
FAULT_KILL_AFTER_SOR_CREATE = "COEXIST_FAULT_CRM_KILL_AFTER_SOR_CREATE"


def _fault_after_sor_create() -> None:
    if os.environ.get(FAULT_KILL_AFTER_SOR_CREATE) == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def numbered_create_key(crm_account_id: str) -> str:
    """The idempotency key of the SoR create that onboards CRM account ``crm_account_id``:
    one account, one customer, however often it is asked for."""
    return f"crm-onboard:{crm_account_id}"


def _stable_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"coexist:{name}"))
