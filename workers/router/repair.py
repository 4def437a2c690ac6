"""Re-publishing the SoR's state of chosen records through the outbox.

Reconciliation's ``--repair`` and the ``cloud_only`` rollback backfill use this:
each repair is an ordinary routed write (kind ``repair``) to the writer actor
of the target ERP, so it takes the normal, audited path: outbox, broker,
writer actor with its version check, exception store on failure, ``trace``.

A repair carries the record's last routed version (``record_route``) and may
re-apply an equal version, never an older one: a newer change already routed
to the target wins over a repair read before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bus.envelope import new_envelope
from bus.outbox import add_to_outbox
from coexistence.canonical import CanonicalRecord
from coexistence.router import split_version
from workers.router import queues
from workers.router.capture import record_payload
from workers.router.state import get_route


def repair_envelope(conn, record: CanonicalRecord | None, *, domain: str, key: str,
                    sor: str, reason: str, run_id: str):
    """The repair message for one record (``None``: the SoR has no such record, so the
    repair deletes it from the target)."""
    route = get_route(conn, domain, key)
    flag_version, source_version = split_version(route.last_version if route else 0)
    return new_envelope(
        domain=domain, kind=queues.KIND_REPAIR, key=key,
        payload={**record_payload(record), "reason": reason, "repair_run": run_id},
        source_system=sor, source_version=source_version, flag_version=flag_version,
        schema_version=type(record).current_schema_version if record is not None else 1,
        occurred_at=datetime.now(UTC),
        message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"repair:{run_id}:{domain}:{key}")),
    )


def enqueue_repairs(engine: Engine, items: Iterable[tuple[str, str, CanonicalRecord | None]],
                    *, sor: str, target: str, reason: str, run_id: str) -> int:
    """Put one repair per (domain, key, SoR record) into the outbox, in one transaction."""
    count = 0
    with Session(engine) as session:
        conn = session.connection()
        for domain, key, record in items:
            env = repair_envelope(conn, record, domain=domain, key=key, sor=sor,
                                  reason=reason, run_id=run_id)
            add_to_outbox(session, env, actor_name=queues.WRITE_ACTOR[target],
                          queue_name=queues.WRITE_QUEUE[target])
            count += 1
        session.commit()
    return count
