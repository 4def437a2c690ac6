"""The settle ledger: which routed messages a consumer has finished with.

Every outbox row is a ledger entry (``bus.outbox``: ``flag_version``, ``settled_at``,
``outcome``), written in the transaction that routes the message and kept after the
relay sent it.  A message is **unsettled** from that commit until a consumer has
handled it (applied, or refused as stale: the actor returned), or its failure is
recorded in the exception store (business, or technical after the last retry; a
dead letter drained from RabbitMQ counts too).  A message whose failure is retried,
or handed back to its queue (``request_redelivery``), stays unsettled.

``SettleLedger`` is the dramatiq middleware that marks a message settled in
``after_process_message``: after the effect and before the ack.  Effects on remote
systems (an ERP over HTTP) cannot share a transaction with the mark, so a crash
between effect and mark redelivers the message; the write is idempotent (version
check, Idempotency-Key) and the mark then happens.  A crash before the effect leaves
it unsettled and redelivered.  So a settled message is always handled, and an
unsettled one is handled or still on its way.

``unsettled(engine, ...)`` counts what a cutover switch waits for, split into rows
the relay has not sent yet and rows the broker holds (ready, unacked, delayed).
Messages enqueued without the outbox (reports sent from inside a handler) have no
ledger row and are not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dramatiq import Middleware
from sqlalchemy import ColumnElement, Engine, and_, case, exists, func, select, update

from bus.brokers.base import redelivery_requested
from bus.exception_store import ExceptionRecord
from bus.outbox import OutboxRecord

log = logging.getLogger(__name__)

#: Outcomes written to ``outbox.outcome``.
HANDLED = "handled"
RECORDED = "recorded"
SKIPPED = "skipped"
#: Given by state revision 0009 to rows sent before the ledger existed (not known).
BEFORE_LEDGER = "before_ledger"

_T = OutboxRecord.__table__
_EXC = ExceptionRecord.__table__
#: Attribute on the message proxy: when this delivery started (UTC), set before processing.
_STARTED_ATTR = "_coexist_ledger_started"


def mark_settled(engine: Engine, message_id: str, outcome: str) -> bool:
    """Mark ``message_id`` settled with ``outcome``; False when it has no unsettled row
    (already settled, or a message that did not come through the outbox)."""
    with engine.begin() as conn:
        result = conn.execute(
            update(_T).where(_T.c.message_id == message_id, _T.c.settled_at.is_(None))
            .values(settled_at=datetime.now(UTC), outcome=outcome))
    return bool(result.rowcount)


def mark_settled_many(engine: Engine, message_ids: list[str], outcome: str) -> int:
    """``mark_settled`` for a batch's messages in one statement; how many rows it marked."""
    if not message_ids:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(_T).where(_T.c.message_id.in_(message_ids), _T.c.settled_at.is_(None))
            .values(settled_at=datetime.now(UTC), outcome=outcome))
    return int(result.rowcount or 0)


def recorded_since(engine: Engine, message_id: str, actor_name: str, since: datetime) -> bool:
    """True when the exception store recorded ``message_id`` for ``actor_name`` at or after
    ``since`` (this delivery's failure; an older record of an earlier run does not count)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(_EXC.c.id).where(_EXC.c.message_id == message_id,
                                    _EXC.c.actor_name == actor_name,
                                    _EXC.c.status == "open",
                                    _EXC.c.last_failed_at >= since).limit(1)).first()
    return found is not None


class SettleLedger(Middleware):
    """Marks each processed message settled in the outbox ledger of ``engine``.

    Install it before ``bus.retry.FailureClasses`` in the middleware list
    (``bus.brokers.setup(ledger=...)`` does): dramatiq runs ``after_*`` hooks in reverse
    order, so a failure is already recorded or retried when this one runs.  Never raises:
    dramatiq swallows exceptions of ``after_*`` hooks, and a mark that fails leaves the
    message unsettled, which a switch then waits for; it asks for redelivery so the
    mark is tried again (the effect is idempotent).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def before_process_message(self, broker, message) -> None:
        setattr(message, _STARTED_ATTR, datetime.now(UTC))

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if message.failed or redelivery_requested(message):
            return  # handed back or dead-lettered: not finished
        try:
            if exception is None:
                mark_settled(self.engine, message.message_id, HANDLED)
                return
            since = getattr(message, _STARTED_ATTR, None) or datetime.now(UTC)
            if recorded_since(self.engine, message.message_id, message.actor_name, since):
                mark_settled(self.engine, message.message_id, RECORDED)
            # else: a retry was enqueued; the retried delivery settles it.
        except Exception:
            log.exception("Could not mark message %s settled; handing it back to its queue.",
                          message.message_id)
            from bus.brokers.base import request_redelivery

            request_redelivery(message)

    def after_batch_commit(self, broker, messages) -> None:
        """The batch consumer's hook (``bus.batch``): a committed batch's effects are done,
        so each of its messages is settled, in one statement, before the batch's ack.  A
        failing mark is logged; the rows stay unsettled and the next delivery of any of
        them (or none: channels are not waited for by a switch) marks them."""
        try:
            mark_settled_many(self.engine, [m.message_id for m in messages], HANDLED)
        except Exception:
            log.exception("Could not mark a batch of %d messages settled.", len(messages))

    def after_skip_message(self, broker, message) -> None:
        # Skipped by middleware (a duplicate the inbox already applied): it is finished.
        try:
            mark_settled(self.engine, message.message_id, SKIPPED)
        except Exception:
            log.exception("Could not mark skipped message %s settled.", message.message_id)


@dataclass(frozen=True)
class Unsettled:
    """Routed messages not settled yet: by where they are, by flag version, by queue."""

    unsent: int = 0
    in_broker: int = 0
    by_version: dict[int, int] = field(default_factory=dict)
    #: The newest outbox id among them (0 when none): a switch's watermark.
    newest_id: int = 0
    by_queue: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.unsent + self.in_broker

    def describe(self) -> str:
        """``20 (12 in the broker, 8 unsent)``."""
        return f"{self.total} ({self.in_broker} in the broker, {self.unsent} unsent)"

    def versions(self) -> str:
        """``v1: 12, v3: 8`` (oldest first)."""
        return ", ".join(f"v{v}: {n}" for v, n in sorted(self.by_version.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "unsent": self.unsent, "in_broker": self.in_broker,
                "by_flag_version": {str(v): n for v, n in sorted(self.by_version.items())},
                "by_queue": dict(sorted(self.by_queue.items()))}


def unsettled(
    engine: Engine,
    *,
    domain: str | None = None,
    queues: Iterable[str] | None = None,
    below_version: int | None = None,
    up_to_id: int | None = None,
) -> Unsettled:
    """Unsettled ledger rows (of ``domain``, on ``queues``, stamped with a flag version
    below ``below_version``, with an outbox id up to ``up_to_id``).

    A row whose message the exception store holds (a RabbitMQ dead letter the drain
    recorded, or a failure recorded just before a crash) counts as settled.
    """
    conditions: list[ColumnElement[bool]] = [_T.c.settled_at.is_(None)]
    if domain is not None:
        conditions.append(_T.c.domain == domain)
    if queues is not None:
        conditions.append(_T.c.queue_name.in_(list(queues)))
    if below_version is not None:
        conditions.append(_T.c.flag_version < below_version)
    if up_to_id is not None:
        conditions.append(_T.c.id <= up_to_id)
    conditions.append(~exists().where(and_(_EXC.c.message_id == _T.c.message_id,
                                           _EXC.c.status != "replayed")))
    sent = case((_T.c.sent_at.is_(None), 0), else_=1)
    stmt = (select(_T.c.flag_version, _T.c.queue_name, func.count(), func.sum(sent),
                   func.max(_T.c.id))
            .where(*conditions).group_by(_T.c.flag_version, _T.c.queue_name))
    by_version: dict[int, int] = {}
    by_queue: dict[str, int] = {}
    unsent = in_broker = newest = 0
    with engine.connect() as conn:
        for version, queue, n, n_sent, top in conn.execute(stmt):
            by_version[int(version)] = by_version.get(int(version), 0) + int(n)
            by_queue[queue] = by_queue.get(queue, 0) + int(n)
            in_broker += int(n_sent or 0)
            unsent += int(n) - int(n_sent or 0)
            newest = max(newest, int(top or 0))
    return Unsettled(unsent, in_broker, by_version, newest, by_queue)
