"""Where the CRM channel's business reports go: the exception store, as records.

A refused record (duplicate, picklist, required field...), an ownership violation or a
duplicate account found by onboarding is a fact a person has to settle.  The handlers
write it as a business exception record directly (a report is a record, not a raised
exception), under a stable message id so that a redelivery or a re-read of the feed
after a crash folds into the same record instead of adding one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from bus.envelope import Envelope
from bus.exception_store import ExceptionStore

#: Queue and actor of the CRM channel (the router's subscription ``crm``).
CRM_QUEUE = "coexist.channel.crm"
OUTBOUND_ACTOR = "channel_crm"
INBOUND_ACTOR = "crm_inbound"


class Reports(Protocol):
    """Records business reports of the CRM channel."""

    def report(self, *, error_type: str, message: str, message_id: str, domain: str, key: str,
               actor: str, envelope: Envelope | None = None) -> None:
        """Record one report; the same ``message_id`` and ``actor`` again updates it."""
        ...


class ExceptionStoreReports:
    """``Reports`` into the durable exception store (``coexist dlq`` lists them)."""

    def __init__(self, store: ExceptionStore):
        self.store = store

    def report(self, *, error_type: str, message: str, message_id: str, domain: str, key: str,
               actor: str, envelope: Envelope | None = None) -> None:
        # An outbound record carries the message that failed, so ``dlq replay`` can send it
        # again once the cause is fixed; an inbound report has nothing to replay.
        message_dict = None
        if envelope is not None:
            message_dict = {
                "queue_name": CRM_QUEUE, "actor_name": actor,
                "args": [envelope.model_dump(mode="json")], "kwargs": {}, "options": {},
                "message_id": envelope.message_id,
                "message_timestamp": int(datetime.now(UTC).timestamp() * 1000),
            }
        self.store.record(
            failure_class="business", queue_name=CRM_QUEUE, actor_name=actor,
            message_id=message_id, envelope=envelope, raw=None, message=message_dict,
            error_type=error_type, error_message=message,
            call_site=f"workers.crm.handlers:{actor}", attempts=1, domain=domain, key=key,
        )
