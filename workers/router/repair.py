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
from coexistence.canonical import DOCUMENT_DOMAINS, CanonicalRecord
from coexistence.ports import Erp
from coexistence.router import is_closed, split_version
from workers.router import queues
from workers.router.capture import record_payload
from workers.router.state import get_route, put_route


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


#: Records per outbox transaction during a backfill.
BACKFILL_BATCH = 500


def backfill(engine: Engine, source: Erp, domain: str, *, sor: str, target: str,
             run_id: str, batch_size: int = BACKFILL_BATCH) -> int:
    """Copy every record of ``domain`` from the SoR into ``target`` through the outbox.

    Used before a domain enters ``shadow`` (the cloud must hold what the legacy
    ERP holds) and before a rollback out of ``cloud_only`` (the legacy ERP must
    catch up).  Open documents are pinned to the SoR they exist in, so a later
    switch cannot move them.  Bounded memory: one batch at a time.
    """
    total = 0
    batch: list[CanonicalRecord] = []

    def flush() -> None:
        nonlocal total
        with Session(engine) as session:
            conn = session.connection()
            for record in batch:
                env = repair_envelope(conn, record, domain=domain, key=record.key, sor=sor,
                                      reason="backfill", run_id=run_id)
                add_to_outbox(session, env, actor_name=queues.WRITE_ACTOR[target],
                              queue_name=queues.WRITE_QUEUE[target])
                if domain in DOCUMENT_DOMAINS and not is_closed(record):
                    route = get_route(conn, domain, record.key)
                    put_route(conn, domain, record.key, pinned_sor=sor,
                              last_version=route.last_version if route else 0)
            session.commit()
        total += len(batch)
        batch.clear()

    for record in source.stream(domain):
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return total
