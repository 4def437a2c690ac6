"""The portal channel as ``coexist status`` shows it: endpoints, the webhook backlog, notices.

``portal_status(engine, now)`` reads the state database only: how many endpoints are
active, disabled or failing; the deliveries waiting (due now, or waiting for a retry),
how long the oldest due one has waited (a dispatcher that is not running shows here),
failed deliveries (in the exception store, replayable), and the operator notices
(``workers.portal.delivery.notices``: disabled and failing endpoints).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from workers.portal.delivery import notices
from workers.portal.endpoints import ACTIVE, PortalEndpoint
from workers.portal.store import DELIVERY, FAILED, PENDING, utc

_E = PortalEndpoint.__table__


def portal_status(engine: Engine, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        by_status = dict(conn.execute(select(_E.c.status, func.count()).group_by(_E.c.status))
                         .all())
        due, oldest = conn.execute(select(func.count(), func.min(DELIVERY.c.next_attempt_at))
                                   .where(DELIVERY.c.status == PENDING,
                                          DELIVERY.c.next_attempt_at <= now)).one()
        waiting = conn.execute(select(func.count()).where(
            DELIVERY.c.status == PENDING, DELIVERY.c.next_attempt_at > now)).scalar_one()
        failed = conn.execute(select(func.count()).where(DELIVERY.c.status == FAILED)
                              ).scalar_one()
    found = notices(engine)
    oldest_at = utc(oldest)
    return {
        "endpoints": {"active": int(by_status.get(ACTIVE, 0)),
                      "disabled": sum(int(n) for s, n in by_status.items() if s != ACTIVE),
                      "failing": sum(1 for n in found if n.state == "failing")},
        "deliveries": {"due": int(due), "waiting_retry": int(waiting), "failed": int(failed),
                       "oldest_due_s": (round((now - oldest_at).total_seconds(), 1)
                                        if oldest_at is not None else 0.0)},
        "notices": [dataclasses.asdict(n) for n in found],
    }


def attention(portal: dict[str, Any], max_wait_s: float) -> list[str]:
    """What ``status`` asks a person to look at: every notice, and due webhooks that have
    waited at least ``max_wait_s`` (no dispatcher is delivering).  At least, not longer:
    the age is rounded to 0.1 s, so with ``max_wait_s`` 0 a webhook due for less than
    0.05 s would not count although it is due."""
    out = []
    for n in portal["notices"]:
        out.append(f"portal endpoint {n['endpoint_id']} ({n['customer_key']}, {n['url']}) "
                   f"{n['state']}: {n['detail']}; {n['failed_deliveries']} failed "
                   "deliveries (coexist dlq list)")
    d = portal["deliveries"]
    if d["due"] and d["oldest_due_s"] >= max_wait_s:
        out.append(f"portal: {d['due']} webhook(s) due, the oldest for {d['oldest_due_s']:g}s "
                   f">= {max_wait_s:g}s (is `coexist portal deliver` or `coexist run` "
                   "running?)")
    return out
