"""Guard facts read from the state database (``coexistence.preflight.PreflightFacts``).

* last reconciliation: the newest finished row of table ``reconcile_run`` (id, status,
  started and finished at, drift), written by the reconciliation CLI.  A run still
  ``running`` (or left so by a crash) has no ``finished_at`` and is not looked at; a
  newest run that ``failed``, timed out or was ``interrupted`` measured nothing, and the
  guard refuses it rather than trusting an older figure.  No table or no finished run
  means "missing drift".
* last routed change: the newest ``record_route.updated_at`` of the domain (the capture
  transaction writes it for every SoR change it routes, in any mode, whether or not a
  message results).  Stray writes do not move it: each is an open exception, which the
  exceptions guard blocks on.
* open exceptions: ``bus.exception_store.ExceptionStore(engine).open_count(domain)``.
* pending (the backlog guard and the switch's wait): the settle ledger (``bus.ledger``),
  messages routed to an ERP writer or the report actor that no consumer has applied,
  refused or recorded yet, whether the relay sent them to the broker or not.  Messages
  on the broker are not invisible: a write routed under an older flag version that is
  applied after a switch can overwrite the new system of record's newer state, which is
  why a switch waits for them.

  Not counted: channel fan-out (``coexist.channel.*``) never writes an ERP, each event
  carries the SoR's state at its version and channel consumers apply only newer ones;
  a channel whose consumer is down must not hold every switch.  Commands
  (``coexist.command``) are routed when consumed, under the flag in force then.

Every table is created by the state migrations (``coexist migrate``), so each fact is
read, never guessed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from bus import ledger
from bus.exception_store import ExceptionStore
from coexistence.preflight import Pending, Reconciliation
from workers.reconcile.store import ReconcileRun
from workers.router import queues
from workers.router.state import RecordRoute

RECONCILE_RUN = ReconcileRun.__table__
RECORD_ROUTE = RecordRoute.__table__
#: Queues whose messages a switch waits for: the ERP writers and the business reports.
SETTLED_QUEUES = (*queues.WRITE_QUEUE.values(), queues.REPORT_QUEUE)


def _as_datetime(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SqlPreflightFacts:
    """Reads the guard facts of a domain from coexist's state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def last_reconciliation(self, domain: str) -> Reconciliation | None:
        r = RECONCILE_RUN.c
        query = (
            select(r.id, r.status, r.drift_pct, r.started_at, r.finished_at)
            .where(r.domain == domain, r.finished_at.is_not(None))
            .order_by(r.finished_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Reconciliation(
            None if row.drift_pct is None else float(row.drift_pct),
            _as_datetime(row.finished_at), run_id=row.id,
            started_at=_as_datetime(row.started_at) if row.started_at else None,
            status=row.status)

    def last_routed_at(self, domain: str) -> datetime | None:
        query = select(func.max(RECORD_ROUTE.c.updated_at)).where(
            RECORD_ROUTE.c.domain == domain)
        with self.engine.connect() as conn:
            newest = conn.execute(query).scalar_one()
        return None if newest is None else _as_datetime(newest)

    def open_exceptions(self, domain: str) -> int | None:
        return int(ExceptionStore(self.engine).open_count(domain))

    def pending(self, domain: str, *, below_version: int | None = None,
                up_to_id: int | None = None) -> Pending | None:
        from workers.router.waits import waiting_outside_ledger

        u = ledger.unsettled(self.engine, domain=domain, queues=SETTLED_QUEUES,
                             below_version=below_version, up_to_id=up_to_id)
        return Pending(u.unsent, u.in_broker, dict(u.by_version), dict(u.by_queue),
                       u.newest_id, waiting_repairs=waiting_outside_ledger(self.engine, domain))

    def repairs_waiting(self, domain: str) -> dict:
        """Repairs of ``domain`` waiting for the SoR (``repair_wait``): ``count``,
        ``oldest_s`` (seconds since the oldest one first waited), ``recorded`` (gave up
        after the retry policy: technical exceptions)."""
        from workers.router.waits import waiting

        return waiting(self.engine, domain).get(
            domain, {"count": 0, "oldest_s": None, "recorded": 0})

    def backlog(self, domain: str) -> int | None:
        """Routed messages of ``domain`` not yet applied (``pending``'s total)."""
        p = self.pending(domain)
        return None if p is None else p.total

