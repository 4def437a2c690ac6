"""Canonical records -> CRM sObjects, and the CRM's account and contact fields -> canonical.

Pure functions.  What each object shows (what the service agent looking at a delayed
order needs: ERP order status, pick confirmation, carrier milestones, invoice status,
credit hold):

* ``Account``: keyed by ``Coexist_Id__c`` = canonical customer key (never an ERP id, so
  the CRM keeps one record per customer when the SoR moves); ``AccountNumber``, name,
  billing and shipping address (first bill-to / ship-to site), credit limit, credit hold,
  payment terms, status, tax id, group, region, currency.  Contacts are the CRM's own
  (``coexistence.ownership``): never written from the ERP.  ``Open_Balance__c`` is the
  CRM's roll-up over the account's invoices.
* ``Order``: status, ERP order number, PO, dates, total; the account by external id.
* ``Shipment__c``: carrier, tracking number, one timestamp per milestone
  (``Picked_At__c`` is the pick confirmation) and the last milestone as ``Status__c``.
* ``Invoice__c``: status, issue and due dates, total, amount paid (the CRM derives the
  open balance); account and order by external id.

Every record carries the routed version (``VERSION_FIELD``), the correlation id of the
message that wrote it (``CORRELATION_FIELD``), which ERP holds it today (``ERP_System__c``)
and ``ERP_Deleted__c`` (a delete in the ERP shows as a flag, never as a CRM delete that
would take the CRM's own contacts and history with it).

"Apply only when newer" lives in the CRM: the validation rule
``Coexist_Version_Must_Not_Regress`` on every object coexist writes refuses a save that
would lower ``Coexist_Version__c`` (an equal version passes, so a set-back or a
redelivery re-applies the same values); see ``docs/decisions/0002``.

Lossy spots (named): CRM text fields are shorter than the canonical ones for street
(255, two lines joined by a newline) and city (40); longer values are cut
(``LOSS_TRUNCATED_ADDRESS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from coexistence.canonical import CanonicalRecord
from coexistence.canonical.models import (
    Customer,
    CustomerStatus,
    Invoice,
    InvoiceStatus,
    Milestone,
    Order,
    OrderStatus,
    PaymentTerms,
    Shipment,
    Site,
    SiteKind,
)
from coexistence.crm.ports import CORRELATION_FIELD, CRM_OBJECTS, EXTERNAL_ID, VERSION_FIELD

LOSS_TRUNCATED_ADDRESS = "street cut to 255 and city to 40 characters (the CRM's field lengths)"

ERP_SYSTEM = {"legacy": "Legacy ERP", "cloud": "Cloud ERP"}

TERMS: dict[PaymentTerms, str] = {
    PaymentTerms.PREPAID: "Prepaid", PaymentTerms.COD: "COD", PaymentTerms.NET15: "Net 15",
    PaymentTerms.NET30: "Net 30", PaymentTerms.NET45: "Net 45", PaymentTerms.NET60: "Net 60",
    PaymentTerms.NET90: "Net 90",
}
ACCOUNT_STATUS: dict[CustomerStatus, str] = {
    CustomerStatus.ACTIVE: "Active", CustomerStatus.INACTIVE: "Inactive",
    CustomerStatus.BLOCKED: "Blocked", CustomerStatus.PROSPECT: "Prospect",
}
ORDER_STATUS: dict[OrderStatus, str] = {s: s.value.replace("_", " ").title() for s in OrderStatus}
INVOICE_STATUS: dict[InvoiceStatus, str] = {
    s: s.value.replace("_", " ").title() for s in InvoiceStatus}
MILESTONE_FIELD: dict[Milestone, str] = {
    Milestone.PICKED: "Picked_At__c", Milestone.PACKED: "Packed_At__c",
    Milestone.SHIPPED: "Shipped_At__c", Milestone.DELIVERED: "Delivered_At__c",
}
#: Shipment__c.Status__c before its first milestone.
PLANNED = "Planned"

_TERMS_BACK = {v: k for k, v in TERMS.items()}
_STATUS_BACK = {v: k for k, v in ACCOUNT_STATUS.items()}

STREET_CHARS = 255
CITY_CHARS = 40

#: Account fields coexist writes, by the canonical field they show.  All of them are the
#: ERP's (``coexistence.ownership``): a person's edit of one in the CRM is refused.
ACCOUNT_FIELDS: dict[str, str] = {
    "Name": "name",
    "Account_Status__c": "status",
    "CurrencyIsoCode": "currency",
    "Credit_Limit__c": "credit_limit",
    "Credit_Hold__c": "credit_hold",
    "Payment_Terms__c": "terms",
    "Tax_Id__c": "tax_id",
    "Customer_Group__c": "customer_group",
    "Sales_Region__c": "region",
    **{f"Billing{p}": "sites" for p in ("Street", "City", "State", "PostalCode", "Country")},
    **{f"Shipping{p}": "sites" for p in ("Street", "City", "State", "PostalCode", "Country")},
    "AccountNumber": "key",
}
#: Contact fields that show the customer's contact (the CRM owns them).
CONTACT_FIELDS: dict[str, str] = {
    "FirstName": "contact_name", "LastName": "contact_name", "Email": "contact_email",
    "Phone": "contact_phone",
}


def _money(value: Decimal) -> float:
    return float(value)


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _address(site: Site | None, prefix: str) -> dict[str, Any]:
    if site is None:
        return {}
    street = site.line1 if not site.line2 else f"{site.line1}\n{site.line2}"
    return {
        f"{prefix}Street": street[:STREET_CHARS],
        f"{prefix}City": site.city[:CITY_CHARS],
        f"{prefix}State": site.region,
        f"{prefix}PostalCode": site.postal_code,
        f"{prefix}Country": site.country,
    }


def _first(sites: tuple[Site, ...], kind: SiteKind) -> Site | None:
    return next((s for s in sites if s.kind is kind), None)


def _stamps(version: int, correlation_id: str, sor: str, key: str) -> dict[str, Any]:
    return {EXTERNAL_ID: key, VERSION_FIELD: version, CORRELATION_FIELD: correlation_id,
            "ERP_System__c": ERP_SYSTEM[sor], "ERP_Deleted__c": False}


def account_fields(c: Customer) -> dict[str, Any]:
    return {
        "Name": c.name,
        "AccountNumber": c.key,
        "Account_Status__c": ACCOUNT_STATUS[c.status],
        "CurrencyIsoCode": c.currency,
        "Credit_Limit__c": _money(c.credit_limit),
        "Credit_Hold__c": c.credit_hold,
        "Payment_Terms__c": TERMS[c.terms],
        "Tax_Id__c": c.tax_id,
        "Customer_Group__c": c.customer_group,
        "Sales_Region__c": c.region,
        **_address(_first(c.sites, SiteKind.BILL_TO), "Billing"),
        **_address(_first(c.sites, SiteKind.SHIP_TO), "Shipping"),
    }


def order_fields(o: Order) -> dict[str, Any]:
    return {
        "Account": {EXTERNAL_ID: o.customer_key},
        "ERP_Order_Number__c": o.key,
        "EffectiveDate": o.ordered_at.date().isoformat(),
        "Status": ORDER_STATUS[o.status],
        "PoNumber": o.customer_po,
        "Requested_Date__c": o.requested_date.isoformat() if o.requested_date else None,
        "Order_Total__c": _money(o.total),
        "CurrencyIsoCode": o.currency,
    }


def shipment_fields(s: Shipment) -> dict[str, Any]:
    at = {e.milestone: e.at for e in s.milestones}
    last = s.last_milestone
    return {
        "Name": s.key,
        "Order__r": {EXTERNAL_ID: s.order_key},
        "Warehouse__c": s.warehouse,
        "Carrier__c": s.carrier,
        "Tracking_Number__c": s.tracking_number,
        "Status__c": last.value.title() if last else PLANNED,
        **{name: (_stamp(at[m]) if m in at else None) for m, name in MILESTONE_FIELD.items()},
    }


def invoice_fields(i: Invoice) -> dict[str, Any]:
    return {
        "Name": i.key,
        "Account__r": {EXTERNAL_ID: i.customer_key},
        "Order__r": {EXTERNAL_ID: i.order_key},
        "Status__c": INVOICE_STATUS[i.status],
        "Issued_On__c": i.issued_on.isoformat(),
        "Due_On__c": i.due_on.isoformat(),
        "Total__c": _money(i.total),
        "Amount_Paid__c": _money(i.amount_paid),
        "CurrencyIsoCode": i.currency,
    }


#: Domain -> the function that maps its record (each takes its own domain's model).
_FIELDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "customer": account_fields, "order": order_fields, "shipment": shipment_fields,
    "invoice": invoice_fields}


def to_sobject(record: CanonicalRecord, *, version: int, correlation_id: str,
               sor: str) -> dict[str, Any]:
    """The sObject fields (API names) that show ``record`` in the CRM, stamps included."""
    fields = _FIELDS[record.domain](record)
    return {**fields, **_stamps(version, correlation_id, sor, record.key)}


def deleted_sobject(domain: str, key: str, *, version: int, correlation_id: str,
                    sor: str) -> dict[str, Any]:
    """The update that shows a record deleted in the ERP (``ERP_Deleted__c``)."""
    if domain not in CRM_OBJECTS:
        raise KeyError(domain)
    return {**_stamps(version, correlation_id, sor, key), "ERP_Deleted__c": True}


# ----------------------------------------------------------------- CRM -> canonical


def _site(fields: Mapping[str, Any], prefix: str, kind: SiteKind, name: str) -> Site | None:
    street = (fields.get(f"{prefix}Street") or "").strip()
    city = (fields.get(f"{prefix}City") or "").strip()
    postal = (fields.get(f"{prefix}PostalCode") or "").strip()
    country = (fields.get(f"{prefix}Country") or "").strip().upper()
    if not (street and city and postal and len(country) == 2 and country.isalpha()):
        return None
    line1, _, line2 = street.partition("\n")
    return Site(site_id="B01" if kind is SiteKind.BILL_TO else "S01", kind=kind,
                name=name[:200], line1=line1[:200], line2=line2[:200] or None,
                city=city[:200], region=(fields.get(f"{prefix}State") or "")[:40],
                postal_code=postal[:12], country=country)


def sites_from_account(fields: Mapping[str, Any]) -> tuple[Site, ...]:
    """The bill-to and ship-to sites an account's addresses describe (complete ones only)."""
    name = fields.get("Name") or ""
    sites = [_site(fields, "Billing", SiteKind.BILL_TO, name),
             _site(fields, "Shipping", SiteKind.SHIP_TO, name)]
    return tuple(s for s in sites if s is not None)


def terms_from_crm(value: str | None) -> PaymentTerms | None:
    return _TERMS_BACK.get(value) if value else None


def status_from_crm(value: str | None) -> CustomerStatus | None:
    return _STATUS_BACK.get(value) if value else None


def contact_values(fields: Mapping[str, Any] | None) -> dict[str, str | None]:
    """Canonical contact fields from a CRM contact (``None``: the contact is gone)."""
    if fields is None:
        return {"contact_name": None, "contact_email": None, "contact_phone": None}
    name = " ".join(p for p in (fields.get("FirstName"), fields.get("LastName")) if p)
    return {"contact_name": (name or None) and name[:200],
            "contact_email": (fields.get("Email") or None) and fields["Email"][:200],
            "contact_phone": (fields.get("Phone") or None) and fields["Phone"][:30]}


#: Per document object, the CRM fields coexist writes (relationships by their Id field).
DOCUMENT_FIELDS: dict[str, frozenset[str]] = {
    "Order": frozenset({"AccountId", "ERP_Order_Number__c", "EffectiveDate", "Status",
                        "PoNumber", "Requested_Date__c", "Order_Total__c", "CurrencyIsoCode"}),
    "Shipment__c": frozenset({"Name", "Order__c", "Warehouse__c", "Carrier__c",
                              "Tracking_Number__c", "Status__c", *MILESTONE_FIELD.values()}),
    "Invoice__c": frozenset({"Name", "Account__c", "Order__c", "Status__c", "Issued_On__c",
                             "Due_On__c", "Total__c", "Amount_Paid__c", "CurrencyIsoCode"}),
}
#: Stamps coexist writes on every object; a person changing one is set back too.
STAMP_FIELDS: frozenset[str] = frozenset({EXTERNAL_ID, "ERP_System__c", "ERP_Deleted__c"})


def owned_fields_changed(sobject: str, changed: tuple[str, ...] | list[str]) -> list[str]:
    """The CRM fields among ``changed`` that show what the ERP owns (or coexist's stamps)."""
    names = set(ACCOUNT_FIELDS) if sobject == "Account" else DOCUMENT_FIELDS.get(sobject, set())
    return [f for f in changed if f in names or f in STAMP_FIELDS]
