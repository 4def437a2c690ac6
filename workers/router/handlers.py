"""Handlers behind the router's actors: plain functions of (envelope, dependencies).

Failure classes are left to the middleware (``bus.retry``): a business error
(bad payload, 4xx from the cloud, stray write report) goes straight to the
exception store; anything else is retried with backoff and then recorded.  A
shadow write that keeps failing therefore ends as an open exception for its
domain (a divergence, visible in ``cutover status`` and to reconciliation) and
never blocks the SoR, whose write is a different message.

Write conditions (``apply_write``; docs/architecture.md "Write conditions"):
every routed write first reads what the target holds (``Erp.get_current``: its
revision and who made it) and is sent conditioned on that revision (cloud
``If-Match``, legacy compare-and-set under the header row's lock), so an edit
landing between the read and the write is seen and decided again.  When the
current state was made by someone else than coexist (**TargetChanged**) the
write applies only if the target is a shadow for the record now (the stray
path) or the edit was a stray that capture observed; otherwise the target is
the SoR and its newer edit wins: the write is refused as a ``SwitchConflict``
business record naming both values, the flag versions and who made the edit.

Repairs (``apply_write``, kind ``repair``) never carry an SoR state older than the
record's last routed version (``record_route.last_version``): the SoR is read when the
repair is applied, and only once it holds that version (``SorBehind``, retried, until a
write routed to it before a switch has landed); the state read is written under that
version.  A repair whose target has become the SoR writes over it only the SoR state
of the record's current last routed version; else the SoR's state stands and is re-sent
to the shadows.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bus import stages
from bus.envelope import Envelope, new_envelope
from bus.errors import BusinessError, TechnicalError
from coexistence.canonical import CanonicalRecord, decode
from coexistence.errors import TranslationError
from coexistence.ownership import FIELD_OWNERSHIP, OwnershipViolation, merge_owned
from coexistence.ports import (
    ABSENT,
    COEXIST_WRITER,
    Applied,
    BatchErp,
    Changed,
    Current,
    Erp,
    Stale,
    WriteOp,
    WriteResult,
)
from coexistence.router import decide_command, placement, routed_version, segment_attrs
from coexistence.writes import (
    OwnershipViolationReported,
    StrayKept,
    StrayWrite,
    SwitchConflict,
    applies,
)
from workers import metrics
from workers.router import observed, queues

log = logging.getLogger(__name__)


#: Read-decide-write rounds when the target keeps changing under a write.
WRITE_CONDITION_ROUNDS = 5


@dataclass(frozen=True)
class WriteContext:
    """What a writer needs to decide a TargetChanged case.

    ``flags``: ``.state(domain)`` (the current flag of the domain); ``pinned_sor``:
    a document's pin; ``state``: the state database engine (observations, xref),
    ``None`` in pure tests (then no observation is read or written); ``erps``: both
    ERPs, so a repair reads the SoR's state when it is applied.
    """

    flags: Any
    pinned_sor: Callable[[str, str], str | None] = lambda d, k: None
    state: Any = None
    erps: Mapping[str, Erp] | None = None


#: Sends one envelope to an actor: ``send(actor_name, queue_name, envelope)``.
Send = Callable[[str, str, Envelope], None]


def _record(env: Envelope):
    return decode(env.domain, env.payload["record"])


def report_violations(violations: tuple[OwnershipViolation, ...], cause: Envelope,
                      send: Send) -> None:
    """One report message per refused field, with a stable id (a retry re-sends the same)."""
    for v in violations:
        env = new_envelope(
            domain=v.domain, kind=queues.KIND_OWNERSHIP, key=v.key,
            payload={"field": v.field, "owner": v.owner, "source": v.source,
                     "kept": str(v.kept), "refused": str(v.refused)},
            source_system=cause.source_system, source_version=cause.source_version,
            flag_version=cause.flag_version,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{cause.message_id}:{v.field}")),
            correlation_id=cause.correlation_id, causation_id=cause.message_id,
        )
        send(queues.REPORT_ACTOR, queues.REPORT_QUEUE, env)


@metrics.counts_writes
def apply_write(env: Envelope, target: Erp, send: Send,
                ctx: WriteContext | None = None) -> WriteResult:
    """Write one routed change into ``target`` (shadow write, repair or delete).

    Applies only when newer (``routed_version``); a repair (kind ``repair``:
    the SoR's state, or its absence when the payload has no record) re-applies
    an equal version.  For domains with owned fields the incoming record is merged over
    the target's current one, so a non-owner's change to an owned field is kept
    out and reported (the report is sent before the write: a crash in between
    re-sends the same report id, which the exception store folds into one).

    The write is conditioned on the target's current revision; a state made by
    someone else than coexist is decided by :func:`decide_target_changed`
    (module docstring).  ``ctx`` gives the flags, pins and state database; without
    it a TargetChanged write is refused (nothing to decide with).
    """
    version = routed_version(env.flag_version, env.source_version)
    repair = env.kind == queues.KIND_REPAIR
    kwargs: dict[str, Any] = {"repair": True} if repair else {}
    delete = env.kind == queues.KIND_DELETE or (repair and "record" not in env.payload)
    incoming = None if delete else _record(env)
    idempotency_key = env.message_id
    reread = repair and bool(env.payload.get("reread"))
    if reread and (ctx is None or not ctx.erps):
        raise BusinessError(f"repair of {env.domain} {env.key} reads the SoR when applied: "
                            f"this writer has no ERPs to read it from")
    if repair and ctx is not None and ctx.erps:
        sor_now = _sor_now(env, ctx, incoming)
        last = _last_routed(ctx, env)
        if sor_now == target.system and (reread or version < last):
            # The target is the SoR now, and the repair carries no state decided on what
            # the SoR held at the record's last routed version (it was to read it when
            # applied, or a later SoR change was routed since it was decided): nothing to
            # write over the SoR.  Its state stands and is re-sent to the shadows, so both
            # ERPs settle on it (a stray there stays, already reported: a ``StrayKept``
            # record says so, as the stray's own record said it would be overwritten).
            report_kept_stray(env, target, ctx, send, None,
                              f"its repair (routed under flag version {env.flag_version}) "
                              f"landed after {target.system} became the system of record")
            _propagate(env, target, ctx, send)
            if ctx.state is not None:  # it may have waited for the SoR before the switch
                from workers.router import waits

                waits.clear_wait(ctx.state, env.message_id)
            return Stale(env.domain, env.key, version, max(version, last))
        if sor_now in ctx.erps and sor_now != target.system:
            # A repair re-sends the SoR's state: read it now, not as it was when the repair
            # was decided (a write routed before a switch may have reached it since) -- and
            # only once the SoR holds the record's last routed version: a write still on its
            # way to the SoR would land after the repair, and the repair would have put an
            # older state into the shadow than the SoR ends with.
            sor = ctx.erps[sor_now]
            held, held_current = read_held(sor, env.domain, env.key)
            _wait_for_last_routed(ctx, env, sor_now, held_current, last, target.system)
            incoming = held
            delete = incoming is None
            # The state read holds every change routed up to ``last``: written under that
            # version, so an older routed write still in flight to the target is refused.
            version = max(version, last)
            # What is written depends on when it is read: a redelivery that reads another
            # state is another write (its own idempotency key), the same state the same.
            state = "delete" if incoming is None else incoming.model_dump_json()
            idempotency_key = (f"{env.message_id}:{version}:"
                               f"{hashlib.sha256(state.encode()).hexdigest()[:16]}")
    for _ in range(WRITE_CONDITION_ROUNDS):
        record = incoming
        if record is not None and env.domain in FIELD_OWNERSHIP and not repair:
            held = target.get(env.domain, env.key)
            record, violations = merge_owned(held, record, env.payload.get("origin", "erp"))
            report_violations(violations, env, send)
        current = target.get_current(env.domain, env.key)
        into_sor = False
        if current is not None and current.writer != COEXIST_WRITER:
            if not applies(version, current.version, repair):
                # A duplicate or an older write: refused by the version alone, as ever.
                return Stale(env.domain, env.key, version, current.version)
            outcome = decide_target_changed(env, target, record, current, version, ctx)
            if outcome == STALE:
                return Stale(env.domain, env.key, version, current.version)
            into_sor = outcome == WRITE_SOR
            if into_sor and not repair and ctx is not None and \
                    version < _last_routed(ctx, env):
                # A later change of the record was routed after this write: over a stray in
                # the SoR it would put back an older state than the shadow ends with.  The
                # SoR's state stands (the stray, reported) and is re-sent to the shadows.
                report_kept_stray(env, target, ctx, send, current,
                                  f"the write routed over it (flag version "
                                  f"{env.flag_version}) is older than the record's last "
                                  f"routed change, and {target.system} is the system of "
                                  f"record now")
                _propagate(env, target, ctx, send)
                return Stale(env.domain, env.key, version, _last_routed(ctx, env))
        condition = current.revision if current is not None else ABSENT
        key = idempotency_key
        if current is not None and current.writer != COEXIST_WRITER:
            # A write over someone else's edit is decided on that edit: its own key.  A
            # redelivered copy whose first delivery applied, reaching a later edit (a stray
            # made since), would otherwise get the first write's stored answer (Applied)
            # without writing, and the writer would record an observation and re-send a
            # state that never was written.
            key = f"{idempotency_key}:over:{current.revision}"
        if delete:
            result = target.delete(env.domain, env.key, source_version=version,
                                   idempotency_key=key, if_revision=condition,
                                   **kwargs)
        else:
            assert record is not None
            result = target.upsert(record, source_version=version,
                                   idempotency_key=key, if_revision=condition,
                                   **kwargs)
        if isinstance(result, Changed):
            log.info("%s %s %s changed under the write (%s); deciding again", target.system,
                     env.domain, env.key, result.current.writer if result.current else "gone")
            continue
        if isinstance(result, Applied) and ctx is not None and ctx.state is not None:
            _observe_write(ctx, target, env, result,
                           created=not delete and (current is None or not current.exists),
                           deleted=delete)
        if isinstance(result, Applied) and into_sor and ctx is not None:
            _propagate(env, target, ctx, send)
        return result
    raise TechnicalError(f"{target.system} {env.domain} {env.key} changed under "
                         f"{WRITE_CONDITION_ROUNDS} write attempts in a row; retry later")


class SorBehind(TechnicalError):
    """A repair that reads the SoR found it not yet holding the record's last routed
    version (a write routed to it is still in flight): retried later, as any technical
    failure; after the retry policy it is recorded (class ``technical``), never dropped."""


def _last_routed(ctx: WriteContext, env: Envelope) -> int:
    """The record's last routed version (``record_route.last_version``; 0: none known)."""
    from workers.router.state import get_route

    if ctx.state is None:
        return 0
    with ctx.state.connect() as conn:
        route = get_route(conn, env.domain, env.key)
    return route.last_version if route is not None else 0


def _wait_for_last_routed(ctx: WriteContext, env: Envelope, sor: str,
                          current: Current | None, last: int, target: str) -> None:
    from workers.router.capture import sor_holds

    if last <= 0 or ctx.state is None:
        return
    from workers.router import waits

    applied = current.version if current is not None else 0
    with ctx.state.connect() as conn:
        held = sor_holds(conn, sor, env.domain, env.key, last, applied) or \
            not _write_in_flight(conn, env, sor)
    if held:
        waits.clear_wait(ctx.state, env.message_id)
        return
    from coexistence.router import split_version

    # Seen by ``coexist status`` / ``cutover status`` and waited for by ``cutover set``.
    waits.note_wait(ctx.state, message_id=env.message_id, domain=env.domain, key=env.key,
                    target=target, sor=sor, waits_for=last)

    raise SorBehind(f"repair of {env.domain} {env.key}: the SoR ({sor}) does not hold the "
                    f"record's last routed version yet (flag version / source version "
                    f"{'/'.join(map(str, split_version(last)))}; it holds "
                    f"{'/'.join(map(str, split_version(applied)))}): a write to it is still "
                    f"in flight; retried once it has landed")


def _write_in_flight(conn, env: Envelope, sor: str) -> bool:
    """Is a write of this record to ``sor`` still unsettled in the settle ledger (routed,
    not yet applied, refused or recorded)?  The record's last routed version may never
    reach the SoR: a change routed to other targets only (a channel, the other ERP while
    the SoR was not a target) moves ``record_route.last_version`` too, and a repair that
    waited for the SoR to hold it would wait until its retries ran out."""
    from sqlalchemy import exists, select

    from bus.outbox import OutboxRecord

    t = OutboxRecord.__table__
    return bool(conn.execute(select(exists().where(
        t.c.domain == env.domain, t.c.settled_at.is_(None), t.c.partition_key == env.key,
        t.c.queue_name == queues.WRITE_QUEUE[sor], t.c.message_id != env.message_id))).scalar())


#: Outcomes of ``decide_target_changed``.
WRITE, WRITE_SOR, STALE = "write", "write-sor", "stale"


def apply_writes(envs: Sequence[Envelope], target: Erp, send: Send,
                 ctx: WriteContext | None = None) -> list[int]:
    """Write a batch of routed changes into ``target``: ONE tombstone-aware read per
    record (``read_many``) and one conditioned write per record (``write_many``: one
    ``$batch`` on the cloud, one transaction on legacy).  Returns the positions of the
    envelopes left to :func:`apply_write`, one message at a time, so that every case
    that needs a decision keeps exactly the per-message path and its failure classes:

    * repairs (they read the SoR when applied), and a second change of a key already
      in the batch (capture coalesces them; a redelivery may not be);
    * a target whose current state someone else made (TargetChanged: the decision
      table) when it decides a write into what is the SoR now or a switch conflict;
      its plain outcomes (write over a shadow's state under the key ``apply_write``
      uses, or refuse as ``Stale``) are decided per record and go with the batch;
    * an op answered ``Changed`` (someone wrote since the read: decided on fresh
      state) or a business error (recorded for that message only);
    * a record that cannot be decoded, or a target that does not read in batches.

    The others are applied or refused as ``Stale`` here, with the same rule
    (``coexistence.writes.applies``), the same idempotency keys and the same ownership
    merge; their observations (and created records' xref links) are written in one
    state transaction.  A technical failure raises: the batch consumer then handles
    every message alone.
    """
    if not isinstance(target, BatchErp):
        return list(range(len(envs)))
    batch_id = envs[0].message_id if envs else "-"
    # The crash tests land a kill -9 between these two lines (mid-write, nothing acked).
    log.debug("%s write batch %s: %d messages", target.system, batch_id, len(envs))
    single: list[int] = []
    # The batch's TargetChanged decisions read "the SoR now" once (the audited flag,
    # refreshed at the first), not once per record: a round trip each under load.
    decide_ctx = replace(ctx, flags=_RefreshedOnce(ctx.flags)) if ctx is not None else None
    chosen: dict[tuple[str, str], int] = {}
    for i, env in enumerate(envs):
        if env.kind not in (queues.KIND_UPSERT, queues.KIND_DELETE) or \
                (env.domain, env.key) in chosen:
            single.append(i)
        else:
            chosen[(env.domain, env.key)] = i
    by_domain: dict[str, list[int]] = {}
    for (domain, _key), i in chosen.items():
        by_domain.setdefault(domain, []).append(i)
    ops: list[WriteOp] = []
    placed: list[int] = []
    for domain, indexes in by_domain.items():
        held = target.read_many(domain, [envs[i].key for i in indexes])
        for i in indexes:
            env = envs[i]
            record, current = held[env.key]
            version = routed_version(env.flag_version, env.source_version)
            if current is not None and not applies(version, current.version, False):
                metrics.wrote(target.system, env.kind,
                              Stale(env.domain, env.key, version, current.version))
                continue  # a duplicate or an older write, refused by the version alone
            incoming = None
            if env.kind == queues.KIND_UPSERT:
                try:
                    incoming = _record(env)
                except TranslationError:
                    single.append(i)  # recorded as that message's business error
                    continue
                if env.domain in FIELD_OWNERSHIP:
                    incoming, violations = merge_owned(record, incoming,
                                                       env.payload.get("origin", "erp"))
                    report_violations(violations, env, send)
            idempotency_key = env.message_id
            if current is not None and current.writer != COEXIST_WRITER:
                # TargetChanged: the decision table.  Its plain outcomes (write over a
                # shadow's state, or refuse as stale) are decided here and written with
                # the batch; a write into the SoR (re-sent to the shadows afterwards) and
                # a switch conflict (a business error) stay on the per-message path.
                outcome = _decide_in_batch(env, target, incoming, current, version,
                                           decide_ctx)
                if outcome == STALE:
                    metrics.wrote(target.system, env.kind,
                                  Stale(env.domain, env.key, version, current.version))
                    continue
                if outcome != WRITE:
                    single.append(i)
                    continue
                # Decided on that edit: its own key, as ``apply_write`` writes it.
                idempotency_key = f"{env.message_id}:over:{current.revision}"
            ops.append(WriteOp(env.domain, env.key, incoming, version, idempotency_key,
                               current))
            placed.append(i)
    applied: list[tuple[Envelope, Applied, bool]] = []
    results = target.write_many(ops) if ops else []
    if stages.enabled():
        stages.mark("written", (f"{op.domain}:{op.key}" for op in ops))
    for i, op, result in zip(placed, ops, results, strict=True):
        env = envs[i]
        if isinstance(result, Applied):
            created = op.record is not None and (op.current is None or not op.current.exists)
            applied.append((env, result, created))
        if isinstance(result, Applied | Stale):
            metrics.wrote(target.system, env.kind, result)
        else:
            single.append(i)  # Changed, or a business error: decided / recorded alone
    if applied and ctx is not None and ctx.state is not None:
        _observe_writes(ctx, target, applied)
    log.debug("%s write batch %s: done (%d applied, %d left to the single path)",
              target.system, batch_id, len(applied), len(single))
    return sorted(single)


class _RefreshedOnce:
    """A batch's flags: ``refresh`` reads the audited flag at its first call only."""

    def __init__(self, flags: Any) -> None:
        self._flags, self._fresh = flags, False

    def refresh(self) -> None:
        if not self._fresh:
            self._fresh = True
            refresh = getattr(self._flags, "refresh", None)
            if refresh is not None:
                refresh()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._flags, name)


def _decide_in_batch(env: Envelope, target: Erp, record: CanonicalRecord | None,
                     current: Current, version: int, ctx: WriteContext | None) -> str | None:
    """``decide_target_changed`` for a batched write: ``WRITE`` or ``STALE``, else
    ``None`` (left to ``apply_write``: no context to decide with, a write into what is
    the SoR now, or a switch conflict, which is that message's business error).

    Without this every routed write over a person's edit went alone: after a switch the
    shadow's records last written by people while it was the SoR are most of the writes,
    and a rollback drained them one message at a time (a chaos run: 4,702 writes queued
    for the legacy ERP, 7-22/s)."""
    if ctx is None:
        return None
    try:
        outcome = decide_target_changed(env, target, record, current, version, ctx)
    except SwitchConflict:
        return None
    return outcome if outcome in (WRITE, STALE) else None


def _placement(env: Envelope, ctx: WriteContext, record: CanonicalRecord | None,
               target: Erp | None = None):
    refresh = getattr(ctx.flags, "refresh", None)
    if refresh is not None:
        refresh()  # "the SoR now" is the audited flag, not a cache that may lag a switch
    flag = ctx.flags.state(env.domain)
    if record is None and target is not None:
        record = target.get(env.domain, env.key)
    mode, sor, shadows, _pinned = placement(env.domain, env.key, flag, segment_attrs(record),
                                            ctx.pinned_sor(env.domain, env.key))
    return flag, mode, sor, shadows


def _sor_now(env: Envelope, ctx: WriteContext, record: CanonicalRecord | None) -> str:
    return _placement(env, ctx, record)[2]


def _propagate(env: Envelope, target: Erp, ctx: WriteContext, send: Send) -> None:
    """A write that landed in what is now the SoR (a stray there overwritten after a
    switch) is an SoR change whose capture is an echo: re-send the SoR's state to the
    shadows as a repair (read when applied) under the record's last routed version, as
    capture's stray repairs are, so no shadow's applied version outruns what later
    repairs carry."""
    from coexistence.router import split_version
    from workers.router.state import get_route

    _flag, _mode, sor, shadows = _placement(env, ctx, None, target)
    last = 0
    if ctx.state is not None:
        with ctx.state.connect() as conn:
            route = get_route(conn, env.domain, env.key)
        last = route.last_version if route is not None else 0
    flag_version, source_version = split_version(last)
    for system in shadows:
        if system == target.system or system not in queues.WRITE_ACTOR:
            continue
        repair_env = new_envelope(
            domain=env.domain, kind=queues.KIND_REPAIR, key=env.key,
            payload={"reason": "propagate", "after": env.message_id, "reread": True},
            source_system=sor, source_version=source_version, flag_version=flag_version,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_URL,
                                      f"{env.message_id}:propagate:{system}:{_flag.version}")),
            correlation_id=env.correlation_id, causation_id=env.message_id,
        )
        send(queues.WRITE_ACTOR[system], queues.WRITE_QUEUE[system], repair_env)


def report_kept_stray(env: Envelope, target: Erp, ctx: WriteContext, send: Send,
                      current: Current | None, why: str) -> bool:
    """When ``target`` (the SoR now) holds a stray that this write leaves in place, send
    the ``StrayKept`` record: the follow-up of the stray's ``StrayWrite``, which capture
    decided as "overwritten from the SoR".  It names the kept value (the stray) and the
    replaced one (what the other ERP holds now, which the re-send overwrites) of each
    differing field, the flag versions and the stray's own report.

    Sent before the writer returns (before the ack), with an id derived from the stray's
    revision: a crash in between redelivers the write, which decides the same and sends
    the same id again (the exception store keeps one record per id), and every write that
    leaves the same stray (its repair, an older routed write) names it once.  The repair
    of an earlier stray of the record (``stray_version`` not the one held) sends nothing:
    the held stray's own repair decides.  Returns whether a record was sent."""
    if ctx.state is None or ctx.erps is None:
        return False
    if current is None:
        current = target.get_current(env.domain, env.key)
    if current is None or not current.exists or current.writer == COEXIST_WRITER:
        return False
    with ctx.state.connect() as conn:
        seen = observed.get_observed(conn, target.system, env.domain, env.key)
    if seen is None or seen.classification != observed.STRAY or not seen.made(current):
        return False  # not a captured stray (an SoR edit, or not captured yet)
    if "stray_version" in env.payload and str(env.payload["stray_version"]) != seen.revision:
        # The repair of an earlier stray, superseded by the one the target holds: that
        # one's own repair decides (and reports) what happens to it.
        return False
    from workers.router.capture import differing_fields, message_id

    flag, mode, _sor, shadows = _placement(env, ctx, None, target)
    kept = target.get(env.domain, env.key)
    others = [s for s in shadows if s != target.system and s in ctx.erps]
    # Compared with what the write carried (the SoR's former state), else with what the
    # shadows hold now (which the re-send replaces).
    replaced: dict[str, CanonicalRecord | None] = {}
    if "record" in env.payload and env.kind != queues.KIND_DELETE:
        replaced["the write"] = _record(env)
    else:
        replaced.update({s: ctx.erps[s].get(env.domain, env.key) for s in others})
    fields = []
    for system, record in replaced.items():
        for name in differing_fields(record, kept):
            if name == "<record>":
                fields.append([name, "the record" if kept is not None else "absent",
                               "absent" if record is None else "the record", system])
            else:
                fields.append([name, str(getattr(kept, name)), str(getattr(record, name)),
                               system])
    if not fields and kept is not None:
        # The shadows hold the stray's state already (an earlier re-send): name the fields
        # the stray changed (capture's report), with the value kept.
        for name in env.payload.get("stray_fields") or []:
            if name in type(kept).model_fields:
                fields.append([name, str(getattr(kept, name)), "the same",
                               ", ".join(others) + " already"])
    cursor = env.payload.get("stray_cursor")
    report_env = new_envelope(
        domain=env.domain, kind=queues.KIND_STRAY_KEPT, key=env.key,
        payload={"system": target.system, "writer": seen.writer, "revision": seen.revision,
                 "stray_flag_version": seen.flag_version, "write_flag_version":
                 env.flag_version, "flag_version": flag.version, "mode": str(mode),
                 "shadows": others, "fields": fields, "why": why,
                 "stray_report": (message_id(target.system, int(cursor), "stray")
                                  if cursor is not None and "stray_version" in env.payload
                                  else None)},
        source_system=env.source_system, source_version=env.source_version,
        flag_version=env.flag_version,
        message_id=str(uuid.uuid5(uuid.NAMESPACE_URL,
                                  f"stray-kept:{target.system}:{env.domain}:{env.key}:"
                                  f"{seen.revision}")),
        correlation_id=env.correlation_id, causation_id=env.message_id,
    )
    send(queues.REPORT_ACTOR, queues.REPORT_QUEUE, report_env)
    return True


def decide_target_changed(env: Envelope, target: Erp, record: CanonicalRecord | None,
                          current: Current, version: int, ctx: WriteContext | None) -> str:
    """The decision table of a write whose target holds someone else's state (newer
    than coexist's last write there): ``WRITE``, ``WRITE_SOR`` (write, into what is
    the SoR now), ``STALE`` (refused as older); raises ``SwitchConflict`` for a newer
    edit in what is now the SoR.

    Capture's observation of the target's current state (``observed_revision``) says
    how it was judged and under which flag version; flag versions only grow, so an
    edit captured under an older flag version than the write's was seen before the
    write was routed (the write was decided knowing it).

    ========== ================================================= ====================
    target now its current state, as capture observed it           outcome
    ========== ================================================= ====================
    shadow     an SoR edit / channel write captured under a newer  ``STALE`` (the SoR's
               flag version than the write's (a rollback with      newer edit is there
               this write still in flight)                         already)
    shadow     anything else (a stray, not captured yet)          ``WRITE`` (stray path)
    SoR        a ``stray`` (made while it was not the SoR)        ``WRITE_SOR`` (policy;
                                                                   ``apply_write`` refuses
                                                                   it as stale when older
                                                                   than the last routed
                                                                   version)
    SoR        any edit captured under an older flag version       ``WRITE_SOR``
               than the write's (seen before it was routed)
    SoR        an SoR edit or channel write captured under the     ``SwitchConflict``
               write's flag version or later, or not captured yet
    ========== ================================================= ====================
    """
    flag = mode = None
    seen = None
    if ctx is not None:
        flag, mode, sor, _shadows = _placement(env, ctx, record, target)
        if ctx.state is not None:
            with ctx.state.connect() as conn:
                seen = observed.get_observed(conn, target.system, env.domain, env.key)
        # The observation of the state the target holds now (None: not captured yet).
        made = seen if seen is not None and seen.made(current) else None
        if target.system != sor:
            # A shadow now: the stray path (capture reports the person's edit), unless its
            # state is an SoR edit made when it was the SoR and routed after this write.
            newer_sor_edit = made is not None and made.classification in (
                observed.SOR_EDIT, observed.CHANNEL) and made.flag_version > env.flag_version
            return STALE if newer_sor_edit else WRITE
        if made is not None and made.classification == observed.STRAY:
            return WRITE_SOR  # a stray observed before the switch: overwritten (policy)
        if made is not None and made.flag_version < env.flag_version:
            return WRITE_SOR  # seen before this write was routed: the write is newer
    raise SwitchConflict(_conflict_message(env, target, record, current, flag, mode, seen))


def _conflict_message(env: Envelope, target: Erp, record: CanonicalRecord | None,
                      current: Current, flag, mode, seen) -> str:
    from workers.router.capture import differing_fields

    held = target.get(env.domain, env.key) if current.exists else None
    if record is None:
        differs = "refused: delete; kept: the record"
    elif held is None:
        differs = "refused: the record; kept: its deletion"
    else:
        names = differing_fields(record, held)
        differs = "; ".join(
            f"{n}: refused {getattr(record, n)!s} vs kept {getattr(held, n)!s}" for n in names
        ) or "no field differs"
    when = current.at.isoformat() if current.at is not None else "at an unknown time"
    if seen is None or not seen.made(current):
        judged = "not captured yet"
    else:
        judged = f"captured as {seen.classification} under flag version {seen.flag_version}"
    # The cloud adapter reads the writer from ``lastModifiedBy`` (empty when the cloud does
    # not answer it); legacy from the change log's ``LCHGUSER`` (``?``: not stamped).
    who = current.writer if current.writer not in ("", "?") else (
        "an unknown writer (the target did not name who made its current state)")
    now = (f"flag version {flag.version} ({mode})" if flag is not None
           else "flag state unknown to this writer")
    return (
        f"switch conflict: {env.domain} {env.key}: {target.system} is the system of record "
        f"now and holds a newer edit by {who} at {when} ({judged}); the write "
        f"routed under flag version {env.flag_version} from {env.source_system} was not "
        f"applied (current: {now}); {differs}; the SoR's state stays and reaches the other "
        f"ERP through change capture"
    )


def _observe_writes(ctx: WriteContext, target: Erp,
                    applied: Sequence[tuple[Envelope, Applied, bool]]) -> None:
    rows = []
    for env, result, created in applied:
        legacy_key, cloud_id = _created_ids(target, env, result) if created else (None, None)
        rows.append(observed.Written(target.system, env.domain, env.key, result,
                                     COEXIST_WRITER, env.flag_version, created, legacy_key,
                                     cloud_id, deleted=env.kind == queues.KIND_DELETE))
    observed.record_writes(ctx.state, rows)


def _created_ids(target: Erp, env: Envelope, result: Applied) -> tuple[str | None, str | None]:
    from coexistence.translate.legacy import LEGACY_TRANSLATORS

    translator = LEGACY_TRANSLATORS.get(env.domain)
    try:
        legacy_key = translator.legacy_key(env.key) if translator is not None else None
    except TranslationError:
        legacy_key = None  # a key the legacy ERP cannot hold (fakes' keys): cloud id only
    return legacy_key, result.target_id if target.system == "cloud" else None


def _observe_write(ctx: WriteContext, target: Erp, env: Envelope, result: Applied,
                   *, created: bool, deleted: bool = False) -> None:
    legacy_key = cloud_id = None
    if created:
        from coexistence.translate.legacy import LEGACY_TRANSLATORS

        translator = LEGACY_TRANSLATORS.get(env.domain)
        try:
            legacy_key = translator.legacy_key(env.key) if translator is not None else None
        except TranslationError:
            legacy_key = None  # a key the legacy ERP cannot hold (fakes' keys): cloud id only
        cloud_id = result.target_id if target.system == "cloud" else None
    observed.record_write(ctx.state, target.system, env.domain, env.key, result,
                          COEXIST_WRITER, env.flag_version, created=created,
                          deleted=deleted, legacy_key=legacy_key, cloud_id=cloud_id)


def route_command(env: Envelope, erps: Mapping[str, Erp], flags: Any, send: Send,
                  pinned_sor: Callable[[str, str], str | None] = lambda d, k: None
                  ) -> WriteResult:
    """A channel command: written into the SoR under the channel's command writer.

    The SoR's change capture then routes it on to the shadow and the channels
    like any SoR change, so the SoR's own change order is the only order that
    decides what the shadow ends with.
    """
    channel = env.payload.get("channel", "crm")
    writer = queues.COMMAND_WRITERS.get(channel)
    if writer is None:
        raise BusinessError(f"command from unknown channel {channel!r}; known: "
                            f"{', '.join(queues.COMMAND_WRITERS)}")
    record = _record(env)
    flag = flags.state(env.domain)
    decision = decide_command(env.domain, record, flag,
                              pinned_sor=pinned_sor(env.domain, env.key))
    sor = erps[decision.sor]
    version = routed_version(decision.flag_version, env.source_version)
    for _ in range(WRITE_CONDITION_ROUNDS):
        # Conditioned on the revision the merge was built on: a person's edit landing
        # between this read and the write is answered Changed, and the merge is made
        # again over it (the command changes only what its channel owns).
        held, current = read_held(sor, env.domain, env.key)
        merged, violations = merge_owned(held, record, channel)
        report_violations(violations, env, send)
        condition = current.revision if current is not None else ABSENT
        result = sor.upsert(merged, source_version=version, idempotency_key=env.message_id,
                            writer=writer, if_revision=condition)
        if isinstance(result, Changed):
            log.info("%s %s %s changed under a %s command (%s); merging again", sor.system,
                     env.domain, env.key, channel,
                     result.current.writer if result.current else "gone")
            continue
        return result
    raise TechnicalError(f"{sor.system} {env.domain} {env.key} changed under "
                         f"{WRITE_CONDITION_ROUNDS} command attempts in a row; retry later")


def read_held(target: Erp, domain: str, key: str
              ) -> tuple[CanonicalRecord | None, Current | None]:
    """The record and its ``Current`` from one tombstone-aware read when the target reads
    in batches (``BatchErp``); else the revision first, then the record (an edit between
    the two makes the write's condition fail, so it is never unseen)."""
    if isinstance(target, BatchErp):
        return target.read_many(domain, [key])[key]
    current = target.get_current(domain, key)
    held = target.get(domain, key) if current is not None and current.exists else None
    return held, current


def report(env: Envelope) -> None:
    """Raise the business exception an envelope reports; the middleware records it."""
    p = env.payload
    if env.kind == queues.KIND_STRAY:
        fields = ", ".join(p.get("fields") or []) or "no field differs"
        action = "overwritten from the SoR" if p.get("repaired") else "reported only"
        sor = p.get("sor")
        values = "".join(f"; {n}: {v} in {p.get('system')} vs {w} in the SoR ({sor}) "
                         f"when captured" for n, v, w in p.get("values") or [])
        raise StrayWrite(
            f"stray write: {p.get('writer')} changed {env.domain} {env.key} in {p.get('system')} "
            f"({p.get('op')}), which is not its system of record ({p.get('sor')}); "
            f"fields: {fields}; {action}{values}"
        )
    if env.kind == queues.KIND_STRAY_KEPT:
        fields = "; ".join(f"{n}: kept {k} vs {r} (in {s})"
                           for n, k, r, s in p.get("fields") or []) or "no field differs"
        shadows = ", ".join(p.get("shadows") or []) or "no shadow"
        of = f" (its StrayWrite record: message {p['stray_report']})" \
            if p.get("stray_report") else ""
        raise StrayKept(
            f"stray kept: {p.get('writer')}'s change of {env.domain} {env.key} in "
            f"{p.get('system')} (revision {p.get('revision')}, a stray captured under flag "
            f"version {p.get('stray_flag_version')}) was not overwritten from the SoR{of}: "
            f"{p.get('why')} (flag version {p.get('flag_version')}, mode {p.get('mode')}), so "
            f"the write left it in place as the system of record's state and re-sent it to "
            f"{shadows}; {fields}"
        )
    if env.kind == queues.KIND_OWNERSHIP:
        raise OwnershipViolationReported(
            f"{p.get('source')} may not change {env.domain}.{p.get('field')} of {env.key} "
            f"(owned by {p.get('owner')}): kept {p.get('kept')!r}, refused {p.get('refused')!r}"
        )
    raise BusinessError(f"report of unknown kind {env.kind!r}")
