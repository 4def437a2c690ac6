"""The canonical model: one frozen pydantic model per business domain.

The canonical model is the language the router, the channels and
reconciliation speak.  It is neither the legacy shape nor the cloud shape:

* keys are business keys without padding (customer ``"10042"``, SKU
  ``"WID-1000"``); the id cross-reference maps them to legacy keys and cloud ids;
* money is ``Decimal`` with the document's ISO 4217 ``currency``;
* datetimes are timezone-aware and normalised to UTC;
* statuses are explicit enums;
* every model carries ``schema_version``; older versions are upcast on decode
  (see ``coexistence.canonical.upcast``).

Every record has a ``key`` field so generic code (xref, router, reconciliation)
can address any domain the same way.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

#: ISO 4217 codes the distributor trades in.  A code outside this set is bad input.
ISO_CURRENCIES: frozenset[str] = frozenset(
    {"USD", "EUR", "GBP", "CAD", "MXN", "CHF", "JPY", "AUD", "SEK", "DKK", "NOK", "PLN"}
)


def _currency(value: str) -> str:
    if value not in ISO_CURRENCIES:
        raise ValueError(f"not a supported ISO 4217 currency code: {value!r}")
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Currency = Annotated[str, AfterValidator(_currency)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
# allow_inf_nan=False is pydantic's own finiteness check: half the cost of a Python validator.
Amount = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
SignedAmount = Annotated[Decimal, Field(allow_inf_nan=False)]
Key = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
Quantity = Annotated[int, Field(ge=0)]
PositiveQuantity = Annotated[int, Field(gt=0)]
Text = Annotated[str, Field(max_length=200)]


class CanonicalModel(BaseModel):
    """Base of every canonical record: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The domain name, used in envelopes, flags and xref.
    domain: ClassVar[str]
    #: The schema version this class describes; decoders upcast older payloads to it.
    current_schema_version: ClassVar[int] = 1

    key: Key


# --------------------------------------------------------------------------- customer


class CustomerStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    BLOCKED = "blocked"
    #: A prospect exists in the cloud ERP only; the legacy ERP has no such code.
    PROSPECT = "prospect"


class PaymentTerms(StrEnum):
    PREPAID = "prepaid"
    COD = "cod"
    NET15 = "net15"
    NET30 = "net30"
    NET45 = "net45"
    NET60 = "net60"
    NET90 = "net90"


class SiteKind(StrEnum):
    BILL_TO = "bill_to"
    SHIP_TO = "ship_to"


class Site(BaseModel):
    """A bill-to or ship-to address of a customer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: Key
    kind: SiteKind
    name: Text
    line1: Text
    line2: Text | None = None
    city: Text
    region: Annotated[str, Field(max_length=40)]
    postal_code: Annotated[str, Field(min_length=1, max_length=12)]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class Customer(CanonicalModel):
    domain: ClassVar[str] = "customer"
    #: v2 replaced ``credit_limit_cents: int`` (implied USD) by ``credit_limit`` + ``currency``.
    current_schema_version: ClassVar[int] = 2

    schema_version: Literal[2] = 2
    name: Annotated[str, Field(min_length=1, max_length=120)]
    status: CustomerStatus
    currency: Currency
    credit_limit: Amount
    credit_hold: bool
    terms: PaymentTerms
    tax_id: Annotated[str, Field(max_length=20)] | None = None
    customer_group: Annotated[str, Field(max_length=10)]
    region: Annotated[str, Field(max_length=10)]
    contact_name: Text | None = None
    contact_email: Text | None = None
    contact_phone: Annotated[str, Field(max_length=30)] | None = None
    sites: tuple[Site, ...] = ()


# --------------------------------------------------------------------------- product


class ProductStatus(StrEnum):
    ACTIVE = "active"
    DISCONTINUED = "discontinued"
    BLOCKED = "blocked"


class UnitOfMeasure(StrEnum):
    EACH = "EA"
    BOX = "BX"
    CASE = "CS"
    PALLET = "PL"
    KILOGRAM = "KG"
    METER = "M"


class Product(CanonicalModel):
    domain: ClassVar[str] = "product"

    schema_version: Literal[1] = 1
    description: Annotated[str, Field(min_length=1, max_length=120)]
    unit: UnitOfMeasure
    #: Shipping weight of one unit, in kilograms.
    weight_kg: Amount
    status: ProductStatus
    currency: Currency
    list_price: Amount
    #: Standard cost: never sent to the portal (see the channel field policy).
    standard_cost: Amount


# --------------------------------------------------------------------------- price


class PriceBreak(BaseModel):
    """Unit price from ``min_quantity`` upwards."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_quantity: PositiveQuantity
    unit_price: Amount


class ContractPrice(CanonicalModel):
    """A customer x product contract price agreement with quantity breaks."""

    domain: ClassVar[str] = "price"

    schema_version: Literal[1] = 1
    customer_key: Key
    sku: Key
    currency: Currency
    breaks: tuple[PriceBreak, ...] = Field(min_length=1)
    valid_from: date
    #: ``None`` is open-ended.
    valid_to: date | None = None

    @field_validator("breaks")
    @classmethod
    def _breaks_ascend(cls, breaks: tuple[PriceBreak, ...]) -> tuple[PriceBreak, ...]:
        quantities = [b.min_quantity for b in breaks]
        if quantities != sorted(set(quantities)):
            raise ValueError("break quantities must be strictly ascending")
        return breaks


# --------------------------------------------------------------------------- inventory


class InventoryBalance(CanonicalModel):
    """Stock of one SKU in one warehouse.  Key is ``"{warehouse}:{sku}"``."""

    domain: ClassVar[str] = "inventory"

    schema_version: Literal[1] = 1
    warehouse: Annotated[str, Field(min_length=1, max_length=10)]
    sku: Key
    on_hand: Quantity
    allocated: Quantity

    @property
    def available_to_promise(self) -> int:
        """Derived, never stored: on hand less allocated, floored at zero."""
        return max(self.on_hand - self.allocated, 0)


# --------------------------------------------------------------------------- order


class OrderStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    ON_HOLD = "on_hold"
    ALLOCATED = "allocated"
    PARTIALLY_SHIPPED = "partially_shipped"
    SHIPPED = "shipped"
    INVOICED = "invoiced"
    CLOSED = "closed"
    CANCELLED = "cancelled"


#: Statuses after which a document is closed and no longer pinned to its SoR.
CLOSED_ORDER_STATUSES: frozenset[OrderStatus] = frozenset(
    {OrderStatus.CLOSED, OrderStatus.CANCELLED}
)


class OrderChannel(StrEnum):
    ERP = "erp"
    CRM = "crm"
    EDI = "edi"
    PORTAL = "portal"


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    line_no: PositiveQuantity
    sku: Key
    quantity: PositiveQuantity
    unit_price: Amount


class Order(CanonicalModel):
    domain: ClassVar[str] = "order"

    schema_version: Literal[1] = 1
    customer_key: Key
    ship_to_site_id: Key | None = None
    status: OrderStatus
    channel: OrderChannel
    customer_po: Annotated[str, Field(max_length=22)] | None = None
    currency: Currency
    ordered_at: UtcDatetime
    requested_date: date | None = None
    lines: tuple[OrderLine, ...] = Field(min_length=1)

    @property
    def total(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.lines), Decimal(0))


# --------------------------------------------------------------------------- shipment


class Milestone(StrEnum):
    PICKED = "picked"
    PACKED = "packed"
    SHIPPED = "shipped"
    DELIVERED = "delivered"


MILESTONE_ORDER: tuple[Milestone, ...] = tuple(Milestone)


class MilestoneEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    milestone: Milestone
    at: UtcDatetime


class ShipmentLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    line_no: PositiveQuantity
    order_line_no: PositiveQuantity
    sku: Key
    quantity: PositiveQuantity


class Shipment(CanonicalModel):
    domain: ClassVar[str] = "shipment"

    schema_version: Literal[1] = 1
    order_key: Key
    warehouse: Annotated[str, Field(min_length=1, max_length=10)]
    carrier: Annotated[str, Field(max_length=20)] | None = None
    tracking_number: Annotated[str, Field(max_length=40)] | None = None
    milestones: tuple[MilestoneEvent, ...] = ()
    lines: tuple[ShipmentLine, ...] = Field(min_length=1)

    @field_validator("milestones")
    @classmethod
    def _milestones_in_order(
        cls, events: tuple[MilestoneEvent, ...]
    ) -> tuple[MilestoneEvent, ...]:
        ranks = [MILESTONE_ORDER.index(e.milestone) for e in events]
        if ranks != sorted(set(ranks)):
            raise ValueError("milestones must be unique and in lifecycle order")
        return events

    @property
    def last_milestone(self) -> Milestone | None:
        return self.milestones[-1].milestone if self.milestones else None

    @property
    def is_closed(self) -> bool:
        return self.last_milestone is Milestone.DELIVERED


# --------------------------------------------------------------------------- invoice


class InvoiceStatus(StrEnum):
    OPEN = "open"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    VOID = "void"


class InvoiceLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    line_no: PositiveQuantity
    sku: Key
    description: Text
    quantity: PositiveQuantity
    unit_price: Amount

    @property
    def amount(self) -> Decimal:
        return self.unit_price * self.quantity


class Invoice(CanonicalModel):
    domain: ClassVar[str] = "invoice"

    schema_version: Literal[1] = 1
    order_key: Key
    customer_key: Key
    status: InvoiceStatus
    currency: Currency
    issued_on: date
    due_on: date
    tax_amount: Amount
    amount_paid: Amount = Decimal(0)
    lines: tuple[InvoiceLine, ...] = Field(min_length=1)

    @property
    def subtotal(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.tax_amount

    @property
    def is_closed(self) -> bool:
        return self.status in (InvoiceStatus.PAID, InvoiceStatus.VOID)


CanonicalRecord = Customer | Product | ContractPrice | InventoryBalance | Order | Shipment | Invoice
