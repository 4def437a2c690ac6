"""The cloud ERP model: pydantic models of the cloud API's JSON resources.

The shape follows the OData v4 JSON conventions of today's SaaS ERPs (SAP
S/4HANA Cloud, Dynamics 365 Business Central), so that an adapter for a real
cloud ERP differs from ours mostly in resource names and auth:

* camelCase JSON names (``displayName``, ``currencyCode``); Python code may use
  the snake_case field names too (``populate_by_name``);
* ``id`` is a server-assigned UUID; ``number`` is the business number and equals
  the canonical key (customer ``"10042"``, item = SKU, inventory balance
  ``"{warehouse}:{sku}"``); other resources are referenced by business number
  (``customerNumber``, ``itemNumber``, ``orderNumber``) as Business Central does;
* money and quantities are decimal strings (``"1250.00"``) next to a
  ``currencyCode``; JSON numbers are accepted on input, strings are written;
* timestamps are ISO 8601, normalised to UTC (written with ``Z``);
* lines and addresses are nested; statuses are enumerated strings.

Server-managed fields (``id``, ``lastModifiedDateTime``, ``@odata.etag``) are
optional so a create body can omit them; a server fills them on read.
``coexistSourceVersion`` models a custom field that coexist stamps on its
writes; the cloud adapter uses it with ETag/If-Match to apply only newer
versions.  Unknown fields are rejected (``extra="forbid"``) so the simulator can
answer 400/422 naming the field path.

The model describes the cloud as it is, which is wider than canonical in places
(fractional or negative quantities, statuses canonical has no twin for).  The
translators in ``coexistence.translate.cloud`` decide what can cross; this
module only decides what is a well-formed cloud document.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)
from pydantic.alias_generators import to_camel


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A timezone-aware timestamp, normalised to UTC.  Naive timestamps are rejected:
#: the cloud API always states its zone.
CloudDateTime = Annotated[AwareDatetime, AfterValidator(_utc)]
#: Money or a quantity: a finite decimal (``"NaN"``/``"Infinity"`` are rejected).
#: Sign and scale are the translators' business, not the cloud's.
CloudDecimal = Annotated[Decimal, Field(allow_inf_nan=False)]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
#: Business numbers and codes: non-empty, no surrounding whitespace check here
#: (canonical key rules are applied by the translators).
Number = Annotated[str, Field(min_length=1, max_length=50)]
CloudText = Annotated[str, Field(max_length=250)]


class CloudModel(BaseModel):
    """Base of every cloud JSON object (resources and nested parts)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # Enum members, not their values, are kept on the model: translators map
        # them by identity and JSON output still writes the string value.
        use_enum_values=False,
    )


class CloudResource(CloudModel):
    """An addressable entity of the cloud API (one OData entity set per class)."""

    #: The OData entity set (URL segment) of this resource.
    resource: ClassVar[str]
    #: The canonical domain this resource carries.
    domain: ClassVar[str]
    #: JSON names the server owns; a create or update body may omit them.
    server_fields: ClassVar[frozenset[str]] = frozenset(
        {"id", "lastModifiedDateTime", "@odata.etag"}
    )

    odata_etag: str | None = Field(default=None, alias="@odata.etag")
    id: UUID | None = None
    number: Number
    last_modified_date_time: CloudDateTime | None = None
    #: Custom field stamped by coexist: the source version of its last write.
    coexist_source_version: Annotated[StrictInt, Field(ge=0)] | None = None


# --------------------------------------------------------------------------- customers


class CustomerStatus(StrEnum):
    ACTIVE = "Active"
    INACTIVE = "Inactive"
    BLOCKED = "Blocked"
    PROSPECT = "Prospect"


class PaymentTermsCode(StrEnum):
    PREPAID = "Prepaid"
    COD = "COD"
    NET15 = "Net15"
    NET30 = "Net30"
    NET45 = "Net45"
    NET60 = "Net60"
    NET90 = "Net90"


class AddressType(StrEnum):
    BILL_TO = "BillTo"
    SHIP_TO = "ShipTo"


class CloudCustomerAddress(CloudModel):
    """A customer site (bill-to or ship-to address), nested in the customer."""

    code: Number
    address_type: AddressType
    name: CloudText
    address_line1: CloudText
    address_line2: CloudText | None = None
    city: CloudText
    state: CloudText
    postal_code: Annotated[str, Field(max_length=20)]
    #: ISO 3166-1 alpha-2.
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class CloudCustomer(CloudResource):
    resource: ClassVar[str] = "customers"
    domain: ClassVar[str] = "customer"

    display_name: CloudText
    status: CustomerStatus
    currency_code: CurrencyCode
    credit_limit: CloudDecimal
    credit_hold: StrictBool
    payment_terms_code: PaymentTermsCode
    tax_registration_number: Annotated[str, Field(max_length=50)] | None = None
    customer_group_code: Annotated[str, Field(max_length=20)]
    sales_region_code: Annotated[str, Field(max_length=20)]
    contact_name: CloudText | None = None
    email: CloudText | None = None
    phone_number: Annotated[str, Field(max_length=50)] | None = None
    addresses: list[CloudCustomerAddress] = []


# --------------------------------------------------------------------------- items


class ItemStatus(StrEnum):
    ACTIVE = "Active"
    DISCONTINUED = "Discontinued"
    BLOCKED = "Blocked"


class UnitOfMeasureCode(StrEnum):
    EACH = "EA"
    BOX = "BX"
    CASE = "CS"
    PALLET = "PL"
    KILOGRAM = "KG"
    METER = "M"


class CloudItem(CloudResource):
    resource: ClassVar[str] = "items"
    domain: ClassVar[str] = "product"

    display_name: CloudText
    base_unit_of_measure_code: UnitOfMeasureCode
    #: Net weight of one base unit, in kilograms.
    net_weight_kg: CloudDecimal
    status: ItemStatus
    currency_code: CurrencyCode
    unit_price: CloudDecimal
    unit_cost: CloudDecimal


# --------------------------------------------------------------------------- contractPrices


class CloudPriceBreak(CloudModel):
    minimum_quantity: CloudDecimal
    unit_price: CloudDecimal


class CloudContractPrice(CloudResource):
    resource: ClassVar[str] = "contractPrices"
    domain: ClassVar[str] = "price"

    customer_number: Number
    item_number: Number
    currency_code: CurrencyCode
    starting_date: date
    #: ``null`` is open-ended.
    ending_date: date | None = None
    price_breaks: list[CloudPriceBreak] = []


# --------------------------------------------------------------------------- inventoryBalances


class CloudInventoryBalance(CloudResource):
    resource: ClassVar[str] = "inventoryBalances"
    domain: ClassVar[str] = "inventory"

    location_code: Annotated[str, Field(min_length=1, max_length=20)]
    item_number: Number
    quantity_on_hand: CloudDecimal
    quantity_allocated: CloudDecimal
    #: Derived by the server (on hand less allocated, floored at zero); read-only.
    available_to_promise: CloudDecimal | None = None


# --------------------------------------------------------------------------- salesOrders


class SalesOrderStatus(StrEnum):
    DRAFT = "Draft"
    #: Awaiting approval in the cloud ERP's workflow; canonical has no twin.
    PENDING_APPROVAL = "PendingApproval"
    OPEN = "Open"
    ON_HOLD = "OnHold"
    #: Released to the warehouse = stock allocated.
    RELEASED = "Released"
    PARTIALLY_SHIPPED = "PartiallyShipped"
    SHIPPED = "Shipped"
    INVOICED = "Invoiced"
    CLOSED = "Closed"
    CANCELLED = "Cancelled"


class SourceChannel(StrEnum):
    ERP = "Erp"
    CRM = "Crm"
    EDI = "Edi"
    PORTAL = "Portal"


class CloudSalesOrderLine(CloudModel):
    sequence: StrictInt
    item_number: Number
    quantity: CloudDecimal
    unit_price: CloudDecimal


class CloudSalesOrder(CloudResource):
    resource: ClassVar[str] = "salesOrders"
    domain: ClassVar[str] = "order"

    customer_number: Number
    ship_to_code: Number | None = None
    status: SalesOrderStatus
    source_channel: SourceChannel
    #: The customer's PO number.
    external_document_number: Annotated[str, Field(max_length=35)] | None = None
    currency_code: CurrencyCode
    order_date_time: CloudDateTime
    requested_delivery_date: date | None = None
    sales_order_lines: list[CloudSalesOrderLine] = []


# --------------------------------------------------------------------------- shipments


class ShipmentStatus(StrEnum):
    """Derived from the milestone timestamps: the latest one reached."""

    PLANNED = "Planned"
    PICKED = "Picked"
    PACKED = "Packed"
    SHIPPED = "Shipped"
    DELIVERED = "Delivered"


class CloudShipmentLine(CloudModel):
    sequence: StrictInt
    order_line_sequence: StrictInt
    item_number: Number
    quantity: CloudDecimal


class CloudShipment(CloudResource):
    resource: ClassVar[str] = "shipments"
    domain: ClassVar[str] = "shipment"

    order_number: Number
    location_code: Annotated[str, Field(min_length=1, max_length=20)]
    shipping_agent_code: Annotated[str, Field(max_length=50)] | None = None
    package_tracking_number: Annotated[str, Field(max_length=50)] | None = None
    #: Read-only, derived from the timestamps below; checked when present.
    status: ShipmentStatus | None = None
    picked_date_time: CloudDateTime | None = None
    packed_date_time: CloudDateTime | None = None
    shipped_date_time: CloudDateTime | None = None
    delivered_date_time: CloudDateTime | None = None
    shipment_lines: list[CloudShipmentLine] = []


# --------------------------------------------------------------------------- salesInvoices


class SalesInvoiceStatus(StrEnum):
    #: Not yet posted; canonical has no twin (a canonical invoice is issued).
    DRAFT = "Draft"
    OPEN = "Open"
    PARTIALLY_PAID = "PartiallyPaid"
    PAID = "Paid"
    CANCELED = "Canceled"


class CloudSalesInvoiceLine(CloudModel):
    sequence: StrictInt
    item_number: Number
    description: CloudText
    quantity: CloudDecimal
    unit_price: CloudDecimal


class CloudSalesInvoice(CloudResource):
    resource: ClassVar[str] = "salesInvoices"
    domain: ClassVar[str] = "invoice"

    order_number: Number
    customer_number: Number
    status: SalesInvoiceStatus
    currency_code: CurrencyCode
    invoice_date: date
    due_date: date
    total_tax_amount: CloudDecimal
    amount_paid: CloudDecimal = Decimal(0)
    sales_invoice_lines: list[CloudSalesInvoiceLine] = []


# --------------------------------------------------------------------------- registry

#: OData entity set -> resource model.
RESOURCE_MODELS: dict[str, type[CloudResource]] = {
    cls.resource: cls
    for cls in (
        CloudCustomer,
        CloudItem,
        CloudContractPrice,
        CloudInventoryBalance,
        CloudSalesOrder,
        CloudShipment,
        CloudSalesInvoice,
    )
}

#: Canonical domain -> OData entity set.
DOMAIN_RESOURCES: dict[str, str] = {cls.domain: name for name, cls in RESOURCE_MODELS.items()}

#: Canonical domain -> resource model.
DOMAIN_MODELS: dict[str, type[CloudResource]] = {
    cls.domain: cls for cls in RESOURCE_MODELS.values()
}

__all__ = [
    "CloudModel", "CloudResource", "CloudDateTime", "CloudDecimal",
    "CustomerStatus", "PaymentTermsCode", "AddressType", "CloudCustomerAddress", "CloudCustomer",
    "ItemStatus", "UnitOfMeasureCode", "CloudItem",
    "CloudPriceBreak", "CloudContractPrice",
    "CloudInventoryBalance",
    "SalesOrderStatus", "SourceChannel", "CloudSalesOrderLine", "CloudSalesOrder",
    "ShipmentStatus", "CloudShipmentLine", "CloudShipment",
    "SalesInvoiceStatus", "CloudSalesInvoiceLine", "CloudSalesInvoice",
    "RESOURCE_MODELS", "DOMAIN_RESOURCES", "DOMAIN_MODELS",
]
