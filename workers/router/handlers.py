"""Handlers behind the router's actors: plain functions of (envelope, dependencies).

Failure classes are left to the middleware (``bus.retry``): a business error
(bad payload, 4xx from the cloud, stray write report) goes straight to the
exception store; anything else is retried with backoff and then recorded.  A
shadow write that keeps failing therefore ends as an open exception for its
domain (a divergence, visible in ``cutover status`` and to reconciliation) and
never blocks the SoR, whose write is a different message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from bus.envelope import Envelope, new_envelope
from bus.errors import BusinessError
from coexistence.canonical import decode
from coexistence.ownership import FIELD_OWNERSHIP, OwnershipViolation, merge_owned
from coexistence.ports import Erp, WriteResult
from coexistence.router import decide_command, routed_version
from workers import metrics
from workers.router import queues

log = logging.getLogger(__name__)


class StrayWrite(BusinessError):
    """A person wrote into an ERP that is not the system of record for the record."""


class OwnershipViolationReported(BusinessError):
    """A non-owner changed an owned field; the owner's value was kept."""


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
def apply_write(env: Envelope, target: Erp, send: Send) -> WriteResult:
    """Write one routed change into ``target`` (shadow write, repair or delete).

    Applies only when newer (``routed_version``); a repair (kind ``repair``:
    the SoR's state, or its absence when the payload has no record) re-applies
    an equal version.  For domains with owned fields the incoming record is merged over
    the target's current one, so a non-owner's change to an owned field is kept
    out and reported (the report is sent before the write: a crash in between
    re-sends the same report id, which the exception store folds into one).
    """
    version = routed_version(env.flag_version, env.source_version)
    repair = env.kind == queues.KIND_REPAIR
    kwargs: dict[str, Any] = {"repair": True} if repair else {}
    if env.kind == queues.KIND_DELETE or (repair and "record" not in env.payload):
        return target.delete(env.domain, env.key, source_version=version,
                             idempotency_key=env.message_id, **kwargs)
    record = _record(env)
    if env.domain in FIELD_OWNERSHIP and not repair:
        current = target.get(env.domain, env.key)
        record, violations = merge_owned(current, record, env.payload.get("origin", "erp"))
        report_violations(violations, env, send)
    return target.upsert(record, source_version=version, idempotency_key=env.message_id,
                         **kwargs)


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
    current = sor.get(env.domain, env.key)
    merged, violations = merge_owned(current, record, channel)
    report_violations(violations, env, send)
    version = routed_version(decision.flag_version, env.source_version)
    return sor.upsert(merged, source_version=version, idempotency_key=env.message_id,
                      writer=writer)


def report(env: Envelope) -> None:
    """Raise the business exception an envelope reports; the middleware records it."""
    p = env.payload
    if env.kind == queues.KIND_STRAY:
        fields = ", ".join(p.get("fields") or []) or "no field differs"
        action = "overwritten from the SoR" if p.get("repaired") else "reported only"
        raise StrayWrite(
            f"stray write: {p.get('writer')} changed {env.domain} {env.key} in {p.get('system')} "
            f"({p.get('op')}), which is not its system of record ({p.get('sor')}); "
            f"fields: {fields}; {action}"
        )
    if env.kind == queues.KIND_OWNERSHIP:
        raise OwnershipViolationReported(
            f"{p.get('source')} may not change {env.domain}.{p.get('field')} of {env.key} "
            f"(owned by {p.get('owner')}): kept {p.get('kept')!r}, refused {p.get('refused')!r}"
        )
    raise BusinessError(f"report of unknown kind {env.kind!r}")
