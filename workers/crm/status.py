"""The CRM channel as ``coexist status`` shows it: paused or not, API budget, inbound feed.

Read from coexist's state database only (the ``crm_channel`` row the consumers and the
poller write, the ``crm`` feed checkpoint, the inbound poller's lease): ``status``
spends none of the CRM's API budget.  The backlog of ``coexist.channel.crm`` is the
subscription's, shown next to it.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, inspect, select

from workers import checkpoints
from workers.crm import handlers, state


def crm_channel(engine: Engine, configured: bool, now: datetime | None = None
                ) -> dict[str, Any]:
    """``{"configured", "paused", "paused_until", "pause_reason", "budget_used",
    "budget_max", "budget_at", "inbound_checkpoint", "inbound_holder", "onboarding_time",
    "numbers_pending"}`` (``onboarding_time``: see ``onboarding_time``;
    ``numbers_pending``: the onboardings whose customer number the SoR has not given
    coexist yet, ``{"crm_account_id", "since", "held_at"}`` oldest first: while one is
    there, CRM writes of the customer it may have made are held)."""
    now = now or datetime.now(UTC)
    out: dict[str, Any] = {"configured": configured, "paused": False, "paused_until": None,
                           "pause_reason": "", "budget_used": None, "budget_max": None,
                           "budget_at": None, "inbound_checkpoint": None,
                           "inbound_holder": None, "onboarding_time": None,
                           "numbers_pending": []}
    if not inspect(engine).has_table(state.CrmChannelState.__tablename__):
        return out
    out["onboarding_time"] = onboarding_time(engine, now=now)
    out["numbers_pending"] = [
        {"crm_account_id": r.crm_account_id,
         "since": state._aware(r.decided_at).isoformat(),
         "held_at": state._aware(r.held_at).isoformat() if r.held_at else None}
        for r in state.numbers_pending(engine)]
    row = state.channel_state(engine)
    if row is not None:
        until = state._aware(row.paused_until) if row.paused_until else None
        out.update(paused=until is not None and until > now,
                   paused_until=until.isoformat() if until else None,
                   pause_reason=row.pause_reason if until and until > now else "",
                   budget_used=row.budget_used, budget_max=row.budget_max,
                   budget_at=state._aware(row.updated_at).isoformat())
    out["inbound_checkpoint"] = checkpoints.get(engine, handlers.FEED)
    from workers.router.lease import CaptureLease

    with engine.connect() as conn:
        t = CaptureLease.__table__
        holder = conn.execute(select(t.c.holder, t.c.expires_at_ms)
                              .where(t.c.name == "crm.inbound")).first()
    if holder is not None and holder.expires_at_ms > now.timestamp() * 1000:
        out["inbound_holder"] = holder.holder
    return out


#: The window onboarding time is measured over, in days (the console's KPI window too).
ONBOARDING_WINDOW_DAYS = 7


def onboarding_time(engine: Engine, *, days: int = ONBOARDING_WINDOW_DAYS,
                    now: datetime | None = None) -> dict[str, Any]:
    """How long person-created CRM accounts took to become customers, over the onboardings
    completed in the last ``days``: from the account's creation in the CRM to the CRM
    showing its customer (linked to an existing one and set to the SoR's values, or created
    in the SoR and its number written back).  ``{"window_days", "completed", "median_s",
    "p95_s", "open"}`` (``open``: decided, not yet shown; seconds ``None`` without data);
    p95 is the nearest-rank percentile."""
    now = now or datetime.now(UTC)
    t = state.CrmOnboarding.__table__
    since = now - timedelta(days=days)
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.crm_created_at, t.c.completed_at).where(
            t.c.decision.in_((state.LINK, state.CREATE)),
            t.c.completed_at.is_not(None), t.c.completed_at >= since,
            t.c.crm_created_at.is_not(None))).all()
        open_ = conn.execute(select(t.c.crm_account_id).where(
            t.c.decision.in_((state.LINK, state.CREATE)),
            t.c.completed_at.is_(None))).all()
    took = sorted(max((state._aware(done) - state._aware(created)).total_seconds(), 0.0)
                  for created, done in rows)
    return {"window_days": days, "completed": len(took),
            "median_s": round(statistics.median(took), 1) if took else None,
            "p95_s": round(took[math.ceil(0.95 * len(took)) - 1], 1) if took else None,
            "open": len(open_)}


def describe(c: dict[str, Any]) -> str:
    """One line for people."""
    if not c["configured"]:
        return "CRM channel: no [crm] section (nothing consumes coexist.channel.crm)"
    budget = ("budget unknown (no request yet)" if c["budget_max"] is None else
              f"API budget {c['budget_used']}/{c['budget_max']} "
              f"({100 * c['budget_used'] / c['budget_max']:.1f}% used)")
    paused = (f"PAUSED until {c['paused_until']} ({c['pause_reason']})" if c["paused"]
              else "running")
    inbound = (f"feed checkpoint {c['inbound_checkpoint']}, polled by "
               f"{c['inbound_holder'] or 'nobody now'}")
    line = f"CRM channel: {paused}; {budget}; {inbound}"
    pending = c.get("numbers_pending") or []
    if pending:
        line += (f"; {len(pending)} onboarding(s) waiting for a customer number from the SoR "
                 f"since {pending[0]['since']} (CRM account {pending[0]['crm_account_id']}: "
                 "its customer's CRM writes are held until the inbound poller records it)")
    times = c.get("onboarding_time")
    if times and times["completed"]:
        line += (f"; onboarding time median {times['median_s']:g} s, p95 {times['p95_s']:g} s "
                 f"over {times['completed']} account(s) in {times['window_days']} days")
    return line
