"""``--repair``: re-publish the system of record's version of what a run found.

A finding is repairable when re-sending the SoR's record fixes it: a record
missing on one side, or a mismatch.  The SoR of each record comes from the
cutover flags (``FlagState.sor_for`` with the record's rollout segments); the
other ERP is the target.  A record the SoR does not hold is deleted from the
target.  Every repair goes through the outbox as an ordinary routed write
(``workers.router.repair.enqueue_repairs``): audited, version-checked by the
target's writer actor, visible in ``trace``.

``cloud_only`` is the exception: it writes no legacy record in normal
operation, but a repair from it *targets the legacy ERP* - the explicit
backfill that makes a rollback to ``cloud`` safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from coexistence.flags import FlagSource, Mode
from coexistence.reconcile.findings import REPAIRABLE, Finding, Kind
from coexistence.router import segment_attrs


@dataclass(frozen=True, slots=True)
class RepairPlan:
    """One record to repair: the SoR's record (``None``: delete it from the target)."""

    domain: str
    key: str
    sor: str
    target: str
    reason: str
    action: str  # upsert | delete

    def describe(self) -> str:
        return (f"{self.domain} {self.key}: {self.action} in {self.target} "
                f"from {self.sor} ({self.reason})")


def plan_repairs(findings: Iterable[Finding], flags: FlagSource, readers: dict,
                 ) -> tuple[list[tuple[RepairPlan, object]], list[Finding]]:
    """(repairs with the SoR's record, findings that no repair can fix).

    ``readers`` maps ``"legacy"``/``"cloud"`` to something with ``get(domain, key)``.
    One repair per record, whatever the number of its findings.
    """
    seen: set[tuple[str, str]] = set()
    plans: list[tuple[RepairPlan, object]] = []
    skipped: list[Finding] = []
    for f in findings:
        if f.kind not in REPAIRABLE:
            skipped.append(f)
            continue
        if (f.domain, f.key) in seen:
            continue
        seen.add((f.domain, f.key))
        # The segment attributes decide a partial rollout; either side's record has them.
        record_l = readers["legacy"].get(f.domain, f.key)
        record_c = readers["cloud"].get(f.domain, f.key)
        state = flags.state(f.domain)
        attrs = segment_attrs(record_l or record_c)
        sor = str(state.sor_for(f.key, attrs))
        target = "cloud" if sor == "legacy" else "legacy"
        record = record_l if sor == "legacy" else record_c
        reason = f"reconcile {f.kind}"
        if state.mode_for(f.key, attrs) == Mode.CLOUD_ONLY:
            reason += " (cloud_only backfill of the legacy ERP)"
        plans.append((RepairPlan(f.domain, f.key, sor, target,
                                 reason if f.kind != Kind.MISMATCH else f"{reason} {f.field}",
                                 "upsert" if record is not None else "delete"), record))
    return plans, skipped


def enqueue(state_engine, plans: list[tuple[RepairPlan, object]], run_id: str) -> int:
    """Put the repairs into the outbox, grouped by direction; returns how many."""
    from workers.router.repair import enqueue_repairs

    total = 0
    groups: dict[tuple[str, str], list] = {}
    for plan, record in plans:
        groups.setdefault((plan.sor, plan.target), []).append((plan.domain, plan.key, record))
    for (sor, target), items in groups.items():
        total += enqueue_repairs(state_engine, items, sor=sor, target=target,
                                 reason="reconciliation repair", run_id=run_id)
    return total
