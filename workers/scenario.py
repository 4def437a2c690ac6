"""A phased cutover of every domain, as a migration team runs it; the demo and the e2e tests.

Steps, in dependency order (customer, product, price, inventory, order,
shipment, invoice):

1. backfill each domain from the legacy ERP into the cloud, pinning open
   documents to the legacy ERP, then move it to ``shadow``;
2. people keep working in the legacy ERP (the SoR) while someone types into the
   cloud by mistake (a stray write): the router copies the former, reports and
   overwrites the latter;
3. every domain to ``cloud``: now people work in the cloud and the legacy ERP
   follows; an open order created before the switch stays with the legacy ERP;
4. a rollback of ``customer`` from ``cloud`` to ``shadow`` and forward again;
5. every domain to ``cloud_only``: the legacy ERP is no longer written.

After each step every record the mode says both ERPs share is compared through
the translators, and the writes each ERP received are counted against the
changes made, so an echo loop or a lost write shows as a number.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from coexistence.canonical import DOCUMENT_DOMAINS, DOMAINS, CanonicalRecord
from coexistence.flags import Mode
from coexistence.reconcile.engine import merge
from coexistence.router import CLOUD, LEGACY, is_closed
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from workers.driver import Driver
from workers.router.repair import backfill
from workers.router.state import get_route

ACTOR = "coexist-demo"
PERSON_LEGACY = "JSMITH"
PERSON_CLOUD = "ana.cloud"


def reconciler(app) -> Callable[[str], float]:
    """``reconcile(domain) -> drift %`` over the app's reference ERPs, stored like the CLI's
    (judged against the one configured limit, ``COEXIST_MAX_DRIFT_PCT``)."""
    from workers.reconcile.service import reconcile_and_store

    def reconcile(domain: str) -> float:
        report, _status, _findings = reconcile_and_store(
            domain, app.erps[LEGACY], app.erps[CLOUD], app.state,
            max_drift_pct=app.settings.max_drift_pct)
        return report.counts.drift_pct

    return reconcile


def touched(record: CanonicalRecord, n: int) -> CanonicalRecord:
    """``record`` as a person would change it: one business field, validated again."""
    data = record.model_dump()
    d = record.domain
    if d == "customer":
        data["credit_limit"] = record.credit_limit + n
    elif d == "product":
        data["list_price"] = record.list_price + Decimal(n) / 100
    elif d == "price":
        first = dict(data["breaks"][0])
        first["unit_price"] = first["unit_price"] + Decimal(n) / 100
        data["breaks"] = [first, *data["breaks"][1:]]
    elif d == "inventory":
        data["on_hand"] = record.on_hand + n
    elif d == "order":
        data["customer_po"] = f"PO-TOUCH-{n}"
    elif d == "shipment":
        data["tracking_number"] = f"1ZDEMO{n:010d}"
    elif d == "invoice":
        data["due_on"] = record.due_on + timedelta(days=n)
    return type(record).model_validate(data)


def normalised(record: CanonicalRecord) -> CanonicalRecord:
    """The record as the legacy ERP can hold it (the documented, named normalisation)."""
    return LEGACY_TRANSLATORS[record.domain].normalise(record)


@dataclass
class Agreement:
    """How far both ERPs agree on one domain, through the translators."""

    domain: str
    legacy_rows: int = 0
    cloud_rows: int = 0
    equal: int = 0
    mismatched: list[str] = field(default_factory=list)
    only_legacy: list[str] = field(default_factory=list)
    only_cloud: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not (self.mismatched or self.only_legacy or self.only_cloud)


def compare(legacy, cloud, domain: str) -> Agreement:
    """Stream both ERPs in key order and compare normalised records (bounded memory).

    Deliberately simpler than ``coexist reconcile`` (which the scenario also runs before
    each move): an independent check that both ERPs hold the same normalised records."""
    result = Agreement(domain)
    for a, b in merge(legacy.stream(domain), cloud.stream(domain)):
        if a is not None:
            result.legacy_rows += 1
        if b is not None:
            result.cloud_rows += 1
        if b is None:
            result.only_legacy.append(a.key)
        elif a is None:
            result.only_cloud.append(b.key)
        elif normalised(a) == normalised(b):
            result.equal += 1
        else:
            result.mismatched.append(a.key)
    return result


@dataclass
class StepReport:
    title: str
    modes: dict[str, str]
    agreements: dict[str, Agreement]
    routed: int
    echoes: int
    strays: int
    exceptions: dict[str, int]
    notes: list[str] = field(default_factory=list)
    #: The CRM's agreement with the SoR after the step (when the scenario has a CRM).
    crm: Any = None


class PhasedCutover:
    """Runs the scenario on an ``App`` (real reference ERPs or fakes) and reports each step."""

    def __init__(self, driver: Driver, *, cloud_people: Callable[[CanonicalRecord, str], None],
                 changes_per_domain: int = 3, report: Callable[[StepReport], None] = print,
                 reconcile: Callable[[str], float] | None = None, edi: bool = False,
                 edi_buyer: Callable | None = None, portal: Any = None, crm: Any = None):
        """``reconcile(domain) -> drift %`` runs and stores a reconciliation before every
        forward move, so the cutover guards judge real drift; without it (fake ERPs) the
        moves are forced, and audited as forced.  ``edi``: the app's trading partner
        (``workers.edi.demo``) sends 850s before and after the order domain moves
        (``edi_buyer(order, units)`` sends them instead of coexist's own writer).
        ``portal`` (a ``workers.portal.flow.PortalFlow``): a portal customer places an order
        before and after the order domain moves, and its webhook receiver is compared with
        the SoR at the end.  ``crm`` (``workers.crm.scenario.CrmPeople``) adds people
        working in the CRM and the CRM's check after every step."""
        self.driver = driver
        self.app = driver.app
        self.legacy = self.app.erps[LEGACY]
        self.cloud = self.app.erps[CLOUD]
        self.cloud_people = cloud_people
        self.k = changes_per_domain
        self.report = report
        self.cutover = self.app.cutover
        self.exceptions = self.app.exceptions
        self.reconcile = reconcile
        self.crm = crm
        self.drift: dict[str, float] = {}
        self.reports: list[StepReport] = []
        self.portal = portal
        self._n = itertools.count(1)
        #: Every person's edit: (system, domain, key).
        self.edits: list[tuple[str, str, str]] = []
        #: Stray writes made on purpose: (system written by mistake, domain, key).
        self.strays: list[tuple[str, str, str]] = []
        #: Records people edited in the cloud after cloud_only (the legacy ERP no longer
        #: follows them: drift that a reconciliation afterwards reports, on purpose).
        self.edited_after_cloud_only: set[tuple[str, str]] = set()
        self._cloud_only = False
        #: The EDI trading partner's rounds (``edi=True``); its problems fail the scenario.
        self.edi = None
        if edi:
            from workers.edi.demo import EdiTrading

            self.edi = EdiTrading(self.app, self.driver.settle, person=self._person_create,
                                  buyer=edi_buyer)

    # ------------------------------------------------------------------ steps

    def run(self) -> list[StepReport]:
        if self.crm is not None and self.crm.load is not None:
            loaded = self.crm.load()
            self.driver.settle()
            self._step("the CRM loaded from the SoR (the cloud is not backfilled yet)",
                       notes=[f"CRM first load: {loaded}"], compare_both=False)
        self.enter_shadow()
        self.work(sor=LEGACY, title="people edit the legacy ERP (SoR); one stray write per domain")
        self.edi_round("before", LEGACY)
        self.portal_order("before the order domain moves")
        self.move_all(Mode.CLOUD)
        self.edi_round("after", CLOUD)
        self.work(sor=CLOUD, title="people edit the cloud ERP (SoR; open documents stay in "
                                    "legacy); one stray write per domain")
        self.portal_order("after the order domain moved to the cloud")
        self.pinned_order_stays()
        self.rollback_and_forward("customer")
        self.move_all(Mode.CLOUD_ONLY)
        self.work(sor=CLOUD, title="cloud_only: the legacy ERP is no longer written",
                  compare_both=False)
        if self.portal is not None:
            self._step("the portal customer's webhooks against the SoR",
                       notes=self.portal.final_notes(), compare_both=False)
        return self.reports

    def portal_order(self, when: str) -> None:
        """A portal customer orders through the API; its webhooks follow (``portal``)."""
        if self.portal is not None:
            self._step(f"a portal order {when}",
                       notes=self.portal.order_step(self.driver, when))

    def enter_shadow(self) -> None:
        for domain in DOMAINS:
            backfill(self.app.state, self.legacy, domain, sor=LEGACY, target=CLOUD,
                     run_id=f"demo-{uuid.uuid4().hex[:8]}")
            self.driver.settle()
            self._set(domain, Mode.SHADOW, "backfilled from legacy; shadow writes start")
        self._step("every domain backfilled and in shadow")

    def move_all(self, mode: Mode) -> None:
        for domain in DOMAINS:
            self._set(domain, mode, f"phase: {mode}")
        self._cloud_only = mode is Mode.CLOUD_ONLY
        self.driver.settle()
        self._step(f"every domain moved to {mode}")

    def work(self, *, sor: str, title: str, compare_both: bool = True) -> None:
        """People edit records where they live (their SoR: the flag's, or a document's pin);
        one person per domain types into the other ERP by mistake (a stray write)."""
        notes = []
        for domain in DOMAINS:
            records = self._open_records(sor, domain, self.k + 1)
            for record in records[: self.k]:
                self._person_edit(self._sor_of(domain, record.key, sor), record)
            if len(records) > self.k and compare_both:
                stray = records[self.k]
                wrong = CLOUD if self._sor_of(domain, stray.key, sor) == LEGACY else LEGACY
                self._person_edit(wrong, stray)
                self.strays.append((wrong, domain, stray.key))
                notes.append(f"stray write into {wrong}: {domain} {stray.key}")
        if self.crm is not None:
            self.crm.act(self._open_records(sor, "customer", 2))
        self.driver.settle()
        self._step(title, notes=notes, compare_both=compare_both)

    def _person_edit(self, system: str, record: CanonicalRecord) -> None:
        changed = touched(record, next(self._n))
        self.edits.append((system, record.domain, record.key))
        if self._cloud_only and system == CLOUD:
            self.edited_after_cloud_only.add((record.domain, record.key))
        if system == LEGACY:
            self.legacy.person_upsert(changed, PERSON_LEGACY)
        else:
            self.cloud_people(changed, PERSON_CLOUD)

    def _sor_of(self, domain: str, key: str, flag_sor: str) -> str:
        """Where a person edits a record: a pinned document's SoR, else the flag's."""
        if domain not in DOCUMENT_DOMAINS:
            return flag_sor
        with self.app.state.connect() as conn:
            route = get_route(conn, domain, key)
        return route.pinned_sor if route is not None and route.pinned_sor else flag_sor

    def edi_round(self, label: str, sor: str) -> None:
        """The trading partner orders by 850 (see ``workers.edi.demo``), when there is one."""
        if self.edi is None:
            return
        notes = self.edi.round(label, sor)
        notes += [f"EDI PROBLEM: {p}" for p in self.edi.problems]
        self._step(f"EDI partner: 850s {label} the order domain moved; orders into {sor}, "
                   "997/855/856/810 back", notes=notes)

    def _person_create(self, system: str, record: CanonicalRecord) -> None:
        if system == LEGACY:
            self.legacy.person_upsert(record, PERSON_LEGACY)
        else:
            self.cloud_people(record, PERSON_CLOUD)

    def pinned_order_stays(self) -> None:
        """An open order created before the switch is still routed from the legacy ERP."""
        order = next((o for o in self.legacy.stream("order") if not is_closed(o)), None)
        notes = []
        if order is not None:
            self.legacy.person_upsert(touched(order, next(self._n)), PERSON_LEGACY)
            self.driver.settle()
            same = normalised(self.legacy.get("order", order.key)) == normalised(
                self.cloud.get("order", order.key))
            notes.append(f"open order {order.key} edited in legacy after the switch: "
                         f"{'copied to cloud (pinned)' if same else 'NOT copied'}")
        self._step("documents stay with the ERP they were created in", notes=notes)

    def rollback_and_forward(self, domain: str) -> None:
        self._await(self.cutover.rollback(domain, actor=ACTOR, reason="demo: rollback drill"))
        self.driver.settle()
        record = next(iter(self.legacy.stream(domain)))
        self.legacy.person_upsert(touched(record, next(self._n)), PERSON_LEGACY)
        self.driver.settle()
        self._step(f"{domain} rolled back to shadow: the legacy ERP is the SoR again",
                   notes=[f"{domain} {record.key} edited in legacy after rollback"])
        self._set(domain, Mode.CLOUD, "demo: forward again after the drill")
        self.driver.settle()

    # ------------------------------------------------------------------ helpers

    def _set(self, domain: str, mode: Mode, reason: str) -> None:
        # The team reviews the exceptions this scenario provokes (stray writes, each one
        # reported and repaired) and archives them before moving on, as the guard demands.
        open_ids = [r.id for r in self.exceptions.list(domain=domain)]
        if open_ids:
            self.exceptions.archive(ids=open_ids, actor=ACTOR,
                                    reason="demo: stray writes reviewed, each repaired")
        if self.reconcile is not None:
            self.drift[domain] = self.reconcile(domain)
        state = self.cutover.set(domain, mode, actor=ACTOR, reason=reason,
                                 force=self.reconcile is None)
        self._await(state)

    def _await(self, state) -> None:
        # Changes made from here on must be routed under the new flag in every process.
        if not self.app.flags.wait_for(state.domain, state.version, timeout_s=10):
            raise TimeoutError(f"flag {state.domain} v{state.version} did not reach the router")

    def _open_records(self, system: str, domain: str, n: int) -> list[CanonicalRecord]:
        erp = self.legacy if system == LEGACY else self.cloud
        out = []
        for record in erp.stream(domain):
            if domain in DOCUMENT_DOMAINS and is_closed(record):
                continue
            out.append(record)
            if len(out) >= n:
                break
        return out

    def _step(self, title: str, *, notes=(), compare_both: bool = True) -> None:
        flags = self.cutover.flags()
        agreements = {d: compare(self.legacy, self.cloud, d) for d in DOMAINS} if compare_both \
            else {}
        stats = self.driver.captured
        groups: dict[str, int] = {}
        for g in self.exceptions.groups(status="open"):
            groups[g.error_type] = groups.get(g.error_type, 0) + g.count
        if self.drift:
            notes = [*notes, "reconciled before the moves (drift %): " + ", ".join(
                f"{d} {p:.2f}" for d, p in self.drift.items())]
            self.drift = {}
        crm = self.crm.check() if self.crm is not None else None
        report = StepReport(title, {d: str(flags[d].mode) for d in DOMAINS}, agreements,
                            stats.routed, stats.echoes, stats.strays, groups, list(notes), crm)
        self.reports.append(report)
        self.report(report)
