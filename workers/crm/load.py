"""The CRM's first load: every customer, order, shipment and invoice from its SoR now.

The router fans out *changes*; records nobody changed since the channel started are
not in the CRM until someone does.  ``load_crm`` shows them: each record read from its
system of record (the flag's, or a document's pin), sent through the same
``sync_outbound`` as the consumer (batches of 200, each record's result on its own),
at the lowest version of the current flag (``routed_version(flag version, 0)``), so a
record the channel already showed from a routed change is never overwritten by the load
(the CRM's version rule answers ``Stale``) and any later change wins over it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bus.envelope import Envelope, new_envelope
from coexistence.canonical import DOCUMENT_DOMAINS, CanonicalRecord
from coexistence.crm.ports import CRM_OBJECTS, MAX_BATCH, Crm
from coexistence.router import placement
from workers.crm.handlers import Outcome, sync_outbound
from workers.crm.reports import Reports
from workers.router import queues

if TYPE_CHECKING:
    from workers.bootstrap import App

#: Dependency order (accounts before the documents that name them).
LOAD_ORDER = ("customer", "order", "shipment", "invoice")


@dataclass
class LoadReport:
    """Records sent and their outcomes, by domain."""

    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, domain: str, outcome: str) -> None:
        by = self.outcomes.setdefault(domain, {})
        by[outcome] = by.get(outcome, 0) + 1

    def line(self) -> str:
        return "; ".join(f"{d}: " + ", ".join(f"{o} {n}" for o, n in sorted(by.items()))
                         for d, by in self.outcomes.items()) or "nothing to load"


def records_from_sor(app: App, domain: str) -> Iterator[tuple[str, int, CanonicalRecord]]:
    """(SoR, flag version, record) of every record of ``domain``, each from its SoR."""
    from workers.router.state import get_route

    flag = app.flags.state(domain)
    sor = placement(domain, "", flag, {}, None)[1]
    others = [s for s in app.erps if s != sor]
    seen: set[str] = set()
    for system in (sor, *others):
        for record in app.erps[system].stream(domain):
            if record.key in seen:
                continue
            pinned = None
            if domain in DOCUMENT_DOMAINS:
                with app.state.connect() as conn:
                    route = get_route(conn, domain, record.key)
                pinned = route.pinned_sor if route else None
            owner = placement(domain, record.key, flag, {}, pinned)[1]
            if owner != system:
                continue  # read it from its own SoR (the other pass)
            seen.add(record.key)
            yield system, flag.version, record


def load_envelopes(items: Iterable[tuple[str, int, CanonicalRecord]]) -> Iterator[Envelope]:
    for sor, flag_version, record in items:
        mid = str(uuid.uuid4())
        yield new_envelope(domain=record.domain, kind=queues.KIND_EVENT, key=record.key,
                           payload={"record": record.model_dump(mode="json")},
                           source_system=sor, source_version=0,
                           schema_version=type(record).current_schema_version,
                           flag_version=flag_version, message_id=mid,
                           correlation_id=f"crm-load-{mid}")


def load_crm(app: App, *, crm: Crm | None = None, reports: Reports | None = None,
             domains: Sequence[str] = LOAD_ORDER) -> LoadReport:
    """Show every record of ``domains`` in the CRM as its SoR has it now."""
    from workers.crm.reports import ExceptionStoreReports

    crm = crm or app.crm
    reports = reports or ExceptionStoreReports(app.exceptions)
    report = LoadReport()
    for domain in domains:
        if domain not in CRM_OBJECTS:
            raise ValueError(f"the CRM shows no {domain} (one of {', '.join(CRM_OBJECTS)})")
        batch: list[Envelope] = []
        for env in load_envelopes(records_from_sor(app, domain)):
            batch.append(env)
            if len(batch) == MAX_BATCH:
                _send(batch, crm, reports, report)
                batch = []
        if batch:
            _send(batch, crm, reports, report)
    return report


def _send(batch: list[Envelope], crm: Crm, reports: Reports, report: LoadReport) -> None:
    results = sync_outbound(batch, crm=crm, reports=reports)
    for env, result in zip(batch, results, strict=True):
        report.add(env.domain, result.outcome.value)
    if any(r.outcome is Outcome.PAUSED for r in results):
        raise RuntimeError("the CRM's API budget is spent; load the rest later "
                           "(records already shown stay; the load is safe to repeat)")
