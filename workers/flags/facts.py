"""Guard facts read from the state database (``coexistence.preflight.PreflightFacts``).

* last reconciliation: the newest finished row of table ``reconcile_run``
  (columns ``domain``, ``finished_at``, ``drift_pct``), written by the
  reconciliation CLI.  No table or no finished run means "missing drift".
* open exceptions: ``bus.exception_store.ExceptionStore(engine).open_count(domain)``.
* backlog: ``bus.outbox.backlog(engine, domain)`` (unsent outbox rows).
* in flight below a version: unsent outbox rows of the domain whose envelope
  was stamped with an older flag version.  Messages already handed to the
  broker but not yet consumed are not visible from SQL; the router's writer
  actors apply writes only when newer, so those cannot regress a record.

A bus module that is not importable makes its fact unknown (``None``), which
fails its guard; ``--force`` stays available.
"""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime

from sqlalchemy import Engine, column, inspect, select, table

from coexistence.preflight import Reconciliation

#: The reconciliation runs table; the reconciliation engineer owns its DDL.
RECONCILE_RUN = table("reconcile_run", column("domain"), column("finished_at"),
                      column("drift_pct"))


def _as_datetime(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SqlPreflightFacts:
    """Reads the guard facts of a domain from coexist's state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def last_reconciliation(self, domain: str) -> Reconciliation | None:
        if not inspect(self.engine).has_table("reconcile_run"):
            return None
        query = (
            select(RECONCILE_RUN.c.drift_pct, RECONCILE_RUN.c.finished_at)
            .where(RECONCILE_RUN.c.domain == domain, RECONCILE_RUN.c.finished_at.is_not(None))
            .order_by(RECONCILE_RUN.c.finished_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.drift_pct is None:
            return None
        return Reconciliation(float(row.drift_pct), _as_datetime(row.finished_at))

    def open_exceptions(self, domain: str) -> int | None:
        module = _optional("bus.exception_store")
        if module is None:
            return None
        return int(module.ExceptionStore(self.engine).open_count(domain))

    def backlog(self, domain: str) -> int | None:
        module = _optional("bus.outbox")
        if module is None:
            return None
        return int(module.backlog(self.engine, domain))

    def in_flight(self, domain: str, below_version: int) -> int | None:
        module = _optional("bus.outbox")
        if module is None:
            return None
        t = module.OutboxRecord.__table__
        query = select(t.c.payload).where(t.c.sent_at.is_(None), t.c.domain == domain)
        with self.engine.connect() as conn:
            # The version lives inside the envelope JSON; the backlog being drained is
            # small, and this runs only while `cutover set` waits.
            return sum(
                1 for (payload,) in conn.execute(query)
                if json.loads(payload).get("flag_version", 0) < below_version
            )


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
