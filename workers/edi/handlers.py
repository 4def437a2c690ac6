"""The EDI channel's handlers, as plain functions of their inputs and dependencies.

Inbound (``handle_inbound``): every complete file in a partner's
``inbound/`` is claimed, read, and each interchange in it answered:

* a broken envelope (ISA width, truncated file, IEA/ISA mismatch, counts), an
  interchange from someone other than the partner or to someone other than
  us, or a duplicate (same sender + ISA13 within the profile's window, note
  025) gets a TA1 and no 997; nothing inside it is read;
* otherwise each functional group gets a 997 (AK3/AK4 for every finding, AK5
  per set, AK9), except a 997 itself, which updates the acknowledgment state
  of what we sent and is never answered;
* each accepted 850 becomes an order command envelope in the outbox (kind
  ``command``, ``payload["channel"] = "edi"``; the router writes it into the
  SoR as ``COEXEDI``), committed in the same state transaction as the
  inbound record, its documents and the 997 with its control numbers;
* an 850 coexist cannot act on (unknown SKU, unknown buyer, a fraction of a
  unit) is answered by an 855 RD, every line IR.

Every fault becomes a business exception naming file, segment position,
element and value, and the file goes to ``failed/``; a clean file goes to
``processed/``.  Nothing raises out of a file: one bad file never stops the
next.

Outbound (``handle_events``): canonical events from the router's fan-out
(order, shipment, invoice, from the SoR only) become an 855 (first event of
an order that came by 850), an 856 (once the shipment has shipped) or an 810
(a posted, not void, invoice) for the partner that owns the customer, and
only that partner (``partner_may_receive``).  One document per business key
per partner, ever: a redelivered or reordered event is a ``duplicate``.  A document
never overtakes the one of its order it must follow (``PartnerProfile.must_follow``: an
856 its 855, an 810 its 856): it is held in ``edi_held`` until that one is out (or its
hold is over), whatever order the events come in.
Each envelope gets its own outcome; a bad one never fails its neighbours.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Engine, and_, bindparam, delete, exists, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from bus.envelope import Envelope, new_envelope
from bus.errors import BusinessError, TechnicalError
from bus.exception_store import ExceptionStore
from bus.outbox import add_all_to_outbox
from coexistence.canonical import decode
from coexistence.canonical.models import Invoice, InvoiceStatus, Order, OrderStatus, Shipment
from coexistence.edi import acks, documents, x12
from coexistence.edi.profiles import EdiSettings, PartnerProfile
from workers.edi import control
from workers.edi.sftp import SftpFolder
from workers.edi.store import DOCUMENT, HELD, INTERCHANGE, utcnow
from workers.edi.transport import Claimed, DropFolder, OutboundExists
from workers.errors import SetupError
from workers.router import queues

log = logging.getLogger(__name__)

#: A claim older than this is taken to belong to a crashed worker and is processed again.
ABANDONED_CLAIM_S = 300.0
#: Exception-store coordinates of the EDI channel's business exceptions.
EXCEPTION_QUEUE = "coexist.channel.edi"
EXCEPTION_ACTOR = "edi"
#: ``source_system`` of the order commands this channel sends.
SOURCE_SYSTEM = "edi"

DOC_FOR_DOMAIN = {"order": "855", "shipment": "856", "invoice": "810"}


def partner_may_receive(profile: PartnerProfile, customer_key: str) -> bool:
    """The row rule of the EDI channel: a partner sees only its own customers' documents.

    The one place the rule is applied, so it can be swapped for the shared field/row
    policy (``coexistence.policy``) when that lands.
    """
    return customer_key in profile.customers


def folder_for(profile: PartnerProfile) -> DropFolder | SftpFolder:
    """The partner's transport: its drop folder, or its folders on an SFTP server."""
    if profile.transport == "sftp":
        return SftpFolder(profile)
    return DropFolder(profile.folder, settle_seconds=profile.settle_seconds)


@dataclass
class EdiDeps:
    """What the handlers need, by name."""

    engine: Engine
    settings: EdiSettings
    exceptions: ExceptionStore
    #: The SoR catalogue: a product's unit of measure, ``None`` for an unknown SKU.
    unit_of: documents.UnitLookup
    #: The SoR's order (for 856/810: the customer and the PO number).
    get_order: Callable[[str], Order | None]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    may_receive: Callable[[PartnerProfile, str], bool] = partner_may_receive

    def folder(self, profile: PartnerProfile) -> DropFolder:
        """The partner's transport (a ``DropFolder``, or an ``SftpFolder`` with its interface)."""  # noqa: E501
        return folder_for(profile)


@dataclass
class FileOutcome:
    partner: str
    file: str
    ok: bool
    moved_to: str | None = None
    orders: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What happened to one envelope: ``sent``, ``skipped``, ``duplicate``, ``business_error``
    (recorded in the exception store) or ``technical_error`` (retry it)."""

    message_id: str
    status: str
    detail: str = ""
    interchange_id: int | None = None


# =========================================================================== inbound


def handle_inbound(deps: EdiDeps, partners: Iterable[str] | None = None, *,
                   abandoned_after_s: float = ABANDONED_CLAIM_S,
                   batch_files: int | None = None) -> list[FileOutcome]:
    """Claim and answer every complete file in the partners' ``inbound/`` folders, and the
    claims older than ``abandoned_after_s`` (a worker died holding them), up to
    ``batch_files`` (``INBOUND_BATCH_FILES``) files per state transaction."""
    wanted = set(partners) if partners is not None else None
    size = max(1, batch_files or INBOUND_BATCH_FILES)
    out: list[FileOutcome] = []
    for profile in deps.settings.partners:
        if wanted is not None and profile.id not in wanted:
            continue
        folder = deps.folder(profile).ensure()
        claims = folder.abandoned_claims(abandoned_after_s)
        names = folder.ready()
        # Claimed a batch at a time: a file waits unclaimed (for any worker) until its batch.
        while claims or names:
            while names and len(claims) < size:
                c = folder.claim(names.pop(0))
                if c is not None:
                    claims.append(c)
            out.extend(handle_files(deps, profile, folder, claims[:size]))
            claims = claims[size:]
    return out


#: Most inbound files answered in one state transaction (one polling pass takes several).
INBOUND_BATCH_FILES = 200


def handle_files(deps: EdiDeps, profile: PartnerProfile, folder: DropFolder,
                 claims: Sequence[Claimed]) -> list[FileOutcome]:
    """Answer claimed files as one batch: ONE state transaction for all their interchanges
    (a fault in any of them, a bug or a concurrent worker's duplicate, rolls it back and
    each interchange gets its own transaction instead), then every answer written in
    ISA13 order, one directory fsync, and every file moved (one more fsync)."""
    prepared = [(claimed, *_read_file(deps, profile, claimed)) for claimed in claims]
    _answer_batch(deps, profile, prepared)
    outcomes = [(claimed, outcome) for claimed, outcome, _ in prepared]
    flush_pending(deps, ids=[i for _, o in outcomes for i in o.answers])
    for claimed, outcome in outcomes:
        outcome.moved_to = str(folder.finish(claimed, ok=outcome.ok, sync_dir=False))
    if outcomes:
        folder.sync_dirs()
        # Inbound rows record when their file was moved on (``written_at``): a later file
        # with the same bytes is then a partner's resend, not our own unfinished run.
        with deps.engine.begin() as conn:
            conn.execute(update(INTERCHANGE).where(
                INTERCHANGE.c.partner == profile.id, INTERCHANGE.c.direction == "in",
                INTERCHANGE.c.file_name.in_([c.first_claim_name for c, _ in outcomes]),
                INTERCHANGE.c.written_at.is_(None)).values(written_at=utcnow()))
    return [o for _, o in outcomes]


def _answer_file(deps: EdiDeps, profile: PartnerProfile, claimed: Claimed) -> FileOutcome:
    """Read and answer one claimed file; never raises for what is in the file."""
    outcome, works = _read_file(deps, profile, claimed)
    _answer_batch(deps, profile, [(claimed, outcome, works)])
    return outcome


@dataclass
class _Work:
    """One readable interchange of a claimed file, planned before any state transaction."""

    ic: x12.Interchange
    content: bytes
    digest: str
    sender: str
    fault: tuple[str, str] | None
    plan: _Plan
    now: datetime
    isa13: int
    dedupe: str


def _read_file(deps: EdiDeps, profile: PartnerProfile, claimed: Claimed
               ) -> tuple[FileOutcome, list[_Work]]:
    """Read one claimed file and plan each interchange (the SoR lookups happen here, outside
    any transaction); what cannot be read or planned is recorded on the outcome."""
    outcome = FileOutcome(profile.id, claimed.name, ok=True)
    data = claimed.read_bytes()
    try:
        interchanges = x12.read(data, file=claimed.name)
    except x12.X12Error as exc:
        _record(deps, profile, f"file:{_sha(data)[:32]}", "EdiUnreadableFile", str(exc),
                raw=data)
        outcome.ok = False
        outcome.problems.append(str(exc))
        interchanges = []
    works: list[_Work] = []
    for ic in interchanges:
        try:
            works.append(_prepare(deps, profile, ic))
        except (TechnicalError, SetupError):
            raise  # the SoR is unavailable: leave the claim for a retry
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the file
            _bug(deps, profile, claimed, ic, exc, outcome)
    return outcome, works


def _bug(deps: EdiDeps, profile: PartnerProfile, claimed: Claimed, ic: x12.Interchange,
         exc: Exception, outcome: FileOutcome) -> None:
    log.error("EDI interchange %s of %s failed", ic.control, claimed.name,
              exc_info=(type(exc), exc, exc.__traceback__))
    _record(deps, profile, f"bug:{_sha(ic.text.encode('latin-1'))[:32]}",
            type(exc).__name__, f"{claimed.name}: interchange {ic.control}: {exc}",
            raw=ic.text.encode("latin-1"))
    outcome.ok = False
    outcome.problems.append(f"{type(exc).__name__}: {exc}")


def _prepare(deps: EdiDeps, profile: PartnerProfile, ic: x12.Interchange) -> _Work:
    content = ic.text.encode("latin-1")
    sender = f"{ic.sender_qualifier}:{ic.sender_id}"[:20]
    fault = _envelope_fault(profile, ic)
    plan = _plan(deps, profile, ic) if fault is None else _Plan()
    isa13 = int(ic.control) if ic.control.isdigit() else 0
    return _Work(ic, content, _sha(content), sender, fault, plan, deps.clock(), isa13,
                 f"{sender}:{isa13}")


def _run(conn, deps: EdiDeps, profile: PartnerProfile, claimed: Claimed, w: _Work):
    return _interchange_transaction(
        conn, deps, profile, claimed, w.ic, w.plan, w.fault, now=w.now, digest=w.digest,
        content=w.content, sender=w.sender, isa13=w.isa13, dedupe=w.dedupe)


def _answer_batch(deps: EdiDeps, profile: PartnerProfile,
                  prepared: Sequence[tuple[Claimed, FileOutcome, list[_Work]]]) -> None:
    """Every planned interchange of ``prepared`` in one transaction; on any fault there,
    each in its own (a duplicate recorded concurrently, a bug confined to its file)."""
    results: dict[int, tuple] = {}
    todo = [(claimed, outcome, w) for claimed, outcome, works in prepared for w in works]
    if not todo:
        return
    if len(todo) > 1:
        try:
            with deps.engine.begin() as conn, control.numbering_batch(conn):
                if any(w.plan.sets_850 for _c, _o, w in todo):
                    # The order-key counter before the partner's (as every interchange's own
                    # transaction takes them): two pollers' batches never deadlock.
                    control.allocate(conn, control.ORDER_KEYS_PARTNER, control.ORDER_KEY_KIND, 0)
                with _batch_facts(conn, profile, [w for _c, _o, w in todo]):
                    for claimed, _outcome, w in todo:
                        results[id(w)] = _run(conn, deps, profile, claimed, w)
        except (TechnicalError, SetupError):
            raise
        except Exception as exc:  # noqa: BLE001 - retried one interchange per transaction
            log.info("EDI batch of %d interchanges from %s rolled back (%s: %s); answering "
                     "each in its own transaction", len(todo), profile.id,
                     type(exc).__name__, exc)
            results = {}
    for claimed, outcome, w in todo:
        result = results.get(id(w))
        if result is None:
            try:
                result = _one_transaction(deps, profile, claimed, w)
            except (TechnicalError, SetupError):
                raise  # the state database is unavailable: leave the claim for a retry
            except Exception as exc:  # noqa: BLE001 - a bug must not lose the file
                _bug(deps, profile, claimed, w.ic, exc, outcome)
                continue
        _settle(deps, profile, w, result, outcome)


def _one_transaction(deps: EdiDeps, profile: PartnerProfile, claimed: Claimed, w: _Work):
    for attempt in range(2):
        try:
            with deps.engine.begin() as conn:
                return _run(conn, deps, profile, claimed, w)
        except IntegrityError:
            if attempt:
                raise
            # Another worker recorded the same interchange first: it is a duplicate now.
    raise AssertionError("unreachable")


def _settle(deps: EdiDeps, profile: PartnerProfile, w: _Work, result,
            outcome: FileOutcome) -> None:
    problems, errors, orders, answers = result
    for n, (error_type, message, key) in enumerate(errors):
        _record(deps, profile, f"{w.digest[:32]}:{n}", error_type, message, raw=w.content,
                key=key)
    outcome.problems.extend(problems)
    outcome.orders.extend(orders)
    outcome.answers.extend(answers)
    if any(e[0] not in _PARTNER_COMPLAINTS for e in errors):
        outcome.ok = False


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _envelope_fault(profile: PartnerProfile, ic: x12.Interchange) -> tuple[str, str] | None:
    """(TA1 note code, sentence) when the interchange is not to be read."""
    if ic.errors:
        return ic.errors[0].code, "; ".join(str(f) for f in ic.errors)
    if (ic.sender_qualifier, ic.sender_id) != (profile.partner_isa.qualifier,
                                               profile.partner_isa.id):
        return "006", (f"{ic.file}: segment {ic.file_position} (ISA), element ISA06 = "
                       f"{ic.sender_qualifier}:{ic.sender_id!r}: unknown partner: folder "
                       f"{profile.id} expects {profile.partner_isa.qualifier}:"
                       f"{profile.partner_isa.id}")
    if (ic.receiver_qualifier, ic.receiver_id) != (profile.our_isa.qualifier,
                                                   profile.our_isa.id):
        return "008", (f"{ic.file}: segment {ic.file_position} (ISA), element ISA08 = "
                       f"{ic.receiver_qualifier}:{ic.receiver_id!r}: not addressed to us "
                       f"({profile.our_isa.qualifier}:{profile.our_isa.id})")
    return None


@dataclass
class _Plan:
    """Everything decided about one readable interchange before its transaction."""

    verdicts: list[acks.GroupVerdict] = field(default_factory=list)
    sets_850: list[x12.TransactionSet] = field(default_factory=list)
    acks_in: list[acks.AckedSet] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    units: dict[str, str | None] = field(default_factory=dict)


def _plan(deps: EdiDeps, profile: PartnerProfile, ic: x12.Interchange) -> _Plan:
    plan = _Plan()
    supported = list(profile.sends)
    for group in ic.groups:
        if group.functional_id == "FA":
            verdict = acks.judge_group(group, ["997"])
            for ts, sv in zip(group.sets, verdict.sets, strict=True):
                if sv.accepted:
                    plan.acks_in.extend(acks.read_997(ts))
                else:
                    plan.problems.append(f"{ic.file}: 997 {ts.control} from {profile.id} is "
                                         "not readable and was not applied: "
                                         + _verdict_words(ts, sv))
            continue
        verdict = acks.judge_group(group, supported)
        plan.verdicts.append(verdict)
        for ts, sv in zip(group.sets, verdict.sets, strict=True):
            if not sv.accepted:
                plan.problems.append(_verdict_words(ts, sv))
            if sv.accepted and ts.code == "850":
                plan.sets_850.append(ts)
    # SoR lookups happen here, before the state transaction (no network call inside it).
    for ts in plan.sets_850:
        for seg in ts.body:
            if seg.tag == "PO1":
                sku = documents._sku_of(seg, 6)
                if sku and sku[0] not in plan.units:
                    plan.units[sku[0]] = deps.unit_of(sku[0])
    return plan


def _verdict_words(ts: x12.TransactionSet, sv: acks.SetVerdict) -> str:
    head = f"{ts.file}: transaction set {ts.code}/{ts.control} (segment " \
           f"{ts.segments[0].file_position}): AK5 {sv.status}"
    if "1" in sv.reasons and sv.status == "R" and not sv.findings and not ts.errors:
        return head + f": a {ts.code} is not a document this partner sends us"
    parts = [str(f) for f in ts.errors] + [f.describe(ts.file) for f in sv.findings]
    return head + (": " + "; ".join(parts) if parts else "")


def _interchange_transaction(conn, deps: EdiDeps, profile: PartnerProfile, claimed: Claimed,
                             ic: x12.Interchange, plan: _Plan, fault, *, now, digest, content,
                             sender, isa13, dedupe):
    """One state transaction: inbound record, documents, commands, answers with numbers.

    Returns (problems, exception records to write, order keys, outbound ids).
    """
    # Our own earlier run of this file: recorded under the file's first claim, same bytes.
    # A claim's rename can be lost in a crash too (directories are fsynced once per batch):
    # then the file comes back under its own name, and is recognised by name and digest
    # among the interchanges whose file was never moved on (``written_at`` is set when it
    # is; a partner sending the same file again is a duplicate, not this).
    facts: _BatchFacts | None = conn.info.get(_FACTS_KEY)
    same_bytes = facts.same_bytes.get(digest, []) if facts is not None else conn.execute(
        _SAME_BYTES, {"b_partner": profile.id, "b_digest": digest}).all()
    mine = next((r for r in same_bytes if r.file_name == claimed.first_claim_name), None)
    if mine is None:
        mine = next((r for r in same_bytes if r.written_at is None
                     and r.file_name.startswith(claimed.name + ".")
                     and r.file_name.endswith(".processing")
                     and r.file_name.count(".") == claimed.name.count(".") + 2), None)
    if mine is not None:
        # Our own earlier run of this very file, cut short by a crash after its commit.
        saved = json.loads(mine.problems) if mine.problems else {}
        answers = [r.id for r in conn.execute(
            select(INTERCHANGE.c.id).where(INTERCHANGE.c.answers == mine.id))]
        orders = [r.order_key for r in conn.execute(
            select(DOCUMENT.c.order_key).where(DOCUMENT.c.interchange_id == mine.id,
                                               DOCUMENT.c.direction == "in",
                                               DOCUMENT.c.order_key.is_not(None)))]
        return (saved.get("problems", []), [tuple(e) for e in saved.get("errors", [])],
                orders, answers)
    if fault is not None:
        existing = None
    elif facts is not None:
        existing = facts.by_dedupe.get(dedupe)
    else:
        existing = conn.execute(_BY_DEDUPE, {"b_partner": profile.id, "b_dedupe": dedupe}
                                ).first()
    if existing is not None:
        window = timedelta(days=profile.duplicate_window_days)
        created = existing.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        if now - created <= window:
            fault = (x12.TA1_DUPLICATE,
                     f"{ic.file}: segment {ic.file_position} (ISA), element ISA13 = "
                     f"{ic.control!r}: duplicate interchange: {sender} already sent "
                     f"{ic.control} on {created:%Y-%m-%d %H:%M} (interchange record "
                     f"{existing.id}); not processed again")
        else:
            # Outside the window: the old sighting no longer blocks the number.
            conn.execute(update(INTERCHANGE).where(INTERCHANGE.c.id == existing.id)
                         .values(dedupe_key=None))
    errors: list[tuple[str, str, str | None]] = []
    problems: list[str] = []
    orders: list[str] = []
    answers: list[int] = []
    if fault is not None:
        code, sentence = fault
        status = "duplicate" if code == x12.TA1_DUPLICATE else "rejected"
        errors.append(("EdiDuplicateInterchange" if code == x12.TA1_DUPLICATE
                       else "EdiEnvelopeError", sentence, None))
        problems.append(sentence)
        in_id = _insert_inbound(conn, profile, claimed, ic, now=now, digest=digest,
                                content=content, sender=sender, isa13=isa13, status=status,
                                kind="TA1", dedupe=None,
                                saved={"problems": problems, "errors": errors})
        out = control.record_outbound(conn, profile, kind="TA1", at=now,
                                      extra=[acks.ta1(ic, "R", code)], answers=in_id)
        answers.append(out.id)
        return problems, errors, orders, answers

    kinds = sorted({ts.code for g in ic.groups for ts in g.sets}) or (
        ["TA1"] if ic.ta1s else ["-"])
    status = "acknowledgment" if kinds in (["997"], ["TA1"]) else (
        "accepted" if not plan.problems else "rejected")
    in_id = _insert_inbound(conn, profile, claimed, ic, now=now, digest=digest,
                            content=content, sender=sender, isa13=isa13, status=status,
                            kind=",".join(kinds)[:8], dedupe=dedupe, saved=None)
    for sentence in plan.problems:
        errors.append(("EdiSyntaxError", sentence, None))
        problems.append(sentence)
    # 997s received: the acknowledgment state of what we sent.
    for ack in plan.acks_in:
        matched = _apply_ack(conn, profile, ack, now)
        if not matched:
            sentence = (f"{ic.file}: 997 from {profile.id} acknowledges group {ack.group_control}"
                        + (f" set {ack.control}" if ack.control else "")
                        + " which we never sent")
            errors.append(("EdiUnmatchedAcknowledgment", sentence, None))
            problems.append(sentence)
    # TA1s received: the partner's verdict on one of our interchanges (never answered).
    for seg in ic.ta1s:
        for error_type, sentence in _apply_ta1(conn, profile, ic, seg):
            errors.append((error_type, sentence, None))
            problems.append(sentence)
    # 850s: order commands, or an 855 RD naming why not.
    commands: list[Envelope] = []
    refusals: list[control.OutSet] = []
    gs_of = {id(ts): g for g in ic.groups for ts in g.sets}
    verdict_of = {(v.control, s.control): s for v in plan.verdicts for s in v.sets}
    for ts in plan.sets_850:
        group = gs_of[id(ts)]
        sv = verdict_of[(group.control, ts.control)]
        po = _po_of(ts)
        key = _order_key_for(conn, profile, po) or "0"
        inbound = documents.read_850(ts, profile, order_key=key,
                                     unit_of=lambda sku: plan.units.get(sku))
        detail = {"lines": [_line_json(ln) for ln in inbound.lines],
                  "ordered_on": inbound.ordered_on.isoformat() if inbound.ordered_on else None}
        if inbound.problems or inbound.order is None:
            for p in inbound.problems:
                sentence = f"{p.describe(ic.file)} (850 {ts.control}, PO {po})"
                errors.append(("EdiOrderRefused", sentence, None))
                problems.append(sentence)
            _insert_inbound_doc(conn, profile, in_id, group, ts, now=now, order_key=None,
                                po=po, correlation=None, ack=sv.status, detail=detail,
                                note="; ".join(p.reason for p in inbound.problems))
            if "855" in profile.receives and inbound.ordered_on is not None:
                answers_ = documents.answer_lines(None, inbound.lines,
                                                  {p.line_no or 0: p.reason
                                                   for p in inbound.problems})
                refusals.append(control.OutSet(
                    "855", documents.build_855(
                        po_number=po, ordered_on=inbound.ordered_on, order_key="",
                        currency=_currency_of(ts, profile), ordered=inbound.lines,
                        answers=answers_, acknowledged_on=now.date()),
                    business_domain="order", business_key=None, po_number=po))
            continue
        if key == "0":
            key = control.next_order_key(conn)
            inbound.order = inbound.order.model_copy(update={"key": key})
        env = new_envelope(
            domain="order", kind=queues.KIND_COMMAND, key=key,
            payload={"record": inbound.order.model_dump(mode="json"), "channel": "edi",
                     "partner": profile.id, "interchange": ic.control, "po_number": po},
            source_system=SOURCE_SYSTEM, source_version=in_id,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_URL,
                                      f"edi:{profile.id}:{ic.sender_id}:{ic.control}:"
                                      f"{group.control}:{ts.control}")),
        )
        commands.append(env)
        orders.append(key)
        _insert_inbound_doc(conn, profile, in_id, group, ts, now=now, order_key=key, po=po,
                            correlation=env.correlation_id, ack=sv.status, detail=detail,
                            note=None)
    if commands and facts is not None:
        facts.commands.extend(commands)  # one statement for the batch, at its end
    elif commands:
        add_all_to_outbox(conn, commands, actor_name=queues.COMMAND_ACTOR,
                          queue_name=queues.COMMAND_QUEUE)
    if plan.verdicts and profile.expects_997:
        sets = [control.OutSet("997", acks.build_997([v])) for v in plan.verdicts]
        answers.append(control.record_outbound(conn, profile, kind="997", at=now, sets=sets,
                                               answers=in_id).id)
    if refusals:
        answers.append(control.record_outbound(conn, profile, kind="855", at=now,
                                               sets=refusals, answers=in_id).id)
    if problems:
        conn.execute(update(INTERCHANGE).where(INTERCHANGE.c.id == in_id).values(
            status="rejected" if status != "acknowledgment" else status,
            problems=json.dumps({"problems": problems, "errors": errors})))
    return problems, errors, orders, answers


def _currency_of(ts: x12.TransactionSet, profile: PartnerProfile) -> str:
    return next((s.get(2) for s in ts.body if s.tag == "CUR" and s.get(2)), profile.currency)


def _line_json(ln: documents.OrderedLine) -> dict:
    return {"line_no": ln.line_no, "assigned_id": ln.assigned_id, "sku": ln.sku,
            "quantity": str(ln.quantity), "unit": ln.unit, "unit_price": str(ln.unit_price)}


def _line_from_json(d: dict) -> documents.OrderedLine:
    return documents.OrderedLine(int(d["line_no"]), d["assigned_id"], d["sku"],
                                 Decimal(d["quantity"]), d["unit"], Decimal(d["unit_price"]))


# Statements of the hot path, built once (building one per call cost more CPU than
# running it: py-spy on scripts/bench/edi.py).
_SAME_BYTES = select(INTERCHANGE.c.id, INTERCHANGE.c.problems, INTERCHANGE.c.file_name,
                     INTERCHANGE.c.written_at).where(
    INTERCHANGE.c.partner == bindparam("b_partner"), INTERCHANGE.c.direction == "in",
    INTERCHANGE.c.digest == bindparam("b_digest"))
_BY_DEDUPE = select(INTERCHANGE.c.id, INTERCHANGE.c.created_at).where(
    INTERCHANGE.c.partner == bindparam("b_partner"), INTERCHANGE.c.direction == "in",
    INTERCHANGE.c.dedupe_key == bindparam("b_dedupe"))
_INSERT_INBOUND = INTERCHANGE.insert().returning(INTERCHANGE.c.id)
_ORDER_KEY_OF_PO = select(DOCUMENT.c.order_key).where(
    DOCUMENT.c.partner == bindparam("b_partner"), DOCUMENT.c.direction == "in",
    DOCUMENT.c.doc_type == "850", DOCUMENT.c.po_number == bindparam("b_po"),
    DOCUMENT.c.order_key.is_not(None)).order_by(DOCUMENT.c.id.desc()).limit(1)
_SENT = select(DOCUMENT.c.id).where(
    DOCUMENT.c.partner == bindparam("b_partner"), DOCUMENT.c.direction == "out",
    DOCUMENT.c.doc_type == bindparam("b_doc"), DOCUMENT.c.business_key == bindparam("b_key"))
_SENT_FOR_ORDER = select(DOCUMENT.c.id).where(
    DOCUMENT.c.partner == bindparam("b_partner"), DOCUMENT.c.direction == "out",
    DOCUMENT.c.doc_type == bindparam("b_doc"), DOCUMENT.c.order_key == bindparam("b_order")
).limit(1)
_HELD_ONE = select(HELD.c.business_key).where(
    HELD.c.partner == bindparam("b_partner"), HELD.c.doc_type == bindparam("b_doc"),
    HELD.c.business_key == bindparam("b_key"))
_UNHOLD = delete(HELD).where(HELD.c.partner == bindparam("b_partner"),
                             HELD.c.doc_type == bindparam("b_doc"),
                             HELD.c.business_key == bindparam("b_key"))
_ORDER_850 = select(DOCUMENT.c.detail, DOCUMENT.c.po_number).where(
    DOCUMENT.c.partner == bindparam("b_partner"), DOCUMENT.c.direction == "in",
    DOCUMENT.c.doc_type == "850", DOCUMENT.c.order_key == bindparam("b_order")
).order_by(DOCUMENT.c.id.desc()).limit(1)


#: Exception types that report a partner's complaint about what we sent, not a fault in
#: the file that carried it: the file still goes to ``processed/``.
_PARTNER_COMPLAINTS = frozenset({"EdiInterchangeRejected"})
#: TA1 note codes (X12 I18) as words, for the exception record.
_TA1_NOTES = {"000": "no error", "001": "ISA13 and IEA02 do not match",
              "021": "invalid number of included groups", "023": "improper end of file",
              "024": "invalid interchange content", "025": "duplicate interchange control "
              "number"}


def _apply_ta1(conn, profile: PartnerProfile, ic: x12.Interchange, seg: x12.Segment
               ) -> list[tuple[str, str]]:
    """Record a TA1 the partner sent on our outbound interchange (``ta1`` = status and
    note, e.g. ``R025``); returns the exception records it calls for: a rejection or an
    error note, or a TA1 for an interchange we never sent."""
    control_no, status, note = seg.get(1), seg.get(4), seg.get(5)
    where = f"{ic.file}: segment {seg.file_position} (TA1)"
    try:
        ours = int(control_no)
    except (TypeError, ValueError):
        return [("EdiUnmatchedAcknowledgment",
                 f"{where}, element TA101 = {control_no!r}: not an interchange control "
                 "number")]
    row = conn.execute(select(INTERCHANGE.c.id, INTERCHANGE.c.kind).where(
        INTERCHANGE.c.partner == profile.id, INTERCHANGE.c.direction == "out",
        INTERCHANGE.c.isa13 == ours).order_by(INTERCHANGE.c.id.desc())).first()
    if row is None:
        return [("EdiUnmatchedAcknowledgment",
                 f"{where}: TA1 from {profile.id} acknowledges interchange {ours} which we "
                 "never sent")]
    conn.execute(update(INTERCHANGE).where(INTERCHANGE.c.id == row.id).values(
        ta1=f"{status or '?'}{note or ''}"[:8]))
    if status == "A" and note in (None, "", x12.TA1_NO_ERROR):
        return []
    return [("EdiInterchangeRejected",
             f"{where}: {profile.id} answered our interchange {ours} ({row.kind}) with TA1 "
             f"{status} note {note} ({_TA1_NOTES.get(note or '', 'unknown note')})")]


def _insert_inbound(conn, profile, claimed: Claimed, ic: x12.Interchange, *, now, digest,
                    content, sender, isa13, status, kind, dedupe, saved) -> int:
    return int(conn.execute(_INSERT_INBOUND, {
        "partner": profile.id, "direction": "in", "sender": sender, "isa13": isa13,
        "digest": digest, "dedupe_key": dedupe, "status": status, "kind": kind,
        "file_name": claimed.first_claim_name, "content": content, "resends": 0,
        "created_at": now, "written_at": None, "answers": None, "ta1": None,
        "problems": json.dumps(saved) if saved else None}).scalar_one())


def _insert_inbound_doc(conn, profile, in_id: int, group: x12.Group, ts: x12.TransactionSet,
                        *, now, order_key, po, correlation, ack, detail, note) -> None:
    control.insert_documents(conn, [{
        "partner": profile.id, "direction": "in", "doc_type": ts.code,
        "interchange_id": in_id,
        "gs06": int(group.control) if group.control.isdigit() else 0, "st02": ts.control[:9],
        "business_domain": "order", "business_key": order_key, "order_key": order_key,
        "po_number": po[:30] or None, "correlation_id": correlation, "ack_status": ack,
        "ack_note": note, "ack_at": None, "detail": json.dumps(detail), "created_at": now}])


def _order_key_for(conn, profile: PartnerProfile, po: str) -> str | None:
    """The order key an earlier accepted 850 of this PO got (a restated order keeps it)."""
    if not po:
        return None
    facts: _BatchFacts | None = conn.info.get(_FACTS_KEY)
    if facts is not None:
        return facts.po_keys.get(po[:30])
    return conn.execute(_ORDER_KEY_OF_PO, {"b_partner": profile.id, "b_po": po[:30]}
                        ).scalar_one_or_none()


def _po_of(ts: x12.TransactionSet) -> str:
    return next((s.get(3) for s in ts.body if s.tag == "BEG"), "")


#: ``conn.info`` key of an inbound batch's ``_BatchFacts``.
_FACTS_KEY = "coexist_edi_inbound_facts"
_SAME_BYTES_MANY = select(INTERCHANGE.c.id, INTERCHANGE.c.problems, INTERCHANGE.c.file_name,
                          INTERCHANGE.c.written_at, INTERCHANGE.c.digest).where(
    INTERCHANGE.c.partner == bindparam("b_partner"), INTERCHANGE.c.direction == "in",
    INTERCHANGE.c.digest.in_(bindparam("b_digests", expanding=True)))
_BY_DEDUPE_MANY = select(INTERCHANGE.c.id, INTERCHANGE.c.created_at,
                         INTERCHANGE.c.dedupe_key).where(
    INTERCHANGE.c.partner == bindparam("b_partner"), INTERCHANGE.c.direction == "in",
    INTERCHANGE.c.dedupe_key.in_(bindparam("b_dedupes", expanding=True)))
_ORDER_KEYS_OF_POS = select(DOCUMENT.c.po_number, DOCUMENT.c.order_key).where(
    DOCUMENT.c.partner == bindparam("b_partner"), DOCUMENT.c.direction == "in",
    DOCUMENT.c.doc_type == "850", DOCUMENT.c.po_number.in_(bindparam("b_pos", expanding=True)),
    DOCUMENT.c.order_key.is_not(None)).order_by(DOCUMENT.c.id)


@dataclass
class _BatchFacts:
    """What an inbound batch's interchanges look up, read with one query each up front,
    and the order commands it queues, written with one statement at its end."""

    same_bytes: dict[str, list]
    by_dedupe: dict[str, object]
    po_keys: dict[str, str]
    commands: list[Envelope] = field(default_factory=list)


@contextlib.contextmanager
def _batch_facts(conn, profile: PartnerProfile, works: Sequence[_Work]):
    """Within it, ``_interchange_transaction`` on ``conn`` takes its look-ups (our own earlier
    run of the same bytes, an earlier sighting of the sender:ISA13, the order key of a
    restated PO) from three queries for the whole batch instead of three per interchange,
    and defers its document rows and order commands to one multi-row statement each at the
    end (py-spy on scripts/bench/edi.py: these per-interchange statements were ~40 % of the
    batch transaction's CPU).  Only when no two interchanges of the batch share their
    bytes, their sender:ISA13 or a PO number: none of them then reads what another one
    writes.  Otherwise each statement runs as it comes, as in a transaction of its own."""
    digests = [w.digest for w in works]
    dedupes = [w.dedupe for w in works if w.fault is None]
    pos = [_po_of(ts)[:30] for w in works for ts in w.plan.sets_850]
    pos = [p for p in pos if p]
    if len(set(digests)) < len(digests) or len(set(dedupes)) < len(dedupes) \
            or len(set(pos)) < len(pos):
        yield
        return
    same: dict[str, list] = {}
    for r in conn.execute(_SAME_BYTES_MANY, {"b_partner": profile.id, "b_digests": digests}):
        same.setdefault(r.digest, []).append(r)
    seen = {r.dedupe_key: r for r in conn.execute(
        _BY_DEDUPE_MANY, {"b_partner": profile.id, "b_dedupes": dedupes})} if dedupes else {}
    po_keys = {r.po_number: r.order_key for r in conn.execute(
        _ORDER_KEYS_OF_POS, {"b_partner": profile.id, "b_pos": pos})} if pos else {}
    facts = _BatchFacts(same, seen, po_keys)
    conn.info[_FACTS_KEY] = facts
    try:
        with control.deferred_documents(conn):
            yield
            add_all_to_outbox(conn, facts.commands, actor_name=queues.COMMAND_ACTOR,
                              queue_name=queues.COMMAND_QUEUE)
    finally:
        conn.info.pop(_FACTS_KEY, None)


def _apply_ack(conn, profile: PartnerProfile, ack: acks.AckedSet, now: datetime) -> bool:
    if not ack.group_control.isdigit():
        return False
    where = [DOCUMENT.c.partner == profile.id, DOCUMENT.c.direction == "out",
             DOCUMENT.c.gs06 == int(ack.group_control)]
    if ack.control is not None:
        where.append(DOCUMENT.c.st02 == ack.control)
    rows = conn.execute(update(DOCUMENT).where(*where).values(
        ack_status=ack.status, ack_note=ack.note or None, ack_at=now)).rowcount
    return rows > 0


# =========================================================================== outbound


#: The order documents of one order go out in this order within a batch: an 855 before the
#: 856, an 856 before the 810 that bills it.
_DOC_RANK = {"855": 0, "856": 1, "810": 2}


@dataclass
class _Send:
    """One event that may become a document: its SoR reads done, decided in the transaction."""

    index: int
    env: Envelope
    profile: PartnerProfile
    doc: str
    record: Order | Shipment | Invoice
    order: Order | None
    now: datetime
    #: The SoR's units of the document's products, read before the transaction.
    units: dict[str, str | None]

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def order_key(self) -> str:
        """The key of the order the document belongs to."""
        return self.record.key if isinstance(self.record, Order) else self.record.order_key


def handle_events(envelopes: Sequence[Envelope], deps: EdiDeps, *,
                  release: bool = True) -> list[Outcome]:
    """855/856/810 for canonical events; one outcome per envelope, in order.

    First every SoR read (the order, the products' units), outside any transaction.  Then
    the documents of the batch are decided, numbered and recorded in ONE state
    transaction, 855s first, then 856s, then 810s, so an 810 whose 856 is in the same
    batch sees it sent and does not wait.  A fault there (a concurrent worker's
    duplicate, a document that fails its checks) rolls it back and each document gets its
    own transaction.  Then every file is written in ISA13 order (``flush_pending``).
    """
    out: list[Outcome | None] = [None] * len(envelopes)
    sends: list[_Send] = []
    for i, env in enumerate(envelopes):
        try:
            decided = _read_sor(i, env, deps)
        except Exception as exc:  # noqa: BLE001 - classified in _failed
            out[i] = _failed(deps, env, exc)
            continue
        if isinstance(decided, Outcome):
            out[i] = decided
        else:
            sends.append(decided)
    # Partner by partner (two batches lock the partners' counter rows in the same order, so
    # they never deadlock on PostgreSQL), and within a partner 855s, 856s, then 810s.
    sends.sort(key=lambda s: (s.profile.id, _DOC_RANK.get(s.doc, 9), s.index))
    done: dict[int, Outcome] = {}
    if len(sends) > 1:
        try:
            with deps.engine.begin() as conn, control.numbering_batch(conn):
                for s in sends:
                    done[s.index] = _send(conn, deps, s)
        except Exception as exc:  # noqa: BLE001 - retried one document per transaction
            log.info("EDI batch of %d documents rolled back (%s: %s); numbering each in its "
                     "own transaction", len(sends), type(exc).__name__, exc)
            done = {}
    for s in sends:
        if s.index not in done:
            try:
                with deps.engine.begin() as conn:
                    done[s.index] = _send(conn, deps, s)
            except IntegrityError:
                done[s.index] = Outcome(s.env.message_id, "duplicate",
                                        f"{s.doc} for {s.env.domain} {s.key} was sent to "
                                        f"{s.profile.id} already (concurrently)")
            except Exception as exc:  # noqa: BLE001 - classified in _failed
                done[s.index] = _failed(deps, s.env, exc)
        out[s.index] = done[s.index]
    # The batch's files are written after their numbers were committed, lower ISA13s
    # first (a peer's too): one directory fsync for the batch.  A crash in between leaves
    # them ``allocated`` for the next flush.
    flush_pending(deps, ids=[o.interchange_id for o in done.values() if o.status == "sent"
                             and o.interchange_id is not None])
    if release:
        # Held documents of the orders whose 855 or 856 went out here, or whose document
        # was held here while a concurrent batch sent the one it waits for (one of the two
        # commits sees the other).
        # (An order whose following documents went out in this batch too needs no look:
        # a second one of them held elsewhere is left to the poll.)
        went = {(s.profile.id, s.order_key, s.doc) for s in sends
                if done[s.index].status == "sent"}
        touched = {(s.profile.id, s.order_key) for s in sends
                   if done[s.index].status == "held"
                   or (s.doc in _AWAITED and done[s.index].status == "sent"
                       and not all((s.profile.id, s.order_key, later) in went
                                   for later in _FOLLOWERS[s.doc]))}
        if touched:
            try:
                release_held(deps, touched)
            except Exception:  # noqa: BLE001 - still held: the next poll releases them
                log.exception("releasing held EDI documents failed; the next poll tries "
                              "again")
    return [o for o in out if o is not None]


def _failed(deps: EdiDeps, env: Envelope, exc: Exception) -> Outcome:
    if isinstance(exc, BusinessError | ValueError | ValidationError) \
            and not isinstance(exc, TechnicalError):
        _record(deps, None, env.message_id, type(exc).__name__,
                f"EDI {DOC_FOR_DOMAIN.get(env.domain, '?')} for {env.domain} {env.key}: "
                f"{exc}", envelope=env)
        return Outcome(env.message_id, "business_error", str(exc))
    # the caller retries this one alone
    return Outcome(env.message_id, "technical_error", f"{type(exc).__name__}: {exc}")


def _read_sor(index: int, env: Envelope, deps: EdiDeps) -> Outcome | _Send:
    """The SoR reads one event needs (no state transaction is open), or why it needs none."""
    doc = DOC_FOR_DOMAIN.get(env.domain)
    if doc is None or env.kind not in (queues.KIND_EVENT, queues.KIND_UPSERT):
        return Outcome(env.message_id, "skipped", f"{env.kind} of {env.domain}: no EDI document")
    record = decode(env.domain, env.payload["record"])
    order: Order | None
    if isinstance(record, Order):
        order, customer = record, record.customer_key
    elif isinstance(record, Shipment):
        order = deps.get_order(record.order_key)
        if order is None:
            raise TechnicalError(f"shipment {record.key}: order {record.order_key} is not in the "
                                 "system of record yet")
        customer = order.customer_key
    else:
        assert isinstance(record, Invoice)
        order, customer = deps.get_order(record.order_key), record.customer_key
    profile = deps.settings.owner_of(customer)
    if profile is None or not deps.may_receive(profile, customer):
        return Outcome(env.message_id, "skipped", f"customer {customer} has no trading partner")
    if doc not in profile.receives:
        return Outcome(env.message_id, "skipped", f"partner {profile.id} does not receive {doc}")
    units: dict[str, str | None] = {}
    if doc in ("856", "810"):
        for line in record.lines:  # type: ignore[union-attr]
            if line.sku not in units:
                units[line.sku] = deps.unit_of(line.sku)
    return _Send(index, env, profile, doc, record, order, deps.clock(), units)


def _hold(conn, s: _Send, waits_for: str, release_after: datetime) -> Outcome:
    """Hold the document in ``edi_held`` (the newest event of its business object wins;
    the first hold's time is kept) until ``waits_for`` of its order goes out or the hold
    is over: ``release_held`` sends it then.  Durable, unlike a bus retry, which may give
    up before the hold ends."""
    values = {"order_key": s.order_key, "waits_for": waits_for,
              "envelope": s.env.model_dump_json(), "release_after": release_after}
    key = {"b_partner": s.profile.id, "b_doc": s.doc, "b_key": s.key}
    if conn.execute(_HELD_ONE, key).first() is None:
        conn.execute(HELD.insert(), {"partner": s.profile.id, "doc_type": s.doc,
                                     "business_key": s.key, "held_at": s.now, **values})
    else:
        conn.execute(update(HELD).where(HELD.c.partner == s.profile.id,
                                        HELD.c.doc_type == s.doc,
                                        HELD.c.business_key == s.key).values(**values))
    why = _WHY_WAIT[waits_for]
    return Outcome(s.env.message_id, "held",
                   f"{s.doc} for {s.env.domain} {s.key} held for the {waits_for} of order "
                   f"{s.order_key} (until {release_after:%Y-%m-%d %H:%M} UTC at the "
                   f"latest): {why}")


#: Documents others wait for, and why a partner must get them first.
_WHY_WAIT = {"855": "a partner never gets a shipment or a bill for an order it has not "
                    "seen confirmed",
             "856": "a partner is never billed before it is shipped"}
_AWAITED = frozenset(_WHY_WAIT)
#: The documents that may wait for each awaited one.
_FOLLOWERS = {"855": ("856", "810"), "856": ("810",)}

#: Most held documents one ``release_held`` call handles per round.
RELEASE_LIMIT = 500


def _awaited_sent():
    return exists().where(DOCUMENT.c.partner == HELD.c.partner,
                          DOCUMENT.c.direction == "out", DOCUMENT.c.doc_type == HELD.c.waits_for,
                          DOCUMENT.c.order_key == HELD.c.order_key)


def release_held(deps: EdiDeps, orders: Iterable[tuple[str, str]] | None = None) -> list[Outcome]:
    """Send the held documents whose awaited document went out or whose hold is over.

    ``orders``: only those (partner, order key) pairs, and only what has its awaited
    document sent (after a batch that sent 855s/856s or held documents: of two concurrent
    batches, one holding a document and one sending what it waits for, the later to commit
    finds the other's row here).  Without it (each poll): every held document whose awaited
    one is out or whose hold is over.  What goes out may release the next one of its order
    (an 856 sent lets its 810 go): that is looked at again here, up to the chain's length.
    A document whose SoR cannot be read now, or that waits for another one still, stays
    held for the next poll."""
    outcomes: list[Outcome] = []
    query = select(HELD.c.envelope, HELD.c.partner, HELD.c.order_key)
    if orders is not None:
        pairs = sorted(set(orders))
        if not pairs:
            return []
        query = query.where(_awaited_sent(), _of_orders(pairs))
    else:
        query = query.where(or_(_awaited_sent(), HELD.c.release_after < deps.clock()))
    for _round in range(len(_AWAITED) + 1):
        with deps.engine.connect() as conn:
            rows = conn.execute(query.order_by(HELD.c.held_at).limit(RELEASE_LIMIT)).all()
        if not rows:
            break
        envelopes = [Envelope.model_validate_json(r.envelope) for r in rows]
        order_of = {e.message_id: (r.partner, r.order_key) for e, r in zip(envelopes, rows,
                                                                            strict=True)}
        released = handle_events(envelopes, deps, release=False)
        for o in released:
            log.info("edi held document %s", o.status, extra={"message_id": o.message_id,
                                                               "detail": o.detail})
        outcomes.extend(released)
        sent = sorted({order_of[o.message_id] for o in released
                       if o.status == "sent" and o.message_id in order_of})
        if not sent:
            break
        # What just went out may be what another held document of its order waits for.
        query = select(HELD.c.envelope, HELD.c.partner, HELD.c.order_key).where(
            _awaited_sent(), _of_orders(sent))
    return outcomes


def _of_orders(pairs: Sequence[tuple[str, str]]):
    return or_(*(and_(HELD.c.partner == p, HELD.c.order_key == k) for p, k in pairs))


def _send(conn, deps: EdiDeps, s: _Send) -> Outcome:
    """Decide, number and record one document in ``conn``'s transaction (or find it sent,
    or find why it is not sent: not shipped yet, void, an 810 that waits for its 856)."""
    env, profile, doc, record = s.env, s.profile, s.doc, s.record
    order = s.order
    by_850 = None
    if doc in ("856", "810") and order is not None:
        by_850 = conn.execute(_ORDER_850, {"b_partner": profile.id, "b_order": order.key}
                              ).first()
        order = _with_partners_po(order, by_850)
    built = _build(conn, doc, record, order, profile, s.units, s.now)
    if isinstance(built, str):
        outcome = Outcome(env.message_id, "skipped", built)
    elif _already_sent(conn, profile, doc, record.key):
        outcome = Outcome(env.message_id, "duplicate", f"{doc} for {env.domain} {record.key} "
                          f"was sent to {profile.id} already")
    else:
        waiting = _waits_for(conn, profile, doc, s.order_key, order, by_850 is not None, env,
                             s.now)
        if waiting is not None:
            return _hold(conn, s, *waiting)
        outcome = None
    if doc in _HOLDABLE:
        # Whatever becomes of it now (sent, a duplicate, void, not shipped after all), it
        # no longer waits.
        conn.execute(_UNHOLD, {"b_partner": profile.id, "b_doc": doc, "b_key": record.key})
    if outcome is not None:
        return outcome
    sent = control.record_outbound(
        conn, profile, kind=doc, at=s.now,
        sets=[control.OutSet(doc, built.body, env.domain, record.key, built.order_key,
                             built.po_number, env.correlation_id, built.detail)])
    return Outcome(env.message_id, "sent", f"{doc} {sent.file_name}", sent.id)


def _build(conn, doc: str, record, order: Order | None, profile: PartnerProfile,
           units: dict[str, str | None], now: datetime) -> control.OutSet | str:
    """The set to send, or why nothing is sent (yet)."""
    if doc == "855":
        assert order is not None
        if order.status is OrderStatus.DRAFT:
            return f"order {order.key} is a draft"
        row = conn.execute(_ORDER_850, {"b_partner": profile.id, "b_order": order.key}
                           ).first()
        if row is None:
            return f"order {order.key} did not come by 850 from {profile.id}: no 855"
        detail = json.loads(row.detail)
        ordered = [_line_from_json(d) for d in detail["lines"]]
        ordered_on = datetime.fromisoformat(detail["ordered_on"]).date()
        answers = documents.answer_lines(order, ordered)
        body = documents.build_855(po_number=row.po_number or order.customer_po or "",
                                   ordered_on=ordered_on, order_key=order.key,
                                   currency=order.currency, ordered=ordered, answers=answers,
                                   acknowledged_on=now.date())
        return control.OutSet("855", body, order_key=order.key, po_number=row.po_number,
                              detail={a: b.status for a, b in answers.items()})
    if doc == "856":
        assert isinstance(record, Shipment) and order is not None
        if documents.shipped_at(record) is None:
            return f"shipment {record.key} has not shipped yet"
        body = documents.build_856(record, order, structure=profile.asn_structure,
                                   unit_of=units.get)
        return control.OutSet("856", body, order_key=order.key, po_number=order.customer_po)
    assert isinstance(record, Invoice)
    if record.status is InvoiceStatus.VOID:
        return f"invoice {record.key} is void"
    body = documents.build_810(record, order, unit_of=units.get)
    return control.OutSet("810", body, order_key=record.order_key,
                          po_number=order.customer_po if order else None)


def _with_partners_po(order: Order, by_850) -> Order:
    """The order with the PO number exactly as the partner's 850 gave it: an ERP may store
    it normalised (the legacy ERP upper-cases it), and a partner matches 856s and 810s to
    its orders by that number (mock-edi found it in the e2e)."""
    if by_850 is None or not by_850.po_number or by_850.po_number == order.customer_po:
        return order
    return order.model_copy(update={"customer_po": by_850.po_number})


#: Documents that may wait for another one of their order (``PartnerProfile.must_follow``).
_HOLDABLE = frozenset({"856", "810"})


def _waits_for(conn, profile: PartnerProfile, doc: str, order_key: str, order: Order | None,
               came_by_850: bool, env: Envelope, now: datetime
               ) -> tuple[str, datetime] | None:
    """(the document it waits for, when it goes without it) while ``doc`` must wait: one
    it must follow (``profile.must_follow``) is not sent yet for its order, and the event
    is younger than that one's hold.  An 855 is waited for only when the order came by 850
    from this partner (no other order gets one); nothing is waited for while the order is
    not in the SoR.  (It is then held in ``edi_held``; ``release_held`` sends it once the
    awaited one is out, and after the hold it goes anyway: an order that never ships is
    billed, one never confirmed is shipped.)"""
    if order is None:
        return None
    for awaited, minutes in profile.must_follow(doc):
        release_after = _aware(env.occurred_at) + timedelta(minutes=minutes)
        if now >= release_after:
            continue
        if awaited == "855" and not came_by_850:
            continue
        sent = conn.execute(_SENT_FOR_ORDER, {"b_partner": profile.id, "b_doc": awaited,
                                              "b_order": order_key}).first()
        if sent is None:
            return awaited, release_after
    return None


def _already_sent(conn, profile: PartnerProfile, doc: str, key: str) -> bool:
    return conn.execute(_SENT, {"b_partner": profile.id, "b_doc": doc, "b_key": key}
                        ).first() is not None


# =========================================================================== files out


#: Outbound rows whose file is not yet the partner's for sure: numbered and recorded
#: (``allocated``), or fsynced under their stage name (``staged``).
UNWRITTEN = ("allocated", "staged")
#: PostgreSQL advisory lock key of ``flush_pending`` (one flusher at a time, any process).
_FLUSH_LOCK_KEY = int.from_bytes(hashlib.sha256(b"coexist-edi-flush").digest()[:8], "big",
                                 signed=True)
_FLUSH_THREAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _flush_lock(engine: Engine):
    """One ``flush_pending`` at a time: a thread lock within the process, and across
    processes a PostgreSQL session advisory lock (released by the server when a killed
    process's connection goes) or, on a SQLite file, an ``flock`` beside it.  Two flushers
    writing the same ``allocated`` row's file, the second after the partner took the
    first's, was the chaos run's "reused ISA13" (same name, same bytes, twice)."""
    with _FLUSH_THREAD_LOCK:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _FLUSH_LOCK_KEY})
                conn.commit()
                try:
                    yield
                finally:
                    try:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                                     {"k": _FLUSH_LOCK_KEY})
                        conn.commit()
                    except Exception:  # noqa: BLE001 - never pool a session holding it
                        log.warning("EDI flush lock not released; closing its connection")
                        conn.invalidate()
            return
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        import fcntl

        with open(f"{database}.edi-flush.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def flush_pending(deps: EdiDeps, ids: Sequence[int] | None = None) -> list[int]:
    """Write every outbound interchange not yet ``written`` (or those ``ids``); returns ids
    written.

    Called after each commit and at start-up: an interchange whose numbers were
    committed but whose file never got its final name (a crash in between) is
    written now, with the same bytes; one whose file got it (a crash after the rename,
    the row still ``staged``) is never written again, even when the partner has taken the
    file away already.  Under ``_flush_lock``: its file is fsynced under its stage name,
    the row marked ``staged`` (committed), the stage renamed to the final name, the row
    marked ``written``.

    Files are written in ISA13 order per partner, and with ``ids`` every lower number of
    the same partner still unwritten goes first, whoever committed it (another
    thread, another process, one killed before its rename): a partner never sees an
    ISA13 file appear after a higher one.  A number is committed before the next one is
    allocated (the counter row's lock), so every lower number is visible here.
    """
    if ids is not None and not ids:
        return []
    with _flush_lock(deps.engine):
        return _flush_locked(deps, ids)


def _flush_locked(deps: EdiDeps, ids: Sequence[int] | None) -> list[int]:
    stmt = select(INTERCHANGE.c.id, INTERCHANGE.c.partner, INTERCHANGE.c.isa13,
                  INTERCHANGE.c.file_name, INTERCHANGE.c.content, INTERCHANGE.c.status).where(
        INTERCHANGE.c.direction == "out", INTERCHANGE.c.status.in_(UNWRITTEN))
    if ids is not None:
        partners = select(INTERCHANGE.c.partner).where(
            INTERCHANGE.c.id.in_(list(ids))).distinct()
        stmt = stmt.where(INTERCHANGE.c.partner.in_(partners))
    with deps.engine.connect() as conn:
        rows = conn.execute(stmt.order_by(INTERCHANGE.c.partner, INTERCHANGE.c.isa13,
                                          INTERCHANGE.c.id)).all()
    if ids is not None:
        wanted = set(ids)
        upto: dict[str, int] = {}
        for row in rows:
            if row.id in wanted:
                upto[row.partner] = max(upto.get(row.partner, 0), int(row.isa13))
        rows = [r for r in rows if int(r.isa13) <= upto.get(r.partner, -1)]
    done: list[int] = []
    by_partner: dict[str, list] = {}
    for row in rows:
        by_partner.setdefault(row.partner, []).append(row)
    for partner, mine in by_partner.items():
        profile = deps.settings.partner(partner)
        if profile is None:
            continue
        folder = deps.folder(profile)
        fresh = [r for r in mine if r.status == "allocated"]
        staged = folder.stage_many([(r.file_name, bytes(r.content)) for r in fresh])
        taken = {r.id for r, res in zip(fresh, staged, strict=True)
                 if isinstance(res, OutboundExists)}
        for r, res in zip(fresh, staged, strict=True):
            if isinstance(res, OutboundExists):
                _record(deps, profile, f"out:{r.id}", "EdiOutboundNameTaken", str(res))
        now_staged = [r.id for r, res in zip(fresh, staged, strict=True) if res is True]
        if now_staged:
            with deps.engine.begin() as conn:
                conn.execute(update(INTERCHANGE).where(
                    INTERCHANGE.c.id.in_(now_staged), INTERCHANGE.c.status == "allocated")
                    .values(status="staged"))
        publish = [r for r in mine if r.id not in taken]
        results = folder.publish_many([(r.file_name, bytes(r.content)) for r in publish])
        for row, result in zip(publish, results, strict=True):
            if isinstance(result, OutboundExists):
                _record(deps, profile, f"out:{row.id}", "EdiOutboundNameTaken", str(result))
            else:
                done.append(row.id)
        folder.sync_outbound()  # the names are durable before any row says "written"
    if done:
        with deps.engine.begin() as conn:
            conn.execute(update(INTERCHANGE).where(INTERCHANGE.c.id.in_(done),
                                                   INTERCHANGE.c.status.in_(UNWRITTEN))
                         .values(status="written", written_at=utcnow()))
    return done


# =========================================================================== records


def _record(deps: EdiDeps, profile: PartnerProfile | None, ident: str, error_type: str,
            message: str, *, raw: bytes | None = None, envelope: Envelope | None = None,
            key: str | None = None) -> None:
    """One business exception; the same ``ident`` recorded again updates the same record."""
    deps.exceptions.record(
        failure_class="business", queue_name=EXCEPTION_QUEUE, actor_name=EXCEPTION_ACTOR,
        message_id=f"edi:{profile.id}:{ident}" if profile is not None else ident,
        envelope=envelope, raw=raw, message=None, error_type=error_type,
        error_message=message, call_site="workers.edi.handlers", attempts=1,
        domain=envelope.domain if envelope is not None else "order", key=key)


# =========================================================================== reading


@dataclass(frozen=True)
class DocumentView:
    """One EDI document for ``coexist trace`` and ``coexist edi status``."""

    id: int
    partner: str
    direction: str
    doc_type: str
    isa13: int
    gs06: int
    st02: str
    business_domain: str | None
    business_key: str | None
    order_key: str | None
    po_number: str | None
    correlation_id: str | None
    ack_status: str
    ack_note: str | None
    created_at: datetime
    file_name: str
    interchange_status: str


def _views(conn, where) -> list[DocumentView]:
    stmt = (select(DOCUMENT, INTERCHANGE.c.isa13, INTERCHANGE.c.file_name,
                   INTERCHANGE.c.status.label("interchange_status"))
            .join(INTERCHANGE, INTERCHANGE.c.id == DOCUMENT.c.interchange_id)
            .where(where).order_by(DOCUMENT.c.created_at, DOCUMENT.c.id))
    out = []
    for r in conn.execute(stmt):
        m = r._mapping
        out.append(DocumentView(
            m["id"], m["partner"], m["direction"], m["doc_type"], int(m["isa13"]),
            int(m["gs06"]), m["st02"], m["business_domain"], m["business_key"], m["order_key"],
            m["po_number"], m["correlation_id"], m["ack_status"], m["ack_note"],
            _aware(m["created_at"]), m["file_name"], m["interchange_status"]))
    return out


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def documents_for(engine: Engine, *, domain: str | None = None, key: str | None = None,
                  correlation_id: str | None = None) -> list[DocumentView]:
    """Every EDI document of one business object (or one correlation), oldest first.

    ``order:KEY`` finds the 850, the 855, every 856 and 810 of the order, and the
    997s that answered the 850's interchange.
    """
    if correlation_id is not None:
        where = DOCUMENT.c.correlation_id == correlation_id
    elif domain == "order":
        where = DOCUMENT.c.order_key == key
    else:
        where = and_(DOCUMENT.c.business_domain == domain, DOCUMENT.c.business_key == key)
    with engine.connect() as conn:
        docs = _views(conn, where)
        inbound = {d.id: d for d in docs if d.direction == "in"}
        if inbound:
            # The 997 answering an 850 is recorded against its inbound interchange.
            in_ids = select(DOCUMENT.c.interchange_id).where(DOCUMENT.c.id.in_(list(inbound)))
            answer_ids = select(INTERCHANGE.c.id).where(INTERCHANGE.c.answers.in_(in_ids))
            extra = _views(conn, and_(DOCUMENT.c.interchange_id.in_(answer_ids),
                                      DOCUMENT.c.doc_type == "997"))
            seen = {d.id for d in docs}
            docs += [d for d in extra if d.id not in seen]
    return sorted(docs, key=lambda d: (d.created_at, d.id))



@dataclass(frozen=True)
class HeldView:
    """A document held for the one of its order it must follow (``edi_held``: an 856 for
    its 855, an 810 for its 856), for ``coexist edi status`` and ``coexist edi documents``."""

    partner: str
    #: ``856`` or ``810``.
    doc_type: str
    #: ``shipment`` or ``invoice``, and its key.
    business_domain: str
    business_key: str
    order_key: str
    #: The document of the order it waits for: ``855`` or ``856``.
    waits_for: str
    correlation_id: str | None
    held_at: datetime
    release_after: datetime
    #: Seconds since it was first held.
    age_s: float
    #: Past ``release_after`` by more than ``stale_after_s``: no poll released it.
    overdue: bool


_DOMAIN_OF_DOC = {doc: domain for domain, doc in DOC_FOR_DOMAIN.items()}


def held_documents(engine: Engine, *, now: datetime, order_key: str | None = None,
                   domain: str | None = None, key: str | None = None,
                   correlation_id: str | None = None,
                   stale_after_s: float | None = None) -> list[HeldView]:
    """The held documents (all, or one order's, one business object's, one correlation's),
    oldest first."""
    if stale_after_s is None:
        stale_after_s = STALE_INBOUND_S
    query = select(HELD)
    if order_key is not None:
        query = query.where(HELD.c.order_key == order_key)
    if domain is not None:
        query = query.where(HELD.c.doc_type == DOC_FOR_DOMAIN.get(domain, "?"))
    if key is not None:
        query = query.where(HELD.c.business_key == key)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(HELD.c.held_at, HELD.c.doc_type,
                                           HELD.c.business_key)).all()
    out = []
    for r in rows:
        try:
            corr = Envelope.model_validate_json(r.envelope).correlation_id
        except ValueError:
            corr = None
        if correlation_id is not None and corr != correlation_id:
            continue
        held, release = _aware(r.held_at), _aware(r.release_after)
        out.append(HeldView(r.partner, r.doc_type, _DOMAIN_OF_DOC.get(r.doc_type, "?"),
                            r.business_key, r.order_key, r.waits_for, corr, held, release,
                            round(max(0.0, (now - held).total_seconds()), 1),
                            now - release > timedelta(seconds=stale_after_s)))
    return out


@dataclass(frozen=True)
class AckProblem:
    document: DocumentView
    #: ``overdue`` (no 997 within the window), ``rejected`` (AK5 R) or ``errors`` (AK5 E).
    problem: str


def acknowledgment_problems(engine: Engine, settings: EdiSettings, *, now: datetime
                            ) -> list[AckProblem]:
    """Outbound sets without their 997 past the partner's window, rejected, or with errors."""
    out: list[AckProblem] = []
    with engine.connect() as conn:
        docs = _views(conn, and_(DOCUMENT.c.direction == "out",
                                 or_(DOCUMENT.c.ack_status.in_(("pending", "R", "E", "M", "W",
                                                                "X")))))
    for d in docs:
        profile = settings.partner(d.partner)
        if d.ack_status == "pending":
            window = timedelta(minutes=profile.ack_window_minutes if profile else 24 * 60)
            if now - d.created_at > window:
                out.append(AckProblem(d, "overdue"))
        elif d.ack_status == "E":
            out.append(AckProblem(d, "errors"))
        else:
            out.append(AckProblem(d, "rejected"))
    return out


def resend(deps: EdiDeps, interchange_id: int, *, actor: str, reason: str) -> Path:
    """Send an outbound interchange again: its stored bytes, so its own numbers (audited)."""
    from workers.edi.store import EVENT

    with deps.engine.connect() as conn:
        row = conn.execute(select(INTERCHANGE).where(INTERCHANGE.c.id == interchange_id)).first()
    if row is None or row.direction != "out":
        raise BusinessError(f"no outbound EDI interchange {interchange_id}")
    profile = deps.settings.partner(row.partner)
    if profile is None:
        raise BusinessError(f"interchange {interchange_id} belongs to partner {row.partner}, "
                            "which is not configured")
    path = deps.folder(profile).write_outbound_copy(row.file_name, bytes(row.content))
    with deps.engine.begin() as conn:
        conn.execute(update(INTERCHANGE).where(INTERCHANGE.c.id == interchange_id).values(
            resends=INTERCHANGE.c.resends + 1, status="written",
            written_at=row.written_at or utcnow()))
        conn.execute(EVENT.insert().values(
            interchange_id=interchange_id, action="resend", actor=actor, reason=reason,
            detail=json.dumps({"file": str(path), "isa13": row.isa13, "digest": row.digest}),
            at=utcnow()))
    return path


#: An inbound file still waiting after this many seconds means no worker polls its folder.
STALE_INBOUND_S = 120.0


def partner_status(engine: Engine, settings: EdiSettings, *, now: datetime,
                   stale_after_s: float = STALE_INBOUND_S) -> list[dict]:
    """Per partner, for ``coexist status``: acknowledgment problems (overdue, rejected,
    accepted with errors), files waiting in ``inbound/`` (and the oldest one's age), files
    being answered (claimed), files in ``failed/``, outbound interchanges whose file is
    not written yet, 856s held for their 855 (``held_856``) and 810s for their 856
    (``held_810``); and the reasons among them that need attention (a held document past
    its hold: no poll released it)."""
    problems = acknowledgment_problems(engine, settings, now=now)
    with engine.connect() as conn:
        pending = dict(conn.execute(
            select(INTERCHANGE.c.partner, func.count()).where(
                INTERCHANGE.c.direction == "out", INTERCHANGE.c.status.in_(UNWRITTEN),
                INTERCHANGE.c.created_at < now - timedelta(seconds=stale_after_s))
            .group_by(INTERCHANGE.c.partner)).all())
        held: dict[tuple[str, str], int] = {
            (p, d): n for p, d, n in conn.execute(
                select(HELD.c.partner, HELD.c.doc_type, func.count())
                .group_by(HELD.c.partner, HELD.c.doc_type)).all()}
        overheld = conn.execute(
            select(HELD.c.partner, HELD.c.doc_type, HELD.c.waits_for, func.count()).where(
                HELD.c.release_after < now - timedelta(seconds=stale_after_s))
            .group_by(HELD.c.partner, HELD.c.doc_type, HELD.c.waits_for)).all()
    out = []
    for profile in settings.partners:
        folder = folder_for(profile)
        unreachable = None
        try:
            waiting = folder.waiting()
            claimed = folder.count("inbound", lambda n: n.endswith(".processing"))
            failed = folder.count("failed", lambda n: not n.startswith("."))
        except (SetupError, TechnicalError) as exc:  # an SFTP server down or refusing us
            waiting, claimed, failed, unreachable = [], 0, 0, str(exc)
        ages = [now.timestamp() - mtime for _name, mtime in waiting]
        mine = [p for p in problems if p.document.partner == profile.id]
        row = {
            "partner": profile.id,
            "folder": profile.folder if profile.transport == "folder" else folder.target,
            "overdue": sum(1 for p in mine if p.problem == "overdue"),
            "rejected": sum(1 for p in mine if p.problem == "rejected"),
            "errors": sum(1 for p in mine if p.problem == "errors"),
            "inbound_waiting": len(waiting),
            "oldest_waiting_s": round(max(ages), 1) if ages else None,
            "inbound_claimed": claimed, "failed_files": failed,
            "outbound_pending": int(pending.get(profile.id, 0)),
            "held_856": int(held.get((profile.id, "856"), 0)),
            "held_810": int(held.get((profile.id, "810"), 0)),
            "ack_window_minutes": profile.ack_window_minutes,
        }
        attention = []
        if unreachable:
            attention.append(f"its folders cannot be read: {unreachable}")
        if row["overdue"]:
            attention.append(f"{row['overdue']} outbound set(s) without a 997 after "
                             f"{profile.ack_window_minutes} min")
        if row["rejected"] or row["errors"]:
            attention.append(f"{row['rejected']} outbound set(s) rejected, {row['errors']} "
                             "accepted with errors by the partner's 997")
        if ages and max(ages) > stale_after_s:
            attention.append(f"{len(waiting)} file(s) waiting in inbound/, the oldest for "
                             f"{max(ages):.0f} s: is a worker polling it (coexist worker with "
                             "[subscriptions.edi], or coexist edi poll)?")
        if row["outbound_pending"]:
            attention.append(f"{row['outbound_pending']} outbound interchange(s) numbered "
                             f"more than {stale_after_s:.0f} s ago but not written (coexist "
                             "edi flush)")
        for partner, doc, waits_for, n in overheld:
            if partner == profile.id:
                attention.append(f"{n} {doc}(s) held for their {waits_for} past the hold and "
                                 "not sent: is a worker polling (coexist edi poll)?")
        row["attention"] = attention
        out.append(row)
    return out
