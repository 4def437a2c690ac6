"""The store of reconciliation runs and their findings (state database).

``reconcile_run`` is what the cutover guards read (``workers.flags.facts``):
the newest row with a ``finished_at`` gives a domain's last drift.  A run
that failed or timed out is finished too, with ``drift_pct`` NULL, so a guard
never trusts an older figure after a failed attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Engine, Float, String, Text, insert, select, update
from sqlmodel import Field

from coexistence.reconcile.findings import Finding, Report
from workers.db import StateTable

#: Findings written per INSERT.
FINDINGS_BATCH = 1000


class ReconcileRun(StateTable, table=True):
    """One domain's reconciliation run: when, how, the counts and the drift."""

    __tablename__ = "reconcile_run"

    id: str = Field(primary_key=True, sa_type=String(36))
    domain: str = Field(index=True, sa_type=String(20))
    started_at: datetime = Field(sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, index=True,
                                         sa_type=DateTime(timezone=True))
    #: running, ok (drift within the limit), drift (above it), failed, timeout, interrupted.
    status: str = Field(sa_type=String(16))
    #: checksum or full (how the cloud side was read); checksum+full after a fallback.
    mode: str = Field(default="", sa_type=String(16))
    rows_legacy: int = 0
    rows_cloud: int = 0
    exclusive_legacy: int = 0
    exclusive_cloud: int = 0
    mismatched: int = 0
    unchanged: int = 0
    duplicates: int = 0
    orphans: int = 0
    findings: int = 0
    drift_pct: float | None = Field(default=None, sa_type=Float)
    max_drift_pct: float | None = Field(default=None, sa_type=Float)
    tolerances: str = Field(default="", sa_type=Text)
    detail: str = Field(default="", sa_type=Text)


class ReconcileFinding(StateTable, table=True):
    """One finding of a run (mismatches one row per field)."""

    __tablename__ = "reconcile_finding"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, sa_type=String(36))
    domain: str = Field(sa_type=String(20))
    kind: str = Field(sa_type=String(20))
    key: str = Field(sa_type=String(80))
    field: str | None = Field(default=None, sa_type=String(200))
    data: dict = Field(default_factory=dict, sa_type=JSON)


_RUN = ReconcileRun.__table__  # type: ignore[attr-defined]
_FINDING = ReconcileFinding.__table__  # type: ignore[attr-defined]


class RunStore:
    """Writes runs and findings; reads the last run of a domain."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, domain: str, max_drift_pct: float | None) -> str:
        run_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(insert(_RUN).values(
                id=run_id, domain=domain, started_at=datetime.now(UTC), status="running",
                max_drift_pct=max_drift_pct, tolerances="", detail=""))
        return run_id

    def add_findings(self, run_id: str, findings: Iterable[Finding]) -> None:
        rows = [{"run_id": run_id, "domain": f.domain, "kind": str(f.kind), "key": f.key,
                 "field": f.field, "data": f.to_dict()} for f in findings]
        with self.engine.begin() as conn:
            for start in range(0, len(rows), FINDINGS_BATCH):
                conn.execute(insert(_FINDING), rows[start:start + FINDINGS_BATCH])

    def finish(self, run_id: str, report: Report, status: str) -> None:
        c = report.counts
        mode = report.mode + ("+full" if report.fell_back else "")
        with self.engine.begin() as conn:
            conn.execute(update(_RUN).where(_RUN.c.id == run_id).values(
                finished_at=datetime.now(UTC), status=status, mode=mode,
                rows_legacy=c.rows_legacy, rows_cloud=c.rows_cloud,
                exclusive_legacy=c.exclusive_legacy, exclusive_cloud=c.exclusive_cloud,
                mismatched=c.mismatched, unchanged=c.unchanged, duplicates=c.duplicates,
                orphans=c.orphans, findings=c.findings, drift_pct=c.drift_pct,
                tolerances=json.dumps(list(report.tolerances)),
                detail=json.dumps({"segments": report.segments,
                                   "segments_differing": report.segments_differing,
                                   "cloud_records_fetched": report.cloud_records_fetched,
                                   "key_mismatches": c.key_mismatches,
                                   "untranslatable": c.untranslatable})))

    def fail(self, run_id: str, status: str, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(_RUN).where(_RUN.c.id == run_id).values(
                finished_at=datetime.now(UTC), status=status, drift_pct=None, detail=reason))

    def last(self, domain: str) -> dict | None:
        """The newest run of ``domain`` as a dict, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(select(_RUN).where(_RUN.c.domain == domain)
                               .order_by(_RUN.c.started_at.desc()).limit(1)).mappings().first()
        return dict(row) if row else None

    def findings(self, run_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [r.data for r in conn.execute(
                select(_FINDING.c.data).where(_FINDING.c.run_id == run_id)
                .order_by(_FINDING.c.id))]
