"""One domain's reconciliation, stored, for callers other than the CLI (the demo).

The same parts ``coexist reconcile`` uses: the legacy reader over the legacy
database, the cloud reader over the cloud adapter, the xref, and the run store
whose last drift the cutover guards read.
"""

from __future__ import annotations

from sqlalchemy import Engine

from coexistence.reconcile.findings import Finding, Report
from workers.reconcile.cloud import CloudReader
from workers.reconcile.legacy import LegacyReader
from workers.reconcile.runner import reconcile_domain
from workers.reconcile.store import RunStore
from workers.xref_sql import SqlXref


def reconcile_and_store(domain: str, legacy_erp, cloud_erp, state: Engine, *,
                        max_drift_pct: float = 0.0, mode: str = "auto",
                        keep: int = 1000) -> tuple[Report, str, list[Finding]]:
    """Compare ``domain`` in both ERPs, store the run and its first ``keep`` findings."""
    runs = RunStore(state)
    run_id = runs.start(domain, max_drift_pct)
    kept: list[Finding] = []

    def on_finding(finding: Finding) -> None:
        if len(kept) < keep:
            kept.append(finding)

    try:
        report = reconcile_domain(domain, LegacyReader(legacy_erp), CloudReader(cloud_erp),
                                  xref=SqlXref(state).entries(domain), mode=mode,
                                  on_finding=on_finding)
    except Exception as exc:
        runs.fail(run_id, "failed", str(exc))
        raise
    status = "drift" if report.counts.drift_pct > max_drift_pct else "ok"
    runs.finish(run_id, report, status)
    runs.add_findings(run_id, kept)
    return report, status, kept
