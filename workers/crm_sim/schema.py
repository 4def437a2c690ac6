"""The CRM simulator's org: sObjects, their fields, picklists and validation of values.

What a Salesforce admin would have set up for a distributor whose ERP feeds the CRM:

* ``Account`` with ``Coexist_Id__c`` (unique, case-sensitive external id: coexist's
  canonical customer key), ``Legacy_Number__c`` (an external id that is NOT unique: the
  legacy numbers imported at go-live, duplicates included, which is what a 300 answers),
  credit fields, payment terms and status as restricted picklists, and the roll-up
  ``Open_Balance__c`` over the account's invoices;
* ``Contact`` (owned by the CRM; ``Primary_Contact__c`` marks the one the ERP keeps);
* ``Order`` with the ERP's status, number, and ``Ship_Status__c`` / ``Invoice_Status__c``
  kept by automation from the order's shipments and invoices;
* ``Shipment__c`` (detail of Order: carrier, tracking, one timestamp per milestone) and
  ``Invoice__c`` (detail of Account: status, totals, ``Open_Balance__c`` formula);
* ``DuplicateRecordSet`` / ``DuplicateRecordItem``: what the duplicate rule reports when a
  person saves a duplicate anyway.

Values are checked the way the platform checks them: unknown fields, wrong types, strings
over length, unknown values of restricted picklists, required fields.  Each check raises
``FieldError`` with Salesforce's status code and the field it concerns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property

#: Field types used by this org.
STRING, TEXTAREA, BOOLEAN, CURRENCY, NUMBER, DATE, DATETIME, PICKLIST, REFERENCE, EMAIL, \
    PHONE, ID = ("string", "textarea", "boolean", "currency", "double", "date", "datetime",
                 "picklist", "reference", "email", "phone", "id")

ISO_CURRENCIES = ("USD", "EUR", "GBP", "CAD", "MXN", "CHF", "JPY", "AUD", "SEK", "DKK", "NOK",
                  "PLN")
ERP_SYSTEMS = ("Legacy ERP", "Cloud ERP")


class FieldError(Exception):
    """A value the platform refuses: ``code`` is Salesforce's status code."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.code, self.message, self.fields = code, message, list(fields or [])


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    label: str = ""
    length: int = 0
    required: bool = False
    unique: bool = False
    external_id: bool = False
    #: False for system, formula, roll-up and automation-maintained fields.
    updateable: bool = True
    picklist: tuple[str, ...] = ()
    restricted: bool = True
    #: For references: the target object and the relationship name used in bodies.
    reference_to: str = ""
    relationship: str = ""
    default: object = None
    scale: int = 2

    @property
    def display(self) -> str:
        return self.label or self.name.removesuffix("__c").replace("_", " ")


@dataclass(frozen=True)
class SObject:
    name: str
    key_prefix: str
    fields: dict[str, Field] = field(default_factory=dict)
    #: Change data capture is enabled for the object.
    cdc: bool = True

    # Cached: read for every record saved (5 % of a collection's CPU when recomputed);
    # an object's fields are fixed once the schema is built.
    @cached_property
    def external_ids(self) -> tuple[str, ...]:
        return tuple(n for n, f in self.fields.items() if f.external_id)

    @cached_property
    def relationships(self) -> dict[str, Field]:
        return {f.relationship: f for f in self.fields.values() if f.relationship}


def _system_fields() -> list[Field]:
    return [
        Field("Id", ID, updateable=False),
        Field("IsDeleted", BOOLEAN, updateable=False),
        Field("CreatedDate", DATETIME, updateable=False),
        Field("CreatedById", REFERENCE, updateable=False, reference_to="User"),
        Field("LastModifiedDate", DATETIME, updateable=False),
        Field("LastModifiedById", REFERENCE, updateable=False, reference_to="User"),
        Field("SystemModstamp", DATETIME, updateable=False),
    ]


def _coexist_fields() -> list[Field]:
    """Fields every object coexist writes carries: its key, version and correlation id."""
    return [
        Field("Coexist_Id__c", STRING, "Coexist Id", length=40, unique=True, external_id=True),
        Field("Coexist_Version__c", NUMBER, "Coexist Version", scale=0),
        Field("Coexist_Correlation_Id__c", STRING, "Coexist Correlation Id", length=128),
        Field("ERP_System__c", PICKLIST, "ERP System", picklist=ERP_SYSTEMS),
        Field("ERP_Deleted__c", BOOLEAN, "Deleted in ERP", default=False),
    ]


def _address(prefix: str) -> list[Field]:
    return [
        Field(f"{prefix}Street", TEXTAREA, length=255),
        Field(f"{prefix}City", STRING, length=40),
        Field(f"{prefix}State", STRING, length=80),
        Field(f"{prefix}PostalCode", STRING, length=20),
        Field(f"{prefix}Country", STRING, length=80),
    ]


def _object(name: str, prefix: str, fields: list[Field], cdc: bool = True) -> SObject:
    return SObject(name, prefix, {f.name: f for f in _system_fields() + fields}, cdc)


PAYMENT_TERMS = ("Prepaid", "COD", "Net 15", "Net 30", "Net 45", "Net 60", "Net 90")
ACCOUNT_STATUSES = ("Active", "Inactive", "Blocked", "Prospect")
ORDER_STATUSES = ("Draft", "Open", "On Hold", "Allocated", "Partially Shipped", "Shipped",
                  "Invoiced", "Closed", "Cancelled")
SHIP_STATUSES = ("Not Shipped", "Planned", "Picked", "Packed", "Shipped", "Delivered")
INVOICE_STATUSES = ("Open", "Partially Paid", "Paid", "Void")
ORDER_INVOICE_STATUSES = ("Not Invoiced", *INVOICE_STATUSES)

OBJECTS: dict[str, SObject] = {o.name: o for o in (
    _object("Account", "001", [
        Field("Name", STRING, "Account Name", length=255, required=True),
        Field("AccountNumber", STRING, "Account Number", length=40),
        Field("Legacy_Number__c", STRING, "Legacy Number", length=40, external_id=True),
        Field("Phone", PHONE, length=40),
        Field("Website", STRING, length=255),
        Field("Industry", PICKLIST, picklist=("Construction", "Manufacturing", "Government",
                                              "Retail", "Utilities", "Other"),
              restricted=False),
        Field("Description", TEXTAREA, length=32000),
        *_address("Billing"),
        *_address("Shipping"),
        Field("Tax_Id__c", STRING, "Tax Id", length=20),
        Field("Credit_Limit__c", CURRENCY, "Credit Limit"),
        Field("Credit_Hold__c", BOOLEAN, "Credit Hold", default=False),
        Field("Payment_Terms__c", PICKLIST, "Payment Terms", picklist=PAYMENT_TERMS),
        Field("Account_Status__c", PICKLIST, "Account Status", picklist=ACCOUNT_STATUSES),
        Field("Customer_Group__c", STRING, "Customer Group", length=10),
        Field("Sales_Region__c", STRING, "Sales Region", length=10),
        Field("CurrencyIsoCode", PICKLIST, "Currency", picklist=ISO_CURRENCIES, default="USD"),
        Field("Open_Balance__c", CURRENCY, "Open Balance", updateable=False),
        *_coexist_fields(),
    ]),
    _object("Contact", "003", [
        Field("AccountId", REFERENCE, "Account", reference_to="Account", relationship="Account"),
        Field("FirstName", STRING, length=40),
        Field("LastName", STRING, length=80, required=True),
        Field("Email", EMAIL, length=80),
        Field("Phone", PHONE, length=40),
        Field("Title", STRING, length=128),
        Field("Primary_Contact__c", BOOLEAN, "Primary Contact", default=False),
        Field("Coexist_Id__c", STRING, "Coexist Id", length=40, unique=True, external_id=True),
    ]),
    _object("Order", "801", [
        Field("AccountId", REFERENCE, "Account", required=True, reference_to="Account",
              relationship="Account"),
        Field("EffectiveDate", DATE, "Order Start Date", required=True),
        Field("Status", PICKLIST, required=True, picklist=ORDER_STATUSES),
        Field("ERP_Order_Number__c", STRING, "ERP Order Number", length=40),
        Field("PoNumber", STRING, "PO Number", length=80),
        Field("Requested_Date__c", DATE, "Requested Date"),
        Field("Order_Total__c", CURRENCY, "Order Total"),
        Field("CurrencyIsoCode", PICKLIST, "Currency", picklist=ISO_CURRENCIES, default="USD"),
        Field("Ship_Status__c", PICKLIST, "Ship Status", picklist=SHIP_STATUSES,
              updateable=False, default="Not Shipped"),
        Field("Invoice_Status__c", PICKLIST, "Invoice Status", picklist=ORDER_INVOICE_STATUSES,
              updateable=False, default="Not Invoiced"),
        *_coexist_fields(),
    ]),
    _object("Shipment__c", "a0S", [
        Field("Name", STRING, "Shipment Number", length=80, required=True),
        Field("Order__c", REFERENCE, "Order", required=True, reference_to="Order",
              relationship="Order__r"),
        Field("Warehouse__c", STRING, "Warehouse", length=10),
        Field("Carrier__c", STRING, "Carrier", length=20),
        Field("Tracking_Number__c", STRING, "Tracking Number", length=40),
        Field("Status__c", PICKLIST, "Status", required=True, picklist=SHIP_STATUSES[1:]),
        Field("Picked_At__c", DATETIME, "Picked At"),
        Field("Packed_At__c", DATETIME, "Packed At"),
        Field("Shipped_At__c", DATETIME, "Shipped At"),
        Field("Delivered_At__c", DATETIME, "Delivered At"),
        *_coexist_fields(),
    ]),
    _object("Invoice__c", "a0I", [
        Field("Name", STRING, "Invoice Number", length=80, required=True),
        Field("Account__c", REFERENCE, "Account", required=True, reference_to="Account",
              relationship="Account__r"),
        Field("Order__c", REFERENCE, "Order", reference_to="Order", relationship="Order__r"),
        Field("Status__c", PICKLIST, "Status", required=True, picklist=INVOICE_STATUSES),
        Field("Issued_On__c", DATE, "Issued On"),
        Field("Due_On__c", DATE, "Due On"),
        Field("Total__c", CURRENCY, "Total"),
        Field("Amount_Paid__c", CURRENCY, "Amount Paid"),
        Field("Open_Balance__c", CURRENCY, "Open Balance", updateable=False),
        Field("CurrencyIsoCode", PICKLIST, "Currency", picklist=ISO_CURRENCIES, default="USD"),
        *_coexist_fields(),
    ]),
    _object("DuplicateRecordSet", "0GK", [
        Field("DuplicateRuleId", STRING, length=18, updateable=False),
        Field("RecordCount", NUMBER, scale=0, updateable=False),
    ], cdc=False),
    _object("DuplicateRecordItem", "0GL", [
        Field("DuplicateRecordSetId", REFERENCE, reference_to="DuplicateRecordSet",
              updateable=False),
        Field("RecordId", REFERENCE, reference_to="Account", updateable=False),
    ], cdc=False),
)}

#: Objects the API lets a client write (the duplicate bookkeeping is the platform's own).
WRITABLE: frozenset[str] = frozenset({"Account", "Contact", "Order", "Shipment__c",
                                      "Invoice__c"})


def sobject(name: str) -> SObject:
    """The object named ``name`` (exact API name), or ``NOT_FOUND``."""
    obj = OBJECTS.get(name)
    if obj is None:
        raise FieldError("NOT_FOUND", "The requested resource does not exist")
    return obj


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def coerce(obj: SObject, f: Field, value):
    """``value`` as stored for field ``f``, or ``FieldError`` as the platform answers it."""
    if value is None:
        return None
    if f.type in (STRING, TEXTAREA, EMAIL, PHONE, ID):
        if not isinstance(value, str):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _type_error(f, value)
            value = str(value)
        if f.length and len(value) > f.length:
            raise FieldError("STRING_TOO_LONG",
                             f"{f.display}: data value too large: {value[:40]!r} "
                             f"(max length={f.length})", [f.name])
        if f.type == EMAIL and value and not _EMAIL.match(value):
            raise FieldError("INVALID_EMAIL_ADDRESS",
                             f"{f.display}: invalid email address: {value}", [f.name])
        return value
    if f.type == BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _type_error(f, value)
    if f.type in (CURRENCY, NUMBER):
        if isinstance(value, bool):
            raise _type_error(f, value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _type_error(f, value) from None
        if not math.isfinite(number):
            raise _type_error(f, value)
        if f.scale == 0:
            if number != int(number):
                raise FieldError("NUMBER_OUTSIDE_VALID_RANGE",
                                 f"{f.display}: value outside of valid range on numeric field",
                                 [f.name])
            whole = int(value) if isinstance(value, int) else int(number)
            if abs(whole) >= 10**18:
                raise FieldError("NUMBER_OUTSIDE_VALID_RANGE",
                                 f"{f.display}: value outside of valid range on numeric field",
                                 [f.name])
            return whole
        return round(number, f.scale)
    if f.type == DATE:
        if not isinstance(value, str):
            raise _type_error(f, value)
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise _type_error(f, value) from None
    if f.type == DATETIME:
        if not isinstance(value, str):
            raise _type_error(f, value)
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _type_error(f, value) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return format_datetime(moment)
    if f.type == PICKLIST:
        if not isinstance(value, str):
            raise _type_error(f, value)
        if f.restricted and value not in f.picklist:
            raise FieldError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                             f"{f.display}: bad value for restricted picklist field: {value}",
                             [f.name])
        return value
    if f.type == REFERENCE:
        if not isinstance(value, str):
            raise _type_error(f, value)
        return value
    raise AssertionError(f"unhandled field type {f.type}")  # pragma: no cover


def _type_error(f: Field, value) -> FieldError:
    return FieldError("INVALID_TYPE_ON_FIELD_IN_RECORD",
                      f"{f.display}: value not of required type: {value!r}", [f.name])


def format_datetime(moment: datetime) -> str:
    """Salesforce's datetime format: ``2024-05-01T12:30:00.000+0000``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


# ----------------------------------------------------------------- ids


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def record_id(prefix: str, n: int) -> str:
    """The ``n``-th 18-character id of an object: key prefix, pod, counter, case-safe suffix."""
    digits = []
    for _ in range(10):
        n, r = divmod(n, 62)
        digits.append(_BASE62[r])
    base = prefix + "Dx" + "".join(reversed(digits))
    return base + case_safe_suffix(base)


def case_safe_suffix(base15: str) -> str:
    """The 3 characters that make a 15-character id case-insensitively unique."""
    out = []
    for chunk in range(3):
        bits = 0
        for i, ch in enumerate(base15[chunk * 5:chunk * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        out.append(_SUFFIX[bits])
    return "".join(out)


def is_record_id(value: str) -> bool:
    return len(value) in (15, 18) and value.isalnum()
