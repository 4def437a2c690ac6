"""The CRM in the phased cutover (the demo and ``tests/e2e``): people in the CRM, and an
independent check that the CRM agrees with the SoR after every step.

``CrmPeople.act(step)`` plays the sales team once per working step: a new company typed
into the CRM (onboarding must create exactly one customer in the SoR, which must come
back numbered), the primary contact of an existing account changed (the CRM owns
contacts: it must reach the SoR), and a credit limit typed over (the ERP owns it: refused,
reported, and set back to the SoR's value).

``CrmPeople.check()`` reads every Account, Order, Shipment__c and Invoice__c through the
CRM's own API (SOQL, as an administrator: no coexist code on the read path) and compares
each with its SoR's record, field by field, through the mapping's field lists; and checks
that each of the people's edits ended where the rules say.  One line per step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coexistence.crm import mapping
from coexistence.crm.ports import CRM_OBJECTS, EXTERNAL_ID

REP = "rep.crm"


@dataclass
class CrmAgreement:
    domain: str
    sor_rows: int = 0
    equal: int = 0
    missing: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    #: Equal to the other ERP's copy, which the SoR holds too under the legacy ERP's named
    #: normalisation (upper-case names...): after a rollback moved the SoR, until the
    #: record's next change.
    as_other_spells: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not (self.missing or self.differ)


@dataclass
class CrmStepCheck:
    agreements: dict[str, CrmAgreement]
    edits: list[tuple[str, bool]]

    @property
    def agrees(self) -> bool:
        return all(a.agrees for a in self.agreements.values()) and all(ok for _, ok in self.edits)

    def line(self) -> str:
        parts = []
        for d, a in self.agreements.items():
            text = f"{a.equal}/{a.sor_rows} {d}s"
            if a.as_other_spells:
                text += f" ({len(a.as_other_spells)} as the other ERP spells it)"
            if not a.agrees:
                text += (f" (missing {', '.join(a.missing[:3])}" if a.missing else " (") + \
                    (f" differ {', '.join(a.differ[:3])}" if a.differ else "") + ")"
            parts.append(text)
        edits = "; ".join(f"{what}: {'ok' if ok else 'NOT DONE'}" for what, ok in self.edits)
        verdict = "agrees with the SoR" if self.agrees else "DISAGREES with the SoR"
        return f"CRM {verdict}: {', '.join(parts)}" + (f"; people's CRM edits: {edits}"
                                                       if edits else "")


#: (sobject, fields to read) per domain: what the mapping writes, relationships left out
#: (they are keyed by external id and checked through the child's own key).
_READ = {
    "customer": ("Account", sorted(mapping.ACCOUNT_FIELDS)),
    "order": ("Order", sorted(mapping.DOCUMENT_FIELDS["Order"] - {"AccountId"})),
    "shipment": ("Shipment__c", sorted(mapping.DOCUMENT_FIELDS["Shipment__c"] - {"Order__c"})),
    "invoice": ("Invoice__c", sorted(mapping.DOCUMENT_FIELDS["Invoice__c"]
                                     - {"Account__c", "Order__c"})),
}


def _norm(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return round(float(value), 2)
    if isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("+0000",
                                                                                 "+00:00"))
        except ValueError:
            return text
        return moment.isoformat()
    return value


def _shows(row: dict, domain: str, record: Any, names: list[str]) -> bool:
    expected = mapping._FIELDS[domain](record)
    return all(_norm(row.get(f)) == _norm(expected.get(f)) for f in names if f in expected)


class CrmPeople:
    """People in the CRM (through the simulator's UI path) and the per-step check."""

    def __init__(self, admin, sor_records: Callable[[str], Iterable[Any]],
                 sor_record: Callable[[str, str], Any], load: Callable[[], str] | None = None,
                 other_copy: Callable[[Any], Any] | None = None):
        """``admin``: ``CrmSimulatorAdmin``; ``sor_records(domain)`` yields every record
        of a domain from its SoR; ``sor_record(domain, key)`` one (or ``None``); ``load()``
        the CRM's first load (``workers.crm.load``), run before the first step;
        ``other_copy(record)`` the other ERP's copy of a SoR record when both ERPs hold the
        same record (normalised), else ``None``."""
        self.admin = admin
        self.other_copy = other_copy
        self.load = load
        self.sor_records = sor_records
        self.sor_record = sor_record
        self._n = itertools.count(1)
        #: (what, check) of the edits of the current step, checked after it settled.
        self._pending: list[tuple[str, Callable[[], bool]]] = []
        #: Keys of customers onboarded from the CRM (the demo's closing hints).
        self.onboarded: list[str] = []

    # ------------------------------------------------------------------ people

    def act(self, customers: list[Any]) -> None:
        """One new company, one contact change, one refused credit-limit edit."""
        n = next(self._n)
        name = f"Walk-In Supply {n}"
        created = self.admin.person_create(REP, "Account", {
            "Name": name, "BillingPostalCode": f"8{n:04d}", "BillingCountry": "US",
            "BillingCity": "Denver", "BillingStreet": f"{n} Market St"})
        created.raise_for_status()
        account_id = created.json()["id"]
        self._pending.append((f"new account {name!r} -> one customer, numbered",
                              lambda: self._onboarded(account_id, name)))
        if len(customers) < 2:
            return
        contact_of, limit_of = customers[0], customers[1]
        account = self.admin.by_external_id("Account", contact_of.key)
        if account is not None:
            last = f"Contact{n}"
            self.admin.person_create(REP, "Contact", {
                "AccountId": account["Id"], "FirstName": "Dana", "LastName": last,
                "Email": f"dana.{n}@example.com", "Phone": f"555-01{n:02d}",
                "Primary_Contact__c": True}).raise_for_status()
            self._pending.append((f"contact of {contact_of.key} -> SoR",
                                  lambda k=contact_of.key, v=f"Dana {last}":
                                  self._contact(k, v)))
        account = self.admin.by_external_id("Account", limit_of.key)
        if account is not None:
            self.admin.person_update(REP, "Account", account["Id"], {
                "Credit_Limit__c": float(account["Credit_Limit__c"] or 0) + 99_999
            }).raise_for_status()
            self._pending.append((f"credit limit of {limit_of.key} typed over -> refused, "
                                  "set back", lambda k=limit_of.key: self._set_back(k)))

    def _onboarded(self, account_id: str, name: str) -> bool:
        account = self.admin.http.get(
            f"{self.admin._ui('admin')}/sobjects/Account/{account_id}").json()
        key = account.get(EXTERNAL_ID)
        if not key or not account.get("AccountNumber"):
            return False
        record = self.sor_record("customer", key)
        if record is None or record.name.upper() != name.upper():
            return False
        same = [r for r in self.sor_records("customer") if r.name.upper() == name.upper()]
        self.onboarded.append(key)
        return len(same) == 1

    def _contact(self, key: str, name: str) -> bool:
        record = self.sor_record("customer", key)
        # (the legacy ERP keeps names in upper case)
        return record is not None and (record.contact_name or "").upper() == name.upper()

    def _set_back(self, key: str) -> bool:
        record = self.sor_record("customer", key)
        account = self.admin.by_external_id("Account", key)
        return record is not None and account is not None and \
            _norm(account["Credit_Limit__c"]) == _norm(float(record.credit_limit))

    # ------------------------------------------------------------------ check

    def check(self) -> CrmStepCheck:
        agreements = {d: self._agree(d) for d in ("customer", "order", "shipment", "invoice")}
        edits = [(what, ok()) for what, ok in self._pending]
        self._pending = []
        return CrmStepCheck(agreements, edits)

    def _agree(self, domain: str) -> CrmAgreement:
        sobject, names = _READ[domain]
        rows = self.admin.query(f"SELECT {EXTERNAL_ID}, {', '.join(names)} FROM {sobject}")
        shown = {r[EXTERNAL_ID]: r for r in rows if r.get(EXTERNAL_ID)}
        out = CrmAgreement(domain)
        for record in self.sor_records(domain):
            out.sor_rows += 1
            row = shown.get(record.key)
            if row is None:
                out.missing.append(record.key)
                continue
            if _shows(row, domain, record, names):
                out.equal += 1
                continue
            other = self.other_copy(record) if self.other_copy else None
            if other is not None and _shows(row, domain, other, names):
                out.equal += 1
                out.as_other_spells.append(record.key)
            else:
                out.differ.append(record.key)
        return out




def for_app(app, admin, same: Callable[[Any, Any], bool] | None = None) -> CrmPeople:
    """``CrmPeople`` over an app's ERPs (each record from its SoR) and its CRM;
    ``same(a, b)``: the two ERPs' copies are the same record (the scenario's comparison)."""
    from workers.crm.consumer import sor_lookup
    from workers.crm.load import load_crm, records_from_sor

    lookup = sor_lookup(app)

    def records(domain: str):
        return (record for _sor, _v, record in records_from_sor(app, domain))

    def record(domain: str, key: str):
        found = lookup(domain, key)
        return found[1] if found else None

    def other_copy(sor_copy):
        if same is None:
            return None
        for system in app.erps:
            other = app.erps[system].get(sor_copy.domain, sor_copy.key)
            if other is not None and other != sor_copy and same(sor_copy, other):
                return other
        return None

    return CrmPeople(admin, records, record, load=lambda: load_crm(app).line(),
                     other_copy=other_copy)


__all__ = ["CRM_OBJECTS", "CrmPeople", "CrmStepCheck", "for_app"]
